"""The account: download my data, delete my account."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import Response

from dermalab.serve.dependencies import (
    Caller,
    Service,
)
from dermalab.serve.routers._common import (
    AUTH,
)
from dermalab.serve.routers.auth import forget_cookie

account = APIRouter(prefix="/v1/account", tags=["accounts"], responses=AUTH)


# -- the account -------------------------------------------------------------------------------
@account.delete(
    "", status_code=204, summary="Delete my account: the user, every analysis and every photo"
)
def delete_account(svc: Service, caller: Caller) -> Response:
    svc.delete_account(caller.user_id)
    out = Response(status_code=204)
    forget_cookie(out, svc)
    return out


@account.get(
    "/export",
    response_class=Response,
    summary="Download my data: a zip of my photos and analyses.json",
)
def export_account(svc: Service, caller: Caller) -> Response:
    return Response(
        svc.export(caller.user_id),
        media_type="application/zip",
        headers={
            "Content-Disposition": 'attachment; filename="dermalab-data.zip"',
            "Cache-Control": "private, no-store",
        },
    )
