"""The trust stage of a run: decide, measure and explain the best model.

Runs at the end of ``dermalab train`` and again on ``dermalab report RUN_DIR`` (idempotent):
fits the served decision on validation (temperature, prior shift, "not sure" and malignant
thresholds, metadata weight) into ``decision.json`` (``best.pt`` is never rewritten), measures
the served answer on test with intervals, the other rules beside it and subgroups for
``metrics.json``, and draws the curves, ROC and reliability plots and a Grad-CAM gallery of
the worst test mistakes. Everything works from saved predictions, so it can be redone without
re-running the model.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from dermalab.core import plots
from dermalab.core.calibration import (
    calibrated_probs,
    expected_calibration_error,
    nll,
    prior_weights,
)
from dermalab.core.metadata import MetadataModel
from dermalab.core.runs import (
    HISTORY_KEYS,
    LoadedRun,
    Predictions,
    RunPaths,
    save_predictions,
    write_decision,
)
from dermalab.data.prepare import PreparedData
from dermalab.data.skin_tone import fitzpatrick_from_ita, ita
from dermalab.evaluate.analysis import subgroup_metrics
from dermalab.evaluate.decision import fit_decision
from dermalab.evaluate.gallery import mistakes, render_gallery
from dermalab.evaluate.lesion_stats import lesion_measurements_by_class
from dermalab.evaluate.metadata_fusion import fit_metadata_model
from dermalab.evaluate.served import rules_beside, served_metrics
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


def _metadata_model(run: LoadedRun, data: PreparedData) -> MetadataModel | None:
    """The metadata model of ``eval.metadata``, fitted on the training split (None: off)."""
    cfg, classes = run.config, run.info.classes
    if not cfg.eval.metadata:
        return None
    train = data.samples("train")
    return fit_metadata_model([s.meta for s in train], np.asarray(data.targets("train")),
                              len(classes), cfg.eval.metadata)


def calibrate_and_analyse(run: LoadedRun, data: PreparedData, val: Predictions,
                          test: Predictions) -> dict[str, Any]:
    """Fit the served decision on validation (``evaluate.decision``; written to
    ``decision.json``), then measure the served answer on test for a photo alone (the
    headline, with intervals), the other rules beside it, subgroups and, with lesion masks,
    the test lesions' measurements; draws the ROC and reliability plots and the gallery.

    Returns the keys of ``metrics.json`` this stage owns.
    """
    cfg, paths, classes = run.config, run.paths, run.info.classes
    ev = cfg.eval
    counts = np.bincount(data.targets("train"), minlength=len(classes))
    metadata = _metadata_model(run, data)
    val_rows = data.meta_rows(val.ids) if metadata is not None else None
    decision, fit = fit_decision(val, classes, counts, ev, metadata, val_rows)
    run.info.decision = decision
    run.info.metadata = metadata.to_json() if metadata is not None else None
    write_decision(paths, decision, run.info.metadata)

    units = data.units(test.ids)
    test_rows = data.meta_rows(test.ids)
    if ev.skin_tone:
        add_estimated_skin_types(data, test.ids, test_rows)
    served = served_metrics(test, decision, classes, units, ece_bins=ev.ece_bins,
                            reps=ev.bootstrap)
    val_served = served_metrics(val, decision, classes, data.units(val.ids),
                                ece_bins=ev.ece_bins, reps=0, detailed=False)
    out: dict[str, Any] = {k: v for k, v in served.items() if k != "malignant"}
    mal = served["malignant"]
    if mal is not None:
        mal.update({"target_sensitivity": ev.target_sensitivity,
                    "val_sensitivity": (val_served["malignant"] or {}).get("sensitivity"),
                    "val_specificity": (val_served["malignant"] or {}).get("specificity"),
                    "intervals": {k: served["intervals"].get(f"malignant_{k}")
                                  for k in ("sensitivity", "specificity")}})
    plain = calibrated_probs(test.logits)
    out.update({
        "served": {"answer": "the top class of softmax(z / T - tau log pi) for a photo alone",
                   "prior_rule": decision.prior_rule, "tau": decision.tau,
                   "deployment_prior": _named(decision.deployment_prior(), classes),
                   "training_prior": _named(np.exp(decision.log_prior)
                                            if decision.log_prior is not None else None,
                                            classes),
                   "uncertain_threshold": decision.uncertain_threshold,
                   "bootstrap": ev.bootstrap},
        "decision": {**decision.to_json(), **fit},
        "temperature": decision.temperature, "temperature_warning": fit["temperature_warning"],
        "ece_bins": ev.ece_bins,
        "ece_before": expected_calibration_error(plain, test.targets, ev.ece_bins),
        "ece_after": served["ece"], "nll_before": nll(test.logits, test.targets),
        "nll_after": served["nll"],
        "malignant": mal,
        "val": {k: val_served[k] for k in ("accuracy", "balanced_accuracy", "macro_f1",
                                           "roc_auc_macro", "ece", "uncertain_rate")}
        | {"malignant_sensitivity": (val_served["malignant"] or {}).get("sensitivity"),
           "malignant_specificity": (val_served["malignant"] or {}).get("specificity")},
        "rules": rules_beside(test, decision, classes, units, ece_bins=ev.ece_bins,
                              reps=ev.bootstrap, metadata=metadata,
                              rows=test_rows if metadata is not None else None, val=val,
                              target_sensitivity=ev.target_sensitivity),
        "subgroups": subgroup_metrics(test.targets, decision.probabilities(test.logits),
                                      test_rows, classes, decision, units, ev.bootstrap),
    })
    if metadata is not None:
        assert val_rows is not None
        scaled = val.logits / decision.temperature
        out["metadata_fusion"] = {
            "fields": list(metadata.fields), "weight": metadata.weight,
            "test_images_with_metadata": int(sum(bool(metadata.given(r)) for r in test_rows)),
            "val_nll": nll(metadata.fuse(scaled, val_rows), val.targets),
            "val_nll_without": nll(scaled, val.targets)}
    save_predictions(paths, "test", test, decision.probabilities(test.logits), classes)
    save_predictions(paths, "val", val, decision.probabilities(val.logits), classes)
    _plots(run, data, test, out)
    lesions = lesion_measurements_by_class(data.samples_of(test.ids), data.source, cfg.data,
                                           classes)
    if lesions is not None:
        out["lesion_measurements"] = lesions
    return out


def measure_without_validation(run: LoadedRun, data: PreparedData, test: Predictions
                               ) -> dict[str, Any]:
    """A split with a test part but no validation: no decision can be fitted, so the test
    answers are measured under the run's stored one (temperature 1, the training prior)."""
    ev = run.config.eval
    served = served_metrics(test, run.info.decision, run.info.classes, data.units(test.ids),
                            ece_bins=ev.ece_bins, reps=ev.bootstrap)
    out = {k: v for k, v in served.items() if k != "malignant"}
    out["served"] = {"answer": "softmax(z) of a model without a validation split (no "
                               "temperature, prior shift or thresholds could be fitted)",
                     "bootstrap": ev.bootstrap}
    return out


def add_estimated_skin_types(data: PreparedData, ids: list[str],
                             rows: list[dict[str, Any]]) -> None:
    """Each image's Fitzpatrick type estimated from its healthy skin (``data.skin_tone``),
    as ``fitzpatrick_estimated`` in its metadata row (in place): the subgroup tables then
    show skin tone for data without skin-type labels."""
    for sid, row in zip(ids, rows, strict=True):
        row["fitzpatrick_estimated"] = fitzpatrick_from_ita(ita(data.store.get(sid)))


def _named(values: np.ndarray | None, classes: list[str]) -> dict[str, float] | None:
    return None if values is None else {c: float(v) for c, v in zip(classes, values,
                                                                     strict=True)}


def _plots(run: LoadedRun, data: PreparedData, test: Predictions, out: dict[str, Any]) -> None:
    """ROC and reliability plots of the served probabilities, and the mistakes' gallery."""
    cfg, paths, classes = run.config, run.paths, run.info.classes
    decision = run.info.decision
    paths.plots.mkdir(exist_ok=True)
    before, after = calibrated_probs(test.logits), decision.probabilities(test.logits)
    plots.save(plots.roc_curves(test.targets, after, classes), str(paths.plots / "roc.png"))
    prior = decision.deployment_prior()
    weights = prior_weights(test.targets, prior) if prior is not None else None
    plots.save(plots.reliability_diagram(
        [("the network's softmax", before, test.targets, None, out["ece_before"]),
         (f"served (T = {decision.temperature:.2f}, tau = {decision.tau:.2f})", after,
          test.targets, weights, out["ece_after"])],
        cfg.eval.ece_bins), str(paths.plots / "reliability.png"))
    if cfg.eval.gallery > 0:
        images, names, truths = mistakes(run, data, test, cfg.eval.gallery)
        out["gallery"] = (render_gallery(run, images, names, truths,
                                         paths.plots / "misclassified_gradcam.png",
                                         method=cfg.eval.cam_method,
                                         size=max(160, run.info.image_size))
                          if names else [])


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
    if "confusion_matrix" not in results:  # no test split
        return
    cm = np.asarray(results["confusion_matrix"])
    plots.save(plots.confusion_matrix_figure(cm, classes),
               str(paths.plots / "confusion_matrix.png"))
    plots.save(plots.confusion_matrix_figure(cm, classes, normalize=True),
               str(paths.plots / "confusion_matrix_normalized.png"))
