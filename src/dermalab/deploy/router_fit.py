"""Gather what a router learns from: the served runs' own images, by image type, and the
non-skin ``fit`` set; then fit it (:func:`dermalab.deploy.router.fit_router`).

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


def run_images(run_dir: str | Path, limits: Mapping[str, int], *, seed: int = 0,
               progress: bool = False) -> tuple[str, dict[str, list[np.ndarray]]]:
    """``(image_type, split -> router inputs)``: up to ``limits[split]`` images of each split
    of a run (a random subset; the run's own split file, so validation and test stay held
    out), from one pass over its data. Read as raw photos whatever the model's
    ``data.input``: the router sees uploads, not crops."""
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
        out[split] = [router_input(data.store.get(i)) for i in ids]
    return run.info.image_type, out


def fit_router_for_runs(run_dirs: Sequence[str | Path], out: str | Path, *,
                        per_run: int = 800, val_per_run: int = 300, progress: bool = False
                        ) -> dict[str, Any]:
    """Fit a router for the runs ``run_dirs`` (one per image type) into ``out``."""
    fit: dict[str, list[np.ndarray]] = {}
    val: dict[str, list[np.ndarray]] = {}
    sources: dict[str, str] = {}
    for run_dir in run_dirs:
        kind, images = run_images(run_dir, {"train": per_run, "val": val_per_run},
                                  progress=progress)
        if kind in fit:
            raise DermalabError(f"{run_dir}: a second {kind} model ({sources[kind]} is one); "
                                "a router sends each image type to one model")
        fit[kind], val[kind] = images["train"], images["val"]
        sources[kind] = f"{Path(run_dir).resolve()} (train split; val split for the check)"
    negatives = negative_images("fit")
    fit["not_skin"] = [router_input(n.image) for n in negatives]
    sources["not_skin"] = ("dermalab.data.negatives 'fit' set: bundled photos (scikit-image, "
                           "scikit-learn) and rendered documents, screenshots, charts, "
                           "patterns")
    return fit_router(fit, val, out, sources=sources)
