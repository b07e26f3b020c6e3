"""Orchestrator mode's refusals that need no QEMU: the pair's views and the arguments."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from livemig.errors import UsageError
from livemig.pair import QemuPair, QemuView, check_pair

SRC = QemuView((10, 0, 2), "pc-i440fx-10.0", "tcg", "vm", "running", "none")
DST = replace(SRC, runstate="inmigrate")


@pytest.mark.parametrize(
    ("src", "dst", "words"),
    [
        (SRC, replace(DST, runstate="running"), "not waiting for an incoming migration"),
        (SRC, replace(DST, migration="active"), "already 'active'"),
        (replace(SRC, runstate="inmigrate"), DST, "itself waiting"),
        (replace(SRC, migration="active"), DST, "already migrating"),
        (replace(SRC, migration="postcopy-paused"), DST, "already migrating"),
        (SRC, replace(DST, version=(9, 2, 0)), "QEMU versions differ: source 10.0.2, destination 9.2.0"),
        (SRC, replace(DST, machine="pc-q35-10.0"), "machine types differ"),
        (SRC, replace(DST, accel="kvm"), "accelerators differ"),
    ],
)
def test_a_pair_that_cannot_migrate_is_refused(src: QemuView, dst: QemuView, words: str) -> None:
    with pytest.raises(UsageError, match=words):
        check_pair(src, dst)


@pytest.mark.parametrize("dst_migration", ["none", "setup"])
def test_a_waiting_pair_passes(dst_migration: str) -> None:
    check_pair(SRC, replace(DST, migration=dst_migration))
    check_pair(replace(SRC, migration="completed"), DST)  # a source that migrated before


@pytest.mark.parametrize(
    ("uri", "words"),
    [("tcp:host", "tcp:HOST:PORT"), ("tcp:host:0", "port from 1"), ("unix:/x", "tcp:HOST:PORT"),
     ("tcp:host:99999", "port from 1"), ("tcp:a b:1", "tcp:HOST:PORT")],
)  # fmt: skip
def test_bad_uris_are_refused(tmp_path: Path, uri: str, words: str) -> None:
    with pytest.raises(UsageError, match=words):
        QemuPair(tmp_path / "a", tmp_path / "b", uri)


def test_missing_sockets_and_half_heartbeats_are_refused(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="no such socket"):
        QemuPair(tmp_path / "a", tmp_path / "b", "tcp:127.0.0.1:4444")
    (tmp_path / "f").write_text("")
    with pytest.raises(UsageError, match="not a UNIX socket"):
        QemuPair(tmp_path / "f", tmp_path / "f2", "tcp:127.0.0.1:4444")
    with pytest.raises(UsageError, match="both --src-heartbeat and --dst-heartbeat"):
        QemuPair(tmp_path / "a", tmp_path / "b", "tcp:127.0.0.1:4444", src_heartbeat=tmp_path / "h")
