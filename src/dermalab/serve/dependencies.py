"""What every route depends on: the service of its concern, the caller (who owns what it
touches) and the language.

The app holds one of each service (:class:`~dermalab.serve.service.Services`, built at
start-up): ``Service`` answers photos, ``History`` keeps each owner's analyses, photos and
spots, ``Accounts`` holds users and sessions. Tests replace one with
``app.dependency_overrides[get_service]`` (or ``get_history``, ``get_accounts``).

``Caller`` resolves the session from ``Authorization: Bearer <token>`` (API clients) or the
``dermalab_session`` cookie (the page). No valid session -> 401. A cookie-authenticated write
must echo the session's CSRF token in ``X-CSRF-Token`` (a cross-site form cannot set a header,
and the cookie is also ``SameSite=Strict``) -> else 403. In ``--open`` mode there are no
accounts and the caller owns everything.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, HTTPException, Query, Request

from dermalab.core.i18n import negotiate
from dermalab.serve.account_service import AccountService
from dermalab.serve.accounts import SessionInfo
from dermalab.serve.interfaces import AnalysisHistory, PhotoAnalysis
from dermalab.serve.service import Services
from dermalab.serve.settings import ServeSettings
from dermalab.serve.store import OPEN, Owner

SESSION_COOKIE = "dermalab_session"
#: With Secure cookies (HTTPS): the ``__Host-`` prefix makes the browser refuse the cookie
#: unless it is Secure, path ``/`` and set by this very host, so no sibling subdomain can
#: plant a session in it (session fixation).
SECURE_SESSION_COOKIE = "__Host-" + SESSION_COOKIE


def cookie_name(secure: bool) -> str:
    """The session cookie's name over HTTPS (``secure``) or plain HTTP."""
    return SECURE_SESSION_COOKIE if secure else SESSION_COOKIE
CSRF_HEADER = "x-csrf-token"
UNSAFE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})


def _services(request: Request) -> Services:
    """The app's services (set by the lifespan of :func:`dermalab.serve.app.create_app`)."""
    services: Services | None = getattr(request.app.state, "services", None)
    if services is None:
        raise HTTPException(503, "the model is not loaded")
    return services


def get_service(request: Request) -> PhotoAnalysis:
    """The analysis service: models, router, answers."""
    return _services(request).analysis


def get_history(request: Request) -> AnalysisHistory:
    """Each owner's analyses, photos and spots."""
    return _services(request).history


def get_accounts(request: Request) -> AccountService:
    """Users and sessions."""
    return _services(request).accounts


Service = Annotated[PhotoAnalysis, Depends(get_service)]
History = Annotated[AnalysisHistory, Depends(get_history)]
Accounts = Annotated[AccountService, Depends(get_accounts)]


def get_settings(svc: Service) -> ServeSettings:
    """How the app was started."""
    return svc.settings


Settings = Annotated[ServeSettings, Depends(get_settings)]


@dataclass(frozen=True)
class CallerInfo:
    """Who is calling: the owner of what they create and see, and their session."""

    owner: Owner
    session: SessionInfo | None = None
    token: str | None = None
    via_cookie: bool = False

    @property
    def user_id(self) -> str:
        if self.session is None:
            raise HTTPException(409, "there are no accounts in --open mode")
        return self.session.user_id


def session_token(request: Request, secure: bool = False) -> tuple[str | None, bool]:
    """The presented token and whether it came in the cookie (over HTTPS only the
    ``__Host-`` cookie counts)."""
    auth = request.headers.get("authorization", "")
    if auth.lower().startswith("bearer "):
        return auth[7:].strip(), False
    cookie = request.cookies.get(cookie_name(secure))
    return (cookie, True) if cookie else (None, False)


def optional_caller(request: Request, settings: Settings) -> CallerInfo | None:
    """The caller if a valid session is presented (no 401), for sign-up/sign-in."""
    if settings.open:
        return CallerInfo(OPEN)
    token, via_cookie = session_token(request, settings.cookie_secure)
    # the accounts are looked up only when a token came, not declared as a dependency: an
    # --open app (and the API tests' stub app) must answer without them
    info = get_accounts(request).lookup(token) if token else None
    if info is None or token is None:
        return None
    return CallerInfo(info.user_id, info, token, via_cookie)


def get_caller(request: Request, settings: Settings) -> CallerInfo:
    """The authenticated caller (401 without a session; 403 for a cookie write without the
    session's CSRF token)."""
    caller = optional_caller(request, settings)
    if caller is None:
        raise HTTPException(401, "sign in, or start a private session on this device first",
                            headers={"WWW-Authenticate": "Bearer"})
    if caller.via_cookie and request.method in UNSAFE_METHODS and caller.session is not None \
            and not secrets.compare_digest(request.headers.get(CSRF_HEADER, ""),
                                           caller.session.csrf):
        raise HTTPException(403, "missing or wrong X-CSRF-Token for this session")
    return caller


Caller = Annotated[CallerInfo, Depends(get_caller)]
MaybeCaller = Annotated[CallerInfo | None, Depends(optional_caller)]


def get_language(request: Request,
                 lang: Annotated[str | None, Query(description="Language of the plain-language "
                                                   "fields (en, ko); overrides the "
                                                   "Accept-Language header")] = None) -> str:
    """The supported language the client asked for (English when none)."""
    return negotiate(request.headers.get("accept-language"), lang)


Language = Annotated[str, Depends(get_language)]
