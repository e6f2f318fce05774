"""Sessions: an anonymous device, sign-up, sign-in, the current session, sign-out."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Query, Request
from fastapi.responses import Response

from dermalab.core.i18n import t
from dermalab.serve.accounts import AccountError, Issued, SessionInfo, normalise_email
from dermalab.serve.dependencies import (
    Accounts,
    Caller,
    Language,
    MaybeCaller,
    Settings,
    cookie_name,
)
from dermalab.serve.routers._common import (
    AUTH,
    client_address,
    rate_limit,
)
from dermalab.serve.schemas import (
    Credentials,
    Problem,
    SessionOut,
)

auth = APIRouter(prefix="/v1/auth", tags=["accounts"])


PAGE_HEADER = "x-dermalab-page"


def _session_response(
    settings: Settings,
    accounts: Accounts,
    request: Request,
    response: Response,
    issued: Issued,
    email: str | None,
    anonymous: bool,
) -> dict[str, Any]:
    """Set the session cookie; API clients also get the bearer token in the body, the page
    (which says so with ``X-Dermalab-Page``) does not: its session stays in the HttpOnly
    cookie, out of reach of any script."""
    response.set_cookie(
        cookie_name(settings.cookie_secure),
        issued.token,
        httponly=True,
        samesite="strict",
        secure=settings.cookie_secure,
        path="/",
        max_age=accounts.session_days * 86400,
    )
    response.headers["Cache-Control"] = "no-store"
    return {
        "mode": "accounts",
        "user_id": issued.user_id,
        "email": email,
        "anonymous": anonymous,
        "csrf_token": issued.csrf,
        "token": None if request.headers.get(PAGE_HEADER) else issued.token,
    }


def _account_error(exc: AccountError, lang: str) -> HTTPException:
    return HTTPException(exc.status, exc.localized(lang))


def _no_accounts(settings: Settings) -> None:
    if settings.open:
        raise HTTPException(409, "this is a single-user install (--open): no accounts")


@auth.post(
    "/anonymous",
    response_model=SessionOut,
    status_code=201,
    summary="A private session for this device, without an account",
)
def start_anonymous(request: Request, response: Response, settings: Settings,
                    accounts: Accounts) -> dict[str, Any]:
    _no_accounts(settings)
    # A custom header: a cross-site form cannot send it, so no other site can swap this
    # browser's session for a fresh one.
    if request.headers.get("x-requested-with") != "dermalab":
        raise HTTPException(403, "send X-Requested-With: dermalab")
    rate_limit(request, "device", f"ip:{client_address(request)}")
    return _session_response(settings, accounts, request, response, accounts.start_device(),
                             None, True)


@auth.post(
    "/signup",
    response_model=SessionOut,
    status_code=201,
    responses={409: {"model": Problem}, 422: {"model": Problem}, 429: {"model": Problem}},
    summary="Create an account (this device's analyses move into it)",
)
def sign_up(
    request: Request,
    response: Response,
    settings: Settings,
    accounts: Accounts,
    body: Credentials,
    caller: MaybeCaller,
    lang: Language,
) -> dict[str, Any]:
    _no_accounts(settings)
    rate_limit(request, "signin", f"ip:{client_address(request)}")
    device, token = _device(caller)
    try:
        issued = accounts.sign_up(body.email, body.password, device, token)
    except AccountError as exc:
        raise _account_error(exc, lang) from None
    return _session_response(settings, accounts, request, response, issued,
                             normalise_email(body.email), False)


@auth.post(
    "/signin",
    response_model=SessionOut,
    responses={401: {"model": Problem}, 429: {"model": Problem}},
    summary="Sign in (this device's anonymous analyses move into the account)",
)
def sign_in(
    request: Request,
    response: Response,
    settings: Settings,
    accounts: Accounts,
    body: Credentials,
    caller: MaybeCaller,
    lang: Language,
) -> dict[str, Any]:
    _no_accounts(settings)
    email, ip = normalise_email(body.email), client_address(request)
    # Per address, and per account from this address: wrong passwords sent from other
    # addresses cannot lock the owner out (red-team finding C). Across addresses only
    # failures count, against a higher cap that bounds a spread-out brute force.
    rate_limit(request, "signin", f"ip:{ip}", f"email:{email}|ip:{ip}")
    limits = getattr(request.app.state, "limits", None)
    if limits is not None:
        limits.check("signin_failures", f"email:{email}")
    issued = accounts.sign_in(body.email, body.password, *_device(caller))
    if issued is None:
        if limits is not None:
            limits.count("signin_failures", f"email:{email}")
        raise HTTPException(401, t("account.wrong_password", lang))
    return _session_response(settings, accounts, request, response, issued, email, False)


def _device(caller: MaybeCaller) -> tuple[SessionInfo | None, str | None]:
    """The calling device's session and token (its analyses move into the account)."""
    return (caller.session, caller.token) if caller is not None else (None, None)


@auth.get(
    "/session",
    response_model=SessionOut,
    responses={401: {"model": Problem}},
    summary="The current session (or open mode)",
)
def current_session(settings: Settings, caller: MaybeCaller, response: Response,
                    optional: Annotated[bool, Query(
                        description="204 instead of 401 when there is no session (the page "
                                    "asks this on a first visit, which is not an error)")] = False
                    ) -> Any:
    response.headers["Cache-Control"] = "no-store"
    if settings.open:
        return {"mode": "open"}
    if caller is None or caller.session is None:
        if optional:
            return Response(status_code=204, headers={"Cache-Control": "no-store"})
        raise HTTPException(401, "no session", headers={"WWW-Authenticate": "Bearer"})
    s = caller.session
    return {
        "mode": "accounts",
        "user_id": s.user_id,
        "email": s.email,
        "anonymous": s.anonymous,
        "csrf_token": s.csrf,
    }


@auth.post("/signout", status_code=204, responses=AUTH, summary="End this session")
def sign_out(settings: Settings, accounts: Accounts, caller: Caller) -> Response:
    if caller.token:
        accounts.sign_out(caller.token)
    out = Response(status_code=204)
    forget_cookie(out, settings)
    return out


@auth.post("/signout-everywhere", status_code=204, responses=AUTH,
           summary="End every session of this account, on every device")
def sign_out_everywhere(settings: Settings, accounts: Accounts, caller: Caller) -> Response:
    accounts.sign_out_everywhere(caller.user_id)
    out = Response(status_code=204)
    forget_cookie(out, settings)
    return out


def forget_cookie(out: Response, settings: Settings) -> None:
    secure = settings.cookie_secure
    out.delete_cookie(
        cookie_name(secure), path="/", secure=secure, httponly=True, samesite="strict"
    )
