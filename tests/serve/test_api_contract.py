"""The API's contract (status codes, schemas, bad uploads, history paging) against a stub service
through ``dependency_overrides``: no trained model, milliseconds per test. The real-model tests
in ``test_app.py`` stay the acceptance layer."""

from __future__ import annotations

import inspect
import io
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any, ClassVar

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from dermalab.serve.app import create_app
from dermalab.serve.dependencies import get_history, get_service
from dermalab.serve.interfaces import AnalysisHistory, PhotoAnalysis
from dermalab.serve.schemas import DISCLAIMER, AnalysisOut, ModelCard
from dermalab.serve.settings import ServeSettings
from dermalab.serve.uploads import decode_upload


class StubService:
    """The service's interface with canned answers; uploads go through the real checks."""

    backend = "stub"
    models: ClassVar[dict[str, None]] = {"dermoscopic": None}
    router = None
    ondevice: ClassVar[dict[str, None]] = {}
    ondevice_off: ClassVar[dict[str, str]] = {"stub": "no ONNX export"}
    ondevice_router = None
    ort_dir = None
    ort_version = None
    clinics = None

    def __init__(self) -> None:
        # --open mode: the contract of the analyses routes, without accounts (tests/serve/
        # test_accounts.py covers sessions and ownership)
        self.settings = ServeSettings(run_dir="unused", max_upload_bytes=64 * 1024, open=True)
        self.rows: dict[str, dict[str, Any]] = {}
        self.seen: list[tuple[str, int]] = []
        self.languages: list[str] = []
        self.spots: list[str | None] = []
        self.image_types: list[str | None] = []
        self.metadata: list[dict[str, Any] | None] = []
        self.history = StubHistory(self.rows)

    def metadata_inputs(self) -> dict[str, Any] | None:
        return None

    def analyze(self, data: bytes, filename: str, lang: str = "en", owner: Any = None,
                spot: str | None = None, image_type: str | None = None,
                metadata: dict[str, Any] | None = None) -> dict[str, Any]:
        img = decode_upload(data, filename, self.settings)
        self.image_types.append(image_type)
        self.metadata.append(metadata)
        self.seen.append((filename, len(data)))
        self.spots.append(spot)
        self.languages.append(lang)
        aid = str(uuid.uuid4())
        res = {"id": aid, "created_at": datetime.now(UTC), "filename": filename,
               "verdict": "ok", "verdict_text": "Most likely: Naevus (80%).",
               "referral": "self-care", "referral_text": "Self-care is usually enough.",
               "conditions": [{"class_name": "nv", "name": "Naevus", "probability": 0.8,
                               "urgency": "self-care", "description": "A mole.",
                               "care": "None needed.", "see_doctor": "If it changes."}],
               "malignant_probability": 0.1, "malignant_threshold": 0.3, "ood_score": 1.0,
               "ood_threshold": 2.0, "ood_colour_score": None, "ood_colour_threshold": None,
               "uncertain_threshold": 0.5, "heatmap_png": None, "disclaimer": DISCLAIMER,
               "model": {"name": "stub", "image_type": "dermoscopic"},
               "routing": {"image_type": "dermoscopic", "chosen_by": "single",
                           "probabilities": None,
                           "text": "Answered by the dermoscopy model (the only model here)."},
               "size": img.size}
        self.rows[aid] = res
        return res

    def model_card(self) -> dict[str, Any]:
        return {"name": "stub", "image_type": "dermoscopic", "backbone": "stub",
                "classes": {"nv": "Naevus"}, "image_size": 64,
                "training_data": "none", "test_metrics": {"accuracy": None},
                "calibration": {"temperature": 1.0}, "malignant_operating_point": None,
                "inference_backend": "stub", "intended_use": "tests",
                "limitations": ["a stub"], "disclaimer": DISCLAIMER}

    def model_cards(self) -> list[dict[str, Any]]:
        return [self.model_card()]


class StubHistory:
    """The history's interface over the stub's analyses."""

    def __init__(self, rows: dict[str, dict[str, Any]]) -> None:
        self.rows = rows

    def get(self, analysis_id: str, lang: str = "en", owner: Any = None) -> dict[str, Any] | None:
        return self.rows.get(analysis_id)

    def page(self, limit: int, offset: int, lang: str = "en", owner: Any = None) -> dict[str, Any]:
        newest = list(reversed(self.rows.values()))
        items = [{"id": r["id"], "created_at": r["created_at"], "filename": r["filename"],
                  "verdict": r["verdict"], "referral": r["referral"],
                  "top_condition": "Naevus", "top_probability": 0.8}
                 for r in newest[offset:offset + limit]]
        return {"items": items, "total": len(newest), "limit": limit, "offset": offset}

    def delete(self, analysis_id: str, owner: Any = None) -> bool:
        return self.rows.pop(analysis_id, None) is not None

    def photo(self, analysis_id: str, owner: Any) -> bytes | None:
        return None

    def spots(self, owner: Any) -> list[dict[str, Any]]:
        return []

    def spot(self, spot_id: str, lang: str = "en", owner: Any = None) -> dict[str, Any] | None:
        return None


@pytest.mark.parametrize(("interface", "make"), [
    (PhotoAnalysis, lambda: StubService()), (AnalysisHistory, lambda: StubService().history)])
def test_the_stubs_satisfy_the_interfaces_the_routes_use(interface: type,
                                                         make: Callable[[], object]) -> None:
    """The stub has every member the routes may use, and its methods take the protocol's
    parameters (by name, in order), so these tests call the routes as the real services
    are called."""
    stub = make()
    missing = [m for m in vars(interface) if not m.startswith("_") and not hasattr(stub, m)]
    assert not missing and isinstance(stub, interface), missing
    for name, member in vars(interface).items():
        if name.startswith("_") or not inspect.isfunction(member):
            continue
        want = list(inspect.signature(member).parameters)[1:]
        assert list(inspect.signature(getattr(stub, name)).parameters) == want, name


@pytest.fixture
def stub() -> StubService:
    return StubService()


@pytest.fixture
def client(stub: StubService) -> Iterator[TestClient]:
    app = create_app(None)
    app.dependency_overrides[get_service] = lambda: stub
    app.dependency_overrides[get_history] = lambda: stub.history
    with TestClient(app) as c:
        yield c


def _png(size: tuple[int, int] = (64, 48), mode: str = "RGB") -> bytes:
    buf = io.BytesIO()
    Image.new(mode, size, 128 if mode != "RGB" else (180, 120, 100)).save(buf, "PNG")
    return buf.getvalue()


def test_create_returns_201_and_the_schema(client: TestClient, stub: StubService) -> None:
    r = client.post("/v1/analyses", files={"file": ("spot.png", _png())})
    assert r.status_code == 201, r.text
    body = AnalysisOut.model_validate(r.json())  # every documented field, right types
    assert body.filename == "spot.png" and body.conditions[0].class_name == "nv"
    assert "size" not in r.json()  # response_model drops what the schema does not document
    assert stub.seen == [("spot.png", len(_png()))]


def test_the_photo_type_is_passed_on_and_checked(client: TestClient, stub: StubService) -> None:
    for kind in ("clinical", "dermoscopic", "auto"):
        r = client.post("/v1/analyses", files={"file": ("a.png", _png())},
                        data={"image_type": kind})
        assert r.status_code == 201, r.text
    assert client.post("/v1/analyses", files={"file": ("a.png", _png())}).status_code == 201
    assert stub.image_types == ["clinical", "dermoscopic", "auto", "auto"]
    r = client.post("/v1/analyses", files={"file": ("a.png", _png())},
                    data={"image_type": "microscope"})
    assert r.status_code == 422 and len(stub.image_types) == 4


def test_age_sex_and_site_are_optional_and_checked(client: TestClient, stub: StubService
                                                   ) -> None:
    ok = [{}, {"age": "0"}, {"age": "64.5", "sex": "female", "site": "back"}, {"site": ""}]
    for form in ok:
        r = client.post("/v1/analyses", files={"file": ("a.png", _png())}, data=form)
        assert r.status_code == 201, r.text
    assert stub.metadata == [None, {"age": 0.0},
                             {"age": 64.5, "sex": "female", "site": "back"}, None]
    for form in ({"age": "-1"}, {"age": "121"}, {"age": "old"}, {"sex": "other"},
                 {"site": "x" * 41}):
        r = client.post("/v1/analyses", files={"file": ("a.png", _png())}, data=form)
        assert r.status_code == 422, form
    assert len(stub.metadata) == 4


def test_heic_and_large_phone_photos_are_read() -> None:
    """An iPhone HEIC photo decodes (pillow-heif); a 12 MP JPEG is decoded in draft mode and
    a large PNG box-reduced, both still at least decode_side pixels a side."""
    settings = ServeSettings(run_dir="unused", max_upload_bytes=50 * 1024 * 1024)
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 255, (300, 400, 3), np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "HEIF", quality=90)
    assert buf.getvalue()[4:12] in (b"ftypheic", b"ftypmif1", b"ftypheix")
    img = decode_upload(buf.getvalue(), "IMG_0001.HEIC", settings)
    assert img.size == (400, 300) and img.mode == "RGB"
    # the colours survive the HEVC round trip roughly (a wrong decoder gives noise or grey)
    assert abs(np.asarray(img, float).mean() - pixels.mean()) < 3
    big = Image.fromarray(np.repeat(np.repeat(pixels, 10, 0), 10, 1))  # 4000x3000 = 12 MP
    for fmt in ("JPEG", "PNG"):
        buf = io.BytesIO()
        big.save(buf, fmt)
        img = decode_upload(buf.getvalue(), f"big.{fmt.lower()}", settings)
        assert min(img.size) >= settings.decode_side and max(img.size) <= 2000, (fmt, img.size)
        assert img.size[0] * 3 == img.size[1] * 4  # the aspect ratio is kept


@pytest.mark.parametrize(("name", "data", "status", "words"), [
    ("notes.jpg", b"%PDF-1.4 not a picture" * 10, 415, "not an image"),
    ("empty.jpg", b"", 415, "empty.jpg"),
    ("tiny.png", _png((8, 8)), 422, "at least"),
    ("huge.png", b"\x89PNG" + b"0" * (64 * 1024 + 10), 413, "larger than"),
])
def test_bad_uploads_get_their_status_and_one_clear_line(
        client: TestClient, stub: StubService, name: str, data: bytes, status: int,
        words: str) -> None:
    r = client.post("/v1/analyses", files={"file": (name, data)})
    assert r.status_code == status, r.text
    detail = r.json()["detail"]
    assert words in detail and name in detail and "\n" not in detail
    assert "Traceback" not in r.text
    assert stub.rows == {}  # nothing stored for a refused upload


def test_upload_reads_no_more_than_the_limit(client: TestClient, stub: StubService) -> None:
    big = b"\xff\xd8\xff" + b"x" * (10 * stub.settings.max_upload_bytes)
    r = client.post("/v1/analyses", files={"file": ("big.jpg", big)})
    assert r.status_code == 413
    assert stub.seen == []


def test_missing_file_field_is_422(client: TestClient) -> None:
    r = client.post("/v1/analyses", data={"other": "x"})
    assert r.status_code == 422


def test_history_paging_newest_first_and_delete(client: TestClient) -> None:
    ids = [client.post("/v1/analyses", files={"file": (f"{i}.png", _png())}).json()["id"]
           for i in range(5)]
    first = client.get("/v1/analyses", params={"limit": 2}).json()
    second = client.get("/v1/analyses", params={"limit": 2, "offset": 2}).json()
    assert [x["id"] for x in first["items"]] == ids[::-1][:2]
    assert [x["id"] for x in second["items"]] == ids[::-1][2:4]
    assert first["total"] == 5 and second["offset"] == 2
    assert client.get(f"/v1/analyses/{ids[0]}").json()["id"] == ids[0]
    assert client.delete(f"/v1/analyses/{ids[0]}").status_code == 204
    assert client.get(f"/v1/analyses/{ids[0]}").status_code == 404
    assert client.delete(f"/v1/analyses/{ids[0]}").status_code == 404
    assert client.get("/v1/analyses").json()["total"] == 4


@pytest.mark.parametrize("params", [{"limit": 0}, {"limit": 101}, {"offset": -1},
                                    {"limit": "many"}])
def test_paging_parameters_are_bounded(client: TestClient, params: dict[str, Any]) -> None:
    assert client.get("/v1/analyses", params=params).status_code == 422


def test_model_card_health_page_and_openapi(client: TestClient) -> None:
    ModelCard.model_validate(client.get("/v1/model").json())
    assert [ModelCard.model_validate(c).name for c in client.get("/v1/models").json()] == ["stub"]
    assert client.get("/healthz").json() == {"status": "ok", "backend": "stub", "mode": "open",
                                              "models": ["dermoscopic"], "router": False,
                                              "ondevice": False, "metadata": None}
    assert client.get("/v1/ondevice").json() == {
        "available": False, "runtime": "/ort/", "models": [], "router": None,
        "unavailable": {"stub": "no ONNX export"}}
    assert client.get("/v1/ondevice/stub/bundle.json").status_code == 404
    for part in ("router.json", "router.bin", "router.onnx"):  # no router here
        r = client.get(f"/v1/ondevice/{part}")
        assert r.status_code == 404 and "router" in r.json()["detail"]
    assert client.get("/ort/ort.wasm.min.mjs").status_code == 404  # no runtime installed
    sw = client.get("/sw.js")
    assert sw.headers["content-type"].startswith("text/javascript")
    assert '"dermalab-ort-none"' in sw.text  # the cache is named after the runtime served
    # it keeps the page's texts in every language, each under its own address
    assert '"/v1/messages?lang=en", "/v1/messages?lang=ko"' in sw.text
    assert client.get("/v1/messages?lang=ko").json()["language"] == "ko"
    assert client.get("/manifest.webmanifest").json()["start_url"] == "/"
    assert "Not a diagnosis" in client.get("/").text
    spec = client.app.openapi()  # /openapi.json is served with --docs only
    assert set(spec["paths"]) == {
        "/v1/analyses", "/v1/analyses/{analysis_id}", "/v1/analyses/{analysis_id}/photo",
        "/v1/spots", "/v1/spots/{spot_id}", "/v1/clinics", "/v1/clinics/cities",
        "/v1/auth/anonymous", "/v1/auth/signup", "/v1/auth/signin", "/v1/auth/session",
        "/v1/auth/signout", "/v1/auth/signout-everywhere", "/v1/account", "/v1/account/export",
        "/v1/model", "/v1/models",
        "/v1/messages", "/v1/ondevice", "/v1/ondevice/{name}/bundle.json",
        "/v1/ondevice/{name}/arrays.bin", "/v1/ondevice/{name}/{kind}.onnx",
        "/v1/ondevice/router.json", "/v1/ondevice/router.bin", "/v1/ondevice/router.onnx",
        "/healthz"}
    post = spec["paths"]["/v1/analyses"]["post"]["responses"]
    assert {"201", "413", "415", "422"} <= set(post)


def test_no_service_is_503_not_a_crash() -> None:
    with TestClient(create_app(None)) as c:
        r = c.get("/healthz")
    assert r.status_code == 503 and r.json()["detail"] == "the model is not loaded"


def test_unexpected_errors_hide_internals(stub: StubService) -> None:
    def boom(limit: int, offset: int, lang: str = "en", owner: Any = None) -> dict[str, Any]:
        raise RuntimeError("secret internal state")

    stub.history.page = boom  # type: ignore[method-assign]
    app = create_app(None)
    app.dependency_overrides[get_service] = lambda: stub
    app.dependency_overrides[get_history] = lambda: stub.history
    with TestClient(app, raise_server_exceptions=False) as c:
        r = c.get("/v1/analyses")
    assert r.status_code == 500 and r.json() == {"detail": "internal error"}
    assert "secret" not in r.text


@pytest.mark.parametrize(("header", "query", "want"), [
    ("ko-KR,ko;q=0.9,en;q=0.8", None, "ko"), ("en-GB", None, "en"), ("fr-FR,de;q=0.5", None, "en"),
    (None, None, "en"), ("de, ko;q=0.2", None, "ko"), ("ko-KR", "en", "en"), (None, "ko", "ko"),
])
def test_the_language_follows_accept_language_or_lang(
        client: TestClient, stub: StubService, header: str | None, query: str | None,
        want: str) -> None:
    headers = {"Accept-Language": header} if header else {}
    params = {"lang": query} if query else {}
    r = client.post("/v1/analyses", files={"file": ("a.png", _png())}, headers=headers,
                    params=params)
    assert r.status_code == 201 and stub.languages == [want]
    m = client.get("/v1/messages", headers=headers, params=params).json()
    assert m["language"] == want and m["languages"] == {"en": "English", "ko": "한국어"}
    assert m["messages"]["page.analyse"] == {"en": "Analyse photo", "ko": "사진 분석하기"}[want]


def test_upload_errors_in_korean(client: TestClient) -> None:
    r = client.post("/v1/analyses", files={"file": ("tiny.png", _png((8, 8)))},
                    headers={"Accept-Language": "ko-KR"})
    assert r.status_code == 422
    assert r.json()["detail"] == ("tiny.png: 사진 크기가 8x8픽셀입니다. 가로와 세로가 각각 "
                                  "32픽셀 이상이어야 합니다.")
    r = client.post("/v1/analyses", files={"file": ("x.jpg", b"not an image" * 5)},
                    headers={"Accept-Language": "ko"})
    assert r.status_code == 415 and "JPEG, HEIC, PNG, WebP" in r.json()["detail"]
    assert "사진 파일로 읽을 수 없습니다" in r.json()["detail"]


@pytest.mark.parametrize(("verdict", "mal_p", "mal_t", "want"), [
    ("not_skin", 0.9, 0.3, "not_skin"),    # no referral for what is not skin
    ("ok", 0.31, 0.3, "malignant"),        # at or above the operating point: urgent
    ("uncertain", 0.3, 0.3, "malignant"),  # ... even when the model is unsure
    ("uncertain", 0.1, 0.3, "uncertain"),
    ("ok", 0.1, 0.3, "condition"), ("ok", None, None, "condition"),
])
def test_referral_reason(verdict: str, mal_p: float | None, mal_t: float | None,
                         want: str) -> None:
    from dermalab.serve.answer import referral_reason

    assert referral_reason(verdict, mal_p, mal_t) == want
