"""Set SO_MAX_PACING_RATE on a running QEMU's main migration socket, from outside it
(pidfd_getfd: the same socket, duplicated into this process). The main socket is the
oldest TCP connection of QEMU PID to DST; the page-request channel, made later, is left
alone. A research tool for docs/pacing (scripts/pacing-capture.sh), not part of livemig.

    python3 scripts/pace-socket.py PID DST BYTES_PER_S
"""

from __future__ import annotations

import ctypes
import os
import socket
import struct
import sys

SYS_PIDFD_GETFD = 438
SO_MAX_PACING_RATE = 47


def main(pid: int, dst: str, rate: int) -> None:
    want = f"{struct.unpack('<I', socket.inet_aton(dst))[0]:08X}"
    inodes = []
    with open(f"/proc/{pid}/net/tcp") as f:
        for line in f.read().splitlines()[1:]:
            fields = line.split()
            if fields[2].split(":")[0] == want and fields[3] == "01":  # ESTABLISHED
                inodes.append(int(fields[9]))
    fds = {}
    for fd in os.listdir(f"/proc/{pid}/fd"):
        link = os.readlink(f"/proc/{pid}/fd/{fd}")
        if link.startswith("socket:["):
            fds[int(link[8:-1])] = int(fd)
    ours = sorted(i for i in inodes if i in fds)
    if not ours:
        sys.exit(f"QEMU {pid} has no connection to {dst}")
    libc = ctypes.CDLL(None, use_errno=True)
    pidfd = os.pidfd_open(pid)
    try:
        dup = libc.syscall(SYS_PIDFD_GETFD, pidfd, fds[ours[0]], 0)
        if dup < 0:
            raise OSError(ctypes.get_errno(), "pidfd_getfd")
        sock = socket.socket(fileno=dup)
        sock.setsockopt(socket.SOL_SOCKET, SO_MAX_PACING_RATE, rate)
        print(
            f"QEMU {pid} fd {fds[ours[0]]}: paced at {sock.getsockopt(socket.SOL_SOCKET, SO_MAX_PACING_RATE)} B/s"
        )
        sock.close()
    finally:
        os.close(pidfd)


if __name__ == "__main__":
    main(int(sys.argv[1]), sys.argv[2], int(sys.argv[3]))
