"""Metrics of a trained model: the best checkpoint at the end of training, and a finished run
on any split or another dataset (``dermalab evaluate``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from dermalab.core.calibration import calibrated_probs, expected_calibration_error, nll
from dermalab.core.config import replace
from dermalab.core.errors import DataError
from dermalab.core.metrics import classification_metrics
from dermalab.core.runs import load_run, save_predictions
from dermalab.data.prepare import prepare_data
from dermalab.train.accel import make_accelerator
from dermalab.train.fit import Training
from dermalab.train.loop import mean_loss, predict_split

HEADLINE = ("accuracy", "balanced_accuracy", "macro_f1", "roc_auc_macro")


def split_metrics(split: str, targets: np.ndarray, probs: np.ndarray, classes: list[str]
                  ) -> dict[str, Any]:
    """What ``metrics.json`` keeps of a split: detailed metrics of test, the headline of the
    others (validation)."""
    if split == "test":
        return classification_metrics(targets, probs, classes)
    vm = classification_metrics(targets, probs, classes, detailed=False)
    return {k: vm[k] for k in HEADLINE}


def evaluate_training(t: Training) -> dict[str, Any]:
    """Val and test predictions of the trained (best) model, saved in the run; detailed test
    metrics and the split's description. Runs on every process (predictions are gathered)."""
    cfg, data, classes = t.cfg, t.data, t.info.classes
    out: dict[str, Any] = {}
    out_val: dict[str, Any] = {}
    for sp in ("val", "test"):
        if not data.split.ids(sp):
            continue
        preds = predict_split(t.model, data, sp, classes, t.info.mean, t.info.std,
                              t.accelerator, batch_size=cfg.train.eval_batch_size,
                              num_workers=cfg.data.num_workers,
                              channels_last=cfg.model.channels_last, tta=cfg.eval.tta)
        probs = calibrated_probs(preds.logits)
        if t.is_main:
            save_predictions(t.paths, sp, preds, probs, classes)
        if sp == "test":
            out = split_metrics(sp, preds.targets, probs, classes)
            out["loss"] = mean_loss(t.loss_fn, preds.logits, preds.targets)
        else:
            out_val = split_metrics(sp, preds.targets, probs, classes)
    out["val"] = out_val
    out["split"] = {"origin": data.split.origin, "counts": data.counts(),
                    "group_overlap": data.leaks.group_overlap,
                    "duplicate_overlap": data.leaks.duplicate_overlap,
                    "label_conflicts": {"policy": cfg.data.conflicts,
                                        "groups": len(data.source.conflicts),
                                        "files": sum(map(len, data.source.conflicts))}}
    return out


def evaluate_run(
    run_dir: str | Path,
    *,
    data: str | None = None,
    split: str = "test",
    progress: bool = False,
    tta: bool = False,
) -> dict[str, Any]:
    """Metrics of a run's best checkpoint.

    Args:
        run_dir: a directory written by ``dermalab train``.
        data: another dataset with the same classes (or a subset of them); default: the run's.
        split: ``train`` | ``val`` | ``test`` | ``all``. With another dataset, its own split is
            made with the run's split settings (or use ``all``).
        tta: average the logits over flip views (test-time augmentation).

    Besides the classification metrics, reports ECE and NLL with and without the run's
    temperature (``ece_raw``/``ece``, ``nll_raw``/``nll``).
    """
    run = load_run(run_dir, command="evaluate")
    cfg = run.config
    split_path: Path | None = run.paths.splits
    if data is not None:
        # Another dataset: detect its format and make its own split; the class map stays, so
        # its labels are mapped onto the model's classes the same way.
        cfg = replace(cfg, [f"data.source={data}", "data.format=auto", "data.split_file=null",
                            "data.image_dirs=[]"])
        split_path = None
    prepared = prepare_data(cfg.data, run.info.image_size, split_path=split_path, progress=progress)
    unknown = sorted(set(prepared.classes) - set(run.info.classes))
    if unknown:
        raise DataError(f"dataset has classes the model does not know: {unknown} "
                        f"(model classes: {run.info.classes}); map them with data.class_map")
    parts = ("train", "val", "test") if split == "all" else (split,)
    if not any(prepared.split.ids(sp) for sp in parts):
        raise DataError(f"split '{split}' is empty")
    accelerator = make_accelerator(cfg.train)
    model = accelerator.prepare(run.model)
    preds = predict_split(model, prepared, split, run.info.classes, run.info.mean, run.info.std,
                          accelerator, batch_size=cfg.train.eval_batch_size, tta=tta,
                          progress=progress)
    y = preds.targets
    logits = preds.tta_logits if preds.tta_logits is not None else preds.logits
    probs = calibrated_probs(logits)
    out = classification_metrics(y, probs, run.info.classes)
    t = run.info.temperature
    bins = cfg.eval.ece_bins
    out.update({
        "tta": tta, "temperature": t,
        "ece_raw": expected_calibration_error(probs, y, bins),
        "ece": expected_calibration_error(calibrated_probs(logits, t), y, bins),
        "nll_raw": nll(logits, y), "nll": nll(logits, y, t),
    })
    out["split"] = split
    out["data"] = prepared.source.location
    with torch.no_grad():
        out["loss_ce"] = float(nn.functional.cross_entropy(torch.from_numpy(logits),
                                                           torch.from_numpy(y)))
    out["n_by_class"] = {c: int(n) for c, n in
                         zip(run.info.classes, np.bincount(y, minlength=len(run.info.classes)),
                             strict=True)}
    return out
