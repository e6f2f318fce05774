"""The web page itself: the HTML, its service worker and its manifest."""

from __future__ import annotations

import json
from importlib import resources

from fastapi import APIRouter
from fastapi.responses import HTMLResponse, Response

from dermalab.core.i18n import LANGUAGE_NAMES, t
from dermalab.serve.dependencies import (
    Language,
    Service,
)
from dermalab.serve.routers._common import (
    REVALIDATE,
)

page = APIRouter(include_in_schema=False)


_STATIC = resources.files("dermalab.serve").joinpath("static")
_PAGE = _STATIC.joinpath("index.html").read_text("utf-8")


@page.get("/", response_class=HTMLResponse)
def index() -> str:
    return _PAGE


@page.get("/sw.js")
def service_worker(svc: Service) -> Response:
    """The service worker, at the root so its scope is the whole page (offline use). Its
    cache is named after the ONNX Runtime Web version served, so an upgrade replaces it, and
    it keeps the page's texts in every language (``/v1/messages?lang=XX``), so a language
    chosen while offline is there too."""
    texts = ", ".join(f'"/v1/messages?lang={code}"' for code in LANGUAGE_NAMES)
    text = (
        _STATIC.joinpath("sw.js")
        .read_text("utf-8")
        .replace('"dermalab-ort-unknown"', f'"dermalab-ort-{svc.ort_version or "none"}"', 1)
        .replace('"/v1/messages",', f'"/v1/messages", {texts},', 1)
    )
    return Response(text, media_type="text/javascript", headers=REVALIDATE)


@page.get("/manifest.webmanifest")
def web_manifest(lang: Language) -> Response:
    """The web app manifest: the page installs to a phone's home screen, named in the phone's
    language (Accept-Language)."""
    manifest = json.loads(_STATIC.joinpath("manifest.webmanifest").read_text("utf-8"))
    manifest.update(name=t("page.title", lang), description=t("page.intro", lang), lang=lang)
    return Response(
        json.dumps(manifest, ensure_ascii=False),
        media_type="application/manifest+json",
        headers={**REVALIDATE, "Vary": "Accept-Language"},
    )
