"""The analysis service: one loaded model shared by all requests.

Inference runs through ONNX Runtime when the run has an export (thread-safe sessions), else
PyTorch. Heat-maps are Grad-CAM at the final feature map: in closed form (no hooks, thread-safe)
for global-average-pool + linear heads, else pytorch-grad-cam on a small pool of model replicas,
one per concurrent request, since it attaches hooks to the model it is given. Nothing else is
shared and mutable across requests.
"""

from __future__ import annotations

import base64
import copy
import io
import json
import os
import queue
import uuid
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from PIL import Image

from dermalab.core.calibration import calibrated_probs, malignant_score
from dermalab.core.errors import DermalabError, ImageError
from dermalab.core.runs import RunPaths, read_metrics
from dermalab.data.images import open_rgb, resize_rgb
from dermalab.deploy.ood import MahalanobisOOD, colour_statistics
from dermalab.deploy.predictor import Predictor
from dermalab.serve.schemas import DISCLAIMER
from dermalab.serve.store import Analysis, HistoryStore, ImageStore, now


@dataclass(frozen=True)
class ServeSettings:
    """Service configuration."""

    run_dir: str
    database_url: str | None = None  # default sqlite:///<run_dir>/serving/history.db
    image_store: str | None = None  # folder or s3://bucket/prefix; default <run_dir>/serving/
    max_upload_bytes: int = 15 * 1024 * 1024
    max_pixels: int = 40_000_000
    min_side: int = 32
    top_k: int = 3
    heatmap_size: int = 224
    cam_workers: int = min(4, os.cpu_count() or 1)  # concurrent Grad-CAMs (model replicas)
    fast_cam: bool = True  # closed-form Grad-CAM at the last feature map where it is exact


class UploadError(DermalabError):
    """An upload that cannot be analysed; ``status`` is the HTTP status to answer."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail


def load_conditions() -> dict[str, dict[str, Any]]:
    """The curated condition information, indexed by class name and by every alias."""
    text = resources.files("dermalab.serve").joinpath("conditions.yaml").read_text("utf-8")
    raw: dict[str, dict[str, Any]] = yaml.safe_load(text)
    out: dict[str, dict[str, Any]] = {}
    for key, entry in raw.items():
        out[key] = entry
        for alias in entry.get("aliases", []):
            out.setdefault(str(alias), entry)
    return out


def decode_upload(data: bytes, filename: str, settings: ServeSettings) -> Image.Image:
    """Sniff and decode an upload; map problems to HTTP statuses with clear messages.

    Raises:
        UploadError: 413 too many bytes or pixels, 415 not an image, 422 an image that cannot
            be analysed (truncated, too small).
    """
    if len(data) > settings.max_upload_bytes:
        raise UploadError(413, f"{filename}: the file is larger than "
                               f"{settings.max_upload_bytes // (1024 * 1024)} MB")
    try:
        img = open_rgb(data, name=filename, max_pixels=settings.max_pixels)
    except ImageError as exc:
        reason = exc.reason
        if exc.kind == "not_image":
            raise UploadError(415, f"{filename}: {reason}; upload a JPEG, PNG, WebP, BMP, TIFF "
                                   "or GIF photo") from None
        if exc.kind == "too_large":
            raise UploadError(413, f"{filename}: {reason}") from None
        raise UploadError(422, f"{filename}: {reason}") from None
    if min(img.size) < settings.min_side:
        raise UploadError(422, f"{filename}: the image is {img.size[0]}x{img.size[1]} pixels; "
                               f"at least {settings.min_side} pixels on each side are needed")
    return img


def check_servable(paths: RunPaths) -> None:
    """A finished run with serving thresholds, or a one-line error saying what to run."""
    paths.require_model("serve")
    read_metrics(paths)  # finished?
    if not (paths.serving / "ood.npz").is_file():
        raise DermalabError(f"{paths.root}: no serving thresholds; run `dermalab report "
                            f"{paths.root} --serving` once to fit them")


class AnalysisService:
    """Loads the model, thresholds, condition information and stores once."""

    def __init__(self, settings: ServeSettings) -> None:
        paths = RunPaths(Path(settings.run_dir))
        check_servable(paths)
        run_dir, serving = paths.root, paths.serving
        self.settings = settings
        self.predictor = Predictor.load(run_dir)
        if self.predictor.torch_model is None:
            raise DermalabError(f"{run_dir}: the web service needs a run directory")
        self.info = self.predictor.info
        self.ood = MahalanobisOOD.load(serving / "ood.npz")
        colour = serving / "ood_colour.npz"
        self.ood_colour = MahalanobisOOD.load(colour) if colour.is_file() else None
        self.thresholds = json.loads((serving / "serving.json").read_text())
        self.metrics = read_metrics(paths)
        self.conditions = load_conditions()
        self.history = HistoryStore(settings.database_url
                                    or f"sqlite:///{(serving / 'history.db').resolve()}")
        self.images = ImageStore(settings.image_store or str(serving / "uploads"))
        # For global-average-pool + linear heads, Grad-CAM at the final feature map has a
        # closed form (one forward pass, no hooks, thread-safe). Otherwise pytorch-grad-cam runs,
        # and since it hooks the model it is given, each concurrent request needs its own copy:
        # a small pool of replicas (the models are small) instead of one global lock.
        from dermalab.evaluate.explain import has_linear_gap_head

        self._closed_form_cam = settings.fast_cam and has_linear_gap_head(
            self.predictor.torch_model)
        head = self.predictor.torch_model.get_classifier()
        self._head_weight = head.weight.detach().float().numpy() if self._closed_form_cam \
            else None
        self._cam_models: queue.Queue[Any] = queue.Queue()
        if not self._closed_form_cam:
            for _ in range(max(1, settings.cam_workers)):
                self._cam_models.put(copy.deepcopy(self.predictor.torch_model).eval())
        self.run_name = run_dir.resolve().name

    @property
    def backend(self) -> str:
        """``onnxruntime`` or ``torch``."""
        return self.predictor.backend

    # -- inputs --------------------------------------------------------------------------------
    def decode(self, data: bytes, filename: str) -> Image.Image:
        """Sniff and decode an upload (see :func:`decode_upload`)."""
        return decode_upload(data, filename, self.settings)

    # -- analysis ------------------------------------------------------------------------------
    def _condition(self, cls: str, p: float) -> dict[str, Any]:
        entry = self.conditions.get(cls, {})
        return {"class_name": cls,
                "name": entry.get("name") or self.info.display_names.get(cls, cls),
                "probability": p,
                "urgency": entry.get("urgency", "routine"),
                "description": entry.get("description", "No description available."),
                "care": entry.get("care", "Ask a pharmacist or doctor for advice."),
                "see_doctor": entry.get("see_doctor", "See a doctor if you are worried.")}

    def heatmap(self, image: np.ndarray, class_index: int,
                feature_map: np.ndarray | None = None) -> str:
        """Grad-CAM overlay as a PNG data URL (closed form from the final feature map where
        exact, else pytorch-grad-cam)."""
        from dermalab.evaluate.explain import cam_from_feature_map, cam_maps, overlay

        if self._head_weight is not None and feature_map is not None:
            maps = cam_from_feature_map(feature_map, self._head_weight, [class_index],
                                        image.shape[0])
        else:
            model = self._cam_models.get()
            try:
                maps, _ = cam_maps(model, self.info.backbone, image[None], self.info.mean,
                                   self.info.std, [class_index], with_logits=False)
            finally:
                self._cam_models.put(model)
        ov = overlay(image, maps[0], size=self.settings.heatmap_size)
        buf = io.BytesIO()
        # Fast zlib level: "optimize" cost ~80 ms per request for a few kB.
        Image.fromarray(ov).save(buf, "PNG", compress_level=1)
        return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()

    def analyze(self, data: bytes, filename: str) -> dict[str, Any]:
        """Decode, predict, decide, explain and store one upload."""
        img = self.decode(data, filename)
        arr = np.asarray(resize_rgb(img, self.info.image_size, self.info.resize_mode),
                         dtype=np.uint8)
        logits, feats, fmap = self.predictor.forward_all(arr[None])
        probs = calibrated_probs(logits, self.info.temperature)[0]
        ood_score = float(self.ood.score(feats)[0])
        colour_score = (float(self.ood_colour.score(colour_statistics(arr[None]))[0])
                        if self.ood_colour is not None else None)
        colour_ood = colour_score is not None and self.ood_colour is not None and \
            colour_score > self.ood_colour.threshold
        t_unsure = float(self.thresholds["uncertain_threshold"])
        mal = self.info.malignant or {}
        mal_classes = [c for c in mal.get("classes", []) if c in self.info.classes]
        mal_p = (float(malignant_score(probs[None], self.info.classes, mal_classes)[0])
                 if mal_classes else None)
        mal_t = float(mal["threshold"]) if mal.get("threshold") is not None else None
        order = np.argsort(-probs)[: self.settings.top_k]
        conditions = [self._condition(self.info.classes[i], float(probs[i])) for i in order]
        heat = None
        if ood_score > self.ood.threshold or colour_ood:
            verdict, referral = "not_skin", None
            verdict_text = ("This does not look like a close-up photo of skin like the ones the "
                            "model was trained on, so no result is shown.")
            referral_text = ("If you have a skin concern, take a sharp, well-lit close-up of "
                             "the spot and try again, or see a doctor.")
            conditions = []
        else:
            top = float(probs[order[0]])
            verdict = "ok" if top >= t_unsure else "uncertain"
            verdict_text = (f"Most likely: {conditions[0]['name']} ({top:.0%})." if verdict == "ok"
                            else "The model is not sure: no condition is clearly more likely "
                                 "than the others.")
            if mal_p is not None and mal_t is not None and mal_p >= mal_t:
                referral = "urgent"
                referral_text = ("Some features suggest a possibly malignant lesion "
                                 f"({mal_p:.0%} combined). Please see a dermatologist soon, "
                                 "within two weeks.")
            elif verdict == "uncertain":
                referral = "routine"
                referral_text = ("Because the result is uncertain, have the spot checked by a "
                                 "doctor or dermatologist at a routine appointment.")
            else:
                referral = conditions[0]["urgency"]
                referral_text = {
                    "urgent": "Please see a dermatologist soon, within two weeks.",
                    "routine": "Book a routine appointment with a doctor or dermatologist.",
                    "self-care": "Self-care is usually enough; see a doctor if it changes, "
                                 "bleeds, or does not improve.",
                }[referral]
            heat = self.heatmap(arr, int(order[0]), fmap)
        analysis_id = str(uuid.uuid4())
        created = now()
        result: dict[str, Any] = {
            "id": analysis_id, "created_at": created, "filename": filename[:255],
            "verdict": verdict, "verdict_text": verdict_text, "referral": referral,
            "referral_text": referral_text, "conditions": conditions,
            "malignant_probability": mal_p, "malignant_threshold": mal_t,
            "ood_score": ood_score, "ood_threshold": self.ood.threshold,
            "ood_colour_score": colour_score,
            "ood_colour_threshold": self.ood_colour.threshold if self.ood_colour else None,
            "uncertain_threshold": t_unsure, "heatmap_png": heat, "disclaimer": DISCLAIMER,
        }
        with Image.open(io.BytesIO(data)) as header:  # decoded fine above; only the format
            ext = (header.format or "bin").lower()
        ref = self.images.put(f"{analysis_id}.{ext}", data)
        self.history.add(Analysis(
            id=analysis_id, created_at=created, filename=result["filename"],
            verdict=verdict, referral=referral, image_ref=ref, size_bytes=len(data),
            result_json=json.dumps({**result, "created_at": created.isoformat()})))
        return result

    # -- history -------------------------------------------------------------------------------
    def get(self, analysis_id: str) -> dict[str, Any] | None:
        """A stored analysis."""
        row = self.history.get(analysis_id)
        return json.loads(row.result_json) if row else None

    def page(self, limit: int, offset: int) -> dict[str, Any]:
        """A page of summaries."""
        rows, total = self.history.page(limit, offset)
        items = []
        for r in rows:
            res = json.loads(r.result_json)
            top = res["conditions"][0] if res["conditions"] else None
            items.append({"id": r.id, "created_at": res["created_at"], "filename": r.filename,
                          "verdict": r.verdict, "referral": r.referral,
                          "top_condition": top["name"] if top else None,
                          "top_probability": top["probability"] if top else None})
        return {"items": items, "total": total, "limit": limit, "offset": offset}

    def delete(self, analysis_id: str) -> bool:
        """Delete an analysis and its stored image."""
        row = self.history.delete(analysis_id)
        if row is None:
            return False
        self.images.delete(row.image_ref)
        return True

    def model_card(self) -> dict[str, Any]:
        """The model card."""
        m = self.metrics
        mal = m.get("malignant") or None
        return {
            "backbone": self.info.backbone,
            "classes": {c: self.info.display_names.get(c, c) for c in self.info.classes},
            "image_size": self.info.image_size,
            "training_data": str(m.get("split", {}).get("origin", "")) + " — "
                             + ", ".join(f"{k}: {sum(v.values())}" for k, v in
                                         m.get("split", {}).get("counts", {}).items()),
            "test_metrics": {k: m.get(k) for k in ("accuracy", "balanced_accuracy", "macro_f1",
                                                    "roc_auc_macro")},
            "calibration": {k: m.get(k) for k in ("temperature", "ece_before", "ece_after")},
            "malignant_operating_point": ({k: mal.get(k) for k in
                                           ("threshold", "sensitivity", "specificity")}
                                          if mal else None),
            "inference_backend": self.predictor.backend,
            "intended_use": "Education and decision support for people with a skin concern and "
                            "for researchers; it suggests likely conditions and when to see a "
                            "doctor. It does not diagnose.",
            "limitations": [
                "Trained on dermoscopic images (HAM10000-style); phone photos of skin differ "
                "and results on them are less reliable.",
                "Knows only its training classes; other conditions are reported as the "
                "closest known class or as uncertain.",
                "Skin tones, body sites and ages that are rare in the training data may have "
                "lower accuracy (see the subgroup table in the run's report).",
                "Probabilities are calibrated on the validation split of the training data, "
                "not on the population that uses this page.",
            ],
            "disclaimer": DISCLAIMER,
        }
