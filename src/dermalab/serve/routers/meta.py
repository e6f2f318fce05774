"""The model cards, the page's texts and health."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from dermalab.core.i18n import LANGUAGE_NAMES, messages
from dermalab.serve.dependencies import (
    Language,
    Service,
)
from dermalab.serve.schemas import (
    Messages,
    ModelCard,
)

meta = APIRouter(tags=["model"])


@meta.get("/v1/model", response_model=ModelCard, summary="Model card")
def model_card(svc: Service) -> dict[str, Any]:
    return svc.model_card()


@meta.get(
    "/v1/models", response_model=list[ModelCard], summary="Every served model (one per image type)"
)
def model_cards(svc: Service) -> list[dict[str, Any]]:
    return svc.model_cards()


@meta.get("/v1/messages", response_model=Messages, summary="The web page's texts")
def page_messages(lang: Language) -> dict[str, Any]:
    return {"language": lang, "languages": LANGUAGE_NAMES, "messages": messages(lang, "page.")}


@meta.get("/healthz", summary="Liveness, and whether accounts are on")
def healthz(svc: Service) -> dict[str, Any]:
    return {
        "status": "ok",
        "backend": svc.backend,
        "models": list(svc.models),
        "router": svc.router is not None,
        "ondevice": bool(svc.ondevice),
        # what the page may ask (optional age, sex, body site), when a model weighs them
        "metadata": svc.metadata_inputs(),
        "mode": "open" if svc.settings.open else "accounts",
    }
