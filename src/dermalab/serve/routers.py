"""The API's routes, one router per resource: analyses (history), the model card and health,
and the web page."""

from __future__ import annotations

from importlib import resources
from typing import Annotated, Any

from fastapi import APIRouter, File, HTTPException, Query, UploadFile
from fastapi.responses import HTMLResponse, Response

from dermalab.core.i18n import LANGUAGE_NAMES, messages
from dermalab.serve.dependencies import Language, Service
from dermalab.serve.schemas import AnalysisOut, AnalysisPage, Messages, ModelCard, Problem

ERRORS: dict[int | str, dict[str, Any]] = {
    413: {"model": Problem, "description": "Upload too large (bytes or pixels)."},
    415: {"model": Problem, "description": "Not an image."},
    422: {"model": Problem, "description": "An image that cannot be analysed."},
}
NOT_FOUND: dict[int | str, dict[str, Any]] = {404: {"model": Problem}}

analyses = APIRouter(prefix="/v1/analyses", tags=["analyses"])
meta = APIRouter(tags=["model"])
page = APIRouter(include_in_schema=False)


@analyses.post("", response_model=AnalysisOut, status_code=201, responses=ERRORS,
               summary="Analyse a photo")
def create_analysis(svc: Service, lang: Language,
                    file: Annotated[UploadFile, File(description="A photo of the skin concern "
                                                                 "(JPEG, PNG...)")]
                    ) -> dict[str, Any]:
    limit = svc.settings.max_upload_bytes
    data = file.file.read(limit + 1)  # never read more than the limit into memory
    return svc.analyze(data, file.filename or "upload", lang)


@analyses.get("/{analysis_id}", response_model=AnalysisOut, responses=NOT_FOUND,
              summary="One stored analysis")
def get_analysis(svc: Service, lang: Language, analysis_id: str) -> dict[str, Any]:
    res = svc.get(analysis_id, lang)
    if res is None:
        raise HTTPException(404, "no such analysis")
    return res


@analyses.get("", response_model=AnalysisPage, summary="History, newest first")
def list_analyses(svc: Service, lang: Language,
                  limit: Annotated[int, Query(ge=1, le=100)] = 20,
                  offset: Annotated[int, Query(ge=0)] = 0) -> dict[str, Any]:
    return svc.page(limit, offset, lang)


@analyses.delete("/{analysis_id}", status_code=204, responses=NOT_FOUND,
                 summary="Delete an analysis and its photo")
def delete_analysis(svc: Service, analysis_id: str) -> Response:
    if not svc.delete(analysis_id):
        raise HTTPException(404, "no such analysis")
    return Response(status_code=204)


@meta.get("/v1/model", response_model=ModelCard, summary="Model card")
def model_card(svc: Service) -> dict[str, Any]:
    return svc.model_card()


@meta.get("/v1/messages", response_model=Messages, summary="The web page's texts")
def page_messages(lang: Language) -> dict[str, Any]:
    return {"language": lang, "languages": LANGUAGE_NAMES, "messages": messages(lang, "page.")}


@meta.get("/healthz", summary="Liveness")
def healthz(svc: Service) -> dict[str, str]:
    return {"status": "ok", "backend": svc.backend}


_PAGE = resources.files("dermalab.serve").joinpath("static/index.html").read_text("utf-8")


@page.get("/", response_class=HTMLResponse)
def index() -> str:
    return _PAGE
