"""One served model: a run's predictor, its "not skin" detectors and "not sure" threshold,
its Grad-CAM and its model card. The service holds one per image type (dermoscopic,
clinical) and a router picks which answers.

Heat-maps are Grad-CAM at the final feature map: in closed form (no hooks, thread-safe) for
global-average-pool + linear heads, else pytorch-grad-cam on a small pool of model replicas,
one per concurrent request, since it attaches hooks to the model it is given.
"""

from __future__ import annotations

import base64
import copy
import io
import json
import queue
from dataclasses import dataclass
from pathlib import Path
from typing import Any, get_args

import numpy as np
from PIL import Image

from dermalab.core.errors import DermalabError
from dermalab.core.metrics import metric_names
from dermalab.core.runs import RunPaths, read_metrics
from dermalab.data.lesion import NEEDS_MASK
from dermalab.deploy.ood import MahalanobisOOD, colour_statistics
from dermalab.deploy.predictor import Predictor
from dermalab.serve.schemas import DISCLAIMER, ImageType

IMAGE_TYPES: tuple[str, ...] = get_args(ImageType)


def check_servable(paths: RunPaths) -> None:
    """A finished run with serving thresholds, or a one-line error saying what to run."""
    paths.require_model("serve")
    read_metrics(paths)  # finished?
    if not (paths.serving / "ood.npz").is_file():
        raise DermalabError(f"{paths.root}: no serving thresholds; run `dermalab report "
                            f"{paths.root} --serving` once to fit them")


@dataclass
class Assessment:
    """What one model makes of one photo (before any wording)."""

    arr: np.ndarray  # the model's input, (S, S, C) uint8
    mask: np.ndarray | None  # the lesion mask, when the model's input needed one
    probs: np.ndarray  # calibrated class probabilities
    fmap: np.ndarray | None  # the final feature map (closed-form Grad-CAM)
    ood_score: float
    colour_score: float | None
    out_of_distribution: bool  # either "not skin" detector fired
    malignant_p: float | None
    malignant_t: float | None


class ServedModel:
    """A finished run, loaded for serving."""

    def __init__(self, run_dir: str | Path, *, image_type: str | None = None,
                 heatmap_size: int = 224, cam_workers: int = 1, fast_cam: bool = True) -> None:
        paths = RunPaths(Path(run_dir))
        check_servable(paths)
        serving = paths.serving
        # One ONNX Runtime thread per inference: the server runs requests side by side
        # (measured on 2 CPUs, 4 clients: p95 254 -> 163-181 ms, 27 -> 32-35 uploads/s).
        self.predictor = Predictor.load(paths.root, threads=1)
        if self.predictor.torch_model is None:
            raise DermalabError(f"{run_dir}: the web service needs a run directory")
        self.info = self.predictor.info
        self.image_type = image_type or self.info.image_type
        if self.image_type not in IMAGE_TYPES:
            raise DermalabError(f"{run_dir}: image type {self.image_type!r} is not one of "
                                f"{', '.join(IMAGE_TYPES)}")
        if self.info.input_mode in NEEDS_MASK:
            _ = self.predictor.segmenter  # fail at start, not at the first photo
        self.ood = MahalanobisOOD.load(serving / "ood.npz")
        colour = serving / "ood_colour.npz"
        self.ood_colour = MahalanobisOOD.load(colour) if colour.is_file() else None
        self.thresholds = json.loads((serving / "serving.json").read_text())
        self.metrics = read_metrics(paths)
        self.name = paths.root.resolve().name
        self.heatmap_size = heatmap_size
        from dermalab.evaluate.explain import has_linear_gap_head

        self._closed_form_cam = fast_cam and has_linear_gap_head(self.predictor.torch_model)
        head = self.predictor.torch_model.get_classifier()
        # The classifier's weights, when Grad-CAM has the closed form (else None).
        self.cam_weight: np.ndarray | None = head.weight.detach().float().numpy() \
            if self._closed_form_cam else None
        self._cam_models: queue.Queue[Any] = queue.Queue()
        if not self._closed_form_cam:
            for _ in range(max(1, cam_workers)):
                self._cam_models.put(copy.deepcopy(self.predictor.torch_model).eval())

    @property
    def backend(self) -> str:
        """``onnxruntime`` or ``torch``."""
        return self.predictor.backend

    @property
    def uncertain_threshold(self) -> float:
        """Below this top probability the answer is "not sure" (the run's decision)."""
        return self.info.decision.uncertain_line(False)

    def uncertain_threshold_for(self, used: list[str]) -> float:
        """The "not sure" threshold for an answer that weighed the metadata fields ``used``
        (:meth:`dermalab.core.decision.Decision.uncertain_line`)."""
        return self.info.decision.uncertain_line(bool(used))

    def assess(self, img: Image.Image, metadata: dict[str, Any] | None = None) -> Assessment:
        """Predict one decoded photo (with the user's metadata row, when the model weighs
        one) and apply the detectors."""
        # The model's input: resized, or for a lesion-aware model cropped/masked with the
        # lesion its segmenter finds (the same preprocessing as training).
        mask = self.predictor.segment(img) if self.info.input_mode in NEEDS_MASK else None
        arr = self.predictor.prepare(img, mask)
        logits, feats, fmap = self.predictor.forward_all(arr[None])
        probs = self.predictor.calibrated(logits, [metadata] if metadata else None)[0]
        ood_score = float(self.ood.score(feats)[0])
        colour_score = (float(self.ood_colour.score(colour_statistics(arr[None]))[0])
                        if self.ood_colour is not None else None)
        colour_ood = colour_score is not None and self.ood_colour is not None and \
            colour_score > self.ood_colour.threshold
        decision = self.info.decision
        score = decision.malignant_score(probs[None], self.info.classes)
        mal_p = float(score[0]) if score is not None else None
        mal_t = decision.malignant_threshold if mal_p is not None else None
        return Assessment(arr, mask, probs, fmap, ood_score, colour_score,
                          ood_score > self.ood.threshold or colour_ood, mal_p, mal_t)

    def heatmap(self, image: np.ndarray, class_index: int,
                feature_map: np.ndarray | None = None) -> str:
        """Grad-CAM overlay as a PNG data URL (closed form from the final feature map where
        exact, else pytorch-grad-cam)."""
        from dermalab.evaluate.explain import cam_from_feature_map, cam_maps, overlay

        if self.cam_weight is not None and feature_map is not None:
            maps = cam_from_feature_map(feature_map, self.cam_weight, [class_index],
                                        image.shape[0])
        else:
            model = self._cam_models.get()
            try:
                maps, _ = cam_maps(model, self.info.backbone, image[None], self.info.mean,
                                   self.info.std, [class_index], with_logits=False)
            finally:
                self._cam_models.put(model)
        ov = overlay(image, maps[0], size=self.heatmap_size)
        buf = io.BytesIO()
        # Fast zlib level: "optimize" cost ~80 ms per request for a few kB.
        Image.fromarray(ov).save(buf, "PNG", compress_level=1)
        return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()

    def metadata_inputs(self) -> dict[str, Any] | None:
        """What the page may ask for this model: fields, sexes and body sites it knows."""
        mm = self.predictor.metadata_model
        return ({"fields": list(mm.fields), "sexes": list(mm.sexes), "sites": list(mm.sites)}
                if mm is not None else None)

    def decision_card(self) -> dict[str, Any]:
        """The served rule in plain terms: the class shares its probabilities assume."""
        d = self.info.decision
        q = d.deployment_prior()
        return {"tau": d.tau, "prior_rule": d.prior_rule,
                "declared_prior": ({c: round(float(v), 4) for c, v in
                                    zip(self.info.classes, q, strict=True)}
                                   if q is not None else None),
                "explanation": "Probabilities assume each condition is as common as the "
                               "declared shares say (tau 0: as in the training data; 1: all "
                               "equally common); the top condition is the most probable "
                               "under them, and 'not sure' is said below a top probability "
                               f"of {d.uncertain_threshold:.0%}."}

    def skin_type_card(self) -> dict[str, Any]:
        """Balanced accuracy and malignant sensitivity per skin-type group (``skin_type``:
        labelled Fitzpatrick types; ``skin_type_estimated``: from each photo's healthy skin),
        each with its 95% interval, and the gap between the worst and best group."""
        out: dict[str, Any] = {}
        for key in ("skin_type", "skin_type_estimated"):
            block = (self.metrics.get("subgroups") or {}).get(key)
            if not block:
                continue
            out[key] = {
                "groups": {g: {"support": v["support"],
                               "balanced_accuracy": v.get("balanced_accuracy"),
                               "balanced_accuracy_interval":
                                   (v.get("intervals") or {}).get("balanced_accuracy"),
                               "malignant_sensitivity": v.get("malignant_sensitivity"),
                               "malignant_sensitivity_interval":
                                   (v.get("intervals") or {}).get("malignant_sensitivity")}
                           for g, v in block.get("groups", {}).items()},
                "gap": block.get("gap")}
        return out

    def card(self) -> dict[str, Any]:
        """The model card."""
        m = self.metrics
        mal = m.get("malignant") or None
        photos = {"dermoscopic": "Trained on dermoscopic images (close-ups through a "
                                 "dermatoscope, HAM10000-style); ordinary phone photos of skin "
                                 "differ and results on them are less reliable.",
                  "clinical": "Trained on clinical photos (ordinary camera photos of skin "
                              "conditions from dermatology atlases, taken by clinicians); "
                              "dermatoscope images and dark skin tones are under-represented "
                              "(see skin_types for the results per skin type)."}
        return {
            "name": self.name,
            "image_type": self.image_type,
            "backbone": self.info.backbone,
            "members": self.info.members,  # > 1: an ensemble of that many trained networks
            "classes": {c: self.info.display_names.get(c, c) for c in self.info.classes},
            "image_size": self.info.image_size,
            "training_data": str(m.get("split", {}).get("origin", "")) + " — "
                             + ", ".join(f"{k}: {sum(v.values())}" for k, v in
                                         m.get("split", {}).get("counts", {}).items()),
            # the answers this service gives for a test photo alone, with 95% intervals
            "test_metrics": {k: m.get(k) for k in metric_names(headline=True)},
            "test_intervals": {k: (m.get("intervals") or {}).get(k)
                               for k in metric_names(headline=True)},
            "calibration": {k: m.get(k) for k in ("temperature", "ece_before", "ece_after")},
            "decision": self.decision_card(),
            # the served answer per Fitzpatrick skin-type group on test (labelled types, and
            # types estimated from healthy skin), with intervals and the worst-to-best gap
            "skin_types": self.skin_type_card(),
            "malignant_operating_point": ({k: mal.get(k) for k in
                                           ("threshold", "sensitivity", "specificity",
                                            "intervals")}
                                          if mal else None),
            "inference_backend": self.backend,
            "intended_use": "Education and decision support for people with a skin concern and "
                            "for researchers; it suggests likely conditions and when to see a "
                            "doctor. It does not diagnose.",
            "limitations": [
                photos[self.image_type],
                "Knows only its training classes; other conditions are reported as the "
                "closest known class or as uncertain.",
                "Skin tones, body sites and ages that are rare in the training data may have "
                "lower accuracy (see the subgroup table in the run's report).",
                "Probabilities are calibrated on the validation split of the training data for "
                "the class shares declared under 'decision'; the people who use this page may "
                "differ from both.",
            ],
            "disclaimer": DISCLAIMER,
        }
