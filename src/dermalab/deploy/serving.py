"""Fit what the web service decides with besides the model and its decision: the "not skin"
detectors, on this run's own data (train features, validation for the false-alarm rate).
Written to ``RUN_DIR/serving/``."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch

from dermalab.core.atomic import atomic_write_text
from dermalab.core.models import FeaturesAndLogits
from dermalab.core.runs import LoadedRun, Predictions
from dermalab.data.prepare import PreparedData
from dermalab.deploy.ood import colour_statistics, fit_mahalanobis
from dermalab.evaluate.explain import to_input


def cached_batches(data: PreparedData, ids: list[str], batch: int) -> Iterator[np.ndarray]:
    """The cached uint8 images of ``ids``, ``batch`` at a time (never all in memory)."""
    for i in range(0, len(ids), batch):
        yield np.stack([data.store.get(s) for s in ids[i:i + batch]])


def features_of(run: LoadedRun, data: PreparedData, ids: list[str], batch: int = 64
                ) -> np.ndarray:
    """Penultimate features of cached images (eval mode, no augmentation)."""
    both = FeaturesAndLogits(run.model).eval()
    out = []
    with torch.no_grad():
        for images in cached_batches(data, ids, batch):
            out.append(both(to_input(images, run.info.mean, run.info.std))[1].double().numpy())
    return np.concatenate(out) if out else np.zeros((0, 0))


def colour_of(data: PreparedData, ids: list[str], batch: int = 256) -> np.ndarray:
    """Colour statistics of cached images, ``batch`` at a time."""
    return np.concatenate([colour_statistics(images)
                           for images in cached_batches(data, ids, batch)])


def fit_serving(run: LoadedRun, data: PreparedData, val: Predictions,
                max_train: int = 3000) -> dict[str, Any]:
    """Fit the web service's "not skin" detectors; writes ``RUN_DIR/serving/ood.npz``,
    ``ood_colour.npz`` and ``serving.json``. (The "not sure" lines belong to the served
    decision: ``evaluate.decision``.)"""
    cfg = run.config.eval
    train = data.samples("train")
    rng = np.random.default_rng(0)
    if len(train) > max_train:
        train = [train[i] for i in sorted(rng.choice(len(train), max_train, replace=False))]
    index = {c: i for i, c in enumerate(run.info.classes)}
    train_ids = [s.sample_id for s in train]
    f_train = features_of(run, data, train_ids)
    f_val = features_of(run, data, val.ids)
    # Two detectors share the false-positive budget: deep features and colour statistics.
    ood = fit_mahalanobis(f_train, np.array([index[s.label] for s in train]), f_val,
                          cfg.ood_target_fpr / 2)
    c_train = colour_of(data, train_ids)
    c_val = colour_of(data, val.ids)
    colour = fit_mahalanobis(c_train, np.zeros(len(c_train), dtype=int), c_val,
                             cfg.ood_target_fpr / 2, standardize=True)
    folder = run.paths.serving
    folder.mkdir(exist_ok=True)
    ood.save(folder / "ood.npz")
    colour.save(folder / "ood_colour.npz")
    out = {"ood_threshold": ood.threshold, "ood_target_fpr": cfg.ood_target_fpr,
           "ood_colour_threshold": colour.threshold,
           "val_ood_rate": float(np.mean(ood.is_ood(f_val) | colour.is_ood(c_val))),
           "ood_fit_images": len(train)}
    atomic_write_text(folder / "serving.json", json.dumps(out, indent=2))
    return out
