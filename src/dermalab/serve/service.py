"""The analysis service: the loaded models (one per image type: dermoscopic, clinical), the
image-type router that picks which answers a photo, and the stores, shared by all requests.

Inference runs through ONNX Runtime when a run has an export (thread-safe sessions), else
PyTorch (see :mod:`dermalab.serve.models`). Nothing else is shared and mutable across requests.
"""

from __future__ import annotations

import io
import json
import math
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from sqlalchemy.exc import IntegrityError

from dermalab.core.errors import DermalabError
from dermalab.core.i18n import DEFAULT_LANGUAGE, t
from dermalab.data.photo_quality import assess as assess_photo
from dermalab.deploy.router import ImageRouter
from dermalab.serve.accounts import AccountStore
from dermalab.serve.answer import (
    decide,
    is_not_skin,
    load_conditions,
    routed_type,
    routing_text,
    second_opinion_type,
    unserved_type,
    wording,
)
from dermalab.serve.conditions import condition_text
from dermalab.serve.models import ServedModel, check_servable
from dermalab.serve.ondevice import (
    Bundle,
    bundles,
    find_ort_dir,
    ort_version,
    router_bundle,
)
from dermalab.serve.settings import ServeSettings
from dermalab.serve.store import OPEN, Analysis, HistoryStore, ImageStore, Owner, make_engine, now
from dermalab.serve.timeline import spot_view
from dermalab.serve.uploads import UploadError, clean_photo, decode_upload, lesion_summary

#: The photo key of an analysis whose photo was not kept (not skin).
NO_PHOTO = ""


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
    """Loads the models, the router, the thresholds, condition information and stores once."""

    def __init__(self, settings: ServeSettings) -> None:
        check_models(settings)  # one model per image type, a router for several
        self.settings = settings
        overrides = dict(settings.image_types)
        self.models: dict[str, ServedModel] = {}
        for run in (settings.run_dir, *settings.more_runs):
            model = ServedModel(run, image_type=overrides.get(run),
                                heatmap_size=settings.heatmap_size,
                                cam_workers=settings.cam_workers, fast_cam=settings.fast_cam)
            self.models[model.image_type] = model
        self.primary = next(iter(self.models.values()))
        self.router = ImageRouter.load(settings.router) if settings.router else None
        serving = Path(settings.run_dir) / "serving"
        self.conditions = load_conditions()
        engine = make_engine(settings.database_url
                             or f"sqlite:///{(serving / 'history.db').resolve()}")
        self.history = HistoryStore(engine)
        self.accounts = AccountStore(engine)
        self.images = ImageStore(settings.image_store or str(serving / "uploads"))
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
            self.ondevice, self.ondevice_off = bundles(self.models, self.conditions,
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

    def model_named(self, name: str | None) -> ServedModel:
        """The served model called ``name`` (the first one for analyses stored before models
        were named, or by a model no longer served)."""
        return next((m for m in self.models.values() if m.name == name), self.primary)

    # -- analysis ------------------------------------------------------------------------------
    def _condition(self, cls: str, p: float, lang: str = DEFAULT_LANGUAGE,
                   model: ServedModel | None = None) -> dict[str, Any]:
        names = (model or self.primary).info.display_names
        return {"class_name": cls, "probability": p,
                **condition_text(self.conditions.get(cls, {}), cls, lang, names)}

    def localize(self, result: dict[str, Any], lang: str) -> dict[str, Any]:
        """An analysis with every plain-language field in ``lang``, rendered from its facts
        (verdict, referral, conditions and probabilities, routing), so stored analyses can be
        read in any language."""
        out = dict(result)
        model = self.model_named((result.get("model") or {}).get("name"))
        conditions = [self._condition(c["class_name"], c["probability"], lang, model)
                      for c in result["conditions"]]
        verdict, mal_p, mal_t = (result["verdict"], result.get("malignant_probability"),
                                 result.get("malignant_threshold"))
        top = (conditions[0]["name"], conditions[0]["probability"]) if conditions else None
        routing = result.get("routing")
        verdict_text, referral_text = wording(verdict, result["referral"], top, mal_p, mal_t,
                                              lang, (routing or {}).get("second_opinion"))
        if routing:
            routing = {**routing, "text": routing_text(routing, lang)}
        quality = result.get("quality")
        if quality:  # what to do about the photo, in plain words ("" when it is fine)
            quality = {**quality, "text": " ".join(t(f"quality.{i}", lang)
                                                   for i in quality["issues"])}
        out.update(conditions=conditions, verdict_text=verdict_text, referral_text=referral_text,
                   disclaimer=t("disclaimer", lang), language=lang, routing=routing,
                   quality=quality)
        return out

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
        return {c: self.conditions.get(c, {}).get("urgency", "routine") for c in classes}

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
            self._condition(classes[i], float(a.probs[i]), model=model) for i in order]
        heat = None if not_skin else model.heatmap(np.ascontiguousarray(a.arr[..., :3]),
                                                   order[0], a.fmap)
        lesion = None
        if verdict != "not_skin" and model.predictor.has_segmenter:
            # A raw model with a segmenter outlines only photos that are skin.
            mask = a.mask if a.mask is not None else model.predictor.segment(img)
            lesion = lesion_summary(img, mask)
        analysis_id = str(uuid.uuid4())
        created = now()
        result: dict[str, Any] = self.localize({
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
        photo = clean_photo(img) if keep else b""
        # The row is written before the photo: a crash in between leaves a row whose photo is
        # missing (shown as such), never an unlisted photo that no deletion would reach.
        key = f"{analysis_id}.jpg" if keep else NO_PHOTO
        try:  # the owner must still exist (a foreign key): not if deleted since the request
            named = (self.history.spot_named(spot, owner) if keep and spot and spot.strip()
                     else None)
            result["spot"] = {"id": named.id, "name": named.name} if named else None
            self.history.add(Analysis(
                id=analysis_id, created_at=created, filename=result["filename"],
                verdict=verdict, referral=referral, image_ref=key, size_bytes=len(photo),
                result_json=json.dumps({**result, "created_at": created.isoformat()}),
                owner_id=None if owner is OPEN else str(owner),
                spot_id=named.id if named else None))
        except IntegrityError:
            raise UploadError(401, "upload.owner_gone") from None
        if keep:
            self.images.put(key, photo)
        if not self.history.exists(analysis_id):
            # The owner's deletion took the row while the photo was being written: the photo
            # goes too, and the upload is answered as not kept.
            if keep:
                self.images.delete(key)
            raise UploadError(401, "upload.owner_gone")
        return result if lang == DEFAULT_LANGUAGE else self.localize(result, lang)

    # -- history -------------------------------------------------------------------------------
    def get(self, analysis_id: str, lang: str = DEFAULT_LANGUAGE, owner: Owner = OPEN
            ) -> dict[str, Any] | None:
        """One of ``owner``'s stored analyses, in ``lang`` (None for anyone else's)."""
        row = self.history.get(analysis_id, owner)
        if row is None:
            return None
        return self.localize({**json.loads(row.result_json),
                              "spot": self._spot_ref(row, self.history.spot_names(owner))},
                             lang)

    @staticmethod
    def _spot_ref(row: Analysis, names: dict[str, str]) -> dict[str, str] | None:
        """The row's spot as it is now (spots merge when a device's analyses move)."""
        return ({"id": row.spot_id, "name": names[row.spot_id]}
                if row.spot_id and row.spot_id in names else None)

    def photo(self, analysis_id: str, owner: Owner) -> bytes | None:
        """The stored photo of one of ``owner``'s analyses."""
        row = self.history.get(analysis_id, owner)
        return self._read_photo(row.image_ref) if row is not None else None

    def _read_photo(self, key: str) -> bytes | None:
        if key == NO_PHOTO:  # a photo that was not of skin: never kept
            return None
        try:
            return self.images.read(key)
        except FileNotFoundError:  # a crash between the row and the photo: said as missing
            return None

    def _delete_photos(self, rows: list[Analysis]) -> int:
        """Delete the photos of analyses whose rows are gone; returns how many rows."""
        for r in rows:
            if r.image_ref != NO_PHOTO:
                self.images.delete(r.image_ref)
        return len(rows)

    def page(self, limit: int, offset: int, lang: str = DEFAULT_LANGUAGE, owner: Owner = OPEN
             ) -> dict[str, Any]:
        """A page of ``owner``'s summaries (condition names in ``lang``)."""
        rows, total = self.history.page(limit, offset, owner)
        names = self.history.spot_names(owner)
        items = []
        for r in rows:
            res = json.loads(r.result_json)
            top = res["conditions"][0] if res["conditions"] else None
            items.append({"id": r.id, "created_at": res["created_at"], "filename": r.filename,
                          "verdict": r.verdict, "referral": r.referral,
                          "top_condition": (self._condition_name(top["class_name"], lang)
                                            if top else None),
                          "top_probability": top["probability"] if top else None,
                          "spot": names.get(r.spot_id) if r.spot_id else None})
        return {"items": items, "total": total, "limit": limit, "offset": offset}

    def spots(self, owner: Owner) -> list[dict[str, Any]]:
        """``owner``'s named spots, most recently photographed first."""
        return [{"id": sp.id, "name": sp.name, "count": n, "last_at": last}
                for sp, n, last in self.history.spots(owner)]

    def spot(self, spot_id: str, lang: str = DEFAULT_LANGUAGE, owner: Owner = OPEN
             ) -> dict[str, Any] | None:
        """One of ``owner``'s spots over time (:func:`~dermalab.serve.timeline.spot_view`):
        every analysis of it oldest first, the warning when the malignant probability crossed
        its line between the last two photos, and the advice. ``None`` for another owner's
        spot."""
        found = self.history.spot(spot_id, owner)
        if found is None:
            return None
        sp, rows = found
        return spot_view(sp.id, sp.name, rows, lang, self._condition_name)

    def _condition_name(self, cls: str, lang: str) -> str:
        return str(self._condition(cls, 0.0, lang)["name"])

    def delete(self, analysis_id: str, owner: Owner = OPEN) -> bool:
        """Delete one of ``owner``'s analyses and its stored image."""
        row = self.history.delete(analysis_id, owner)
        if row is None:
            return False
        self._delete_photos([row])
        return True

    @property
    def orphan_grace_s(self) -> float:
        """How old a photo-less analysis must be before the start-up sweep deletes it: 0 when
        the database and photos are the run's own (only this process writes them, and at
        start-up it has nothing in flight), else 10 minutes, since another server sharing
        them may be between writing a row and its photo."""
        s = self.settings
        if s.orphan_grace_s is not None:
            return s.orphan_grace_s
        return 0.0 if s.database_url is None and s.image_store is None else 600.0

    def sweep_orphans(self, grace_s: float | None = None) -> tuple[int, int]:
        """Start-up clean-up after a crash: photos no analysis refers to (a deletion cut short)
        and temporary files of writes cut short are deleted, and analyses older than
        ``grace_s`` (default :attr:`orphan_grace_s`) whose photo never got written (an upload
        cut short, never answered). Returns (photos, analyses) removed."""
        from datetime import timedelta

        grace_s = self.orphan_grace_s if grace_s is None else grace_s
        self.images.sweep_temporaries(grace_s)
        refs = self.history.image_refs()
        keys = set(self.images.list_keys())  # one listing (an S3 listing is paged I/O)
        stray = keys - refs
        for key in stray:
            self.images.delete(key)
        dead = self.history.without_photo(keys & refs, now() - timedelta(seconds=grace_s))
        return len(stray), len(dead)

    # -- accounts ------------------------------------------------------------------------------
    def attach(self, from_user: str, to_user: str) -> int:
        """Move an anonymous device's analyses to an account and forget the device."""
        return self._remove_user(from_user, lambda: self.history.reassign(from_user, to_user))

    def delete_account(self, user_id: str) -> int:
        """Delete a user, every analysis and every photo of theirs; returns how many."""
        return self._remove_user(
            user_id, lambda: self._delete_photos(self.history.delete_all_of(user_id)))

    def _remove_user(self, user_id: str, empty: Callable[[], int], tries: int = 20) -> int:
        """Run ``empty`` (move or delete the user's rows; returns how many), then delete the
        user. An upload that lands in between holds the user by its foreign key, so the
        deletion fails and both steps run again: no row or photo outlives its owner."""
        total = 0
        for _ in range(tries):
            total += empty()
            try:
                self.accounts.remove_user(user_id)
                return total
            except IntegrityError:
                continue
        raise DermalabError(f"user {user_id}: new analyses kept arriving while it was being "
                            "deleted; try again")

    def export(self, user_id: str) -> bytes:
        """A zip of the user's photos and ``analyses.json`` (their data, downloadable)."""
        import zipfile

        rows = self.history.all_of(user_id)
        spot_names = self.history.spot_names(user_id)
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
            items = []
            for r in rows:
                res = json.loads(r.result_json)
                res.pop("heatmap_png", None)
                if res.get("lesion"):
                    res["lesion"] = {k: v for k, v in res["lesion"].items()
                                     if k != "outline_png"}
                photo = self._read_photo(r.image_ref)
                if photo is not None:
                    zf.writestr(f"photos/{r.image_ref}", photo)
                items.append({**res, "photo": f"photos/{r.image_ref}" if photo else None,
                              "spot": spot_names.get(r.spot_id) if r.spot_id else None})
            zf.writestr("analyses.json", json.dumps({"analyses": items}, indent=2))
        return buf.getvalue()

    def purge_older_than(self, days: int, at: Any = None) -> int:
        """Retention: delete analyses older than ``days`` with their photos."""
        from datetime import timedelta

        n = self._delete_photos(self.history.delete_older_than((at or now())
                                                                - timedelta(days=days)))
        self.accounts.purge_expired()
        return n

    def model_card(self) -> dict[str, Any]:
        """The first model's card."""
        return self.primary.card()

    def model_cards(self) -> list[dict[str, Any]]:
        """Every served model's card, with how photos are routed to them."""
        return [m.card() for m in self.models.values()]
