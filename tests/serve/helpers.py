"""Helpers the web-service tests share: the header an API write sends, a real photo, the
service's settings on a test folder, and a signed-up API client."""

from __future__ import annotations

from pathlib import Path

from fastapi.testclient import TestClient

from dermalab.serve.settings import ServeSettings
from tests.conftest import HAM_DIR

#: A header a cross-site form cannot send (the API's CSRF check for cookie-free writes).
XRW = {"X-Requested-With": "dermalab"}


def photo(i: int = 0) -> bytes:
    """The ``i``-th of a few real HAM10000 photos, as uploaded."""
    return (sorted((HAM_DIR / "images").glob("ISIC_00243*.jpg"))[i]).read_bytes()


def serve_settings(run: Path, tmp: Path, **kw: object) -> ServeSettings:
    """Settings serving ``run`` with its history and photos in ``tmp``; ``kw`` overrides."""
    base: dict[str, object] = {"database_url": f"sqlite:///{tmp / 'h.db'}",
                               "image_store": str(tmp / "uploads")}
    return ServeSettings(run_dir=str(run), **{**base, **kw})  # type: ignore[arg-type]


def signup(c: TestClient, email: str) -> dict[str, str]:
    """A new account through the API; returns its bearer-token header (cookies cleared)."""
    r = c.post("/v1/auth/signup", json={"email": email, "password": "a long password"})
    assert r.status_code == 201, r.text
    c.cookies.clear()  # API clients below use the bearer token
    return {"Authorization": f"Bearer {r.json()['token']}"}
