"""The progress line shows only what was measured (pure), and fits 80 columns."""

from __future__ import annotations

import io

import pytest
from rich.console import Console
from rich.text import Text

from livemig.cli.progress import figures, progress_display, progress_view
from livemig.core.backend import MigrationInfo

MIB = 1 << 20
RAM = 512 * MIB


def info(
    status: str, sent: int, left: int, syncs: int = 1, dirty: float = 0.0, mbps: float = 200.0
) -> MigrationInfo:
    return MigrationInfo(status, transferred=sent * MIB, remaining=left * MIB, dirty_sync_count=syncs,
                         dirty_rate_Bps=dirty, mbps=mbps, ram_total=RAM)  # fmt: skip


def test_the_dirty_rate_only_once_measured() -> None:
    first = progress_view([info("active", 100, 412)], "precopy", 1)
    assert first.dirty_Bps is None and "dirty -" in first.line()  # QEMU measures it at a pass's end
    second = progress_view([info("active", 520, 40, syncs=2, dirty=30 * MIB)], "precopy", 2)
    assert second.dirty_Bps == 30 * MIB and "dirty 30.0 MiB/s" in second.line()


def test_postcopy_left_to_fetch_only_falls_with_percent_and_eta() -> None:
    samples = [
        info("postcopy-active", 300, 371),
        info("postcopy-active", 310, 414),
        info("postcopy-active", 320, 380),
    ]
    v = progress_view(samples, "postcopy", 3, {"action": "switch", "reason": "1 pre-copy pass(es) done"})
    assert v.left == 371 * MIB  # QEMU's remaining rose after the switch: the display does not
    assert v.percent is not None and round(v.percent) == round(100 * (1 - 371 / 512))
    assert v.eta_s is not None and round(v.eta_s, 1) == round(371 * MIB / (200e6 / 8), 1)
    assert v.dirty_Bps is None and "to fetch" in v.line() and v.decision == "switch: 1 pre-copy pass(es) done"


def test_nothing_before_the_first_sample() -> None:
    v = progress_view([], "setup", 0)
    assert v.left is None and v.percent is None and v.eta_s is None and v.line() == "0 MiB sent, dirty -"


def test_the_display_fits_80_columns_with_the_pass_number() -> None:
    """The widest figures livemig can show (4-digit MiB, a measured dirty rate, a
    gigabit link, a long decision) on an 80-column terminal: nothing cut, nothing wider."""
    view = progress_view(
        [info("active", 1000, 9000, syncs=12, dirty=123.4 * MIB, mbps=1000.0)], "precopy", 12,
        {"action": "switch", "reason": "policy postcopy-after:1: 1 pre-copy pass(es) done, policy asks for 1"},
    )  # fmt: skip
    out = io.StringIO()
    console = Console(width=80, file=out, force_terminal=False)
    bar = progress_display(console)
    bar.add_task("vm", total=100, completed=10, phase=view.phase, pass_=view.passes, figures=figures(view))
    console.print(bar.get_renderable())
    lines = out.getvalue().splitlines()
    assert lines[0].startswith("precopy   pass 12 ") and "…" not in out.getvalue(), lines
    assert max(len(line) for line in lines) <= 80, lines
    assert lines[1].strip() == view.line() and lines[2].strip() == view.decision


@pytest.mark.parametrize("terminal", [True, False], ids=["terminal", "pipe"])
def test_a_long_event_line_wraps_at_words_under_its_text(
    monkeypatch: pytest.MonkeyPatch, terminal: bool
) -> None:
    """On an 80-column terminal an event line longer than the pane wraps between words,
    indented under the text; into a pipe or a log it stays one line."""
    from livemig.cli import render
    from livemig.core.events import MigrationEvent

    buf = io.StringIO()
    monkeypatch.setattr(render, "err", Console(width=80, file=buf, force_terminal=terminal, soft_wrap=True))
    reason = "policy postcopy-after:1: 1 pre-copy pass(es) done, policy asks for 1"
    ev = MigrationEvent("postcopy-requested", {"reason": reason}, delivered_ts=100.5)
    render.print_event(100.0, ev)
    text = Text.from_ansi(buf.getvalue()).plain
    lines = text.rstrip("\n").split("\n")
    words = f"+  0.500s post-copy requested: {reason}".split()
    if not terminal:
        assert lines == [f"  +  0.500s post-copy requested: {reason}"]
        return
    assert len(lines) == 2 and all(len(line.rstrip()) <= 80 for line in lines), lines
    assert " ".join(text.split()) == " ".join(words)  # no word cut in two
    col = lines[0].index("post-copy")
    assert lines[1][:col].isspace() and not lines[1][col].isspace()  # under the text, not the time
