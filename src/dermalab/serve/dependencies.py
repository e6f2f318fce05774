"""The service dependency of every route: ``Annotated[AnalysisService, Depends(get_service)]``.

The app holds one service (loaded at start-up); tests replace it with
``app.dependency_overrides[get_service] = lambda: stub`` and need no trained model.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, HTTPException, Query, Request

from dermalab.core.i18n import negotiate
from dermalab.serve.service import AnalysisService


def get_service(request: Request) -> AnalysisService:
    """The app's service (set by the lifespan of :func:`dermalab.serve.app.create_app`)."""
    svc: AnalysisService | None = getattr(request.app.state, "service", None)
    if svc is None:
        raise HTTPException(503, "the model is not loaded")
    return svc


Service = Annotated[AnalysisService, Depends(get_service)]


def get_language(request: Request,
                 lang: Annotated[str | None, Query(description="Language of the plain-language "
                                                   "fields (en, ko); overrides the "
                                                   "Accept-Language header")] = None) -> str:
    """The supported language the client asked for (English when none)."""
    return negotiate(request.headers.get("accept-language"), lang)


Language = Annotated[str, Depends(get_language)]
