"""What the page needs to analyse a photo in the browser, so the photo never leaves the device:
per served model, the exported ONNX file(s) and a *bundle* — the model's preprocessing, its
served decision (temperature, prior shift, the malignant operating point, the "not sure"
thresholds: :mod:`dermalab.core.decision`), both "not skin"
detectors and the closed-form Grad-CAM weights, plus every text the answer is worded with, in
every language. The browser (``static/ondevice/``) applies exactly the decision rules of
:meth:`dermalab.serve.service.AnalysisService.analyze` with them.

Numbers travel in two files: ``bundle.json`` (small ones) and ``arrays.bin`` (the feature
detector's class means and ``D x D`` precision matrix and the classifier weights, float32
little-endian, each named in ``bundle.json`` with its byte offset and shape): a 1,280-wide
precision matrix is 6.5 MB as float32 and would be ~3x that as JSON text.

ONNX Runtime Web itself is served from the ``onnxruntime-web`` npm package that
``scripts/setup.sh`` installs (``node_modules/onnxruntime-web/dist``): nothing is fetched from a
third-party origin.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from dermalab.core.i18n import LANGUAGES, messages
from dermalab.core.settings import settings
from dermalab.data.lesion import NEEDS_MASK
from dermalab.deploy.router import ImageRouter
from dermalab.serve.conditions import condition_text
from dermalab.serve.models import ServedModel

#: The files of onnxruntime-web the page loads (the WASM build, threaded and SIMD).
ORT_FILES = ("ort.wasm.min.mjs", "ort-wasm-simd-threaded.mjs", "ort-wasm-simd-threaded.wasm")
#: Message keys the on-device answer is worded with.
MESSAGE_PREFIXES = ("verdict.", "referral.", "disclaimer", "condition.no_", "routing.", "model.",
                    "image_type.")
MODEL_FILES = {"fp32": "model.onnx", "int8": "model.int8.onnx"}


def find_ort_dir(explicit: str | None = None) -> Path | None:
    """The ``onnxruntime-web`` dist folder: ``explicit``, ``$DERMALAB_ORT_DIR``, or the
    checkout's ``node_modules`` (where ``scripts/setup.sh`` puts it); ``None`` if absent."""
    env = settings().ort_dir
    candidates = [explicit, str(env) if env else None,
                  str(Path(__file__).resolve().parents[3] / "node_modules" / "onnxruntime-web"
                      / "dist")]
    for c in candidates:
        if c and all((Path(c) / f).is_file() for f in ORT_FILES):
            return Path(c)
    return None


def ort_version(dist: Path | None) -> str | None:
    """The version of the ``onnxruntime-web`` package whose ``dist`` folder this is."""
    if dist is None or not (dist.parent / "package.json").is_file():
        return None
    return str(json.loads((dist.parent / "package.json").read_text()).get("version"))


@dataclass
class Bundle:
    """One model's on-device bundle."""

    name: str
    meta: dict[str, Any]  # bundle.json
    arrays: bytes  # arrays.bin
    files: dict[str, Path] = field(default_factory=dict)  # model.onnx, model.int8.onnx

    @cached_property
    def etag(self) -> str:
        """A content hash, so the page (and its service worker) notices a new model; hashed
        once (6.5 MB of arrays), not on each of the several uses per request."""
        h = hashlib.sha256(json.dumps(self.meta, sort_keys=True).encode())
        h.update(self.arrays)
        for p in self.files.values():
            st = p.stat()
            h.update(f"{p.name}:{st.st_size}:{st.st_mtime_ns}".encode())
        return h.hexdigest()[:16]


#: The INT8 model is offered to the page only when, on validation images, its top class agrees
#: with the FP32 model's this often (``export --quantize int8`` measures it); else the page
#: runs FP32, which agrees with the server to float precision.
INT8_MIN_AGREEMENT = 0.98


def int8_gate(export: Path, need: float = INT8_MIN_AGREEMENT) -> str | None:
    """Why the INT8 export is not offered (``None``: it is, or there is none)."""
    if not (export / MODEL_FILES["int8"]).is_file():
        return None
    meta = json.loads((export / "model.json").read_text())
    q = (meta.get("extra") or {}).get("int8") or {}
    agreement = q.get("top1_agreement")
    if agreement is None:
        return "model.json has no INT8 check; run `dermalab export RUN --quantize int8` again"
    if agreement < need:
        return (f"INT8 agrees with FP32 on {agreement:.1%} of validation images (needs "
                f"{need:.0%}); the page runs FP32")
    return None


def unavailable_reason(model: ServedModel) -> str | None:
    """Why ``model`` cannot run in the browser, or ``None`` when it can."""
    if model.info.input_mode in NEEDS_MASK:
        return (f"data.input={model.info.input_mode} needs the lesion segmenter, which runs "
                "on the server only")
    if model.cam_weight is None:
        return "its heat-map needs Grad-CAM with gradients (no global-pool + linear head)"
    if model.ood_colour is None:
        return "its serving thresholds predate the colour detector; run `dermalab report " \
               "RUN --serving` again"
    if model.predictor.run_dir is None or not (
            model.predictor.run_dir / "export" / "model.onnx").is_file():
        return f"no ONNX export; run `dermalab export {model.predictor.run_dir}`"
    return None


def texts(conditions: dict[str, dict[str, Any]], classes: list[str],
          display_names: dict[str, str]) -> dict[str, Any]:
    """The answer's wording in every language: the catalogue's messages and each class's
    condition texts, worded as the server words them (:func:`condition_text`)."""
    return {lang: {"messages": messages(lang, MESSAGE_PREFIXES),
                   "conditions": {c: condition_text(conditions.get(c, {}), c, lang,
                                                    display_names) for c in classes}}
            for lang in LANGUAGES}


def _pack(arrays: dict[str, np.ndarray]) -> tuple[dict[str, Any], bytes]:
    """Float32 little-endian arrays back to back, with their offsets and shapes."""
    index: dict[str, Any] = {}
    chunks: list[bytes] = []
    offset = 0
    for name, a in arrays.items():
        b = np.ascontiguousarray(a, dtype="<f4").tobytes()
        index[name] = {"offset": offset, "shape": list(a.shape)}
        chunks.append(b)
        offset += len(b)
    return index, b"".join(chunks)


def make_bundle(model: ServedModel, conditions: dict[str, dict[str, Any]], top_k: int,
                int8_min_agreement: float = INT8_MIN_AGREEMENT) -> Bundle:
    """The bundle of a model that can run in the browser (see :func:`unavailable_reason`)."""
    info = model.info
    assert model.ood_colour is not None and model.cam_weight is not None
    export = Path(model.predictor.run_dir or ".") / "export"
    files = {kind: export / name for kind, name in MODEL_FILES.items()
             if (export / name).is_file()}
    int8_note = int8_gate(export, int8_min_agreement)
    if int8_note is not None:
        files.pop("int8", None)
    index, blob = _pack({"ood_means": model.ood.means, "ood_precision": model.ood.precision,
                         "cam_weight": model.cam_weight})
    decision = info.decision
    mal_classes = [info.classes[i] for i in decision.malignant_indices(info.classes)]
    meta = {
        "format": 1,
        "name": model.name,
        "image_type": model.image_type,
        "classes": list(info.classes),
        "image_size": info.image_size,
        "resize_mode": info.resize_mode,
        "mean": list(info.mean),
        "std": list(info.std),
        "temperature": decision.temperature,
        # the served prior shift -tau log pi, added to z / T (core.decision: servedLogits)
        "shift": decision.shift(len(info.classes)).tolist(),
        "malignant": ({"classes": mal_classes, "threshold": decision.malignant_threshold}
                      if mal_classes else None),
        "uncertain_threshold": model.uncertain_threshold,
        # the line for answers that weighed the person's metadata (None: use the one above)
        "uncertain_threshold_metadata": decision.uncertain_threshold_metadata,
        "top_k": top_k,
        "ood": {"threshold": model.ood.threshold, "means": "ood_means",
                "precision": "ood_precision"},
        "colour": {"threshold": model.ood_colour.threshold,
                   "means": model.ood_colour.means.tolist(),
                   "precision": model.ood_colour.precision.tolist()},
        "cam": {"weight": "cam_weight"},
        "arrays": index,
        "models": {kind: f"{kind}.onnx" for kind in files},
        "int8_note": int8_note,
        "texts": texts(conditions, list(info.classes), info.display_names),
        # the optional age / sex / body site, weighed as on the server (core/metadata.py)
        "metadata": info.metadata,
    }
    return Bundle(model.name, meta, blob, files)


def router_bundle(router: ImageRouter, model_detectors: bool,
                  second_opinion_below: float | None = None) -> Bundle:
    """The image-type router for the page (``static/ondevice/run.js``, ``route``): its
    embedding (``fp32.onnx``), input size and normalisation, types, and the logistic
    regression's standardisation and weights (``arrays.bin``). ``model_detectors``: whether
    a model's own "not skin" detectors also decide beside the router, as on the server
    (``ServeSettings.model_detectors``); ``second_opinion_below``: the server's line for
    asking the other model too (``ServeSettings.second_opinion_below``)."""
    index, blob = _pack({"shift": router.shift, "scale": router.scale, "coef": router.coef,
                         "intercept": router.intercept})
    meta = {"format": 1, "types": list(router.types), "size": router.size,
            "mean": list(router.mean), "std": list(router.std), "arrays": index,
            "model_detectors": model_detectors, "second_opinion_below": second_opinion_below}
    return Bundle("router", meta, blob, {"fp32": router.folder / "router.onnx"})


def bundles(models: dict[str, ServedModel], conditions: dict[str, dict[str, Any]], top_k: int,
            int8_min_agreement: float = INT8_MIN_AGREEMENT
            ) -> tuple[dict[str, Bundle], dict[str, str]]:
    """The bundles of the served models that can run in the browser, and why the others
    cannot (model name -> reason)."""
    ok: dict[str, Bundle] = {}
    why: dict[str, str] = {}
    for m in models.values():
        reason = unavailable_reason(m)
        if reason is None:
            ok[m.name] = make_bundle(m, conditions, top_k, int8_min_agreement)
        else:
            why[m.name] = reason
    return ok, why
