"""The bench's plots (matplotlib, Agg): a scenario's cells side by side, and one run's
timeline of remaining bytes with its phase bands and the guest's stalls."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from livemig.bench.report import Summary

__all__ = ["plot_scenario", "plot_timeline"]


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_scenario(
    summaries: list[Summary], scenario: str, path: Path, wanted: tuple[str, ...]
) -> Path | None:
    """Per metric of ``wanted``, each cell's median with min-max whiskers over its completed
    runs (y from zero); a cell whose runs did not all complete says so under its name."""
    cells = [s for s in summaries if s.scenario == scenario]
    metrics = [m for m in wanted if any(s.values(m, True) for s in cells)]
    if not cells or not metrics:
        return None
    plt = _plt()
    cols = min(3, len(metrics))  # at most three panels a row: readable at a page's width
    rows = -(-len(metrics) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.6 * cols, 4.4 * rows), squeeze=False)
    for ax in axes.flat[len(metrics) :]:
        ax.set_visible(False)
    labels = [
        s.cell.split("/", 1)[1]
        + ("" if s.completed == len(s.runs) else f"\n({s.completed}/{len(s.runs)} completed)")
        for s in cells
    ]
    repeats = max(len(s.runs) for s in cells)
    for ax, metric in zip(axes.flat, metrics, strict=False):
        for i, s in enumerate(cells):
            st = s.stat(metric, True)
            if st is None:
                continue
            ax.errorbar([i], [st.median], yerr=[[st.median - st.lo], [st.hi - st.median]], fmt="o", capsize=5)
            if repeats > 1:
                ax.scatter(
                    [i] * len(s.values(metric, True)), s.values(metric, True), s=8, alpha=0.35, color="gray"
                )
        ax.set_title(metric, fontsize=11)
        ax.set_ylabel(metric.rsplit("_", 1)[-1] if metric.endswith("_ms") else "", fontsize=9)
        ax.set_ylim(bottom=0)
        ax.set_xticks(range(len(cells)), labels, rotation=30, ha="right", fontsize=9)
        ax.grid(axis="y", alpha=0.3)
    runs = "median of completed runs, min-max whiskers" + (", every run in gray" if repeats > 1 else "")
    fig.suptitle(f"{scenario}: {runs}", fontsize=12)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def plot_timeline(result: dict[str, Any], path: Path) -> Path | None:
    """Remaining bytes over time, phase bands, and the guest's stalls (> 100 ms)."""
    rep = result.get("report")
    if not rep or not rep.get("timeline"):
        return None
    evs = {e["name"]: e for e in reversed(rep["events"])}  # first occurrence wins
    t0 = min((e["qemu_ts"] or e["delivered_ts"]) for e in rep["events"])

    def t(name: str) -> float | None:
        e = evs.get(name)
        return ((e["qemu_ts"] or e["delivered_ts"]) - t0) if e else None

    plt = _plt()
    fig, ax = plt.subplots(figsize=(10, 4.2))
    # QEMU reports 0 remaining until it has measured (setup): the line starts at its first figure
    tl = rep["timeline"]
    first = next((i for i, s in enumerate(tl) if s["remaining"]), len(tl))
    xs = [s["t"] for s in tl]
    ax.plot(xs[first:], [s["remaining"] / 2**20 for s in tl[first:]], color="C0", label="remaining")
    end = t("completed") or t("cancelled") or t("failed") or (xs[-1] if xs else 0)
    stop, resumed, post = t("source-stopped"), t("destination-resumed"), t("postcopy-started")
    ax.axvspan(0, stop if stop is not None else end, color="C2", alpha=0.12, label="pre-copy")
    if stop is not None and resumed is not None:
        ax.axvspan(stop, max(resumed, stop + 0.01), color="C3", alpha=0.5, label="stopped")
    if post is not None and end is not None:
        ax.axvspan(resumed or post, end, color="C1", alpha=0.12, label="post-copy")
    for i, st in enumerate((rep.get("guest") or {}).get("stalls", [])):
        x = st["start_ts"] - t0
        ax.axvspan(x, x + st["host_ms"] / 1000, ymax=0.08, color="k", label="guest stall" if i == 0 else None)
    g = rep.get("guest") or {}
    done = rep["status"] == "completed"
    ax.set_title(
        f"{result['cell']['id']} r{result['dimensions']['repeat']}: "
        + (f"completed, max stall {g.get('max_stall_ms')} ms, blackout {rep.get('blackout_ms')} ms" if done
           else f"{rep['status'].upper()}: did not complete (its figures are not a result)"),
        fontsize=11, color="black" if done else "C3",
    )  # fmt: skip
    ax.set_xlabel("seconds since migrate", fontsize=10)
    ax.set_ylabel("MiB still to send", fontsize=10)
    ax.set_ylim(bottom=0)
    ax.set_xlim(left=0)
    ax.legend(fontsize=9, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


# -- markdown -----------------------------------------------------------------
