"""Gather what a router learns from: the served runs' own images, by image type, and the
non-skin ``fit`` set; then fit it (:func:`dermalab.deploy.router.fit_router`).

Close-up views (optional, ``closeups``; ``dermalab router fit --closeups``): every photo is
also learnt from as centre crops (:data:`CLOSEUPS`). A phone close-up of one lesion fills
the frame with skin and has no dermatoscope's ring, and a router fitted on the atlases'
wider photos sends some of them to the dermoscopy model. A crop keeps the photo's type (a
crop of a dermoscopic image is still dermoscopic), so both skin types get the crops and the
router must learn the type from texture and light, not from framing; the non-skin photos get
them too, so that a crop does not itself read as skin. Measured (``bench/closeups.py``): the
clinical model then answers 96-98% of close-up stand-ins instead of 78-87%, but on
validation it referred no more malignant close-ups urgently than the whole-frame router
with the service's second opinion (``ServeSettings.second_opinion_below``), and it let a
few more non-skin photos through; so it is off by default.

``dermalab router fit RUN_DIR... --out DIR``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from dermalab.core.errors import DermalabError
from dermalab.core.runs import load_run
from dermalab.data.negatives import negative_images
from dermalab.data.prepare import prepare_data
from dermalab.deploy.router import fit_router, router_input

#: Centre crops added per photo, as the share of each side kept.
CLOSEUPS: tuple[float, ...] = (0.5, 0.33)
#: The non-skin class's weight over the balanced one when close-ups are fitted: with 1, the
#: close-up router let 25 of 172 held-out non-skin photos through (flowers, stained tissue)
#: where the whole-frame router let 9; with 4, 11 (bench/closeups.py, the decision record
#: 2026-12-07-phone-closeups.md).
CLOSEUP_NOT_SKIN_WEIGHT = 4.0


def closeup_views(image: np.ndarray, fractions: Sequence[float]) -> list[np.ndarray]:
    """Centre crops of ``image`` (H x W x C) keeping ``fractions`` of each side (at least one
    pixel), as close-up stand-ins: a person photographs the spot in the middle of the frame."""
    h, w = image.shape[:2]
    out = []
    for f in fractions:
        if not 0 < f <= 1:
            raise DermalabError(f"a close-up keeps a share of each side in (0, 1]; got {f}")
        ch, cw = max(1, round(h * f)), max(1, round(w * f))
        top, left = (h - ch) // 2, (w - cw) // 2
        out.append(image[top:top + ch, left:left + cw])
    return out


def run_images(run_dir: str | Path, limits: Mapping[str, int], *, seed: int = 0,
               progress: bool = False, closeups: Sequence[float] = ()
               ) -> tuple[str, dict[str, list[np.ndarray]]]:
    """``(image_type, split -> router inputs)``: up to ``limits[split]`` images of each split
    of a run (a random subset; the run's own split file, so validation and test stay held
    out), from one pass over its data. Read as raw photos whatever the model's
    ``data.input``: the router sees uploads, not crops. With ``closeups``, each split also
    gets ``"<split>_closeup"``: the :func:`closeup_views` of the same images."""
    run = load_run(run_dir, command="router fit")
    cfg = dataclasses.replace(run.config.data, input="raw")
    data = prepare_data(cfg, run.info.image_size, split_path=run.paths.splits,
                        progress=progress, write=False)
    rng = np.random.default_rng(seed)
    out = {}
    for split, limit in limits.items():
        ids = [s.sample_id for s in data.samples(split)]
        if len(ids) > limit:
            ids = [ids[i] for i in sorted(rng.choice(len(ids), limit, replace=False))]
        images = [data.store.get(i) for i in ids]
        out[split] = [router_input(im) for im in images]
        if closeups:
            out[f"{split}_closeup"] = [router_input(v) for im in images
                                       for v in closeup_views(np.asarray(im), closeups)]
    return run.info.image_type, out


def fit_router_for_runs(run_dirs: Sequence[str | Path], out: str | Path, *,
                        per_run: int = 800, val_per_run: int = 300, progress: bool = False,
                        closeups: Sequence[float] = ()) -> dict[str, Any]:
    """Fit a router for the runs ``run_dirs`` (one per image type) into ``out``, from each
    run's training photos and their ``closeups`` (none: the whole frames alone); the
    validation photos' close-ups get a confusion matrix of their own."""
    fit: dict[str, list[np.ndarray]] = {}
    val: dict[str, list[np.ndarray]] = {}
    val_closeup: dict[str, list[np.ndarray]] = {}
    sources: dict[str, str] = {}
    for run_dir in run_dirs:
        kind, images = run_images(run_dir, {"train": per_run, "val": val_per_run},
                                  progress=progress, closeups=closeups)
        if kind in fit:
            raise DermalabError(f"{run_dir}: a second {kind} model ({sources[kind]} is one); "
                                "a router sends each image type to one model")
        fit[kind] = images["train"] + images.get("train_closeup", [])
        val[kind], val_closeup[kind] = images["val"], images.get("val_closeup", [])
        sources[kind] = f"{Path(run_dir).resolve()} (train split; val split for the check)"
    negatives = negative_images("fit")
    # Non-skin photos get the same close-up views: else "a crop" itself reads as skin, and
    # close-ups of a flower or gravel pass the not-skin check (measured: bench/closeups.py).
    fit["not_skin"] = [router_input(v) for n in negatives
                       for v in [np.asarray(n.image), *closeup_views(np.asarray(n.image),
                                                                      closeups)]]
    sources["not_skin"] = ("dermalab.data.negatives 'fit' set: bundled photos (scikit-image, "
                           "scikit-learn) and rendered documents, screenshots, charts, "
                           "patterns")
    return fit_router(fit, val, out, sources=sources, closeups=closeups,
                      val_closeup=val_closeup,
                      not_skin_weight=CLOSEUP_NOT_SKIN_WEIGHT if closeups else 1.0)
