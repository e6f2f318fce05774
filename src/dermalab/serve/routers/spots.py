"""Your named spots and one spot over time."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, HTTPException

from dermalab.serve.dependencies import (
    Caller,
    History,
    Language,
)
from dermalab.serve.routers._common import (
    AUTH,
    NOT_FOUND,
)
from dermalab.serve.schemas import (
    SpotHistory,
    SpotList,
)

spots = APIRouter(prefix="/v1/spots", tags=["spots"], responses=AUTH)


@spots.get("", response_model=SpotList, summary="Your named spots")
def list_spots(history: History, caller: Caller) -> dict[str, Any]:
    return {"items": history.spots(caller.owner)}


@spots.get(
    "/{spot_id}",
    response_model=SpotHistory,
    responses=NOT_FOUND,
    summary="One of your spots over time, with a warning when it changed",
)
def get_spot(history: History, lang: Language, caller: Caller, spot_id: str
             ) -> dict[str, Any]:
    res = history.spot(spot_id, lang, owner=caller.owner)
    if res is None:
        raise HTTPException(404, "no such spot")
    return res


# -- the dermatologist finder: a public directory, so no session is needed; the position is
# used for this answer only (never stored; the access log is off) ----------------------------
