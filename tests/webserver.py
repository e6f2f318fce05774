"""``dermalab serve`` in a subprocess on a free loopback port (for browser tests and benches)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.s3server import free_ports


def spawn_server(run_dir: Path, log: Path, args: tuple[str, ...] = (),
                 more_runs: tuple[str, ...] = ()) -> tuple[subprocess.Popen[bytes], str]:
    """Start ``dermalab serve run_dir *more_runs *args`` on a free port (its own process
    group, output appended to ``log``); returns the process and its URL, not yet healthy."""
    port = free_ports(1)[0]
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "dermalab", "serve", str(run_dir), *more_runs,
             "--port", str(port), *args], stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True, env=os.environ.copy())
    return proc, f"http://127.0.0.1:{port}"


def wait_healthy(proc: subprocess.Popen[bytes], url: str, log: Path,
                 timeout: float = 180.0) -> None:
    """Return once ``url/healthz`` answers; raise with the log's tail if the server died."""
    deadline = time.time() + timeout
    while True:
        try:
            urllib.request.urlopen(url + "/healthz", timeout=2)
            return
        except OSError:
            if proc.poll() is not None or time.time() > deadline:
                raise RuntimeError("server did not start: "
                                   + log.read_text()[-2000:]) from None
            time.sleep(0.3)


def stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM, then SIGKILL after 30 s."""
    proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@contextmanager
def dermalab_server(run_dir: Path, state_dir: Path, timeout: float = 180.0,
                    extra_args: tuple[str, ...] = (), more_runs: tuple[str, ...] = ()
                    ) -> Iterator[str]:
    """Start the server (history and uploads in ``state_dir``; ``more_runs`` served beside
    ``run_dir``, which then need a ``--router`` in ``extra_args``); yield its URL once
    healthy."""
    state_dir.mkdir(parents=True, exist_ok=True)
    log = state_dir / "server.log"
    proc, url = spawn_server(run_dir, log, ("--db", f"sqlite:///{state_dir / 'history.db'}",
                                            "--images", str(state_dir / "uploads"),
                                            *extra_args), more_runs)
    try:
        wait_healthy(proc, url, log, timeout)
        yield url
    finally:
        stop(proc)
