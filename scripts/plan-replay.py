"""livemig plan's current model, replayed on the measurements that the policies family
recorded beside each run (docs/policies/results): the median error of the predicted pause
against the measured blackout, and of the total time, per link. Pure: no VM, no lab.

    .venv/bin/python scripts/plan-replay.py [RESULTS_DIR]
"""

from __future__ import annotations

import json
import statistics
import sys
from collections import defaultdict
from pathlib import Path

from livemig.plan import Measurement, predict_policy
from livemig.policy import parse_policy


def main(results: Path) -> None:
    errors: dict[tuple[str, str], list[float]] = defaultdict(list)
    for f in sorted(results.glob("*.json")):
        run = json.loads(f.read_text())
        plan, rep = run.get("plan"), run["report"]
        if not plan or rep["status"] != "completed":
            continue
        link = "1gbit" if "1gbit" in f.name else "200mbit"
        ms = plan["measured"]
        top = ms.get("top_nonzero")
        m = Measurement(
            ms["ram_bytes"], ms["dirty_Bps"], ms["link_Bps"], ms["link_source"], ms.get("resident_bytes"),
            tuple(top) if top else None,
        )
        p = predict_policy(m, parse_policy(rep["policy"]))
        if p is None:
            continue
        if p.pause_ms is not None and rep.get("blackout_ms"):
            errors[("pause", link)].append(abs(p.pause_ms - rep["blackout_ms"]) / rep["blackout_ms"])
        if p.total_s is not None and rep.get("total_time_ms"):
            errors[("total", link)].append(
                abs(p.total_s * 1000 - rep["total_time_ms"]) / rep["total_time_ms"]
            )
    for what in ("pause", "total"):
        both = errors[(what, "200mbit")] + errors[(what, "1gbit")]
        parts = ", ".join(
            f"{link} {statistics.median(errors[(what, link)]):.0%} (n={len(errors[(what, link)])})"
            for link in ("200mbit", "1gbit")
            if errors[(what, link)]
        )
        print(f"{what}: median error {statistics.median(both):.0%} over {len(both)} runs; {parts}")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).parent.parent / "docs/policies/results")
