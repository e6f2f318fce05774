"""A real PostgreSQL server for tests (Debian's postgresql-15), on a free loopback port."""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.s3server import free_ports

PG_BIN = Path("/usr/lib/postgresql/15/bin")


def available() -> bool:
    """True when the server binaries and a ``postgres`` system user exist."""
    try:
        pwd.getpwnam("postgres")
    except KeyError:
        return False
    return (PG_BIN / "initdb").exists() and (PG_BIN / "pg_ctl").exists()


def _as_postgres(cmd: list[str]) -> subprocess.CompletedProcess[str]:
    if os.geteuid() == 0:
        cmd = ["su", "postgres", "-s", "/bin/sh", "-c", " ".join(cmd)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120)


@contextmanager
def postgres(dbname: str = "dermalab") -> Iterator[str]:
    """initdb + pg_ctl start (trust auth, 127.0.0.1 only); yields a SQLAlchemy URL.

    The cluster lives in a fresh folder under /tmp (pytest's own temp folders are private to
    root, and the server runs as the ``postgres`` user), removed afterwards.
    """
    root = Path(tempfile.mkdtemp(prefix="dermalab-pg-"))
    data = root / "pgdata"
    data.mkdir()
    if os.geteuid() == 0:
        shutil.chown(root, "postgres")
        shutil.chown(data, "postgres")
    port = free_ports(1)[0]
    init = _as_postgres([str(PG_BIN / "initdb"), "-D", str(data), "-A", "trust", "-U",
                         "postgres"])
    if init.returncode != 0:
        raise RuntimeError(f"initdb failed: {init.stderr[-1000:]}")
    opts = f"'-p {port} -k {data} -c listen_addresses=127.0.0.1'"
    start = _as_postgres([str(PG_BIN / "pg_ctl"), "-D", str(data), "-o", opts, "-w",
                          "-l", str(data / "log"), "start"])
    if start.returncode != 0:
        raise RuntimeError(f"pg_ctl start failed: {start.stderr[-1000:]}")
    try:
        subprocess.run(["psql", "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", "-c",
                        f"CREATE DATABASE {dbname}"], check=True, capture_output=True)
        yield f"postgresql+psycopg://postgres@127.0.0.1:{port}/{dbname}"
    finally:
        _as_postgres([str(PG_BIN / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop"])
        shutil.rmtree(root, ignore_errors=True)
