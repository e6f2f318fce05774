"""FastAPI app factory: the JSON API under ``/v1`` and the web page at ``/``."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib import resources
from typing import Annotated, Any

from fastapi import FastAPI, File, HTTPException, Query, Request, UploadFile
from fastapi.responses import HTMLResponse, JSONResponse, Response

from dermalab.serve.schemas import AnalysisOut, AnalysisPage, ModelCard, Problem
from dermalab.serve.service import AnalysisService, ServeSettings, UploadError

log = logging.getLogger("dermalab.serve")
ERRORS: dict[int | str, dict[str, Any]] = {
    413: {"model": Problem, "description": "Upload too large (bytes or pixels)."},
    415: {"model": Problem, "description": "Not an image."},
    422: {"model": Problem, "description": "An image that cannot be analysed."},
}


def create_app(settings: ServeSettings) -> FastAPI:
    """The app; the model is loaded once at start-up (lifespan) and shared by requests."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.service = AnalysisService(settings)
        yield

    app = FastAPI(
        title="dermalab",
        version="1",
        summary="Likely skin conditions for a photo, with calibrated probabilities, a heat-map, "
                "care information and a referral. Decision support, not a diagnosis.",
        lifespan=lifespan,
    )

    @app.exception_handler(UploadError)
    async def upload_error(_: Request, exc: UploadError) -> JSONResponse:
        return JSONResponse(status_code=exc.status, content={"detail": exc.detail})

    @app.exception_handler(Exception)
    async def unexpected(_: Request, exc: Exception) -> JSONResponse:
        # Log the details server-side; never send a stack trace to the client.
        log.exception("unhandled error", exc_info=exc)
        return JSONResponse(status_code=500, content={"detail": "internal error"})

    def service(request: Request) -> AnalysisService:
        svc: AnalysisService = request.app.state.service
        return svc

    @app.post("/v1/analyses", response_model=AnalysisOut, status_code=201, responses=ERRORS,
              summary="Analyse a photo")
    def create_analysis(request: Request,
                        file: Annotated[UploadFile, File(description="A photo of the skin "
                                                                     "concern (JPEG, PNG...)")]
                        ) -> dict[str, Any]:
        svc = service(request)
        limit = svc.settings.max_upload_bytes
        data = file.file.read(limit + 1)  # never read more than the limit into memory
        return svc.analyze(data, file.filename or "upload")

    @app.get("/v1/analyses/{analysis_id}", response_model=AnalysisOut,
             responses={404: {"model": Problem}}, summary="One stored analysis")
    def get_analysis(request: Request, analysis_id: str) -> dict[str, Any]:
        res = service(request).get(analysis_id)
        if res is None:
            raise HTTPException(404, "no such analysis")
        return res

    @app.get("/v1/analyses", response_model=AnalysisPage, summary="History, newest first")
    def list_analyses(request: Request,
                      limit: Annotated[int, Query(ge=1, le=100)] = 20,
                      offset: Annotated[int, Query(ge=0)] = 0) -> dict[str, Any]:
        return service(request).page(limit, offset)

    @app.delete("/v1/analyses/{analysis_id}", status_code=204,
                responses={404: {"model": Problem}}, summary="Delete an analysis and its photo")
    def delete_analysis(request: Request, analysis_id: str) -> Response:
        if not service(request).delete(analysis_id):
            raise HTTPException(404, "no such analysis")
        return Response(status_code=204)

    @app.get("/v1/model", response_model=ModelCard, summary="Model card")
    def model_card(request: Request) -> dict[str, Any]:
        return service(request).model_card()

    @app.get("/healthz", summary="Liveness")
    def healthz(request: Request) -> dict[str, str]:
        svc = service(request)
        return {"status": "ok", "backend": svc.predictor.backend}

    page = resources.files("dermalab.serve").joinpath("static/index.html").read_text("utf-8")

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def index() -> str:
        return page

    return app
