"""A throw-away PKI for the lab: one CA, and per host a certificate that serves both
ends of a TLS migration (QEMU's ``tls-creds-x509`` reads ``ca-cert.pem``,
``server-cert.pem``/``server-key.pem`` and ``client-cert.pem``/``client-key.pem``
from one directory). Keys never leave the runtime directory (0700, files 0600)."""

from __future__ import annotations

import datetime
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from livemig.paths import ensure_private_dir

__all__ = ["CA", "issue_host", "new_ca"]

VALID = datetime.timedelta(days=30)


@dataclass(frozen=True)
class CA:
    key: rsa.RSAPrivateKey
    cert: x509.Certificate


def _key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "livemig lab"),
                      x509.NameAttribute(NameOID.COMMON_NAME, cn)])  # fmt: skip


_USAGE_FLAGS = ("digital_signature", "content_commitment", "key_encipherment", "data_encipherment",
                "key_agreement", "key_cert_sign", "crl_sign", "encipher_only", "decipher_only")  # fmt: skip


def _usage(*flags: str) -> x509.KeyUsage:
    return x509.KeyUsage(**{f: f in flags for f in _USAGE_FLAGS})


def _cert(
    subject: x509.Name,
    issuer: x509.Name,
    public_key: rsa.RSAPublicKey,
    signer: rsa.RSAPrivateKey,
    extensions: list[tuple[x509.ExtensionType, bool]],
) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + VALID)
    )
    for ext, critical in extensions:
        builder = builder.add_extension(ext, critical=critical)
    return builder.sign(signer, hashes.SHA256())


def new_ca(cn: str = "livemig lab CA") -> CA:
    key = _key()
    exts: list[tuple[x509.ExtensionType, bool]] = [
        (x509.BasicConstraints(ca=True, path_length=0), True),
        (_usage("key_cert_sign", "crl_sign"), True),
    ]
    return CA(key, _cert(_name(cn), _name(cn), key.public_key(), key, exts))


def _write(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def issue_host(ca: CA, directory: Path, host: str, address: str) -> Path:
    """Write ``directory`` with the CA and a certificate for ``host`` (SAN: its name and
    address; usable as TLS server and client), as QEMU's tls-creds-x509 expects."""
    ensure_private_dir(directory)
    key = _key()
    exts: list[tuple[x509.ExtensionType, bool]] = [
        (x509.BasicConstraints(ca=False, path_length=None), True),
        (
            x509.SubjectAlternativeName([x509.DNSName(host), x509.IPAddress(ipaddress.ip_address(address))]),
            False,
        ),
        (x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]), False),
        (_usage("digital_signature", "key_encipherment"), True),
    ]
    cert = _cert(_name(host), ca.cert.subject, key.public_key(), ca.key, exts)
    pem_key = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )
    pem_cert = cert.public_bytes(serialization.Encoding.PEM)
    _write(directory / "ca-cert.pem", ca.cert.public_bytes(serialization.Encoding.PEM))
    for role in ("server", "client"):
        _write(directory / f"{role}-cert.pem", pem_cert)
        _write(directory / f"{role}-key.pem", pem_key)
    return directory
