"""kill -9 with uploads in flight, restart: no analysis without its photo, no photo (or write
temporary) without its analysis. The server runs with its run directory's own database and
photo folder, as `dermalab serve RUN_DIR` does by default."""

from __future__ import annotations

import os
import shutil
import signal
import sqlite3
import threading
from pathlib import Path

import httpx
import pytest

from tests.serve.helpers import XRW, photo
from tests.webserver import spawn_server, stop, wait_healthy


def _uploader(url: str, token: str, done: list[int], halt: threading.Event, i: int) -> None:
    with httpx.Client(base_url=url, timeout=30,
                      headers={"Authorization": f"Bearer {token}"}) as c:
        while not halt.is_set():
            try:
                r = c.post("/v1/analyses", files={"file": (f"p{i}.jpg", photo(i % 4))})
            except httpx.HTTPError:
                return  # the server was killed under this request
            if r.status_code == 201:
                done.append(1)


@pytest.mark.slow
def test_kill_9_with_uploads_in_flight_leaves_nothing_half_stored(skin_run: Path,
                                                                   tmp_path: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(skin_run, run, ignore=shutil.ignore_patterns("serving"))
    shutil.copytree(skin_run / "serving", run / "serving",
                    ignore=shutil.ignore_patterns("history.db*", "uploads"))
    log = tmp_path / "server.log"
    proc, url = spawn_server(run, log)
    try:
        wait_healthy(proc, url, log)
        token = httpx.post(url + "/v1/auth/anonymous", headers=XRW).json()["token"]
        done: list[int] = []
        halt = threading.Event()
        threads = [threading.Thread(target=_uploader, args=(url, token, done, halt, i))
                   for i in range(6)]
        for th in threads:
            th.start()
        while len(done) < 8 and proc.poll() is None:
            halt.wait(0.02)
        os.killpg(proc.pid, signal.SIGKILL)  # six uploads in flight
        proc.wait()
        halt.set()
        for th in threads:
            th.join(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    uploads = run / "serving" / "uploads"
    stored_before = sorted(p.name for p in uploads.iterdir())
    assert len(done) >= 8 and stored_before

    proc, url = spawn_server(run, log)  # the restart sweeps what the crash left
    try:
        wait_healthy(proc, url, log)
    finally:
        stop(proc)
    con = sqlite3.connect(run / "serving" / "history.db")
    refs = {r for (r,) in con.execute("select image_ref from analyses where image_ref != ''")}
    con.close()
    files = {p.name for p in uploads.iterdir()}
    assert len(refs) >= len(done)  # every answered upload is still there
    assert refs - files == set(), "analyses without a photo"
    assert files - refs == set(), "photos or temporaries without an analysis"


@pytest.mark.parametrize(("own", "grace"), [(True, 0.0), (False, 600.0)])
def test_orphan_grace_depends_on_whether_the_stores_are_shared(skin_run: Path, own: bool,
                                                                grace: float) -> None:
    from dermalab.serve.retention import RetentionService
    from dermalab.serve.settings import ServeSettings

    kw = {} if own else {"database_url": "sqlite://"}
    svc = RetentionService.__new__(RetentionService)
    svc.settings = ServeSettings(run_dir=str(skin_run), **kw)  # type: ignore[arg-type]
    assert svc.orphan_grace_s == grace
    svc.settings = ServeSettings(run_dir=str(skin_run), orphan_grace_s=5.0)
    assert svc.orphan_grace_s == 5.0
