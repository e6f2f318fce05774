"""After training: calibration, TTA effect, malignant operating point and subgroup metrics.

Everything here works on saved predictions (``predictions_{val,test}.npz``: ids, targets,
logits), so ``dermalab report`` can redo it without re-running the model. Choices (temperature,
threshold) are made on validation; test is only measured.
"""

from __future__ import annotations

import warnings
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import numpy as np
from sklearn import metrics as skm

from dermalab.core.calibration import (
    calibrated_probs,
    choose_threshold,
    expected_calibration_error,
    fit_temperature,
    malignant_score,
    nll,
    sensitivity_specificity,
    temperature_warning,
)
from dermalab.core.config import EvalConfig
from dermalab.core.runs import Predictions


def age_band(age: Any) -> str:
    """HAM10000 ages in bands (missing ages are their own band, even when imputed)."""
    if age is None:
        return "unknown"
    a = float(age)
    for hi, name in ((30, "<30"), (45, "30-44"), (60, "45-59"), (75, "60-74")):
        if a < hi:
            return name
    return "75+"


def subgroup_metrics(
    targets: np.ndarray,
    probs: np.ndarray,
    meta: Sequence[dict[str, Any]],
    classes: Sequence[str],
    malignant: Sequence[str],
    threshold: float | None,
    min_support: int = 1,
) -> dict[str, dict[str, dict[str, Any]]]:
    """Support, accuracy, balanced accuracy and malignant sensitivity per subgroup of sex, age
    band and body site (where the metadata has them)."""
    keys: dict[str, list[str]] = defaultdict(list)
    for m in meta:
        keys["sex"].append(str(m.get("sex") or "unknown"))
        keys["age_band"].append("unknown" if m.get("age_missing") else age_band(m.get("age")))
        keys["localization"].append(str(m.get("localization") or "unknown"))
    if not meta or all(not m for m in meta):
        return {}
    pred = probs.argmax(axis=1)
    mal_idx = [i for i, c in enumerate(classes) if c in set(malignant)]
    is_mal = np.isin(targets, mal_idx)
    score = malignant_score(probs, classes, malignant)
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for key, values in keys.items():
        arr = np.asarray(values)
        if len(set(values)) <= 1 and values[0] == "unknown":
            continue
        groups: dict[str, dict[str, Any]] = {}
        for v in sorted(set(values)):
            sel = arr == v
            n = int(sel.sum())
            if n < min_support:
                continue
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                bal = float(skm.balanced_accuracy_score(targets[sel], pred[sel]))
            n_mal = int((sel & is_mal).sum())
            sens = None
            if n_mal and threshold is not None:
                sens = float(np.mean(score[sel & is_mal] >= threshold))
            groups[v] = {"support": n, "accuracy": float(np.mean(pred[sel] == targets[sel])),
                         "balanced_accuracy": bal, "malignant_support": n_mal,
                         "malignant_sensitivity": sens}
        out[key] = groups
    return out


def analyze(
    val: Predictions,
    test: Predictions,
    classes: Sequence[str],
    cfg: EvalConfig,
    test_meta: Sequence[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """Calibration, malignant operating point, TTA effect and subgroups.

    Returns the keys added to ``metrics.json``: ``temperature``, ``ece_before``, ``ece_after``,
    ``nll_before``, ``nll_after``, ``malignant``, ``subgroups`` and (with TTA) ``tta``.
    """
    t = fit_temperature(val.logits, val.targets)
    warning = temperature_warning(t)  # said by the pipeline and shown in the report
    before = calibrated_probs(test.logits, 1.0)
    after = calibrated_probs(test.logits, t)
    out: dict[str, Any] = {
        "temperature": t,
        "temperature_warning": warning,
        "ece_bins": cfg.ece_bins,
        "ece_before": expected_calibration_error(before, test.targets, cfg.ece_bins),
        "ece_after": expected_calibration_error(after, test.targets, cfg.ece_bins),
        "nll_before": nll(test.logits, test.targets, 1.0),
        "nll_after": nll(test.logits, test.targets, t),
        "val_ece_before": expected_calibration_error(calibrated_probs(val.logits),
                                                     val.targets, cfg.ece_bins),
        "val_ece_after": expected_calibration_error(calibrated_probs(val.logits, t),
                                                    val.targets, cfg.ece_bins),
    }
    malignant = [c for c in cfg.malignant_classes if c in classes]
    threshold = None
    if malignant:
        mal_idx = [classes.index(c) for c in malignant]
        val_scores = malignant_score(calibrated_probs(val.logits, t), classes, malignant)
        val_pos = np.isin(val.targets, mal_idx)
        threshold = choose_threshold(val_scores, val_pos, cfg.target_sensitivity)
        test_scores = malignant_score(after, classes, malignant)
        test_pos = np.isin(test.targets, mal_idx)
        op = sensitivity_specificity(test_scores, test_pos, threshold)
        val_op = sensitivity_specificity(val_scores, val_pos, threshold)
        auc = (float(skm.roc_auc_score(test_pos, test_scores))
               if 0 < test_pos.sum() < len(test_pos) else None)
        out["malignant"] = {**op, "classes": malignant,
                            "target_sensitivity": cfg.target_sensitivity,
                            "val_sensitivity": val_op["sensitivity"],
                            "val_specificity": val_op["specificity"], "auc": auc}
    else:
        out["malignant"] = None
    out["subgroups"] = subgroup_metrics(test.targets, after, test_meta or [], classes,
                                        malignant, threshold)
    if test.tta_logits is not None and val.tta_logits is not None:
        t_tta = fit_temperature(val.tta_logits, val.targets)
        p_tta = calibrated_probs(test.tta_logits, t_tta)
        pred_plain, pred_tta = after.argmax(1), p_tta.argmax(1)
        out["tta"] = {
            "views": 4,
            "temperature": t_tta,
            "accuracy": float(np.mean(pred_tta == test.targets)),
            "balanced_accuracy": float(skm.balanced_accuracy_score(test.targets, pred_tta)),
            "ece_after": expected_calibration_error(p_tta, test.targets, cfg.ece_bins),
            "accuracy_without": float(np.mean(pred_plain == test.targets)),
            "balanced_accuracy_without": float(skm.balanced_accuracy_score(test.targets,
                                                                           pred_plain)),
            "ece_after_without": out["ece_after"],
        }
    return out
