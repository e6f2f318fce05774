"""Your analyses: upload a photo, read, list and delete your history."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, File, Form, HTTPException, Query, Request, UploadFile
from fastapi.responses import Response

from dermalab.serve.dependencies import (
    Caller,
    History,
    Language,
    Service,
)
from dermalab.serve.routers._common import (
    AUTH,
    ERRORS,
    MAX_OFFSET,
    NOT_FOUND,
    client_address,
    rate_limit,
)
from dermalab.serve.schemas import (
    AnalysisOut,
    AnalysisPage,
)

analyses = APIRouter(prefix="/v1/analyses", tags=["analyses"], responses=AUTH)


@analyses.post(
    "", response_model=AnalysisOut, status_code=201, responses=ERRORS, summary="Analyse a photo"
)
def create_analysis(
    request: Request,
    svc: Service,
    lang: Language,
    caller: Caller,
    file: Annotated[UploadFile, File(description="A photo of the skin concern (JPEG, PNG...)")],
    spot: Annotated[
        str | None,
        Form(
            max_length=120,
            description=(
                "Name of the spot to file this photo under (e.g. 'left shoulder "
                "mole'), to follow it over time; a new name starts a new spot"
            ),
        ),
    ] = None,
    image_type: Annotated[
        Literal["auto", "dermoscopic", "clinical"],
        Form(
            description="How the photo was taken: 'dermoscopic' (through a "
            "dermatoscope) or 'clinical' (an ordinary camera or "
            "phone); 'auto' lets the image-type router decide"
        ),
    ] = "auto",
    age: Annotated[
        float | None,
        Form(
            ge=0,
            le=120,
            description=(
                "Your age in years (optional); weighed beside the photo by a model trained with it"
            ),
        ),
    ] = None,
    sex: Annotated[
        Literal["female", "male"] | None, Form(description="Your sex (optional), as above")
    ] = None,
    site: Annotated[
        str | None,
        Form(
            max_length=40,
            description=(
                "Where on the body the spot is (optional), one of the model's body "
                "sites (`/healthz` lists them), as above"
            ),
        ),
    ] = None,
) -> dict[str, Any]:
    rate_limit(request, "upload", f"owner:{caller.owner}", f"ip:{client_address(request)}")
    limit = svc.settings.max_upload_bytes
    data = file.file.read(limit + 1)  # never read more than the limit into memory
    given = {k: v for k, v in (("age", age), ("sex", sex), ("site", site)) if v not in (None, "")}
    return svc.analyze(
        data,
        file.filename or "upload",
        lang,
        owner=caller.owner,
        spot=spot,
        image_type=image_type,
        metadata=given or None,
    )


# Another owner's analysis answers 404 exactly like a missing one: never confirm it exists.
@analyses.get(
    "/{analysis_id}",
    response_model=AnalysisOut,
    responses=NOT_FOUND,
    summary="One of your analyses",
)
def get_analysis(history: History, lang: Language, caller: Caller, analysis_id: str
                 ) -> dict[str, Any]:
    res = history.get(analysis_id, lang, owner=caller.owner)
    if res is None:
        raise HTTPException(404, "no such analysis")
    return res


@analyses.get(
    "/{analysis_id}/photo",
    responses=NOT_FOUND,
    response_class=Response,
    summary="The stored photo of one of your analyses (no metadata)",
)
def get_photo(history: History, caller: Caller, analysis_id: str) -> Response:
    data = history.photo(analysis_id, owner=caller.owner)
    if data is None:
        raise HTTPException(404, "no such photo")
    return Response(data, media_type="image/jpeg", headers={"Cache-Control": "private, no-store"})


@analyses.get("", response_model=AnalysisPage, summary="Your history, newest first")
def list_analyses(
    history: History,
    lang: Language,
    caller: Caller,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    offset: Annotated[int, Query(ge=0, le=MAX_OFFSET)] = 0,
) -> dict[str, Any]:
    return history.page(limit, offset, lang, owner=caller.owner)


@analyses.delete(
    "/{analysis_id}",
    status_code=204,
    responses=NOT_FOUND,
    summary="Delete one of your analyses and its photo",
)
def delete_analysis(history: History, caller: Caller, analysis_id: str) -> Response:
    if not history.delete(analysis_id, owner=caller.owner):
        raise HTTPException(404, "no such analysis")
    return Response(status_code=204)
