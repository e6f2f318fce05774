"""The deployment profile as it would run (issue 52): nginx in front of two dermalab workers,
PostgreSQL, SeaweedFS S3 and Redis, all real servers on 127.0.0.1 (``tests/localstack.py``,
started by ``scripts/deploy_local.py``). Every request goes through the proxy."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests import localstack
from tests.serve.helpers import XRW, photo

pytestmark = pytest.mark.skipif(bool(localstack.missing()),
                                reason="the deployment profile needs "
                                       + ", ".join(localstack.missing()))


@pytest.fixture(scope="module")
def dep(skin_run: Path, tmp_path_factory: pytest.TempPathFactory
        ) -> Iterator[localstack.Deployment]:
    """Two workers started together on a fresh PostgreSQL: they race to migrate it."""
    with localstack.deployment([str(skin_run)], tmp_path_factory.mktemp("deploy"), workers=2,
                               extra_args=("--rate-upload", "1000/minute")) as d:
        yield d


def _answered_by(dep: localstack.Deployment, path: str) -> list[str]:
    """The worker address of each logged request for ``path`` (nginx's ``$upstream_addr``)."""
    log = dep.root / "nginx" / "upstream.log"
    return [line.split()[-1] for line in log.read_text().splitlines()
            if line.split()[2] == path]


def _session(c: httpx.Client) -> dict[str, str]:
    r = c.post("/v1/auth/anonymous", headers=XRW)
    assert r.status_code == 201, r.text
    return {"Authorization": f"Bearer {r.json()['token']}"}


def test_two_workers_migrate_one_database_once(dep: localstack.Deployment) -> None:
    from sqlalchemy import create_engine, text

    with create_engine(dep.db).connect() as conn:
        assert [r for (r,) in conn.execute(text("select version_num from alembic_version"))] \
            == ["0004"]
    for i in range(2):
        assert httpx.get(f"http://127.0.0.1:{dep.worker_ports[i]}/healthz").status_code == 200


def test_each_owner_sees_only_their_own_on_every_worker(dep: localstack.Deployment) -> None:
    with httpx.Client(base_url=dep.url, timeout=60) as c:
        alice, bob = _session(c), _session(c)
        r = c.post("/v1/analyses", headers=alice, files={"file": ("a.jpg", photo(0))})
        assert r.status_code == 201, r.text
        path = f"/v1/analyses/{r.json()['id']}"
        assert [c.get(path, headers=alice).status_code for _ in range(6)] == [200] * 6
        assert [c.get(path, headers=bob).status_code for _ in range(4)] == [404] * 4
        assert c.get("/v1/analyses", headers=bob).json()["total"] == 0
    # the session and the analysis were valid on both workers (round robin)
    assert len(set(_answered_by(dep, path))) == 2


def test_rate_limits_are_shared_by_the_workers(dep: localstack.Deployment) -> None:
    """The 11th sign-in from one address within a minute gets 429 whichever worker answers;
    an X-Forwarded-For the client sends is replaced by the proxy, so it buys nothing."""
    import redis

    counts = redis.Redis.from_url(dep.rate_storage)
    counts.flushall()  # this minute's counts start at zero
    statuses = []
    with httpx.Client(base_url=dep.url, timeout=60) as c:
        for i in range(12):
            statuses.append(c.post("/v1/auth/signin",
                                   json={"email": f"u{i}@example.org", "password": "wrong pw"},
                                   headers={"X-Forwarded-For": f"203.0.113.{i}"}).status_code)
    counts.flushall()  # the next tests start sessions from this address again
    assert statuses == [401] * 10 + [429] * 2
    assert len(set(_answered_by(dep, "/v1/auth/signin"))) == 2


def test_a_worker_killed_mid_upload_loses_nothing(dep: localstack.Deployment) -> None:
    """SIGKILL one worker while four clients upload; the proxy sends the rest to the other;
    after the killed worker restarts (its start-up sweep) every analysis has its photo in S3
    and every photo its analysis, and every answered upload is listed."""
    import boto3
    from sqlalchemy import create_engine, text

    done: list[str] = []
    halt = threading.Event()
    with httpx.Client(base_url=dep.url, timeout=60) as c:
        auth = _session(c)

    def upload(k: int) -> None:
        with httpx.Client(base_url=dep.url, timeout=60, headers=auth) as u:
            while not halt.is_set():
                try:
                    r = u.post("/v1/analyses", files={"file": (f"p{k}.jpg", photo(k % 4))})
                except httpx.HTTPError:
                    continue
                if r.status_code == 201:
                    done.append(r.json()["id"])

    threads = [threading.Thread(target=upload, args=(k,)) for k in range(4)]
    for th in threads:
        th.start()
    while len(done) < 8:
        halt.wait(0.05)
    dep.kill_worker(0)
    before = len(done)
    while len(done) < before + 4:  # the other worker goes on answering
        halt.wait(0.05)
    halt.set()
    for th in threads:
        th.join(timeout=120)
    dep.start_worker(0, "--orphan-grace", "0")  # nothing is in flight now
    dep.wait_worker(0)
    with create_engine(dep.db).connect() as conn:
        kept = text("select image_ref from analyses where image_ref != ''")  # '': not skin
        rows = {ref for (ref,) in conn.execute(kept)}
        ids = {i for (i,) in conn.execute(text("select id from analyses"))}
    s3 = boto3.client("s3", endpoint_url=dep.env["AWS_ENDPOINT_URL"], region_name="us-east-1",
                      aws_access_key_id=dep.env["AWS_ACCESS_KEY_ID"],
                      aws_secret_access_key=dep.env["AWS_SECRET_ACCESS_KEY"])
    listed = s3.list_objects_v2(Bucket="dermalab", Prefix="photos/").get("Contents", [])
    photos = {o["Key"].rsplit("/", 1)[-1] for o in listed}
    assert set(done) <= ids, "an answered upload was lost"
    assert rows == photos
