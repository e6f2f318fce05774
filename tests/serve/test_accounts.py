"""Each person's photos are theirs: accounts, anonymous devices, ownership on every path,
CSRF, rate limits, metadata-free photos, account deletion (disk and S3), data export,
retention, the orphan sweep, security headers, and the upgrade of a database written by the
version before accounts. Real model, real SQLite, real SeaweedFS."""

from __future__ import annotations

import io
import json
import sqlite3
import zipfile
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from dermalab.serve.app import create_app
from dermalab.serve.store import make_engine, now
from tests.serve.helpers import XRW, photo, serve_settings, signup


@pytest.fixture
def app_dir(tmp_path: Path) -> Path:
    return tmp_path


@pytest.fixture
def client(skin_run: Path, app_dir: Path) -> Iterator[TestClient]:
    with TestClient(create_app(serve_settings(skin_run, app_dir))) as c:
        yield c


def _upload(c: TestClient, who: dict[str, str], i: int = 0) -> str:
    r = c.post("/v1/analyses", files={"file": (f"p{i}.jpg", photo(i))}, headers=who)
    assert r.status_code == 201, r.text
    return str(r.json()["id"])


def test_two_users_never_reach_each_others_analyses(client: TestClient) -> None:
    alice, bob = signup(client, "alice@example.org"), signup(client, "bob@example.org")
    a1, a2 = _upload(client, alice, 0), _upload(client, alice, 1)
    b1 = _upload(client, bob, 2)
    assert [i["id"] for i in client.get("/v1/analyses", headers=alice).json()["items"]] \
        == [a2, a1]
    for offset in (0, 1, 2, 5):  # paging never reaches the other's rows
        page = client.get("/v1/analyses", params={"offset": offset}, headers=bob).json()
        assert page["total"] == 1 and {i["id"] for i in page["items"]} <= {b1}
    for path in (f"/v1/analyses/{a1}", f"/v1/analyses/{a1}/photo"):
        r = client.get(path, headers=bob)
        assert r.status_code == 404 and "alice" not in r.text  # as if it did not exist
    assert client.delete(f"/v1/analyses/{a1}", headers=bob).status_code == 404
    assert client.get(f"/v1/analyses/{a1}", headers=alice).status_code == 200  # still there
    photo = client.get(f"/v1/analyses/{a1}/photo", headers=alice)
    assert photo.status_code == 200 and photo.headers["content-type"] == "image/jpeg"
    assert photo.headers["cache-control"] == "private, no-store"
    # an anonymous device sees nothing of either
    anon = client.post("/v1/auth/anonymous", headers=XRW).json()
    client.cookies.clear()
    assert client.get("/v1/analyses", headers={"Authorization": f"Bearer {anon['token']}"}
                      ).json()["total"] == 0


def test_no_session_is_401_on_every_private_path(client: TestClient) -> None:
    alice = signup(client, "carol@example.org")
    aid = _upload(client, alice)
    for method, path in (("GET", "/v1/analyses"), ("GET", f"/v1/analyses/{aid}"),
                         ("GET", f"/v1/analyses/{aid}/photo"),
                         ("DELETE", f"/v1/analyses/{aid}"), ("POST", "/v1/analyses"),
                         ("GET", "/v1/account/export"), ("DELETE", "/v1/account"),
                         ("POST", "/v1/auth/signout")):
        for headers in ({}, {"Authorization": "Bearer not-a-token"}):
            r = client.request(method, path, headers=headers)
            assert r.status_code == 401, (method, path, headers, r.status_code)
            assert r.headers["www-authenticate"] == "Bearer"
    assert client.get(f"/v1/analyses/{aid}", headers=alice).status_code == 200
    assert client.get("/v1/auth/session").status_code == 401
    assert client.post("/v1/auth/anonymous").status_code == 403  # needs X-Requested-With


def test_cookie_writes_need_the_csrf_token(client: TestClient) -> None:
    r = client.post("/v1/auth/anonymous", headers={**XRW, "X-Dermalab-Page": "1"})
    assert r.json()["token"] is None  # the page's session stays in the HttpOnly cookie
    assert "httponly" in r.headers["set-cookie"].lower()
    assert "samesite=strict" in r.headers["set-cookie"].lower()
    csrf = r.json()["csrf_token"]
    files = {"file": ("p.jpg", photo())}
    # what a foreign page's form can send: the cookie, no header
    forged = client.post("/v1/analyses", files=files, headers={"Origin": "https://evil.test"})
    assert forged.status_code == 403
    assert client.get("/v1/analyses").json()["total"] == 0
    ok = client.post("/v1/analyses", files=files, headers={"X-CSRF-Token": csrf})
    assert ok.status_code == 201
    aid = ok.json()["id"]
    assert client.delete(f"/v1/analyses/{aid}").status_code == 403
    assert client.get(f"/v1/analyses/{aid}").status_code == 200  # reads need no token
    assert client.delete(f"/v1/analyses/{aid}", headers={"X-CSRF-Token": csrf}).status_code \
        == 204


def test_anonymous_analyses_move_into_the_account(client: TestClient) -> None:
    anon = client.post("/v1/auth/anonymous", headers=XRW).json()
    csrf = {"X-CSRF-Token": anon["csrf_token"]}
    aid = client.post("/v1/analyses", files={"file": ("p.jpg", photo())},
                      headers=csrf).json()["id"]
    r = client.post("/v1/auth/signup", json={"email": "dan@example.org",
                                             "password": "a long password"}, headers=csrf)
    assert r.status_code == 201 and r.json()["anonymous"] is False
    assert [i["id"] for i in client.get("/v1/analyses").json()["items"]] == [aid]
    old = {"Authorization": f"Bearer {anon['token']}"}
    client.cookies.clear()
    assert client.get("/v1/analyses", headers=old).status_code == 401  # device session ended


def test_sign_in_errors_and_rate_limit(skin_run: Path, app_dir: Path) -> None:
    with TestClient(create_app(serve_settings(skin_run, app_dir, rate_signin="3/minute"))) as c:
        assert c.post("/v1/auth/signup", json={"email": "erin@example.org",
                                               "password": "short"}).status_code == 422
        assert c.post("/v1/auth/signup", json={"email": "not-an-email",
                                               "password": "a long password"}).status_code == 422
        assert c.post("/v1/auth/signup", json={"email": "erin@example.org",
                                               "password": "a long password"}).status_code == 201
        c.cookies.clear()
        # the three sign-up attempts count against this address: the fourth try is refused
        r = c.post("/v1/auth/signin", json={"email": "erin@example.org", "password": "wrong!!"})
        assert r.status_code == 429 and int(r.headers["retry-after"]) >= 1
    with TestClient(create_app(serve_settings(skin_run, app_dir / "b",
                                              rate_signin="3/minute"))) as c:
        c.post("/v1/auth/signup", json={"email": "erin@example.org", "password": "long enough"})
        c.cookies.clear()
        wrong = c.post("/v1/auth/signin", json={"email": "erin@example.org", "password": "nope"})
        assert wrong.status_code == 401 and wrong.json()["detail"] == "wrong email or password"
        unknown = c.post("/v1/auth/signin", json={"email": "x@example.org", "password": "nope"})
        assert unknown.status_code == 401 and unknown.json() == wrong.json()
        assert c.post("/v1/auth/signin", json={"email": "erin@example.org",
                                               "password": "long enough"}).status_code == 429


def test_device_sessions_have_their_own_limit(skin_run: Path, app_dir: Path) -> None:
    """Phones behind one address (a carrier's NAT) each start a device session: those count
    against their own, looser limit, and neither spends the sign-in budget nor is spent by it."""
    xrw = {"X-Requested-With": "dermalab"}
    with TestClient(create_app(serve_settings(skin_run, app_dir, rate_signin="2/minute",
                                              rate_device="4/minute"))) as c:
        starts = [c.post("/v1/auth/anonymous", headers=xrw).status_code for _ in range(5)]
        assert starts == [201, 201, 201, 201, 429]
        signins = [c.post("/v1/auth/signin", json={"email": "x@example.org",
                                                   "password": "wrong!!"}).status_code
                   for _ in range(3)]
        assert signins == [401, 401, 429]


def test_account_errors_speak_the_page_language(client: TestClient) -> None:
    """Walk-through defect 6: a Korean page got English account errors."""
    ko = {"Accept-Language": "ko-KR,ko;q=0.9"}
    creds = {"email": "ko@example.org", "password": "a long password"}
    assert client.post("/v1/auth/signup", json=creds).status_code == 201
    client.cookies.clear()
    taken = client.post("/v1/auth/signup", json=creds, headers=ko)
    assert taken.status_code == 409 and "이미 있습니다" in taken.json()["detail"]
    wrong = client.post("/v1/auth/signin", json={**creds, "password": "wrong password"},
                        headers=ko)
    assert wrong.status_code == 401 and "비밀번호가 틀렸습니다" in wrong.json()["detail"]
    short = client.post("/v1/auth/signup", json={"email": "k2@example.org", "password": "x"},
                        headers=ko)
    assert short.status_code == 422 and "8자 이상" in short.json()["detail"]
    english = client.post("/v1/auth/signin", json={**creds, "password": "wrong password"})
    assert english.json()["detail"] == "wrong email or password"


def test_upload_rate_limit(skin_run: Path, app_dir: Path) -> None:
    with TestClient(create_app(serve_settings(skin_run, app_dir, rate_upload="2/minute"))) as c:
        who = signup(c, "fay@example.org")
        _upload(c, who, 0), _upload(c, who, 1)
        r = c.post("/v1/analyses", files={"file": ("p.jpg", photo(2))}, headers=who)
        assert r.status_code == 429 and "retry-after" in r.headers


def _gps_jpeg() -> bytes:
    img = Image.open(io.BytesIO(photo())).convert("RGB")
    exif = Image.Exif()
    exif[0x010F] = "PhoneMaker"  # Make
    exif[0x0110] = "Model X"  # Model
    exif[0x0112] = 6  # Orientation: rotate 90 degrees to display
    gps = {1: "N", 2: (48.0, 12.0, 30.0), 3: "E", 4: (16.0, 22.0, 10.0)}
    exif[0x8825] = gps
    buf = io.BytesIO()
    img.save(buf, "JPEG", exif=exif.tobytes(), quality=90)
    data = buf.getvalue()
    assert Image.open(io.BytesIO(data)).getexif().get_ifd(0x8825)  # the upload has GPS
    return data


def test_stored_photo_has_no_metadata_and_is_upright(client: TestClient, app_dir: Path) -> None:
    who = signup(client, "gus@example.org")
    w, h = Image.open(io.BytesIO(photo())).size
    r = client.post("/v1/analyses", files={"file": ("gps.jpg", _gps_jpeg())}, headers=who)
    assert r.status_code == 201
    stored = list((app_dir / "uploads").iterdir())
    assert len(stored) == 1
    raw = stored[0].read_bytes()
    with Image.open(stored[0]) as img:
        assert not img.getexif() and "exif" not in img.info and "icc_profile" not in img.info
        assert img.size == (h, w)  # the orientation was applied, not kept as a tag
    assert b"Exif" not in raw and b"PhoneMaker" not in raw
    served = client.get(f"/v1/analyses/{r.json()['id']}/photo", headers=who).content
    assert served == raw


def test_delete_my_account_leaves_nothing(client: TestClient, app_dir: Path) -> None:
    alice, bob = signup(client, "hal@example.org"), signup(client, "ivy@example.org")
    mine = [_upload(client, alice, i) for i in range(2)]
    theirs = _upload(client, bob, 2)
    assert len(list((app_dir / "uploads").iterdir())) == 3
    # The password is asked again; without it, or with a wrong one, nothing is deleted.
    assert client.delete("/v1/account", headers=alice).json()["detail"] == (
        "enter your password to delete the account")
    wrong = client.request("DELETE", "/v1/account", headers=alice, json={"password": "guess"})
    assert (wrong.status_code, wrong.json()["detail"]) == (
        403, "wrong password; the account was not deleted")
    assert len(list((app_dir / "uploads").iterdir())) == 3
    assert client.get("/v1/analyses", headers=alice).json()["total"] == 2
    assert client.request("DELETE", "/v1/account", headers=alice,
                          json={"password": "a long password"}).status_code == 204
    left = sorted(p.name for p in (app_dir / "uploads").iterdir())
    assert left == [f"{theirs}.jpg"]
    db = sqlite3.connect(app_dir / "h.db")
    assert db.execute("select count(*) from analyses where id in (?, ?)", mine).fetchone()[0] == 0
    assert db.execute("select count(*) from users where email = 'hal@example.org'"
                      ).fetchone()[0] == 0
    assert db.execute("select count(*) from auth_tokens t join users u on u.id = t.user_id "
                      "where u.email = 'hal@example.org'").fetchone()[0] == 0
    assert client.get("/v1/analyses", headers=alice).status_code == 401
    assert client.get(f"/v1/analyses/{theirs}", headers=bob).status_code == 200


def test_delete_my_account_in_s3(skin_run: Path, app_dir: Path, s3_env: str) -> None:
    import boto3

    settings = serve_settings(skin_run, app_dir, image_store=f"s3://{s3_env}/photos")
    with TestClient(create_app(settings)) as c:
        alice, bob = signup(c, "jo@example.org"), signup(c, "kim@example.org")
        for i in range(2):
            _upload(c, alice, i)
        theirs = _upload(c, bob, 2)
        s3 = boto3.client("s3")

        def keys() -> list[str]:
            return sorted(o["Key"] for o in s3.list_objects_v2(Bucket=s3_env).get("Contents", []))

        assert len(keys()) == 3
        assert c.request("DELETE", "/v1/account", headers=alice,
                         json={"password": "a long password"}).status_code == 204
        assert keys() == [f"photos/{theirs}.jpg"]


def test_a_first_visit_asks_for_its_session_without_an_error(client: TestClient) -> None:
    r = client.get("/v1/auth/session?optional=1")
    assert (r.status_code, r.content, r.headers["cache-control"]) == (204, b"", "no-store")
    assert client.get("/v1/auth/session").status_code == 401  # API clients still get 401
    who = signup(client, "opt@example.org")
    assert client.get("/v1/auth/session?optional=1", headers=who).json()["email"] == (
        "opt@example.org")


def test_the_installed_app_is_named_in_the_phone_language(client: TestClient) -> None:
    ko = client.get("/manifest.webmanifest", headers={"Accept-Language": "ko-KR,ko;q=0.9"})
    assert ko.json()["name"] == "dermalab – 피부 사진 확인" and ko.json()["lang"] == "ko"
    assert ko.headers["content-type"].startswith("application/manifest+json")
    en = client.get("/manifest.webmanifest").json()
    assert en["name"] == "dermalab – skin photo check" and en["start_url"] == "/"


def test_sign_out_everywhere_ends_every_session_of_the_account(client: TestClient) -> None:
    phone = signup(client, "max@example.org")
    r = client.post("/v1/auth/signin", json={"email": "max@example.org",
                                             "password": "a long password"})
    laptop = {"Authorization": f"Bearer {r.json()['token']}"}
    client.cookies.clear()
    other = signup(client, "ned@example.org")
    assert client.get("/v1/auth/session", headers=laptop).status_code == 200
    assert client.post("/v1/auth/signout-everywhere", headers=phone).status_code == 204
    for who in (phone, laptop):
        assert client.get("/v1/auth/session", headers=who).status_code == 401
    assert client.get("/v1/auth/session", headers=other).status_code == 200  # not theirs


def test_download_my_data(client: TestClient) -> None:
    who = signup(client, "lee@example.org")
    ids = [_upload(client, who, i) for i in range(2)]
    r = client.get("/v1/account/export", headers=who)
    assert r.status_code == 200 and r.headers["content-type"] == "application/zip"
    with zipfile.ZipFile(io.BytesIO(r.content)) as zf:
        listing = json.loads(zf.read("analyses.json"))["analyses"]
        assert [a["id"] for a in listing] == ids
        for a in listing:
            with Image.open(io.BytesIO(zf.read(a["photo"]))) as img:
                assert img.format == "JPEG"
        assert sorted(zf.namelist()) == sorted(["analyses.json", *(f"photos/{i}.jpg"
                                                                     for i in ids)])


def test_retention_purges_old_analyses_with_their_photos(client: TestClient,
                                                          app_dir: Path) -> None:
    who = signup(client, "max@example.org")
    aid = _upload(client, who)
    svc = client.app.state.services.retention  # type: ignore[attr-defined]
    assert svc.purge_older_than(30, at=now() + timedelta(days=29)) == 0
    assert client.get(f"/v1/analyses/{aid}", headers=who).status_code == 200
    assert svc.purge_older_than(30, at=now() + timedelta(days=31)) == 1  # a month later
    assert client.get(f"/v1/analyses/{aid}", headers=who).status_code == 404
    assert list((app_dir / "uploads").iterdir()) == []


def test_orphans_are_swept_at_start_up(skin_run: Path, app_dir: Path) -> None:
    settings = serve_settings(skin_run, app_dir)
    with TestClient(create_app(settings)) as c:
        who = signup(c, "ned@example.org")
        keep, lost = _upload(c, who, 0), _upload(c, who, 1)
    (app_dir / "uploads" / f"{lost}.jpg").unlink()  # crashed before the photo was written
    (app_dir / "uploads" / "stray.jpg").write_bytes(b"left by a cut-short deletion")
    db = sqlite3.connect(app_dir / "h.db")
    old = (now() - timedelta(hours=1)).isoformat(" ")
    db.execute("update analyses set created_at = ?", (old,))
    db.commit()
    with TestClient(create_app(settings)) as c:
        c.headers.update(who)
        assert [i["id"] for i in c.get("/v1/analyses").json()["items"]] == [keep]
    assert sorted(p.name for p in (app_dir / "uploads").iterdir()) == [f"{keep}.jpg"]


def test_security_headers_hosts_and_docs(client: TestClient) -> None:
    for path in ("/", "/v1/model", "/v1/analyses", "/static/app.js", "/nowhere"):
        r = client.get(path)
        csp = r.headers["content-security-policy"]
        # Scripts from the page's origin only; WebAssembly may compile (on-device analysis),
        # JavaScript may not eval.
        assert "default-src 'self'" in csp and "script-src 'self' 'wasm-unsafe-eval';" in csp
        assert "frame-ancestors 'none'" in csp and "'unsafe-eval'" not in csp
        assert r.headers["cross-origin-embedder-policy"] == "require-corp"
        assert r.headers["cross-origin-opener-policy"] == "same-origin"
        assert r.headers["x-content-type-options"] == "nosniff"
        assert r.headers["referrer-policy"] == "no-referrer"
        assert "access-control-allow-origin" not in r.headers
    page = client.get("/").text
    assert "<script>" not in page and '<script type="module" src="/static/app.js">' in page
    assert "https://" not in page.split("<body", 1)[1]  # nothing loaded from elsewhere
    assert client.get("/docs").status_code == 404
    assert client.get("/", headers={"Host": "evil.example"}).status_code == 400
    assert client.get("/healthz").json()["mode"] == "accounts"


def test_open_mode_keeps_the_single_user_install(skin_run: Path, app_dir: Path) -> None:
    with TestClient(create_app(serve_settings(skin_run, app_dir, open=True))) as c:
        aid = c.post("/v1/analyses", files={"file": ("p.jpg", photo())}).json()["id"]
        assert c.get("/v1/analyses").json()["total"] == 1
        assert c.get(f"/v1/analyses/{aid}/photo").status_code == 200
        assert c.get("/healthz").json()["mode"] == "open"
        assert c.get("/v1/auth/session").json()["mode"] == "open"
        assert c.post("/v1/auth/anonymous", headers=XRW).status_code == 409


def test_chunked_upload_over_the_limit_is_refused_while_streaming(skin_run: Path,
                                                                  app_dir: Path) -> None:
    """A real server and a raw socket: 20 MB sent in 1 MB chunks with no Content-Length; the
    413 arrives after about the limit (15 MB by default), while the client is still sending."""
    import select
    import socket
    from urllib.parse import urlsplit

    from tests.webserver import dermalab_server

    # --open: no session needed (without one, an upload is refused before its body is read)
    with dermalab_server(skin_run, app_dir / "srv", extra_args=("--open",)) as url:
        host = urlsplit(url)
        sock = socket.create_connection((host.hostname, host.port), timeout=30)
        sock.sendall(b"POST /v1/analyses HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                     b"Content-Type: multipart/form-data; boundary=b\r\n"
                     b"Transfer-Encoding: chunked\r\n\r\n")
        head = (b"--b\r\nContent-Disposition: form-data; name=\"file\"; filename=\"x.jpg\""
                b"\r\nContent-Type: image/jpeg\r\n\r\n")
        sock.sendall(b"%x\r\n" % len(head) + head + b"\r\n")
        chunk = b"\0" * (1024 * 1024)
        sent, answer = 0, b""
        try:
            for _ in range(20):
                sock.sendall(b"%x\r\n" % len(chunk) + chunk + b"\r\n")
                sent += 1
                if select.select([sock], [], [], 0.05)[0]:
                    answer = sock.recv(4096)
                    break
            else:
                sock.sendall(b"0\r\n\r\n")
        except (BrokenPipeError, ConnectionResetError):
            pass
        if not answer:
            answer = sock.recv(4096)
        sock.close()
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    assert sent < 20  # answered before the body was complete
    assert sent <= 17  # about the limit, not the whole upload


def test_announced_length_over_the_limit_is_refused_at_once(skin_run: Path,
                                                            app_dir: Path) -> None:
    settings = serve_settings(skin_run, app_dir, max_upload_bytes=1024 * 1024, open=True)
    with TestClient(create_app(settings)) as c:
        r = c.post("/v1/analyses", content=b"x" * (2 * 1024 * 1024),
                   headers={"Content-Type": "multipart/form-data; boundary=b"})
    assert r.status_code == 413 and r.json() == {"detail": "request body too large"}


OLD_SCHEMA = """
CREATE TABLE analyses (
    id VARCHAR(36) NOT NULL, created_at DATETIME NOT NULL, filename VARCHAR(255) NOT NULL,
    verdict VARCHAR(16) NOT NULL, referral VARCHAR(16), image_ref VARCHAR(512) NOT NULL,
    size_bytes INTEGER NOT NULL, result_json TEXT NOT NULL, PRIMARY KEY (id));
CREATE INDEX ix_analyses_created_at ON analyses (created_at);
"""


def test_alembic_upgrades_a_database_of_the_version_before_accounts(tmp_path: Path) -> None:
    """The DDL is what the previous version's ``create_all`` wrote (its ``CreateTable``),
    with a row whose photo reference is an absolute path, as that version stored it."""
    path = tmp_path / "old.db"
    db = sqlite3.connect(path)
    db.executescript(OLD_SCHEMA)
    db.execute("insert into analyses values (?, ?, ?, ?, ?, ?, ?, ?)",
               ("a1", "2026-11-01 10:00:00.000000", "mole.jpg", "ok", "self-care",
                "/elsewhere/run/serving/uploads/a1.jpeg", 123, "{}"))
    db.commit()
    db.close()
    engine = make_engine(f"sqlite:///{path}")
    from sqlalchemy import inspect, text

    with engine.connect() as conn:
        assert conn.execute(text("select version_num from alembic_version")).scalar() == "0004"
        cols = {c["name"] for c in inspect(conn).get_columns("analyses")}
        assert "owner_id" in cols
        assert {"users", "auth_tokens", "spots"} <= set(inspect(conn).get_table_names())
        assert "spot_id" in cols
        row = conn.execute(text("select image_ref, owner_id, filename from analyses")).one()
        assert tuple(row) == ("a1.jpeg", None, "mole.jpg")  # a key inside the store now
    make_engine(f"sqlite:///{path}")  # a second start is a no-op
