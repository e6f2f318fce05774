"""The trust stage of a run: calibrate, measure and explain the best model.

Runs at the end of ``dermalab train`` and again on ``dermalab report RUN_DIR`` (idempotent):
fits the temperature on validation, stores it (and the malignant operating threshold) in
``best.pt``, returns calibration / operating-point / subgroup results for ``metrics.json``, and
draws the curves, ROC and reliability plots and a Grad-CAM gallery of the worst test mistakes.
Everything works from saved predictions, so it can be redone without re-running the model.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from dermalab.core import plots
from dermalab.core.calibration import calibrated_probs
from dermalab.core.runs import (
    HISTORY_KEYS,
    LoadedRun,
    Predictions,
    RunPaths,
    load_checkpoint,
    save_checkpoint,
)
from dermalab.data.prepare import PreparedData
from dermalab.evaluate.analysis import analyze
from dermalab.evaluate.gallery import mistakes, render_gallery
from dermalab.evaluate.lesion_stats import lesion_measurements_by_class
from dermalab.evaluate.metadata_fusion import fit_metadata_model, metadata_fusion
from dermalab.train.accel import make_accelerator
from dermalab.train.loop import predict_split


def saved_predictions(run: LoadedRun, data: PreparedData, split: str) -> Predictions:
    """Saved predictions of a split, or (runs from older versions) computed and saved now."""
    path = run.paths.predictions(split)
    if path.is_file():
        return Predictions.load(path)
    cfg = run.config
    preds = predict_split(run.model, data, split, run.info.classes, run.info.mean, run.info.std,
                          make_accelerator(cfg.train), batch_size=cfg.train.eval_batch_size,
                          tta=cfg.eval.tta)
    preds.save(path)
    return preds


def calibrate_and_analyse(run: LoadedRun, data: PreparedData, val: Predictions,
                          test: Predictions) -> dict[str, Any]:
    """Temperature, operating point, subgroups, TTA effect and, with lesion masks, the test
    lesions' measurements per class (for ``metrics.json``); writes the temperature and
    threshold into ``best.pt``, the ROC and reliability plots and the gallery.
    """
    cfg, paths, classes = run.config, run.paths, run.info.classes
    meta = data.meta_rows(test.ids)
    counts = np.bincount(data.targets("train"), minlength=len(classes))
    out = analyze(val, test, classes, cfg.eval, meta, train_counts=counts)

    # The temperature and threshold travel with the model: every later use applies them.
    ckpt = load_checkpoint(paths.best)
    ckpt.pop("format", None)
    ckpt["temperature"] = run.info.temperature = out["temperature"]
    mal = out.get("malignant")
    ckpt["malignant"] = run.info.malignant = ({"classes": mal["classes"],
                                               "threshold": mal["threshold"]} if mal else None)
    ckpt["metadata_model"] = run.info.metadata = None
    if cfg.eval.metadata:
        train = data.samples("train")
        model = fit_metadata_model([s.meta for s in train], np.asarray(data.targets("train")),
                                   len(classes), cfg.eval.metadata)
        out["metadata_fusion"] = metadata_fusion(model, out["temperature"], val, test,
                                                 data.meta_rows(val.ids), meta, classes,
                                                 out.get("malignant"))
        ckpt["metadata_model"] = run.info.metadata = model.to_json()
    save_checkpoint(ckpt, paths.best)

    paths.plots.mkdir(exist_ok=True)
    t = out["temperature"]
    before, after = calibrated_probs(test.logits), calibrated_probs(test.logits, t)
    plots.save(plots.roc_curves(test.targets, after, classes), str(paths.plots / "roc.png"))
    plots.save(plots.reliability_diagram(
        [("before temperature scaling", before, test.targets, out["ece_before"]),
         (f"after (T = {t:.2f})", after, test.targets, out["ece_after"])],
        cfg.eval.ece_bins), str(paths.plots / "reliability.png"))
    if cfg.eval.gallery > 0:
        images, names, truths = mistakes(run, data, test, cfg.eval.gallery)
        out["gallery"] = (render_gallery(run, images, names, truths,
                                         paths.plots / "misclassified_gradcam.png",
                                         method=cfg.eval.cam_method,
                                         size=max(160, run.info.image_size))
                          if names else [])
    lesions = lesion_measurements_by_class(data.samples_of(test.ids), data.source, cfg.data,
                                           classes)
    if lesions is not None:
        out["lesion_measurements"] = lesions
    return out


def write_run_plots(history: list[dict[str, Any]], results: dict[str, Any], classes: list[str],
                    paths: RunPaths) -> None:
    """Per-epoch curves and confusion matrices as PNG files in ``plots/``."""
    h = {k: [float(r[k]) if r[k] is not None else float("nan") for r in history]
         for k in HISTORY_KEYS if k != "frozen_body"}
    specs = [
        ("loss", ["train_loss", "val_loss"], "loss"),
        ("accuracy", ["train_accuracy", "val_accuracy"], "accuracy"),
        ("balanced_accuracy", ["val_balanced_accuracy"], "balanced accuracy"),
        ("macro_f1", ["val_macro_f1"], "macro F1"),
        ("precision", ["val_weighted_precision"], "weighted precision"),
        ("recall", ["val_weighted_recall"], "weighted recall"),
        ("lr", ["lr"], "learning rate"),
    ]
    paths.plots.mkdir(exist_ok=True)
    for name, keys, label in specs if history else ():  # an ensemble has no epochs of its own
        plots.save(plots.curves(h, keys, label + " per epoch", label),
                   str(paths.plots / f"{name}.png"))
    cm = np.asarray(results["confusion_matrix"])
    plots.save(plots.confusion_matrix_figure(cm, classes),
               str(paths.plots / "confusion_matrix.png"))
    plots.save(plots.confusion_matrix_figure(cm, classes, normalize=True),
               str(paths.plots / "confusion_matrix_normalized.png"))
