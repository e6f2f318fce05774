"""The analysis service: the loaded models (one per image type: dermoscopic, clinical) and the
image-type router that picks which answers a photo, shared by all requests; and
:func:`build_services`, which wires it with the other services of the app (history, accounts,
retention) over one database and one photo store.

Inference runs through ONNX Runtime when a run has an export (thread-safe sessions), else
PyTorch (see :mod:`dermalab.serve.models`). Nothing else is shared and mutable across requests.
"""

from __future__ import annotations

import math
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from dermalab.core.errors import DermalabError
from dermalab.core.i18n import DEFAULT_LANGUAGE
from dermalab.data.photo_quality import assess as assess_photo
from dermalab.deploy.router import ImageRouter
from dermalab.serve.account_service import AccountService
from dermalab.serve.accounts import AccountStore
from dermalab.serve.answer import (
    decide,
    is_not_skin,
    load_conditions,
    routed_type,
    second_opinion_type,
    unserved_type,
)
from dermalab.serve.history import HistoryService
from dermalab.serve.models import ServedModel, check_servable
from dermalab.serve.ondevice import (
    Bundle,
    bundles,
    find_ort_dir,
    ort_version,
    router_bundle,
)
from dermalab.serve.render import Renderer
from dermalab.serve.retention import RetentionService
from dermalab.serve.settings import ServeSettings
from dermalab.serve.store import OPEN, HistoryStore, ImageStore, Owner, make_engine, now
from dermalab.serve.uploads import UploadError, clean_photo, decode_upload, lesion_summary


def check_models(settings: ServeSettings) -> None:
    """What serving ``settings`` needs, checked without loading the models: finished runs with
    serving thresholds, one per image type (as their recipes or the overrides say), and a
    router when there are several; a one-line error naming what to do otherwise."""
    from dermalab.core.config import load_config
    from dermalab.core.runs import RunPaths

    runs = [settings.run_dir, *settings.more_runs]
    overrides = dict(settings.image_types)
    seen: dict[str, str] = {}
    for run in runs:
        paths = RunPaths(Path(run))
        check_servable(paths)
        kind = overrides.get(run) or load_config(str(paths.config), []).data.image_type
        if kind in seen:
            raise DermalabError(f"{run}: a second {kind} model (besides {seen[kind]}); serve "
                                "one model per image type (a models file can set a run's "
                                "image_type)")
        seen[kind] = run
    if len(runs) > 1 and not settings.router:
        raise DermalabError(
            f"{len(runs)} models need an image-type router to choose between them: fit one "
            f"with `dermalab router fit {' '.join(runs)} --out ROUTER_DIR` and pass --router "
            "ROUTER_DIR")
    if settings.router:
        ImageRouter.check(settings.router)


def second_opinion(model: ServedModel, img: Image.Image, urgency: dict[str, str], top_k: int
                   ) -> dict[str, Any]:
    """A model asked about a photo alone beside the one that answers (``routing``'s
    ``second_opinion``): its own referral (:func:`decide`, its detectors aside as the
    router's are trusted) and malignant score; ``urgent`` when that referral is. The page's
    twin: ``secondOpinion`` in ``static/ondevice/run.js``."""
    b = model.assess(img)
    _, referral, _ = decide(b.probs, False, model.uncertain_threshold, top_k, b.malignant_p,
                            b.malignant_t, urgency, list(model.info.classes))
    return {"model": model.name, "image_type": model.image_type,
            "malignant_probability": b.malignant_p, "malignant_threshold": b.malignant_t,
            "urgent": referral == "urgent"}


class AnalysisService:
    """Answers photos: the models (one per image type), the router between them, their
    thresholds, the condition information and the on-device bundles, loaded once; each
    answer is filed in ``history``."""

    def __init__(self, settings: ServeSettings, models: dict[str, ServedModel],
                 renderer: Renderer, history: HistoryService) -> None:
        self.settings = settings
        self.models = models
        self.primary = next(iter(models.values()))
        self.router = ImageRouter.load(settings.router) if settings.router else None
        self.renderer = renderer
        self.history = history
        from dermalab.serve.clinics import load_directory

        self.clinics = load_directory(settings.clinics) if settings.clinics else None
        self._setup_ondevice()

    def _setup_ondevice(self) -> None:
        """The on-device bundles (see :mod:`dermalab.serve.ondevice`), and why a model has
        none."""
        self.ort_dir = find_ort_dir(self.settings.ort_dir) if self.settings.ondevice else None
        self.ort_version = ort_version(self.ort_dir)
        self.ondevice: dict[str, Bundle] = {}
        self.ondevice_off: dict[str, str] = {}
        self.ondevice_router: Bundle | None = None
        if not self.settings.ondevice:
            self.ondevice_off = {m.name: "turned off (--no-ondevice)"
                                 for m in self.models.values()}
        elif self.ort_dir is None:
            self.ondevice_off = {m.name: "onnxruntime-web is not installed (scripts/setup.sh "
                                 "installs it with npm)" for m in self.models.values()}
        else:
            self.ondevice, self.ondevice_off = bundles(self.models, self.renderer.conditions,
                                                       self.settings.top_k,
                                                       self.settings.int8_min_agreement)
            if self.router is not None and self.ondevice:
                # the page routes as the server does, so its verdicts match the server's
                self.ondevice_router = router_bundle(self.router, self.settings.model_detectors,
                                                     self.settings.second_opinion_below)

    @property
    def backend(self) -> str:
        """``onnxruntime`` or ``torch`` (the first model's)."""
        return self.primary.backend

    def choose(self, img: Image.Image, image_type: str | None = None
               ) -> tuple[ServedModel, dict[str, Any]]:
        """Which model answers a photo, and why: the user's word (``image_type``), else the
        router, else the only model. The routing facts say which; ``image_type`` there is
        ``not_skin`` when the router finds the photo is not of skin, whoever chose the model."""
        route = self.router.route(img) if self.router is not None else None
        if image_type and image_type != "auto":
            if image_type not in self.models:
                raise UploadError(422, "upload.no_model", image_type=image_type,
                                  served=", ".join(self.models))
            model, by = self.models[image_type], "user"
        elif route is not None:
            model, by = self.models[routed_type(list(self.models), route.probabilities)], "router"
        else:
            model, by = self.primary, "single"
        found = route.image_type if route is not None else model.image_type
        routing = {"image_type": "not_skin" if found == "not_skin" else model.image_type,
                   "chosen_by": by,
                   "probabilities": route.probabilities if route is not None else None}
        unserved = (unserved_type(list(self.models), route.probabilities, by)
                    if route is not None else None)
        if unserved:
            routing["unserved"] = unserved
        return model, routing

    def urgency(self, classes: list[str]) -> dict[str, str]:
        """Each class's own referral urgency (condition information; default routine)."""
        return {c: self.renderer.conditions.get(c, {}).get("urgency", "routine")
                for c in classes}

    def metadata_inputs(self) -> dict[str, Any] | None:
        """What the page may ask (optional age, sex, body site): from the first served model
        that weighs metadata, else ``None``."""
        return next((i for m in self.models.values() if (i := m.metadata_inputs())), None)

    def analyze(self, data: bytes, filename: str, lang: str = DEFAULT_LANGUAGE,
                owner: Owner = OPEN, spot: str | None = None,
                image_type: str | None = None, metadata: dict[str, Any] | None = None
                ) -> dict[str, Any]:
        """Decode, route, predict, decide, explain and store one upload for ``owner`` (stored in
        English; answered in ``lang``), under ``owner``'s spot named ``spot`` if given;
        ``image_type`` (dermoscopic | clinical) is the user's word on what the photo is. The
        stored photo is the decoded pixels, upright, as a new JPEG: the upload's EXIF/XMP (GPS
        position, device ids, dates) is not kept. ``metadata`` (``age``, ``sex``, ``site``, each
        optional) is weighed by a model fitted with it (``eval.metadata``); only which fields
        were used is stored, not their values."""
        img = decode_upload(data, filename, self.settings)
        model, routing = self.choose(img, image_type)
        # advice on the photo (the sharpness line of the answering model's kind of photo);
        # it never stops the analysis
        quality = assess_photo(img, model.image_type)
        try:
            row, used = model.predictor.metadata_row(metadata)
        except DermalabError as exc:
            raise UploadError(422, "upload.bad_metadata", problem=str(exc)) from None
        a = model.assess(img, row)
        not_skin = is_not_skin(routing["image_type"] == "not_skin" if self.router else None,
                               a.out_of_distribution, self.settings.model_detectors)
        other = second_opinion_type(list(self.models), routing,
                                    self.settings.second_opinion_below)
        if other is not None and not not_skin:
            second = self.models[other]
            routing["second_opinion"] = second_opinion(
                second, img, self.urgency(list(second.info.classes)), self.settings.top_k)
        t_unsure = model.uncertain_threshold_for(used)
        classes = list(model.info.classes)
        # A photo of a kind no served model was trained on is answered "not sure" (its
        # routing says why), never as if the model knew such photos.
        verdict, referral, order = decide(
            a.probs, not_skin, math.inf if routing.get("unserved") else t_unsure,
            self.settings.top_k, a.malignant_p, a.malignant_t,
            self.urgency(classes), classes,
            bool(routing.get("second_opinion", {}).get("urgent")))
        conditions = [] if not_skin else [
            self.renderer.condition(classes[i], float(a.probs[i]), model=model) for i in order]
        heat = None if not_skin else model.heatmap(np.ascontiguousarray(a.arr[..., :3]),
                                                   order[0], a.fmap)
        lesion = None
        if verdict != "not_skin" and model.predictor.has_segmenter:
            # A raw model with a segmenter outlines only photos that are skin.
            mask = a.mask if a.mask is not None else model.predictor.segment(img)
            lesion = lesion_summary(img, mask)
        analysis_id = str(uuid.uuid4())
        created = now()
        result: dict[str, Any] = self.renderer.localize({
            "id": analysis_id, "created_at": created, "filename": filename[:255],
            "verdict": verdict, "referral": referral, "conditions": conditions,
            "malignant_probability": a.malignant_p, "malignant_threshold": a.malignant_t,
            "ood_score": a.ood_score, "ood_threshold": model.ood.threshold,
            "ood_colour_score": a.colour_score,
            "ood_colour_threshold": model.ood_colour.threshold if model.ood_colour else None,
            "uncertain_threshold": t_unsure, "heatmap_png": heat, "lesion": lesion,
            "model": {"name": model.name, "image_type": model.image_type},
            "routing": routing, "metadata_used": used,
            "quality": {"issues": quality.issues,
                        "laplacian_variance": round(quality.laplacian_variance, 2),
                        "brightness": round(quality.brightness, 3),
                        "glare_share": round(quality.glare_share, 4),
                        "clipped_share": round(quality.clipped_share, 4)},
            # a photo that is not of skin is not kept (it may be anything personal), nor
            # filed under a spot: its analysis says only that it was not skin
            "photo_kept": verdict != "not_skin"}, DEFAULT_LANGUAGE)
        keep = verdict != "not_skin"
        self.history.record(result, clean_photo(img) if keep else None, owner, spot)
        return result if lang == DEFAULT_LANGUAGE else self.renderer.localize(result, lang)

    def model_card(self) -> dict[str, Any]:
        """The first model's card."""
        return self.primary.card()

    def model_cards(self) -> list[dict[str, Any]]:
        """Every served model's card, with how photos are routed to them."""
        return [m.card() for m in self.models.values()]


@dataclass(frozen=True)
class Services:
    """The per-concern services of one app, sharing one database and one photo store: the
    routes depend on the one they need (:mod:`dermalab.serve.dependencies`)."""

    analysis: AnalysisService
    history: HistoryService
    accounts: AccountService
    retention: RetentionService


def build_services(settings: ServeSettings) -> Services:
    """Check and load the models, open the stores (the run's own ``serving/history.db`` and
    ``serving/uploads`` unless ``settings`` name others) and wire the services together."""
    check_models(settings)  # one model per image type, a router for several
    overrides = dict(settings.image_types)
    models: dict[str, ServedModel] = {}
    for run in (settings.run_dir, *settings.more_runs):
        model = ServedModel(run, image_type=overrides.get(run),
                            heatmap_size=settings.heatmap_size,
                            cam_workers=settings.cam_workers, fast_cam=settings.fast_cam)
        models[model.image_type] = model
    serving = Path(settings.run_dir) / "serving"
    engine = make_engine(settings.database_url
                         or f"sqlite:///{(serving / 'history.db').resolve()}")
    renderer = Renderer(models, load_conditions())
    history = HistoryService(HistoryStore(engine),
                             ImageStore(settings.image_store or str(serving / "uploads")),
                             renderer)
    account_store = AccountStore(engine)
    return Services(analysis=AnalysisService(settings, models, renderer, history),
                    history=history, accounts=AccountService(account_store, history),
                    retention=RetentionService(history, account_store, settings))
