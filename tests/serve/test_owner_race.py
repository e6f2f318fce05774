"""An upload racing its owner's deletion (red-team finding A): nothing outlives its owner.

Every analysis and spot references its owner by a foreign key (migration 0004; SQLite checks
it per connection). An upload whose owner was deleted while it was analysed is refused (401)
and keeps nothing; "delete my account" and the device move at sign-up retry until no upload
holds the user. Tested against a real server with concurrent clients, at the service, and on
a database of the revision before.
"""

from __future__ import annotations

import sqlite3
import threading
import uuid
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
from sqlalchemy import create_engine, inspect, text

from dermalab.serve.migrations import upgrade
from dermalab.serve.service import Services, build_services
from dermalab.serve.settings import ServeSettings
from dermalab.serve.store import make_engine
from dermalab.serve.uploads import UploadError
from tests.serve.helpers import XRW, photo
from tests.webserver import spawn_server, stop, wait_healthy


def _db_state(db: Path, uploads: Path) -> tuple[set[str], set[str], set[str], set[str]]:
    con = sqlite3.connect(db)
    users = {u for (u,) in con.execute("select id from users")}
    owners = {o for (o,) in con.execute("select owner_id from analyses") if o is not None}
    owners |= {o for (o,) in con.execute("select owner_id from spots") if o is not None}
    refs = {r for (r,) in con.execute("select image_ref from analyses where image_ref != ''")}
    con.close()
    files = {p.name for p in uploads.iterdir()} if uploads.is_dir() else set()
    return users, owners, refs, files


def test_uploads_racing_account_deletion_leave_nothing(skin_run: Path, tmp_path: Path) -> None:
    db, uploads = tmp_path / "h.db", tmp_path / "uploads"
    log = tmp_path / "server.log"
    proc, url = spawn_server(skin_run, log, ("--db", f"sqlite:///{db}", "--images",
                                             str(uploads), "--rate-upload", "10000/minute",
                                             "--rate-signin", "10000/minute"))
    outcomes: dict[str, int] = {}
    try:
        wait_healthy(proc, url, log)
        with httpx.Client(base_url=url, timeout=60) as c:
            for i in range(12):
                token = c.post("/v1/auth/anonymous", headers=XRW).json()["token"]
                auth = {"Authorization": f"Bearer {token}"}
                codes: list[int] = []

                def upload(k: int, auth: dict[str, str] = auth, codes: list[int] = codes
                           ) -> None:
                    with httpx.Client(base_url=url, timeout=60, headers=auth) as u:
                        r = u.post("/v1/analyses", files={"file": (f"p{k}.jpg", photo(k % 4))},
                                   data={"spot": "left arm"})
                        codes.append(r.status_code)

                threads = [threading.Thread(target=upload, args=(i * 3 + k,)) for k in range(3)]
                for th in threads:
                    th.start()
                threading.Event().wait(0.02 * (i % 4))  # land the deletion at varied moments
                assert c.delete("/v1/account", headers=auth).status_code == 204
                for th in threads:
                    th.join(timeout=60)
                for code in codes:
                    outcomes[str(code)] = outcomes.get(str(code), 0) + 1
                assert set(codes) <= {201, 401}, codes
    finally:
        stop(proc)
    users, owners, refs, files = _db_state(db, uploads)
    assert owners <= users, f"rows owned by deleted users: {owners - users}"
    assert refs == set() and files == set(), (refs, files)  # every owner was deleted
    assert sum(outcomes.values()) == 36


@pytest.fixture()
def service(skin_run: Path, tmp_path: Path) -> Services:
    return build_services(ServeSettings(run_dir=str(skin_run),
                                        database_url=f"sqlite:///{tmp_path / 'h.db'}",
                                        image_store=str(tmp_path / "uploads")))


def test_an_upload_for_a_deleted_owner_is_refused_and_keeps_nothing(
        service: Services, tmp_path: Path) -> None:
    user = service.accounts.start_device().user_id
    service.accounts.delete_account(user)
    with pytest.raises(UploadError) as err:
        service.analysis.analyze(photo(0), "p.jpg", owner=user, spot="left arm")
    assert err.value.status == 401 and err.value.key == "upload.owner_gone"
    _, owners, refs, files = _db_state(tmp_path / "h.db", tmp_path / "uploads")
    assert not owners and not refs and not files


def test_the_row_taken_while_the_photo_is_written_takes_the_photo(
        service: Services, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The owner's deletion lands between the row and the photo: the upload deletes its photo
    and says it kept nothing."""
    user = service.accounts.start_device().user_id
    put = service.history.images.put

    def put_then_delete_owner(key: str, data: bytes) -> None:
        put(key, data)
        service.accounts.delete_account(user)

    monkeypatch.setattr(service.history.images, "put", put_then_delete_owner)
    with pytest.raises(UploadError):
        service.analysis.analyze(photo(1), "p.jpg", owner=user)
    assert not any((tmp_path / "uploads").iterdir())


def test_migration_0004_drops_rows_of_missing_owners_and_adds_the_keys(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'old.db'}"
    old = create_engine(url)
    upgrade(old, "0003")
    created = datetime(2026, 11, 1, tzinfo=UTC)
    with old.begin() as conn:
        conn.execute(text("insert into users (id, anonymous, created_at) values "
                          "('u1', 1, :t)"), {"t": created})
        for aid, owner in (("a1", "u1"), ("a2", "ghost"), ("a3", None)):
            conn.execute(text(
                "insert into analyses (id, created_at, filename, verdict, image_ref, "
                "size_bytes, result_json, owner_id) values (:id, :t, 'p.jpg', 'ok', :ref, 1, "
                "'{}', :owner)"), {"id": aid, "t": created, "ref": f"{aid}.jpg", "owner": owner})
        for sid, owner in (("s1", "u1"), ("s2", "ghost")):
            conn.execute(text("insert into spots (id, owner_id, name, created_at) values "
                              "(:id, :owner, 'arm', :t)"), {"id": sid, "owner": owner,
                                                           "t": created})
    old.dispose()
    engine = make_engine(url)
    with engine.connect() as conn:
        assert conn.execute(text("select version_num from alembic_version")).scalar() == "0004"
        assert sorted(r for (r,) in conn.execute(text("select id from analyses"))) == \
            ["a1", "a3"]
        assert [r for (r,) in conn.execute(text("select id from spots"))] == ["s1"]
        for table in ("analyses", "spots"):
            (fk,) = inspect(conn).get_foreign_keys(table)
            assert fk["referred_table"] == "users" and fk["constrained_columns"] == ["owner_id"]
    with pytest.raises(Exception, match="FOREIGN KEY"), engine.begin() as conn:
        conn.execute(text("insert into spots (id, owner_id, name, created_at) values "
                          "(:id, 'ghost', 'arm', :t)"), {"id": str(uuid.uuid4()), "t": created})
