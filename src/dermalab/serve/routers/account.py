"""The account: download my data, delete my account."""

from __future__ import annotations

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import Response

from dermalab.core.i18n import t
from dermalab.serve.dependencies import (
    Accounts,
    Caller,
    Language,
    Settings,
)
from dermalab.serve.routers._common import (
    AUTH,
    rate_limit,
)
from dermalab.serve.routers.auth import forget_cookie
from dermalab.serve.schemas import AccountDeletion, Problem

account = APIRouter(prefix="/v1/account", tags=["accounts"], responses=AUTH)


# -- the account -------------------------------------------------------------------------------
@account.delete(
    "", status_code=204, responses={403: {"model": Problem}, 429: {"model": Problem}},
    summary="Delete my account: the user, every analysis and every photo",
)
def delete_account(request: Request, accounts: Accounts, settings: Settings, caller: Caller,
                   lang: Language, body: AccountDeletion | None = None) -> Response:
    # An account's password is asked again: a session left open on a shared phone, or a
    # stolen token, must not be enough to erase it for good. A device without an account
    # has no password; its session is all it has.
    session = caller.session
    if session is not None and not session.anonymous:
        rate_limit(request, "signin", f"user:{caller.user_id}")
        if body is None or not body.password:
            raise HTTPException(403, t("account.password_required", lang))
        if not accounts.verify_password(caller.user_id, body.password):
            raise HTTPException(403, t("account.wrong_password_only", lang))
    accounts.delete_account(caller.user_id)
    out = Response(status_code=204)
    forget_cookie(out, settings)
    return out


@account.get(
    "/export",
    response_class=Response,
    summary="Download my data: a zip of my photos and analyses.json",
)
def export_account(accounts: Accounts, caller: Caller) -> Response:
    return Response(
        accounts.export(caller.user_id),
        media_type="application/zip",
        headers={
            "Content-Disposition": 'attachment; filename="dermalab-data.zip"',
            "Cache-Control": "private, no-store",
        },
    )
