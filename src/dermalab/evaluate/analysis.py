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


TAUS = np.round(np.arange(-1.0, 3.0001, 0.1), 2) + 0.0  # + 0.0: no "-0.0" in reports


def adjusted_argmax(logits: np.ndarray, prior: np.ndarray, tau: float) -> np.ndarray:
    """Post-hoc logit adjustment (Menon et al., "Long-tail learning via logit adjustment",
    ICLR 2021): ``argmax_y f_y(x) - tau log pi_y`` with ``pi`` the training class prior.

    With ``f`` the log-posterior under the training prior, ``tau = 1`` is the Bayes decision
    for balanced error (each class weighted equally); a model trained with a re-balancing
    loss or sampler has already moved part of the way, so ``tau`` is fitted on validation.
    A decision rule only: probabilities are unchanged.
    """
    return np.asarray((logits - tau * np.log(prior)[None, :]).argmax(axis=1))


def logit_adjustment(val: Predictions, test: Predictions, prior: np.ndarray) -> dict[str, Any]:
    """``tau`` in [-1, 3] (steps of 0.1) that maximises validation balanced accuracy (ties:
    the smallest ``|tau|``), and test accuracy / balanced accuracy with and without it."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # classes missing from a small validation split
        scores = [skm.balanced_accuracy_score(val.targets, adjusted_argmax(val.logits, prior, t))
                  for t in TAUS]
        best = max(range(len(TAUS)), key=lambda i: (round(scores[i], 12), -abs(TAUS[i])))
        tau = float(TAUS[best])
        plain, adjusted = test.logits.argmax(1), adjusted_argmax(test.logits, prior, tau)
        return {
            "tau": tau,
            "val_balanced_accuracy": float(scores[best]),
            "val_balanced_accuracy_without": float(scores[int(np.flatnonzero(TAUS == 0)[0])]),
            "balanced_accuracy": float(skm.balanced_accuracy_score(test.targets, adjusted)),
            "balanced_accuracy_without": float(skm.balanced_accuracy_score(test.targets, plain)),
            "accuracy": float(np.mean(adjusted == test.targets)),
            "accuracy_without": float(np.mean(plain == test.targets)),
        }


def analyze(
    val: Predictions,
    test: Predictions,
    classes: Sequence[str],
    cfg: EvalConfig,
    test_meta: Sequence[dict[str, Any]] | None = None,
    train_counts: np.ndarray | None = None,
) -> dict[str, Any]:
    """Calibration, malignant operating point, TTA effect and subgroups.

    Returns the keys added to ``metrics.json``: ``temperature``, ``ece_before``, ``ece_after``,
    ``nll_before``, ``nll_after``, ``malignant``, ``subgroups``, (with TTA) ``tta`` and (with
    ``train_counts``, every class present) ``logit_adjustment``.
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
    if train_counts is not None and len(train_counts) == len(classes) and train_counts.min() > 0:
        out["logit_adjustment"] = logit_adjustment(val, test, train_counts / train_counts.sum())
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
