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


@contextmanager
def dermalab_server(run_dir: Path, state_dir: Path, timeout: float = 180.0,
                    extra_args: tuple[str, ...] = ()) -> Iterator[str]:
    """Start the server (history and uploads in ``state_dir``); yield its URL once healthy."""
    port = free_ports(1)[0]
    state_dir.mkdir(parents=True, exist_ok=True)
    log = state_dir / "server.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "dermalab", "serve", str(run_dir), "--port", str(port),
             "--db", f"sqlite:///{state_dir / 'history.db'}", "--images",
             str(state_dir / "uploads"), *extra_args],
            stdout=out, stderr=subprocess.STDOUT, start_new_session=True, env=os.environ.copy())
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.time() + timeout
            while True:
                try:
                    urllib.request.urlopen(url + "/healthz", timeout=2)
                    break
                except OSError:
                    if proc.poll() is not None or time.time() > deadline:
                        raise RuntimeError("server did not start: "
                                           + log.read_text()[-2000:]) from None
                    time.sleep(0.3)
            yield url
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
