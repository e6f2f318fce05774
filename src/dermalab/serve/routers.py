"""The API's routes, one router per resource: analyses (history), sessions (sign-up, sign-in,
anonymous device), the account (export, deletion), the model card and health, and the page."""

from __future__ import annotations

from importlib import resources
from typing import Annotated, Any, Literal

from fastapi import APIRouter, File, Form, HTTPException, Query, Request, UploadFile
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response

from dermalab.core.i18n import LANGUAGE_NAMES, messages, t
from dermalab.serve.accounts import AccountError, Issued, normalise_email
from dermalab.serve.dependencies import (
    Caller,
    Language,
    MaybeCaller,
    Service,
    cookie_name,
)
from dermalab.serve.ondevice import ORT_FILES
from dermalab.serve.schemas import (
    AnalysisOut,
    AnalysisPage,
    ClinicCities,
    ClinicResults,
    Credentials,
    Messages,
    ModelCard,
    Problem,
    SessionOut,
    SpotHistory,
    SpotList,
)

ERRORS: dict[int | str, dict[str, Any]] = {
    413: {"model": Problem, "description": "Upload too large (bytes or pixels)."},
    415: {"model": Problem, "description": "Not an image."},
    422: {"model": Problem, "description": "An image that cannot be analysed."},
}
NOT_FOUND: dict[int | str, dict[str, Any]] = {404: {"model": Problem}}

AUTH: dict[int | str, dict[str, Any]] = {401: {"model": Problem}, 403: {"model": Problem}}
MAX_OFFSET = 10**9  # beyond any history; keeps the database's integer types safe

analyses = APIRouter(prefix="/v1/analyses", tags=["analyses"], responses=AUTH)
spots = APIRouter(prefix="/v1/spots", tags=["spots"], responses=AUTH)
auth = APIRouter(prefix="/v1/auth", tags=["accounts"])
account = APIRouter(prefix="/v1/account", tags=["accounts"], responses=AUTH)
meta = APIRouter(tags=["model"])
clinics = APIRouter(prefix="/v1/clinics", tags=["clinics"])
page = APIRouter(include_in_schema=False)
ondevice = APIRouter(prefix="/v1/ondevice", tags=["on-device"])
ort = APIRouter(prefix="/ort", include_in_schema=False)
# Revalidated on every use (cheap with the ETag): a new model replaces the old at once, and the
# page's service worker keeps its own copy for offline use.
REVALIDATE = {"Cache-Control": "no-cache"}


@analyses.post("", response_model=AnalysisOut, status_code=201, responses=ERRORS,
               summary="Analyse a photo")
def create_analysis(request: Request, svc: Service, lang: Language, caller: Caller,
                    file: Annotated[UploadFile, File(description="A photo of the skin concern "
                                                                 "(JPEG, PNG...)")],
                    spot: Annotated[str | None, Form(max_length=120, description=(
                        "Name of the spot to file this photo under (e.g. 'left shoulder "
                        "mole'), to follow it over time; a new name starts a new spot"))] = None,
                    image_type: Annotated[Literal["auto", "dermoscopic", "clinical"], Form(
                        description="How the photo was taken: 'dermoscopic' (through a "
                                    "dermatoscope) or 'clinical' (an ordinary camera or "
                                    "phone); 'auto' lets the image-type router decide")] = "auto",
                    age: Annotated[float | None, Form(ge=0, le=120, description=(
                        "Your age in years (optional); weighed beside the photo by a model "
                        "trained with it"))] = None,
                    sex: Annotated[Literal["female", "male"] | None, Form(
                        description="Your sex (optional), as above")] = None,
                    site: Annotated[str | None, Form(max_length=40, description=(
                        "Where on the body the spot is (optional), one of the model's body "
                        "sites (`/healthz` lists them), as above"))] = None
                    ) -> dict[str, Any]:
    _limit(request, "upload", f"owner:{caller.owner}", f"ip:{_client(request)}")
    limit = svc.settings.max_upload_bytes
    data = file.file.read(limit + 1)  # never read more than the limit into memory
    given = {k: v for k, v in (("age", age), ("sex", sex), ("site", site))
             if v not in (None, "")}
    return svc.analyze(data, file.filename or "upload", lang, owner=caller.owner, spot=spot,
                       image_type=image_type, metadata=given or None)


# Another owner's analysis answers 404 exactly like a missing one: never confirm it exists.
@analyses.get("/{analysis_id}", response_model=AnalysisOut, responses=NOT_FOUND,
              summary="One of your analyses")
def get_analysis(svc: Service, lang: Language, caller: Caller, analysis_id: str
                 ) -> dict[str, Any]:
    res = svc.get(analysis_id, lang, owner=caller.owner)
    if res is None:
        raise HTTPException(404, "no such analysis")
    return res


@analyses.get("/{analysis_id}/photo", responses=NOT_FOUND, response_class=Response,
              summary="The stored photo of one of your analyses (no metadata)")
def get_photo(svc: Service, caller: Caller, analysis_id: str) -> Response:
    data = svc.photo(analysis_id, owner=caller.owner)
    if data is None:
        raise HTTPException(404, "no such photo")
    return Response(data, media_type="image/jpeg",
                    headers={"Cache-Control": "private, no-store"})


@analyses.get("", response_model=AnalysisPage, summary="Your history, newest first")
def list_analyses(svc: Service, lang: Language, caller: Caller,
                  limit: Annotated[int, Query(ge=1, le=100)] = 20,
                  offset: Annotated[int, Query(ge=0, le=MAX_OFFSET)] = 0) -> dict[str, Any]:
    return svc.page(limit, offset, lang, owner=caller.owner)


@analyses.delete("/{analysis_id}", status_code=204, responses=NOT_FOUND,
                 summary="Delete one of your analyses and its photo")
def delete_analysis(svc: Service, caller: Caller, analysis_id: str) -> Response:
    if not svc.delete(analysis_id, owner=caller.owner):
        raise HTTPException(404, "no such analysis")
    return Response(status_code=204)


@spots.get("", response_model=SpotList, summary="Your named spots")
def list_spots(svc: Service, caller: Caller) -> dict[str, Any]:
    return {"items": svc.spots(caller.owner)}


@spots.get("/{spot_id}", response_model=SpotHistory, responses=NOT_FOUND,
           summary="One of your spots over time, with a warning when it changed")
def get_spot(svc: Service, lang: Language, caller: Caller, spot_id: str) -> dict[str, Any]:
    res = svc.spot(spot_id, lang, owner=caller.owner)
    if res is None:
        raise HTTPException(404, "no such spot")
    return res


# -- the dermatologist finder: a public directory, so no session is needed; the position is
# used for this answer only (never stored; the access log is off) ----------------------------
@clinics.get("", response_model=ClinicResults, responses={404: {"model": Problem},
                                                          422: {"model": Problem}},
             summary="Nearest dermatology clinics to a position or a city")
def find_clinics(svc: Service, lang: Language, response: Response,
                 lat: Annotated[float | None, Query(ge=-90, le=90)] = None,
                 lon: Annotated[float | None, Query(ge=-180, le=180)] = None,
                 city: Annotated[str | None, Query(max_length=120)] = None,
                 urgency: Annotated[str | None, Query(pattern="^(urgent|routine|self-care)$")]
                 = None,
                 limit: Annotated[int, Query(ge=1, le=50)] = 5) -> dict[str, Any]:
    response.headers["Cache-Control"] = "no-store"
    directory = svc.clinics
    advice = t("clinics.how_to_find", lang)
    if directory is None:
        return {"configured": False, "items": [], "advice": advice}
    if lat is not None and lon is not None:
        origin = (lat, lon)
    elif city and city.strip():
        found = directory.city_centre(city)
        if found is None:
            raise HTTPException(404, t("clinics.no_city", lang, city=city.strip()))
        origin = found
    else:
        raise HTTPException(422, "give lat and lon, or city")
    items = [{**c.model_dump(), "distance_km": round(d, 1)}
             for c, d in directory.nearest(*origin, urgent=urgency == "urgent", limit=limit)]
    return {"configured": True, "items": items, "advice": advice}


@clinics.get("/cities", response_model=ClinicCities, summary="Cities in the clinic directory")
def clinic_cities(svc: Service, lang: Language) -> dict[str, Any]:
    directory = svc.clinics
    return {"configured": directory is not None,
            "cities": directory.cities() if directory else [],
            "advice": t("clinics.how_to_find", lang)}


# -- sessions ----------------------------------------------------------------------------------
def _client(request: Request) -> str:
    return request.client.host if request.client else "unknown"


def _limit(request: Request, kind: str, *keys: str) -> None:
    """Count one ``kind`` event (signin, upload) for every key; 429 when over the limit."""
    limits = getattr(request.app.state, "limits", None)
    if limits is not None:
        limits.hit(kind, *keys)


PAGE_HEADER = "x-dermalab-page"


def _session_response(svc: Service, request: Request, response: Response, issued: Issued,
                      email: str | None, anonymous: bool) -> dict[str, Any]:
    """Set the session cookie; API clients also get the bearer token in the body, the page
    (which says so with ``X-Dermalab-Page``) does not: its session stays in the HttpOnly
    cookie, out of reach of any script."""
    response.set_cookie(cookie_name(svc.settings.cookie_secure), issued.token, httponly=True,
                        samesite="strict", secure=svc.settings.cookie_secure, path="/",
                        max_age=svc.accounts.session_days * 86400)
    response.headers["Cache-Control"] = "no-store"
    return {"mode": "accounts", "user_id": issued.user_id, "email": email,
            "anonymous": anonymous, "csrf_token": issued.csrf,
            "token": None if request.headers.get(PAGE_HEADER) else issued.token}


def _account_error(exc: AccountError) -> HTTPException:
    return HTTPException(exc.status, exc.detail)


def _no_accounts(svc: Service) -> None:
    if svc.settings.open:
        raise HTTPException(409, "this is a single-user install (--open): no accounts")


@auth.post("/anonymous", response_model=SessionOut, status_code=201,
           summary="A private session for this device, without an account")
def start_anonymous(request: Request, response: Response, svc: Service) -> dict[str, Any]:
    _no_accounts(svc)
    # A custom header: a cross-site form cannot send it, so no other site can swap this
    # browser's session for a fresh one.
    if request.headers.get("x-requested-with") != "dermalab":
        raise HTTPException(403, "send X-Requested-With: dermalab")
    _limit(request, "signin", f"ip:{_client(request)}")
    uid = svc.accounts.anonymous()
    return _session_response(svc, request, response, svc.accounts.issue(uid), None, True)


@auth.post("/signup", response_model=SessionOut, status_code=201,
           responses={409: {"model": Problem}, 422: {"model": Problem}, 429: {"model": Problem}},
           summary="Create an account (this device's analyses move into it)")
def sign_up(request: Request, response: Response, svc: Service, body: Credentials,
            caller: MaybeCaller) -> dict[str, Any]:
    _no_accounts(svc)
    _limit(request, "signin", f"ip:{_client(request)}")
    try:
        uid = svc.accounts.sign_up(body.email, body.password)
    except AccountError as exc:
        raise _account_error(exc) from None
    _adopt(svc, caller, uid)
    return _session_response(svc, request, response, svc.accounts.issue(uid),
                             normalise_email(body.email), False)


@auth.post("/signin", response_model=SessionOut,
           responses={401: {"model": Problem}, 429: {"model": Problem}},
           summary="Sign in (this device's anonymous analyses move into the account)")
def sign_in(request: Request, response: Response, svc: Service, body: Credentials,
            caller: MaybeCaller) -> dict[str, Any]:
    _no_accounts(svc)
    _limit(request, "signin", f"ip:{_client(request)}", f"email:{normalise_email(body.email)}")
    uid = svc.accounts.authenticate(body.email, body.password)
    if uid is None:
        raise HTTPException(401, "wrong email or password")
    _adopt(svc, caller, uid)
    return _session_response(svc, request, response, svc.accounts.issue(uid),
                             normalise_email(body.email), False)


def _adopt(svc: Service, caller: MaybeCaller, uid: str) -> None:
    """Move the calling anonymous device's analyses into account ``uid``."""
    if caller is not None and caller.session is not None and caller.session.anonymous:
        if caller.token:
            svc.accounts.revoke(caller.token)
        svc.attach(caller.session.user_id, uid)


@auth.get("/session", response_model=SessionOut, responses={401: {"model": Problem}},
          summary="The current session (or open mode)")
def current_session(svc: Service, caller: MaybeCaller, response: Response) -> dict[str, Any]:
    response.headers["Cache-Control"] = "no-store"
    if svc.settings.open:
        return {"mode": "open"}
    if caller is None or caller.session is None:
        raise HTTPException(401, "no session", headers={"WWW-Authenticate": "Bearer"})
    s = caller.session
    return {"mode": "accounts", "user_id": s.user_id, "email": s.email,
            "anonymous": s.anonymous, "csrf_token": s.csrf}


@auth.post("/signout", status_code=204, responses=AUTH, summary="End this session")
def sign_out(svc: Service, caller: Caller) -> Response:
    if caller.token:
        svc.accounts.revoke(caller.token)
    out = Response(status_code=204)
    _forget_cookie(out, svc)
    return out


def _forget_cookie(out: Response, svc: Service) -> None:
    secure = svc.settings.cookie_secure
    out.delete_cookie(cookie_name(secure), path="/", secure=secure, httponly=True,
                      samesite="strict")


# -- the account -------------------------------------------------------------------------------
@account.delete("", status_code=204,
                summary="Delete my account: the user, every analysis and every photo")
def delete_account(svc: Service, caller: Caller) -> Response:
    svc.delete_account(caller.user_id)
    out = Response(status_code=204)
    _forget_cookie(out, svc)
    return out


@account.get("/export", response_class=Response,
             summary="Download my data: a zip of my photos and analyses.json")
def export_account(svc: Service, caller: Caller) -> Response:
    return Response(svc.export(caller.user_id), media_type="application/zip",
                    headers={"Content-Disposition": 'attachment; filename="dermalab-data.zip"',
                             "Cache-Control": "private, no-store"})


@meta.get("/v1/model", response_model=ModelCard, summary="Model card")
def model_card(svc: Service) -> dict[str, Any]:
    return svc.model_card()


@meta.get("/v1/models", response_model=list[ModelCard],
          summary="Every served model (one per image type)")
def model_cards(svc: Service) -> list[dict[str, Any]]:
    return svc.model_cards()


@meta.get("/v1/messages", response_model=Messages, summary="The web page's texts")
def page_messages(lang: Language) -> dict[str, Any]:
    return {"language": lang, "languages": LANGUAGE_NAMES, "messages": messages(lang, "page.")}


@meta.get("/healthz", summary="Liveness, and whether accounts are on")
def healthz(svc: Service) -> dict[str, Any]:
    return {"status": "ok", "backend": svc.backend, "models": list(svc.models),
            "router": svc.router is not None, "ondevice": bool(svc.ondevice),
            # what the page may ask (optional age, sex, body site), when a model weighs them
            "metadata": svc.metadata_inputs(),
            "mode": "open" if svc.settings.open else "accounts"}


_STATIC = resources.files("dermalab.serve").joinpath("static")
_PAGE = _STATIC.joinpath("index.html").read_text("utf-8")


@page.get("/", response_class=HTMLResponse)
def index() -> str:
    return _PAGE


# -- on-device analysis: what the browser needs to analyse a photo without uploading it --------
@ondevice.get("", summary="Models the page can run in the browser")
def ondevice_models(svc: Service) -> dict[str, Any]:
    return {"available": bool(svc.ondevice), "runtime": "/ort/",
            "models": [{"name": b.name, "image_type": b.meta["image_type"],
                        "version": b.etag,
                        # versioned URLs: the page's service worker keeps them as they are
                        "bundle": f"/v1/ondevice/{b.name}/bundle.json?v={b.etag}",
                        "arrays": f"/v1/ondevice/{b.name}/arrays.bin?v={b.etag}",
                        "files": {kind: f"/v1/ondevice/{b.name}/{kind}.onnx?v={b.etag}"
                                  for kind in b.files},
                        "int8_note": b.meta["int8_note"]}
                       for b in svc.ondevice.values()],
            "router": None if (r := svc.ondevice_router) is None else {
                "version": r.etag, "bundle": f"/v1/ondevice/router.json?v={r.etag}",
                "arrays": f"/v1/ondevice/router.bin?v={r.etag}",
                "files": {"fp32": f"/v1/ondevice/router.onnx?v={r.etag}"}},
            "unavailable": svc.ondevice_off}


def _router(svc: Service) -> Any:
    if svc.ondevice_router is None:
        raise HTTPException(404, "this service has no image-type router for the page")
    return svc.ondevice_router


@ondevice.get("/router.json", summary="The image-type router: input, types, weights' index")
def ondevice_router_bundle(svc: Service) -> Response:
    r = _router(svc)
    return JSONResponse(r.meta, headers={**REVALIDATE, "ETag": f'"{r.etag}"'})


@ondevice.get("/router.bin", summary="The image-type router's standardisation and weights")
def ondevice_router_arrays(svc: Service) -> Response:
    r = _router(svc)
    return Response(r.arrays, media_type="application/octet-stream",
                    headers={**REVALIDATE, "ETag": f'"{r.etag}"'})


@ondevice.get("/router.onnx", summary="The image-type router's embedding (ONNX)")
def ondevice_router_model(svc: Service) -> Response:
    return FileResponse(_router(svc).files["fp32"], media_type="application/octet-stream",
                        headers=REVALIDATE)


def _bundle(svc: Service, name: str) -> Any:
    b = svc.ondevice.get(name)
    if b is None:
        raise HTTPException(404, f"no on-device model called {name!r}")
    return b


@ondevice.get("/{name}/bundle.json", summary="A model's preprocessing, thresholds and texts")
def ondevice_bundle(svc: Service, name: str) -> Response:
    b = _bundle(svc, name)
    return JSONResponse(b.meta, headers={**REVALIDATE, "ETag": f'"{b.etag}"'})


@ondevice.get("/{name}/arrays.bin", summary="A model's detector and heat-map arrays")
def ondevice_arrays(svc: Service, name: str) -> Response:
    b = _bundle(svc, name)
    return Response(b.arrays, media_type="application/octet-stream",
                    headers={**REVALIDATE, "ETag": f'"{b.etag}"'})


@ondevice.get("/{name}/{kind}.onnx", summary="A model's ONNX file (fp32 or int8)")
def ondevice_model_file(svc: Service, name: str, kind: Literal["fp32", "int8"]) -> Response:
    b = _bundle(svc, name)
    if kind not in b.files:
        raise HTTPException(404, f"{name} has no {kind} export")
    return FileResponse(b.files[kind], media_type="application/octet-stream",
                        headers=REVALIDATE)


ORT_TYPES = {".mjs": "text/javascript", ".wasm": "application/wasm"}


@ort.get("/{file}")
def ort_file(svc: Service, file: str) -> Response:
    """ONNX Runtime Web's files, from the npm package (only the ones the page loads)."""
    if svc.ort_dir is None or file not in ORT_FILES:
        raise HTTPException(404, "not found")
    path = svc.ort_dir / file
    return FileResponse(path, media_type=ORT_TYPES[path.suffix], headers=REVALIDATE)


@page.get("/sw.js")
def service_worker(svc: Service) -> Response:
    """The service worker, at the root so its scope is the whole page (offline use). Its
    cache is named after the ONNX Runtime Web version served, so an upgrade replaces it."""
    text = _STATIC.joinpath("sw.js").read_text("utf-8").replace(
        '"dermalab-ort-unknown"', f'"dermalab-ort-{svc.ort_version or "none"}"', 1)
    return Response(text, media_type="text/javascript", headers=REVALIDATE)


@page.get("/manifest.webmanifest")
def web_manifest() -> Response:
    """The web app manifest: the page installs to a phone's home screen."""
    return Response(_STATIC.joinpath("manifest.webmanifest").read_bytes(),
                    media_type="application/manifest+json", headers=REVALIDATE)
