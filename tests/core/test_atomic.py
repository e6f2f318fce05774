"""Atomic replacement: the target is the old file or the new one, never a mix, never lost."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from dermalab.core.atomic import atomic_path, atomic_write_bytes, atomic_write_text


def test_write_replaces_and_leaves_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "history.csv"  # the parent folder is created
    atomic_write_text(target, "old\n")
    atomic_write_text(target, "new\n")
    assert target.read_text() == "new\n"
    atomic_write_bytes(target, b"\x00\x01")
    assert target.read_bytes() == b"\x00\x01"
    with atomic_path(target, fsync=True) as tmp:
        tmp.write_text("synced")
    assert target.read_text() == "synced"
    assert sorted(p.name for p in target.parent.iterdir()) == ["history.csv"]


def test_a_failed_write_keeps_the_old_file(tmp_path: Path) -> None:
    target = tmp_path / "best.pt"
    target.write_text("previous checkpoint")
    with pytest.raises(RuntimeError, match="disk full"), atomic_path(target) as tmp:
        tmp.write_text("half a check")
        raise RuntimeError("disk full")
    assert target.read_text() == "previous checkpoint"
    assert [p.name for p in tmp_path.iterdir()] == ["best.pt"]


def test_a_write_that_never_created_its_temporary_is_harmless(tmp_path: Path) -> None:
    target = tmp_path / "report.html"
    with pytest.raises(ValueError), atomic_path(target):
        raise ValueError("failed before writing")
    assert not target.exists() and not list(tmp_path.iterdir())


def test_concurrent_writers_never_mix(tmp_path: Path) -> None:
    target = tmp_path / "splits.csv"
    payloads = [str(i) * 200_000 for i in range(8)]
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda text: atomic_write_text(target, text), payloads * 3))
    assert target.read_text() in payloads
    assert [p.name for p in tmp_path.iterdir()] == ["splits.csv"]
