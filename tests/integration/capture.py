"""A packet capture for the TLS test: run inside a lab namespace (``ip netns exec NS
python capture.py IFNAME OUTDIR``), it reads every frame on IFNAME with a packet socket
and appends each TCP flow's payload, in capture order, to a file of its own in OUTDIR,
until SIGTERM; then it writes OUTDIR/summary.json (frames, bytes, flows).

The test then searches the flows for bytes that the guest wrote into its memory: a
migration stream in the clear carries them, an encrypted one never does."""

from __future__ import annotations

import errno
import json
import signal
import socket
import sys
import time
from pathlib import Path
from typing import IO

from livemig.lab.tripwire import ETH_P_ALL, tcp_frame


def main(ifname: str, out: Path) -> None:
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
    sock.bind((ifname, 0))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 32 << 20)
    sock.settimeout(0.2)
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(True))
    files: dict[str, IO[bytes]] = {}
    frames = payload = 0
    (out / "ready").touch()
    while not stop:
        try:
            frame = sock.recv(1 << 17)
        except TimeoutError:
            continue
        except OSError as exc:  # the port is down (the test cuts the link): wait for it
            if exc.errno != errno.ENETDOWN:
                raise
            time.sleep(0.05)
            continue
        frames += 1
        tcp = tcp_frame(frame)
        if tcp is None or not tcp[2]:
            continue
        (saddr, sport, daddr, dport), _, data = tcp
        key = f"{saddr}_{sport}-{daddr}_{dport}"
        if key not in files:
            files[key] = (out / f"flow-{key}.bin").open("wb")
        files[key].write(data)
        payload += len(data)
    for f in files.values():
        f.close()
    (out / "summary.json").write_text(
        json.dumps({"frames": frames, "payload_bytes": payload, "flows": sorted(files)})
    )


if __name__ == "__main__":
    main(sys.argv[1], Path(sys.argv[2]))
