"""livemig plan's current model, replayed on the measurements that the policies family
recorded beside each run (docs/policies/results): the median error of the predicted pause
against the measured blackout, of the guest's longest stall, and of the total time, per
link and per switch (pre-copy; post-copy after 0, 1, 2 passes). Pure: no VM, no lab.

    .venv/bin/python scripts/plan-replay.py [RESULTS_DIR]
"""

from __future__ import annotations

import statistics
import sys
from collections import defaultdict
from pathlib import Path

from livemig.bench.report import load_results


def main(results: Path) -> None:
    errors: dict[tuple[str, str], list[float]] = defaultdict(list)
    for run in load_results(results):  # replays the current model on each run
        rep = run["report"]
        if not (run.get("plan") or {}).get("measured") or rep["status"] != "completed":
            continue
        link = "1gbit" if (rep.get("link") or {}).get("rate_Bps") == 125_000_000 else "200mbit"
        n = rep.get("switched_at_pass")
        how = "pre-copy" if n is None else f"post-copy after {min(n, 2)}"
        ms = {m["name"]: m["value"] for m in run["metrics"]}
        for what in ("pause", "stall", "total"):
            v = ms.get(f"plan_{what}_error")
            if v is not None:
                errors[(what, link)].append(v)
                errors[(what, how)].append(v)
    for what in ("pause", "stall", "total"):
        both = errors[(what, "200mbit")] + errors[(what, "1gbit")]
        if not both:
            continue
        keys = ("200mbit", "1gbit", "pre-copy", "post-copy after 0", "post-copy after 1", "post-copy after 2")
        parts = ", ".join(
            f"{k} {statistics.median(errors[(what, k)]):.0%} (n={len(errors[(what, k)])})"
            for k in keys
            if errors[(what, k)]
        )
        print(f"{what}: median error {statistics.median(both):.0%} over {len(both)} runs; {parts}")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).parent.parent / "docs/policies/results")
