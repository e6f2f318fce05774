"""FastAPI app factory: the JSON API under ``/v1`` and the web page at ``/``."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from dermalab.core.i18n import negotiate
from dermalab.serve import routers
from dermalab.serve.service import AnalysisService, ServeSettings, UploadError

log = logging.getLogger("dermalab.serve")


def create_app(settings: ServeSettings | None) -> FastAPI:
    """The app; the model is loaded once at start-up (lifespan) and shared by requests.

    With ``settings=None`` no model is loaded: the caller provides the service through
    ``app.dependency_overrides[dermalab.serve.dependencies.get_service]`` (API tests).
    """

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if settings is not None:
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
    async def upload_error(request: Request, exc: UploadError) -> JSONResponse:
        lang = negotiate(request.headers.get("accept-language"),
                         request.query_params.get("lang"))
        return JSONResponse(status_code=exc.status, content={"detail": exc.localized(lang)})

    @app.exception_handler(Exception)
    async def unexpected(_: Request, exc: Exception) -> JSONResponse:
        # Log the details server-side; never send a stack trace to the client.
        log.exception("unhandled error", exc_info=exc)
        return JSONResponse(status_code=500, content={"detail": "internal error"})

    for router in (routers.analyses, routers.meta, routers.page):
        app.include_router(router)
    return app
