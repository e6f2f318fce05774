"""What every router shares: the documented error answers, and the client address and
rate limits of a request."""

from __future__ import annotations

from typing import Any

from fastapi import Request

from dermalab.serve.schemas import (
    Problem,
)

ERRORS: dict[int | str, dict[str, Any]] = {
    413: {"model": Problem, "description": "Upload too large (bytes or pixels)."},
    415: {"model": Problem, "description": "Not an image."},
    422: {"model": Problem, "description": "An image that cannot be analysed."},
}
NOT_FOUND: dict[int | str, dict[str, Any]] = {404: {"model": Problem}}

AUTH: dict[int | str, dict[str, Any]] = {401: {"model": Problem}, 403: {"model": Problem}}
MAX_OFFSET = 10**9  # beyond any history; keeps the database's integer types safe


# Revalidated on every use (cheap with the ETag): a new model replaces the old at once, and the
# page's service worker keeps its own copy for offline use.
REVALIDATE = {"Cache-Control": "no-cache"}


def client_address(request: Request) -> str:
    return request.client.host if request.client else "unknown"


def rate_limit(request: Request, kind: str, *keys: str) -> None:
    """Count one ``kind`` event (signin, upload) for every key; 429 when over the limit."""
    limits = getattr(request.app.state, "limits", None)
    if limits is not None:
        limits.hit(kind, *keys)
