"""On-device analysis: what the browser needs to analyse a photo without uploading it,
and ONNX Runtime Web's files."""

from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter, HTTPException
from fastapi.responses import FileResponse, JSONResponse, Response

from dermalab.serve.dependencies import (
    Service,
)
from dermalab.serve.ondevice import ORT_FILES
from dermalab.serve.routers._common import (
    REVALIDATE,
)

ondevice = APIRouter(prefix="/v1/ondevice", tags=["on-device"])
ort = APIRouter(prefix="/ort", include_in_schema=False)


# -- on-device analysis: what the browser needs to analyse a photo without uploading it --------
@ondevice.get("", summary="Models the page can run in the browser")
def ondevice_models(svc: Service) -> dict[str, Any]:
    return {
        "available": bool(svc.ondevice),
        "runtime": "/ort/",
        "models": [
            {
                "name": b.name,
                "image_type": b.meta["image_type"],
                "version": b.etag,
                # versioned URLs: the page's service worker keeps them as they are
                "bundle": f"/v1/ondevice/{b.name}/bundle.json?v={b.etag}",
                "arrays": f"/v1/ondevice/{b.name}/arrays.bin?v={b.etag}",
                "files": {
                    kind: f"/v1/ondevice/{b.name}/{kind}.onnx?v={b.etag}" for kind in b.files
                },
                "int8_note": b.meta["int8_note"],
            }
            for b in svc.ondevice.values()
        ],
        "router": None
        if (r := svc.ondevice_router) is None
        else {
            "version": r.etag,
            "bundle": f"/v1/ondevice/router.json?v={r.etag}",
            "arrays": f"/v1/ondevice/router.bin?v={r.etag}",
            "files": {"fp32": f"/v1/ondevice/router.onnx?v={r.etag}"},
        },
        "unavailable": svc.ondevice_off,
    }


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
    return Response(
        r.arrays,
        media_type="application/octet-stream",
        headers={**REVALIDATE, "ETag": f'"{r.etag}"'},
    )


@ondevice.get("/router.onnx", summary="The image-type router's embedding (ONNX)")
def ondevice_router_model(svc: Service) -> Response:
    return FileResponse(
        _router(svc).files["fp32"], media_type="application/octet-stream", headers=REVALIDATE
    )


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
    return Response(
        b.arrays,
        media_type="application/octet-stream",
        headers={**REVALIDATE, "ETag": f'"{b.etag}"'},
    )


@ondevice.get("/{name}/{kind}.onnx", summary="A model's ONNX file (fp32 or int8)")
def ondevice_model_file(svc: Service, name: str, kind: Literal["fp32", "int8"]) -> Response:
    b = _bundle(svc, name)
    if kind not in b.files:
        raise HTTPException(404, f"{name} has no {kind} export")
    return FileResponse(b.files[kind], media_type="application/octet-stream", headers=REVALIDATE)


ORT_TYPES = {".mjs": "text/javascript", ".wasm": "application/wasm"}


@ort.get("/{file}")
def ort_file(svc: Service, file: str) -> Response:
    """ONNX Runtime Web's files, from the npm package (only the ones the page loads)."""
    if svc.ort_dir is None or file not in ORT_FILES:
        raise HTTPException(404, "not found")
    path = svc.ort_dir / file
    return FileResponse(path, media_type=ORT_TYPES[path.suffix], headers=REVALIDATE)
