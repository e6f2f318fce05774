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
from dermalab.data.images import open_rgb
from dermalab.data.lesion import NEEDS_MASK
from dermalab.deploy.ood import MahalanobisOOD, colour_statistics
from dermalab.deploy.predictor import Predictor
from dermalab.serve.accounts import AccountStore
from dermalab.serve.schemas import DISCLAIMER
from dermalab.serve.store import OPEN, Analysis, HistoryStore, ImageStore, Owner, make_engine, now


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
    open: bool = False  # single-user local install: no accounts, every analysis visible
    allowed_hosts: tuple[str, ...] = ("127.0.0.1", "localhost", "testserver")
    docs: bool = False  # /docs and /redoc (they load scripts the CSP forbids): development only
    retention_days: int | None = None  # delete analyses older than this, with their photos
    cookie_secure: bool = False  # Secure cookies: set when served over HTTPS
    rate_signin: str = "10/minute"  # per account and per client address
    rate_upload: str = "30/minute"  # per owner and per client address
    rate_storage: str = "memory://"  # limits storage URI; shared (redis://...) across processes
    clinics: str | None = None  # a clinic directory (CSV or YAML) for the dermatologist finder
    orphan_grace_s: float | None = None  # None: 0 with the run's own stores, else 600 s


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


def clean_photo(img: Image.Image) -> bytes:
    """The pixels of a decoded upload (already upright and RGB) as a JPEG with no metadata:
    no EXIF, XMP, ICC or comment survives, so neither does a GPS position or a device id."""
    buf = io.BytesIO()
    Image.frombytes("RGB", img.size, img.convert("RGB").tobytes()).save(
        buf, "JPEG", quality=92, optimize=True)
    return buf.getvalue()


OUTLINE_SIDE = 384  # the outline image's longer side
MEASURE_SIDE = 512  # measurements on a copy no larger than this (a phone photo is 12 MP)
OUTLINE_RGB = (0, 230, 255)  # cyan: visible on every skin tone and on a dark lesion


def lesion_summary(img: Image.Image, mask: np.ndarray) -> dict[str, Any] | None:
    """The lesion the segmenter outlined: its measurements (:func:`measure_lesion`, on a
    copy at most ``MEASURE_SIDE`` px; the diameter given in the photo's own pixels) and the
    photo with the outline drawn, as a PNG data URL. ``None`` when nothing was outlined."""
    from scipy import ndimage

    from dermalab.segment.measure import largest_region, measure_lesion

    if not mask.any():
        return None
    scale = min(1.0, MEASURE_SIDE / max(img.size))
    size = (max(1, round(img.width * scale)), max(1, round(img.height * scale)))
    small = np.asarray(img.resize(size, Image.Resampling.BILINEAR), np.uint8)
    m = np.asarray(Image.fromarray(mask.astype(np.uint8) * 255).resize(
        size, Image.Resampling.NEAREST)) >= 128
    measured = measure_lesion(m, small).to_json()
    measured["diameter_px"] = round(measured["diameter_px"] / scale, 1)
    view = min(1.0, OUTLINE_SIDE / max(img.size))
    vsize = (max(1, round(img.width * view)), max(1, round(img.height * view)))
    photo = np.array(img.resize(vsize, Image.Resampling.BILINEAR), np.uint8)
    region = np.asarray(Image.fromarray(largest_region(mask).astype(np.uint8) * 255).resize(
        vsize, Image.Resampling.NEAREST)) >= 128
    edge = region & ~ndimage.binary_erosion(region, iterations=2)
    photo[edge] = OUTLINE_RGB
    buf = io.BytesIO()
    Image.fromarray(photo).save(buf, "PNG", compress_level=1)
    return {**measured, "outline_png": "data:image/png;base64,"
            + base64.b64encode(buf.getvalue()).decode()}


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
        # One ONNX Runtime thread per inference: the server runs requests side by side
        # (measured on 2 CPUs, 4 clients: p95 254 -> 163-181 ms, 27 -> 32-35 uploads/s).
        self.predictor = Predictor.load(run_dir, threads=1)
        if self.predictor.torch_model is None:
            raise DermalabError(f"{run_dir}: the web service needs a run directory")
        self.info = self.predictor.info
        if self.info.input_mode in NEEDS_MASK:
            _ = self.predictor.segmenter  # fail at start, not at the first photo
        self.ood = MahalanobisOOD.load(serving / "ood.npz")
        colour = serving / "ood_colour.npz"
        self.ood_colour = MahalanobisOOD.load(colour) if colour.is_file() else None
        self.thresholds = json.loads((serving / "serving.json").read_text())
        self.metrics = read_metrics(paths)
        self.conditions = load_conditions()
        engine = make_engine(settings.database_url
                             or f"sqlite:///{(serving / 'history.db').resolve()}")
        self.history = HistoryStore(engine)
        self.accounts = AccountStore(engine)
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
        from dermalab.serve.clinics import load_directory

        self.clinics = load_directory(settings.clinics) if settings.clinics else None

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

    def analyze(self, data: bytes, filename: str, lang: str = DEFAULT_LANGUAGE,
                owner: Owner = OPEN, spot: str | None = None) -> dict[str, Any]:
        """Decode, predict, decide, explain and store one upload for ``owner`` (stored in
        English; answered in ``lang``), under ``owner``'s spot named ``spot`` if given. The
        stored photo is the decoded pixels, upright, as a new JPEG: the upload's EXIF/XMP (GPS
        position, device ids, dates) is not kept."""
        img = decode_upload(data, filename, self.settings)
        # The model's input: resized, or for a lesion-aware model cropped/masked with the
        # lesion its segmenter finds (the same preprocessing as training).
        mask = self.predictor.segment(img) if self.info.input_mode in NEEDS_MASK else None
        arr = self.predictor.prepare(img, mask)
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
            heat = self.heatmap(np.ascontiguousarray(arr[..., :3]), int(order[0]), fmap)
        lesion = None
        if verdict != "not_skin" and self.predictor.has_segmenter:
            # A raw model with a segmenter outlines only photos that are skin.
            if mask is None:
                mask = self.predictor.segment(img)
            lesion = lesion_summary(img, mask)
        analysis_id = str(uuid.uuid4())
        created = now()
        result: dict[str, Any] = self.localize({
            "id": analysis_id, "created_at": created, "filename": filename[:255],
            "verdict": verdict, "referral": referral, "conditions": conditions,
            "malignant_probability": mal_p, "malignant_threshold": mal_t,
            "ood_score": ood_score, "ood_threshold": self.ood.threshold,
            "ood_colour_score": colour_score,
            "ood_colour_threshold": self.ood_colour.threshold if self.ood_colour else None,
            "uncertain_threshold": t_unsure, "heatmap_png": heat, "lesion": lesion},
            DEFAULT_LANGUAGE)
        named = self.history.spot_named(spot, owner) if spot and spot.strip() else None
        result["spot"] = {"id": named.id, "name": named.name} if named else None
        photo = clean_photo(img)
        # The row is written before the photo: a crash in between leaves a row whose photo is
        # missing (shown as such), never an unlisted photo that no deletion would reach.
        key = f"{analysis_id}.jpg"
        self.history.add(Analysis(
            id=analysis_id, created_at=created, filename=result["filename"],
            verdict=verdict, referral=referral, image_ref=key, size_bytes=len(photo),
            result_json=json.dumps({**result, "created_at": created.isoformat()}),
            owner_id=None if owner is OPEN else str(owner),
            spot_id=named.id if named else None))
        self.images.put(key, photo)
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
        try:
            return self.images.read(key)
        except FileNotFoundError:  # a crash between the row and the photo: said as missing
            return None

    def _delete_photos(self, rows: list[Analysis]) -> int:
        """Delete the photos of analyses whose rows are gone; returns how many rows."""
        for r in rows:
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
                          "top_condition": (self._condition(top["class_name"], 0.0, lang)["name"]
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
        """One of ``owner``'s spots over time: every analysis of it oldest first, with the top
        condition and malignant probability, and a warning when the malignant probability
        crossed its operating point (from below to at-or-above) between the last two photos.
        ``None`` for another owner's spot."""
        found = self.history.spot(spot_id, owner)
        if found is None:
            return None
        sp, rows = found
        entries: list[dict[str, Any]] = []
        for r in rows:
            res = json.loads(r.result_json)
            top = res["conditions"][0] if res["conditions"] else None
            mal_p, mal_t = res.get("malignant_probability"), res.get("malignant_threshold")
            prev = entries[-1] if entries else None
            above = mal_p is not None and mal_t is not None and mal_p >= mal_t
            entries.append({
                "id": r.id, "created_at": res["created_at"], "verdict": r.verdict,
                "referral": r.referral,
                "top_condition": (self._condition(top["class_name"], 0.0, lang)["name"]
                                  if top else None),
                "top_probability": top["probability"] if top else None,
                "malignant_probability": mal_p, "malignant_threshold": mal_t,
                "above_threshold": above if mal_p is not None else None,
                "crossed": bool(prev is not None and prev["above_threshold"] is False
                                and above)})
        warning = None
        if len(entries) >= 2 and entries[-1]["crossed"]:
            last, before = entries[-1], entries[-2]
            warning = t("spot.crossed", lang, before=percent(before["malignant_probability"]),
                        now=percent(last["malignant_probability"]),
                        threshold=percent(last["malignant_threshold"]))
        return {"id": sp.id, "name": sp.name, "analyses": entries, "warning": warning,
                "disclaimer": t("disclaimer", lang), "language": lang}

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
        moved = self.history.reassign(from_user, to_user)
        self.accounts.remove_user(from_user)
        return moved

    def delete_account(self, user_id: str) -> int:
        """Delete a user, every analysis and every photo of theirs; returns how many."""
        n = self._delete_photos(self.history.delete_all_of(user_id))
        self.accounts.remove_user(user_id)
        return n

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
