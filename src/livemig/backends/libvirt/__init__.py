"""The libvirt backend: a domain on one libvirt daemon, migrated peer-to-peer to another
(libvirt-python; events through libvirt's event loop, integrated with asyncio)."""

from livemig.backends.libvirt.backend import LibvirtBackend, call, connect, find_domain

__all__ = ["LibvirtBackend", "call", "connect", "find_domain"]
