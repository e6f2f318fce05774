"""Metrics of a trained model: the best checkpoint at the end of training, and a finished run
on any split or another dataset (``dermalab evaluate``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from dermalab.core.calibration import calibrated_probs, expected_calibration_error, nll
from dermalab.core.config import replace
from dermalab.core.errors import DataError
from dermalab.core.metadata import MetadataModel
from dermalab.core.metrics import metric_names
from dermalab.core.runs import load_run, save_predictions
from dermalab.data.prepare import PreparedData, prepare_data
from dermalab.evaluate.served import served_metrics
from dermalab.train.accel import make_accelerator
from dermalab.train.fit import Training
from dermalab.train.loop import mean_loss, predict_split

HEADLINE = metric_names(headline=True)


def split_description(data: PreparedData, conflicts: str) -> dict[str, Any]:
    """The split as ``metrics.json`` records it: origin, counts, leak check, label conflicts."""
    return {"origin": data.split.origin, "counts": data.counts(),
            "group_overlap": data.leaks.group_overlap,
            "duplicate_overlap": data.leaks.duplicate_overlap,
            "label_conflicts": {"policy": conflicts, "groups": len(data.source.conflicts),
                                "files": sum(map(len, data.source.conflicts))}}


def evaluate_training(t: Training) -> dict[str, Any]:
    """Val and test predictions of the trained (best) model, saved in the run (the served
    metrics follow in ``evaluate.finalize``, once the decision is fitted on validation); the
    test loss and the split's description. Runs on every process (predictions are
    gathered)."""
    cfg, data, classes = t.cfg, t.data, t.info.classes
    out: dict[str, Any] = {}
    for sp in ("val", "test"):
        if not data.split.ids(sp):
            continue
        preds = predict_split(t.model, data, sp, classes, t.info.mean, t.info.std,
                              t.accelerator, batch_size=cfg.train.eval_batch_size,
                              num_workers=cfg.data.num_workers,
                              channels_last=cfg.model.channels_last, tta=cfg.eval.tta)
        if t.is_main:
            save_predictions(t.paths, sp, preds, calibrated_probs(preds.logits), classes)
        if sp == "test":
            out["loss"] = mean_loss(t.loss_fn, preds.logits, preds.targets)
    out["split"] = split_description(data, cfg.data.conflicts)
    return out


def evaluate_run(
    run_dir: str | Path,
    *,
    data: str | None = None,
    split: str = "test",
    progress: bool = False,
    tta: bool = False,
    bootstrap: int | None = None,
) -> dict[str, Any]:
    """Metrics of the answers a run serves (its best checkpoint and stored decision).

    Args:
        run_dir: a directory written by ``dermalab train``.
        data: another dataset with the same classes (or a subset of them); default: the run's.
        split: ``train`` | ``val`` | ``test`` | ``all``. With another dataset, its own split is
            made with the run's split settings (or use ``all``).
        tta: average the logits over flip views (test-time augmentation).
        bootstrap: resamples for the 95% intervals (default: the run's ``eval.bootstrap``).

    The classification metrics of the served answers for the photos alone (what ``dermalab
    predict`` returns for them), with 95% lesion-grouped intervals; ECE of the served
    probabilities under the declared prior (``ece``) and of the network's plain softmax
    (``ece_raw``), NLL likewise; with a metadata model, the served answers with each image's
    own metadata (``with_metadata``).
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
    decision = run.info.decision
    metadata = MetadataModel.from_json(run.info.metadata) if run.info.metadata else None
    units = prepared.units(preds.ids)
    out = served_metrics(preds, decision, run.info.classes, units, ece_bins=cfg.eval.ece_bins,
                         reps=cfg.eval.bootstrap if bootstrap is None else bootstrap, tta=tta)
    logits = preds.tta_logits if tta and preds.tta_logits is not None else preds.logits
    y = preds.targets
    bins = cfg.eval.ece_bins
    out.update({
        "tta": tta, "temperature": decision.temperature, "tau": decision.tau,
        "ece_raw": expected_calibration_error(calibrated_probs(logits), y, bins),
        "nll_raw": nll(logits, y),
    })
    if metadata is not None:
        m = served_metrics(preds, decision, run.info.classes, units, ece_bins=bins, reps=0,
                           metadata=metadata, rows=prepared.meta_rows(preds.ids),
                           detailed=False, tta=tta)
        out["with_metadata"] = {k: m[k] for k in HEADLINE}
    out["split"] = split
    out["data"] = prepared.source.location
    out["n_by_class"] = {c: int(n) for c, n in
                         zip(run.info.classes, np.bincount(y, minlength=len(run.info.classes)),
                             strict=True)}
    return out
