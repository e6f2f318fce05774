"""FastAPI app factory: the JSON API under ``/v1``, the web page at ``/`` and its script
under ``/static``, with the protections every response gets.

- Security headers on every response: a Content-Security-Policy that allows nothing from
  another origin (the page loads no third-party script, style, font or image) and no inline
  script, ``frame-ancestors 'none'``, ``X-Content-Type-Options: nosniff``, ``Referrer-Policy:
  no-referrer``. No CORS headers: a foreign origin cannot read any answer.
- ``TrustedHostMiddleware``: only the configured ``Host`` names are answered.
- A request body larger than the upload limit is refused with 413 as soon as its announced
  length or its streamed bytes pass the limit, before the multipart parser buffers it.
- ``/docs``, ``/redoc`` and ``/openapi.json`` exist only with ``docs=True`` (development);
  Swagger/ReDoc load from a CDN, which the CSP forbids, so it is relaxed for them alone.
- API answers are ``Cache-Control: no-store`` unless they say otherwise; over HTTPS
  (``cookie_secure``) every answer carries HSTS and the session cookie is ``__Host-``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from contextlib import asynccontextmanager
from importlib import resources
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from fastapi.staticfiles import StaticFiles
from starlette.middleware.trustedhost import TrustedHostMiddleware

from dermalab.core.i18n import negotiate
from dermalab.serve import routers
from dermalab.serve.ratelimit import RateLimits
from dermalab.serve.retention import RetentionService
from dermalab.serve.service import build_services
from dermalab.serve.settings import ServeSettings
from dermalab.serve.uploads import UploadError

log = logging.getLogger("dermalab.serve")


def one_thread_per_request() -> None:
    """Run every numerical kernel of this process (PyTorch's, BLAS's) on one thread, as ONNX
    Runtime's already is in the server (:class:`~dermalab.serve.models.ServedModel`).

    A server answers several requests side by side; when each also spreads its own kernels
    over every core, the thread pools fight (OpenBLAS and OpenMP threads spin while they wait)
    and the cores spend their time switching. ``bench/serve_load.py`` at 4 clients on 2 CPUs,
    the default 2-member model (2026-12-07): p95 286 -> 157 ms and 21 -> 33 requests/s with
    these limits alone (set by environment variables then); 125 ms and 43/s with the OOD
    detector's per-class products cached as well. Called by ``dermalab serve``, not at import:
    a test process that also trains keeps its threads.
    """
    import torch
    from threadpoolctl import threadpool_limits

    torch.set_num_threads(1)
    threadpool_limits(limits=1)  # kept until restored; nothing here restores it


# 'wasm-unsafe-eval': ONNX Runtime Web compiles its WebAssembly (on-device analysis); it allows
# no JavaScript eval. COEP + COOP make the page cross-origin isolated, which WebAssembly threads
# (SharedArrayBuffer) need; everything the page loads is same-origin anyway.
CSP = ("default-src 'self'; script-src 'self' 'wasm-unsafe-eval'; "
       "style-src 'self' 'unsafe-inline'; worker-src 'self' blob:; "
       "img-src 'self' data: blob:; connect-src 'self'; font-src 'self'; object-src 'none'; "
       "base-uri 'none'; form-action 'self'; frame-ancestors 'none'")
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Embedder-Policy": "require-corp",
    "Cross-Origin-Resource-Policy": "same-origin",
    "Permissions-Policy": "geolocation=(self), camera=(self), microphone=()",
}
DOC_PATHS = ("/docs", "/redoc", "/openapi.json")
#: Two years, subdomains included (the HSTS preload list's minimum is one year).
HSTS = "max-age=63072000; includeSubDomains"
RETENTION_EVERY_S = 3600.0
MULTIPART_OVERHEAD = 64 * 1024
TOO_LARGE = b'{"detail":"request body too large"}'

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


class BodyLimit:
    """Refuse request bodies over ``limit`` bytes: at once when Content-Length says so, else
    as soon as the streamed (e.g. chunked) bytes pass it."""

    def __init__(self, app: Any, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] not in ("POST", "PUT", "PATCH"):
            await self.app(scope, receive, send)
            return
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.limit:
            await JSONResponse({"detail": "request body too large"}, 413)(scope, receive, send)
            return
        seen, over = 0, False

        async def limited() -> Message:
            nonlocal seen, over
            if over:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    # Read no further: the app sees the client gone, and its answer (whatever
                    # its body parser makes of that) is replaced by the 413 below.
                    over = True
                    return {"type": "http.disconnect"}
            return message

        async def answer(message: Message) -> None:
            if not over:
                await send(message)
            elif message["type"] == "http.response.start":
                await send({"type": "http.response.start", "status": 413,
                            "headers": [(b"content-type", b"application/json"),
                                        (b"content-length", str(len(TOO_LARGE)).encode())]})
                await send({"type": "http.response.body", "body": TOO_LARGE})

        await self.app(scope, limited, answer)


class SecurityHeaders:
    """The security headers on every response (:data:`SECURITY_HEADERS`), set in the ASGI
    layer so that answers made before the app (a wrong Host, a body over the limit) get them
    too; ``Cache-Control: no-store`` on API answers that do not set their own (they carry
    health data: a heat-map of the photo, conditions); HSTS when served over HTTPS (``hsts``:
    Secure cookies are on)."""

    def __init__(self, app: Any, docs: bool = False, hsts: bool = False) -> None:
        self.app, self.docs, self.hsts = app, docs, hsts

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = str(scope.get("path", ""))
        relaxed = self.docs and path.startswith(DOC_PATHS)

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers") or [])
                present = {k.lower() for k, _ in headers}
                extra = dict(SECURITY_HEADERS)
                if relaxed:
                    del extra["Content-Security-Policy"]  # development only
                if path.startswith("/v1/"):
                    extra["Cache-Control"] = "no-store"
                if self.hsts:
                    extra["Strict-Transport-Security"] = HSTS
                headers += [(k.lower().encode(), v.encode()) for k, v in extra.items()
                            if k.lower().encode() not in present]
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, with_headers)


class SessionBeforeUpload:
    """An upload (``POST /v1/analyses``) without a valid session is answered 401 before its
    body is read: parsing a 14 MB multipart form for a caller who may not upload is work an
    attacker could make the server do for free. (The route's own dependency still checks the
    session, with CSRF, once the form is read.)"""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST" \
                and scope.get("path") == "/v1/analyses" and not await self._allowed(scope):
            response = JSONResponse({"detail": "sign in, or start a private session on this "
                                               "device first"}, 401,
                                    headers={"WWW-Authenticate": "Bearer"})
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)

    @staticmethod
    async def _allowed(scope: Scope) -> bool:
        from starlette.concurrency import run_in_threadpool
        from starlette.requests import Request as StarletteRequest

        from dermalab.serve.dependencies import session_token

        services = getattr(getattr(scope.get("app"), "state", None), "services", None)
        if services is None or services.analysis.settings.open:  # tests' own services; --open
            return True
        token, _ = session_token(StarletteRequest(scope), services.analysis.settings.cookie_secure)
        return token is not None and await run_in_threadpool(services.accounts.lookup,
                                                             token) is not None


def create_app(settings: ServeSettings | None) -> FastAPI:
    """The app; the model is loaded once at start-up (lifespan) and shared by requests.

    With ``settings=None`` no model is loaded: the caller provides the service through
    ``app.dependency_overrides[dermalab.serve.dependencies.get_service]`` and its siblings
    (API tests).
    """
    opts = settings or ServeSettings(run_dir="unused")

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        task = None
        if settings is not None:
            services = build_services(settings)
            app.state.services = services
            services.retention.sweep_orphans()
            if settings.retention_days is not None:
                task = asyncio.create_task(_retention(services.retention,
                                                      settings.retention_days))
        yield
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    app = FastAPI(
        title="dermalab",
        version="1",
        summary="Likely skin conditions for a photo, with calibrated probabilities, a heat-map, "
                "care information and a referral. Decision support, not a diagnosis.",
        lifespan=lifespan,
        docs_url="/docs" if opts.docs else None,
        redoc_url="/redoc" if opts.docs else None,
        openapi_url="/openapi.json" if opts.docs else None,
    )
    app.state.limits = RateLimits(opts.rate_storage, signin=opts.rate_signin,
                                  upload=opts.rate_upload, device=opts.rate_device,
                                  signin_failures=opts.rate_signin_failures)

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

    app.add_middleware(SessionBeforeUpload)
    app.add_middleware(BodyLimit, limit=opts.max_upload_bytes + MULTIPART_OVERHEAD)
    app.add_middleware(TrustedHostMiddleware, allowed_hosts=list(opts.allowed_hosts))
    # Outermost: every answer gets the headers, the 400 of a wrong Host and the 413 of a body
    # over the limit included.
    app.add_middleware(SecurityHeaders, docs=opts.docs, hsts=opts.cookie_secure)
    for router in (routers.analyses, routers.spots, routers.clinics, routers.auth,
                   routers.account, routers.meta, routers.ondevice, routers.ort,
                   routers.page):
        app.include_router(router)
    static = resources.files("dermalab.serve").joinpath("static")
    app.mount("/static", StaticFiles(directory=str(static)), name="static")
    return app


async def _retention(retention: RetentionService, days: int) -> None:
    """Delete analyses older than ``days`` (with their photos) now and every hour."""
    from starlette.concurrency import run_in_threadpool

    while True:
        try:
            n = await run_in_threadpool(retention.purge_older_than, days)
            if n:
                log.info("retention: deleted %d analyses older than %d days", n, days)
        except Exception:  # keep the schedule; the next run retries
            log.exception("retention purge failed")
        await asyncio.sleep(RETENTION_EVERY_S)
