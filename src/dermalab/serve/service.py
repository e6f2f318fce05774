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
from dermalab.core.i18n import DEFAULT_LANGUAGE, t
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
    """An upload that cannot be analysed; ``status`` is the HTTP status to answer, ``key`` and
    ``params`` the catalogue message (``detail`` is it in English)."""

    def __init__(self, status: int, key: str, **params: Any) -> None:
        self.status, self.key, self.params = status, key, params
        self.detail = t(key, DEFAULT_LANGUAGE, **params)
        super().__init__(self.detail)

    def localized(self, lang: str) -> str:
        """The message in ``lang``."""
        return t(self.key, lang, **self.params)


def percent(p: float) -> str:
    """``0.812`` -> ``81%`` (the same in every supported language)."""
    return f"{p:.0%}"


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


def referral_reason(verdict: str, mal_p: float | None, mal_t: float | None) -> str:
    """Why an analysis gets its referral: ``not_skin``; ``malignant`` (the malignant score
    reached its operating point: urgent, whatever the top condition); ``uncertain`` (routine
    check); else ``condition`` (the top condition's own urgency)."""
    if verdict == "not_skin":
        return "not_skin"
    if mal_p is not None and mal_t is not None and mal_p >= mal_t:
        return "malignant"
    return "uncertain" if verdict == "uncertain" else "condition"


def decode_upload(data: bytes, filename: str, settings: ServeSettings) -> Image.Image:
    """Sniff and decode an upload; map problems to HTTP statuses with clear messages.

    Raises:
        UploadError: 413 too many bytes or pixels, 415 not an image, 422 an image that cannot
            be analysed (truncated, too small).
    """
    if len(data) > settings.max_upload_bytes:
        raise UploadError(413, "upload.too_many_bytes", filename=filename,
                          mb=settings.max_upload_bytes // (1024 * 1024))
    try:
        img = open_rgb(data, name=filename, max_pixels=settings.max_pixels)
    except ImageError as exc:
        status, key = {"not_image": (415, "upload.not_image"),
                       "too_large": (413, "upload.too_large")}.get(exc.kind,
                                                                     (422, "upload.unusable"))
        raise UploadError(status, key, filename=filename, reason=exc.reason) from None
    if min(img.size) < settings.min_side:
        raise UploadError(422, "upload.too_small", filename=filename, width=img.size[0],
                          height=img.size[1], min_side=settings.min_side)
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

    # -- analysis ------------------------------------------------------------------------------
    def _condition(self, cls: str, p: float, lang: str = DEFAULT_LANGUAGE) -> dict[str, Any]:
        entry = self.conditions.get(cls, {})
        local = {**entry, **(entry.get(lang) or {})}  # the language's texts over English
        return {"class_name": cls,
                "name": local.get("name") or self.info.display_names.get(cls, cls),
                "probability": p,
                "urgency": entry.get("urgency", "routine"),
                "description": local.get("description") or t("condition.no_description", lang),
                "care": local.get("care") or t("condition.no_care", lang),
                "see_doctor": local.get("see_doctor") or t("condition.no_see_doctor", lang)}

    def localize(self, result: dict[str, Any], lang: str) -> dict[str, Any]:
        """An analysis with every plain-language field in ``lang``, rendered from its facts
        (verdict, referral, conditions and probabilities), so stored analyses can be read in
        any language."""
        out = dict(result)
        conditions = [self._condition(c["class_name"], c["probability"], lang)
                      for c in result["conditions"]]
        verdict, mal_p, mal_t = (result["verdict"], result.get("malignant_probability"),
                                 result.get("malignant_threshold"))
        reason = referral_reason(verdict, mal_p, mal_t)
        if verdict == "not_skin":
            verdict_text = t("verdict.not_skin", lang)
        elif verdict == "ok":
            verdict_text = t("verdict.ok", lang, name=conditions[0]["name"],
                             probability=percent(conditions[0]["probability"]))
        else:
            verdict_text = t("verdict.uncertain", lang)
        referral_text = (t(f"referral.{result['referral']}", lang) if reason == "condition"
                         else t(f"referral.{reason}", lang,
                                probability=percent(mal_p or 0.0)))
        out.update(conditions=conditions, verdict_text=verdict_text, referral_text=referral_text,
                   disclaimer=t("disclaimer", lang), language=lang)
        return out

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

    def analyze(self, data: bytes, filename: str, lang: str = DEFAULT_LANGUAGE
                ) -> dict[str, Any]:
        """Decode, predict, decide, explain and store one upload (stored in English; answered
        in ``lang``)."""
        img = decode_upload(data, filename, self.settings)
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
            conditions = []
        else:
            verdict = "ok" if float(probs[order[0]]) >= t_unsure else "uncertain"
            referral = {"malignant": "urgent", "uncertain": "routine"}.get(
                referral_reason(verdict, mal_p, mal_t), conditions[0]["urgency"])
            heat = self.heatmap(arr, int(order[0]), fmap)
        analysis_id = str(uuid.uuid4())
        created = now()
        result: dict[str, Any] = self.localize({
            "id": analysis_id, "created_at": created, "filename": filename[:255],
            "verdict": verdict, "referral": referral, "conditions": conditions,
            "malignant_probability": mal_p, "malignant_threshold": mal_t,
            "ood_score": ood_score, "ood_threshold": self.ood.threshold,
            "ood_colour_score": colour_score,
            "ood_colour_threshold": self.ood_colour.threshold if self.ood_colour else None,
            "uncertain_threshold": t_unsure, "heatmap_png": heat}, DEFAULT_LANGUAGE)
        with Image.open(io.BytesIO(data)) as header:  # decoded fine above; only the format
            ext = (header.format or "bin").lower()
        ref = self.images.put(f"{analysis_id}.{ext}", data)
        self.history.add(Analysis(
            id=analysis_id, created_at=created, filename=result["filename"],
            verdict=verdict, referral=referral, image_ref=ref, size_bytes=len(data),
            result_json=json.dumps({**result, "created_at": created.isoformat()})))
        return result if lang == DEFAULT_LANGUAGE else self.localize(result, lang)

    # -- history -------------------------------------------------------------------------------
    def get(self, analysis_id: str, lang: str = DEFAULT_LANGUAGE) -> dict[str, Any] | None:
        """A stored analysis, in ``lang``."""
        row = self.history.get(analysis_id)
        return self.localize(json.loads(row.result_json), lang) if row else None

    def page(self, limit: int, offset: int, lang: str = DEFAULT_LANGUAGE) -> dict[str, Any]:
        """A page of summaries (condition names in ``lang``)."""
        rows, total = self.history.page(limit, offset)
        items = []
        for r in rows:
            res = json.loads(r.result_json)
            top = res["conditions"][0] if res["conditions"] else None
            items.append({"id": r.id, "created_at": res["created_at"], "filename": r.filename,
                          "verdict": r.verdict, "referral": r.referral,
                          "top_condition": (self._condition(top["class_name"], 0.0, lang)["name"]
                                            if top else None),
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
