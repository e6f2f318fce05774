"""Atomic file replacement: a reader sees the old file or the new one, never half of either.

Every file that a later step or a resumed run reads back (checkpoints, ``metrics.json``,
``history.csv``, ``splits.csv``, the report, exported models, stored uploads, study tables) is
written to a temporary name beside its target and moved over it with one ``os.replace`` (atomic
on POSIX within one file system). The temporary name carries the process and thread id, so
concurrent writers (DDP ranks, tuning workers, server threads) never write into each other's
file, and a failed write removes its temporary and leaves the target as it was.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_path(path: str | Path, *, fsync: bool = False) -> Iterator[Path]:
    """Yield a temporary path to write; on success it replaces ``path``.

    ``fsync=True`` flushes the new file to disk before the rename (checkpoints: a power cut
    must not leave a renamed but empty file). The parent folder is created if needed.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}-{threading.get_ident()}.tmp")
    try:
        yield tmp
        if fsync:
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_text(path: str | Path, text: str) -> None:
    """Replace ``path`` with ``text`` (UTF-8) atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
