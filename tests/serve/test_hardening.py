"""The red team's findings that each of these closes (issue 52): every answer carries the
security headers (J), API answers are not cached (H), HTTPS mode has HSTS and a ``__Host-``
session cookie that a planted plain cookie cannot replace (F, G), look-alike email addresses
cannot make second accounts (D), and passwords are normalised and not blank."""

from __future__ import annotations

import unicodedata
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from dermalab.serve.app import create_app
from dermalab.serve.settings import ServeSettings
from tests.serve.helpers import XRW


def _settings(run: Path, tmp: Path, **kw: object) -> ServeSettings:
    base: dict[str, object] = {"database_url": f"sqlite:///{tmp / 'h.db'}",
                               "image_store": str(tmp / "uploads"),
                               "max_upload_bytes": 256 * 1024, "rate_signin": "1000/minute"}
    return ServeSettings(run_dir=str(run), **{**base, **kw})  # type: ignore[arg-type]


@pytest.fixture
def client(skin_run: Path, tmp_path: Path) -> Iterator[TestClient]:
    with TestClient(create_app(_settings(skin_run, tmp_path))) as c:
        yield c


def test_answers_made_before_the_app_carry_the_headers_too(client: TestClient) -> None:
    wrong_host = client.get("/", headers={"Host": "evil.example"})
    too_big = client.post("/v1/analyses", content=b"x",
                          headers={"Content-Length": str(10 * 1024 * 1024), **XRW})
    assert (wrong_host.status_code, too_big.status_code) == (400, 413)
    for r in (wrong_host, too_big):
        assert "frame-ancestors 'none'" in r.headers["content-security-policy"]
        assert r.headers["x-content-type-options"] == "nosniff"
        assert r.headers["x-frame-options"] == "DENY"
    assert client.get("/openapi.json").status_code == 404  # the schema only with --docs


def test_the_schema_is_served_in_development_only(skin_run: Path, tmp_path: Path) -> None:
    with TestClient(create_app(_settings(skin_run, tmp_path, docs=True))) as c:
        assert c.get("/openapi.json").status_code == 200


def test_api_answers_are_never_cached(client: TestClient) -> None:
    token = client.post("/v1/auth/anonymous", headers=XRW).json()["token"]
    client.cookies.clear()
    who = {"Authorization": f"Bearer {token}"}
    for path in ("/v1/analyses", "/v1/spots", "/v1/model"):
        r = client.get(path, headers=who)
        assert r.status_code == 200, path
        assert "no-store" in r.headers["cache-control"], path


def test_https_mode_sends_hsts_and_a_host_only_cookie(skin_run: Path, tmp_path: Path) -> None:
    with TestClient(create_app(_settings(skin_run, tmp_path, cookie_secure=True)),
                    base_url="https://testserver") as c:
        r = c.post("/v1/auth/anonymous", headers=XRW)
        assert r.status_code == 201
        assert r.headers["strict-transport-security"].startswith("max-age=")
        cookie = r.headers["set-cookie"]
        assert cookie.startswith("__Host-dermalab_session=")
        assert "Secure" in cookie and "Path=/" in cookie and "Domain" not in cookie
        assert c.get("/v1/auth/session").status_code == 200  # the page's cookie works
        # A plain cookie planted by another host (fixation) is not a session here.
        token = r.json()["token"]
        c.cookies.clear()
        c.cookies.set("dermalab_session", token)
        assert c.get("/v1/auth/session").status_code == 401
    with TestClient(create_app(_settings(skin_run, tmp_path / "plain"))) as c:
        r = c.post("/v1/auth/anonymous", headers=XRW)
        assert r.headers["set-cookie"].startswith("dermalab_session=")
        assert "strict-transport-security" not in r.headers


LOOK_ALIKES = ["info\u200b@example.com", "\uff49\uff4e\uff46\uff4f@example.com",
               "info@example.com.", " INFO@Example.COM ", "in\u00adfo@example.com"]


def test_look_alike_addresses_are_one_account(client: TestClient) -> None:
    password = "a long password"
    r = client.post("/v1/auth/signup", json={"email": "info@example.com", "password": password})
    assert r.status_code == 201 and r.json()["email"] == "info@example.com"
    for email in LOOK_ALIKES:
        again = client.post("/v1/auth/signup", json={"email": email, "password": password})
        assert again.status_code == 409, (email, again.text)
        signin = client.post("/v1/auth/signin", json={"email": email, "password": password})
        assert signin.status_code == 200, email
        assert signin.json()["email"] == "info@example.com"  # never the raw spelling
    # Other scripts' look-alikes (Cyrillic i, a dotted capital I) are refused, not a new user.
    for email in ("\u0456nfo@example.com", "\u0130nfo@example.com"):
        r = client.post("/v1/auth/signup", json={"email": email, "password": password})
        assert r.status_code == 422 and "ASCII" in r.json()["detail"], email


def test_passwords_are_not_blank_and_are_normalised(client: TestClient) -> None:
    r = client.post("/v1/auth/signup", json={"email": "a@example.com", "password": " " * 12})
    assert r.status_code == 422 and "not only spaces" in r.json()["detail"]
    composed = "caf\u00e9 au lait"  # é as one character
    decomposed = unicodedata.normalize("NFD", composed)  # e + combining accent
    assert composed != decomposed
    assert client.post("/v1/auth/signup", json={"email": "b@example.com",
                                                "password": decomposed}).status_code == 201
    assert client.post("/v1/auth/signin", json={"email": "b@example.com",
                                                "password": composed}).status_code == 200


def _signin_statuses(url: str, forwarded: list[str], email: str | None = None,
                     password: str = "wrong password", path: str = "signin") -> list[int]:
    """Sign-ins (for other accounts, or all for ``email``), each claiming another client
    address."""
    import json
    import urllib.error
    import urllib.request

    out = []
    for i, xff in enumerate(forwarded):
        req = urllib.request.Request(
            url + f"/v1/auth/{path}", method="POST",
            data=json.dumps({"email": email or f"user{i}@example.com", "password": password}
                            ).encode(),
            headers={"Content-Type": "application/json", "X-Forwarded-For": xff})
        try:
            with urllib.request.urlopen(req, timeout=30) as r:
                out.append(r.status)
        except urllib.error.HTTPError as exc:
            out.append(exc.code)
    return out


@pytest.mark.slow
def test_a_forged_forwarded_for_does_not_escape_the_rate_limit(skin_run: Path,
                                                               tmp_path: Path) -> None:
    """A real server: X-Forwarded-For is ignored unless it comes from --forwarded-allow-ips,
    so rotating it does not give a client a fresh per-address budget."""
    from tests.webserver import dermalab_server

    rotating = [f"203.0.113.{i}" for i in range(1, 6)]
    with dermalab_server(skin_run, tmp_path / "direct",
                         extra_args=("--rate-signin", "3/minute")) as url:
        statuses = _signin_statuses(url, rotating)
    assert statuses == [401, 401, 401, 429, 429]  # one address, whatever it claims
    # Behind a trusted proxy its forwarded address is the client's: five clients, five budgets.
    with dermalab_server(skin_run, tmp_path / "proxied",
                         extra_args=("--rate-signin", "3/minute",
                                     "--forwarded-allow-ips", "127.0.0.1")) as url:
        statuses = _signin_statuses(url, rotating)
    assert statuses == [401] * 5


def test_wrong_passwords_from_other_addresses_do_not_lock_the_owner_out(
        skin_run: Path, tmp_path: Path) -> None:
    """Red-team finding C, behind a trusted proxy: ten wrong passwords for the victim's email
    from rotating addresses; the victim, from their own address, still signs in. Failures
    from all addresses together meet a separate, higher cap."""
    from tests.webserver import dermalab_server

    victim, password = "victim@example.com", "the victim's password"
    attackers = [f"203.0.113.{i}" for i in range(1, 11)]
    with dermalab_server(skin_run, tmp_path / "proxied",
                         extra_args=("--rate-signin", "3/minute", "--rate-signin-failures",
                                     "12/hour", "--forwarded-allow-ips", "127.0.0.1")) as url:
        assert _signin_statuses(url, ["198.51.100.7"], victim, password, "signup") == [201]
        assert _signin_statuses(url, attackers, victim) == [401] * 10
        assert _signin_statuses(url, ["198.51.100.7"], victim, password) == [200]
        # two more failures reach the cap over all addresses: then every address waits
        assert _signin_statuses(url, ["203.0.113.50", "203.0.113.51", "203.0.113.52"],
                                victim) == [401, 401, 429]
        assert _signin_statuses(url, ["198.51.100.7"], victim, password) == [429]


def test_an_upload_without_a_session_is_refused_before_its_body_is_read(
        client: TestClient) -> None:
    sent = []

    def body() -> Iterator[bytes]:
        for i in range(64):  # 4 MB in 64 KB chunks
            sent.append(i)
            yield b"\0" * 65536

    r = client.post("/v1/analyses", content=body(), headers={
        "Content-Type": "multipart/form-data; boundary=x", **XRW})
    assert r.status_code == 401
    assert len(sent) < 64  # answered before the body was consumed
    assert "frame-ancestors" in r.headers["content-security-policy"]
