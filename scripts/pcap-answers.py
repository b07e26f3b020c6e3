"""Read a header capture of a post-copy migration (tcpdump -w, on the source's switch
port) and print how long each page request, seen leaving the destination, waited for the
next page answer leaving the source on the page-request channel; then the migration's own
figures from its report (livemig migrate --json). For docs/pacing (scripts/pacing-capture.sh).

    python3 scripts/pcap-answers.py CAPTURE.pcap REPORT.json
"""

from __future__ import annotations

import bisect
import json
import statistics
import struct
import sys
from collections import Counter

SRC, DST = 10, 11  # the lab's hosts: 192.0.2.10 and .11


def packets(path: str) -> list[tuple[float, int, int, int, int]]:
    """(time, source host, source port, destination port, payload bytes) of each TCP frame."""
    out = []
    with open(path, "rb") as f:
        nano = struct.unpack("<I", f.read(24)[:4])[0] == 0xA1B23C4D
        while len(head := f.read(16)) == 16:
            sec, frac, caplen, _ = struct.unpack("<IIII", head)
            frame = f.read(caplen)
            if frame[12:14] != b"\x08\x00":
                continue
            ip = frame[14:]
            ihl, total = (ip[0] & 15) * 4, struct.unpack(">H", ip[2:4])[0]
            tcp = ip[ihl:]
            sport, dport = struct.unpack(">HH", tcp[:4])
            out.append(
                (sec + frac / (1e9 if nano else 1e6), ip[15], sport, dport, total - ihl - (tcp[12] >> 4) * 4)
            )
    return out


def main(capture: str, report: str) -> None:
    pk = packets(capture)
    flows = Counter((p[2], p[3]) for p in pk if p[1] == SRC and p[4] > 0)
    first = {k: min(p[0] for p in pk if p[1] == SRC and (p[2], p[3]) == k) for k in flows}
    (main_port, port), (preempt_port, _) = sorted(flows, key=first.__getitem__)[:2]
    since = first[(preempt_port, port)]  # the page-request channel opens as post-copy starts
    requests = [
        p[0] for p in pk if p[1] == DST and p[2] == port and p[3] == main_port and p[4] > 0 and p[0] >= since
    ]
    answers = [p[0] for p in pk if p[1] == SRC and p[2] == preempt_port and p[4] > 0]
    waits = sorted(
        (answers[i] - t) * 1000 for t in requests if (i := bisect.bisect_right(answers, t)) < len(answers)
    )
    q = lambda x: waits[int(x * (len(waits) - 1))]  # noqa: E731
    print(f"request -> next answer, at the source's port: {len(waits)} requests, median {q(0.5):.2f} ms, "
          f"p10 {q(0.1):.2f}, p90 {q(0.9):.2f}, p99 {q(0.99):.2f}, mean {statistics.mean(waits):.2f}")  # fmt: skip
    with open(report) as f:
        text = f.read()
    rep = json.loads(text[text.index("{\n") :])
    n, bt = rep["postcopy_requests"], rep["postcopy_blocktime_ms"]
    print(f"migration: {rep['status']}, guest's longest stall {(rep.get('guest') or {}).get('max_stall_ms')} ms, "
          f"{n} page requests, blocktime {bt} ms ({bt / n:.2f} ms a request)")  # fmt: skip


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
