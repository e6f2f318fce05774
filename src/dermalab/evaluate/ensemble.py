"""Combine finished runs of one recipe into one ensemble run (``model.members`` > 1).

The members are complete runs (``RUN_DIR/members/m<i>``, seeds ``train.seed + i``), each
calibrated on validation. The ensemble run gets what any run has after its training:
``checkpoints/best.pt`` (a :class:`~dermalab.core.models.Ensemble` with the members' weights
and temperatures), the members' common ``splits.csv``, validation and test predictions and
``metrics.json``; the pipeline then calibrates, analyses, fits the serving detectors and
writes the report exactly as for a single model.
"""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from dermalab.core.calibration import calibrated_probs, nll
from dermalab.core.config import ExperimentConfig, to_dict
from dermalab.core.decision import Decision
from dermalab.core.errors import DermalabError
from dermalab.core.models import Ensemble, count_parameters
from dermalab.core.runs import (
    LoadedRun,
    Predictions,
    RunPaths,
    load_run,
    read_metrics,
    save_checkpoint,
    save_predictions,
)
from dermalab.data.prepare import PreparedData
from dermalab.train.accel import make_accelerator
from dermalab.train.loop import predict_split

#: How far the combined model's logits may stray from the members' saved predictions
#: combined by hand (float32 sums in another order).
PARITY_TOLERANCE = 1e-3
#: What must agree between members for their mean to mean anything.
_SAME = ("classes", "backbone", "image_size", "resize_mode", "mean", "std", "input_mode",
         "crop_margin", "image_type")


def _check_members(runs: list[LoadedRun]) -> None:
    first = runs[0]
    for run in runs[1:]:
        for key in _SAME:
            a, b = getattr(first.info, key), getattr(run.info, key)
            if a != b:
                raise DermalabError(f"{run.paths.root}: its {key} ({b!r}) differs from "
                                    f"{first.paths.root}'s ({a!r}); ensemble members must be "
                                    "runs of one recipe")
        if run.paths.splits.read_bytes() != first.paths.splits.read_bytes():
            raise DermalabError(f"{run.paths.root}: its splits.csv differs from "
                                f"{first.paths.root}'s; ensemble members must share one split")


def hand_combined(runs: list[LoadedRun], split: str) -> Predictions:
    """The members' saved predictions of ``split`` combined as the ensemble defines it:
    ``mean_k z_k / T_k`` (the check on :meth:`Ensemble.combine`)."""
    preds = [Predictions.load(r.paths.predictions(split)) for r in runs]
    if any(p.ids != preds[0].ids for p in preds[1:]):
        raise DermalabError(f"the members' {split} predictions cover different images; "
                            "rerun them with `dermalab report`")
    logits = np.mean([p.logits / r.info.temperature for p, r in zip(preds, runs, strict=True)],
                     axis=0)
    return Predictions(preds[0].ids, preds[0].targets, logits)


def assemble_ensemble(cfg: ExperimentConfig, paths: RunPaths, member_dirs: list[Path],
                      data: PreparedData) -> dict[str, Any]:
    """Write the ensemble of the finished runs ``member_dirs`` into ``paths`` (see the module
    docstring) and return its ``metrics.json`` content before calibration and analysis (the
    caller adds the wall time, which includes training the members).

    Raises:
        DermalabError: the members are not runs of one recipe on one split, or the combined
            model does not reproduce their predictions.
    """
    empty = [sp for sp in ("val", "test") if not data.split.ids(sp)]
    if empty:
        raise DermalabError(f"{paths.root}: the split has no {' or '.join(empty)} images; an "
                            "ensemble needs validation (each member's temperature) and test")
    runs = [load_run(d, command="ensemble") for d in member_dirs]
    _check_members(runs)
    member_metrics = [read_metrics(r.paths) for r in runs]
    model = Ensemble.combine([r.model for r in runs], [r.info.temperature for r in runs])
    # The ensemble's own temperature, threshold and metadata model are fitted afterwards.
    info = dataclasses.replace(runs[0].info, decision=Decision(), metadata=None,
                               members=len(runs), extra={})
    paths.checkpoints.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(runs[0].paths.splits, paths.splits)
    if runs[0].paths.segmenter.is_dir():  # a lesion-aware recipe: its segmenter, one for all
        shutil.copytree(runs[0].paths.segmenter, paths.segmenter, dirs_exist_ok=True)
    save_checkpoint({"model": model.state_dict(), "config": to_dict(cfg), **info.to_checkpoint(),
                     "weights_origin": runs[0].checkpoint.get("weights_origin")}, paths.best)

    accelerator = make_accelerator(cfg.train)
    out: dict[str, Any] = {}
    for split in ("val", "test"):
        preds = predict_split(model, data, split, info.classes, info.mean, info.std,
                              accelerator, batch_size=cfg.train.eval_batch_size,
                              num_workers=cfg.data.num_workers, tta=cfg.eval.tta)
        by_hand = hand_combined(runs, split)
        gap = float(np.abs(preds.logits - by_hand.logits).max()) if len(preds.ids) else 0.0
        if preds.ids != by_hand.ids or gap > PARITY_TOLERANCE:
            raise DermalabError(f"{paths.root}: the combined model's {split} logits differ "
                                f"from the members' by {gap:.2g}; please report this")
        save_predictions(paths, split, preds, calibrated_probs(preds.logits), info.classes)
        if split == "test":
            out["loss"] = nll(preds.logits, preds.targets)
            out["member_parity_max_abs_diff"] = gap
    out["split"] = member_metrics[0]["split"]
    out["members"] = [
        {"run": str(r.paths.root.relative_to(paths.root)) if r.paths.root.is_relative_to(
            paths.root) else str(r.paths.root), "seed": r.config.train.seed,
         "temperature": r.info.temperature,
         **{k: m.get(k) for k in ("balanced_accuracy", "accuracy", "roc_auc_macro",
                                  "best_epoch", "epochs_run", "train_seconds_total")}}
        for r, m in zip(runs, member_metrics, strict=True)]
    out.update({
        "best_epoch": [m.get("best_epoch") for m in member_metrics],
        "epochs_run": [m.get("epochs_run") for m in member_metrics],
        "stopped_early": any(m.get("stopped_early") for m in member_metrics),
        "monitor": cfg.train.monitor, "best_val_monitor": None,
        "image_size": info.image_size, "backbone": info.backbone,
        "weights_origin": runs[0].checkpoint.get("weights_origin"),
        "parameters": count_parameters(model),
        "train_seconds_total": round(sum(float(m.get("train_seconds_total") or 0.0)
                                         for m in member_metrics), 1),
        "processes": 1,
    })
    return out
