"""Gather what a router learns from: the served runs' own images, by image type, and the
non-skin ``fit`` set; then fit it (:func:`dermalab.deploy.router.fit_router`).

Close-up views: each skin photo is also learnt from as centre crops (:data:`CLOSEUPS`). A
phone close-up of one lesion fills the frame with skin and has no dermatoscope's ring; a
router fitted on the atlases' wider photos alone sent about half of such photos to the
dermoscopy model, whose answer for them is unreliable (the brief's held-out smartphone
close-ups). A crop keeps the photo's type (a crop of a dermoscopic image is still
dermoscopic), so both skin types get the crops and the router must learn the type from
texture and light, not from framing. ``bench/closeups.py`` measures the effect.

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

#: Centre crops added per skin photo, as the share of each side kept.
CLOSEUPS: tuple[float, ...] = (0.5, 0.33)


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
                        closeups: Sequence[float] = CLOSEUPS) -> dict[str, Any]:
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
    fit["not_skin"] = [router_input(n.image) for n in negatives]
    sources["not_skin"] = ("dermalab.data.negatives 'fit' set: bundled photos (scikit-image, "
                           "scikit-learn) and rendered documents, screenshots, charts, "
                           "patterns")
    return fit_router(fit, val, out, sources=sources, closeups=closeups,
                      val_closeup=val_closeup)
