"""Measure the served answer: what ``dermalab predict``, the API and the page return for a
split's photos, computed by the same rule (:class:`~dermalab.core.decision.Decision`), with
95% intervals from a lesion-grouped bootstrap (:mod:`dermalab.core.intervals`).

The headline of a run (``metrics.json``'s top-level metrics, the report's summary, the bench
tables) is :func:`served_metrics` of the test split for a photo alone. Other decision rules
are measured by the same function with another :class:`Decision` (``rules``), labelled.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from dermalab.core.calibration import expected_calibration_error, nll, prior_weights
from dermalab.core.decision import Decision
from dermalab.core.intervals import Metric, bootstrap_intervals
from dermalab.core.metadata import MetadataModel
from dermalab.core.metrics import (
    balanced_accuracy,
    binary_auc,
    classification_metrics,
    macro_auc,
    macro_f1,
)
from dermalab.core.runs import Predictions

#: The metrics that get intervals (and their names in ``intervals``).
INTERVAL_KEYS = ("accuracy", "balanced_accuracy", "macro_f1", "roc_auc_macro", "ece",
                 "malignant_sensitivity", "malignant_specificity")
#: The rules beside the served one get intervals for what they are compared on.
RULE_INTERVALS = ("accuracy", "balanced_accuracy", "malignant_sensitivity",
                  "malignant_specificity")


def metric_functions(y: np.ndarray, probs: np.ndarray, ece_bins: int,
                     prior: np.ndarray | None = None, malignant: Sequence[int] = (),
                     threshold: float | None = None) -> dict[str, Metric]:
    """The served metrics as functions of resampled row indices (for the bootstrap); each
    equals its scikit-learn form (tests/core/test_metrics.py)."""
    k = probs.shape[1]
    pred = probs.argmax(1)

    def ece(i: np.ndarray) -> float:
        w = prior_weights(y[i], prior) if prior is not None else None
        return expected_calibration_error(probs[i], y[i], ece_bins, w)

    fns: dict[str, Metric] = {
        "accuracy": lambda i: float(np.mean(pred[i] == y[i])),
        "balanced_accuracy": lambda i: balanced_accuracy(y[i], pred[i], k),
        "macro_f1": lambda i: macro_f1(y[i], pred[i], k),
        "roc_auc_macro": lambda i: macro_auc(y[i], probs[i]),
        "ece": ece,
    }
    if malignant and threshold is not None:
        positive = np.isin(y, list(malignant))
        flagged = probs[:, list(malignant)].sum(1) >= threshold

        def rate(i: np.ndarray, pos: bool) -> float | None:
            sel = positive[i] == pos
            return float(np.mean(flagged[i][sel] == pos)) if sel.any() else None

        fns["malignant_sensitivity"] = lambda i: rate(i, True)
        fns["malignant_specificity"] = lambda i: rate(i, False)
    return fns


def _malignant(y: np.ndarray, probs: np.ndarray, decision: Decision, classes: Sequence[str]
               ) -> dict[str, Any] | None:
    idx = decision.malignant_indices(classes)
    if not idx:
        return None
    score = probs[:, idx].sum(1)
    positive = np.isin(y, idx)
    t = decision.malignant_threshold
    flag = score >= t if t is not None else np.zeros(len(y), bool)
    tp, fn = int(np.sum(flag & positive)), int(np.sum(~flag & positive))
    tn, fp = int(np.sum(~flag & ~positive)), int(np.sum(flag & ~positive))
    return {"classes": [classes[i] for i in idx], "threshold": t,
            "sensitivity": tp / (tp + fn) if tp + fn else None,
            "specificity": tn / (tn + fp) if tn + fp else None,
            "tp": tp, "fn": fn, "tn": tn, "fp": fp, "auc": binary_auc(positive, score)}


def served_metrics(preds: Predictions, decision: Decision, classes: Sequence[str],
                   units: Sequence[str], *, ece_bins: int = 15, reps: int = 1000,
                   metadata: MetadataModel | None = None,
                   rows: Sequence[Mapping[str, Any]] | None = None, detailed: bool = True,
                   tta: bool = False, interval_keys: Sequence[str] = INTERVAL_KEYS
                   ) -> dict[str, Any]:
    """Metrics of the served answers to ``preds`` (``rows``: each image's metadata, weighed
    when ``metadata`` is given; ``tta``: the flip-averaged logits).

    Returns the classification metrics of the served top class and probabilities, ``ece``
    under the declared prior (``ece_split_prior`` under the split's own class shares), ``nll``,
    the malignant operating point, the "not sure" verdicts (``uncertain_rate``, and accuracy /
    balanced accuracy of the answers that are not "not sure") and ``intervals`` (95%,
    ``reps`` lesion-grouped resamples; none with ``reps`` 0).
    """
    logits = preds.tta_logits if tta and preds.tta_logits is not None else preds.logits
    y = np.asarray(preds.targets, np.int64)
    probs = decision.probabilities(logits, metadata, rows)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a class missing from a small split
        out = classification_metrics(y, probs, classes, detailed=detailed)
    prior = decision.deployment_prior()
    weights = prior_weights(y, prior) if prior is not None else None
    out["ece"] = expected_calibration_error(probs, y, ece_bins, weights)
    out["ece_split_prior"] = expected_calibration_error(probs, y, ece_bins)
    out["nll"] = nll(decision.logits(logits, metadata, rows), y)
    out["malignant"] = _malignant(y, probs, decision, classes)
    used = rows is not None and metadata is not None
    answered = probs.max(1) >= decision.uncertain_line(used)
    pred = probs.argmax(1)
    out["uncertain_rate"] = float(np.mean(~answered)) if len(y) else None
    out["answered_accuracy"] = float(np.mean(pred[answered] == y[answered])) \
        if answered.any() else None
    out["answered_balanced_accuracy"] = balanced_accuracy(y[answered], pred[answered],
                                                          len(classes)) \
        if answered.any() else None
    mal = out["malignant"] or {}
    fns = metric_functions(y, probs, ece_bins, prior, decision.malignant_indices(classes),
                           mal.get("threshold"))
    out["intervals"] = bootstrap_intervals({k: f for k, f in fns.items() if k in interval_keys},
                                           units, y, reps)
    return out


def _refit_malignant(rule: Decision, val: Predictions | None, classes: Sequence[str],
                     target_sensitivity: float) -> Decision:
    """``rule`` with its malignant threshold fitted on ``val`` for its own probabilities (a
    prior shift moves the malignant score, so the served threshold would not be the rule's)."""
    if val is None or not rule.malignant_indices(classes):
        return rule
    from dermalab.core.calibration import choose_threshold

    score = rule.malignant_score(rule.probabilities(val.logits), classes)
    assert score is not None
    positive = np.isin(val.targets, rule.malignant_indices(classes))
    return dataclasses.replace(rule, malignant_threshold=choose_threshold(
        score, positive, target_sensitivity))


def rules_beside(preds: Predictions, decision: Decision, classes: Sequence[str],
                 units: Sequence[str], *, ece_bins: int, reps: int,
                 metadata: MetadataModel | None = None,
                 rows: Sequence[Mapping[str, Any]] | None = None,
                 val: Predictions | None = None, target_sensitivity: float = 0.9
                 ) -> dict[str, Any]:
    """Other decision rules on the same images, labelled, never served by default: the
    training-prior posterior (``tau`` 0), the balanced rule (``tau`` 1), the served rule with
    each image's own metadata (what a person who fills in age, sex and site gets) and with
    flip TTA (``dermalab predict --tta``). A rule with another prior gets its own malignant
    threshold, fitted on ``val`` as the served one is."""
    keep = ("accuracy", "balanced_accuracy", "macro_f1", "roc_auc_macro", "ece", "nll",
            "uncertain_rate", "malignant", "intervals")
    out: dict[str, Any] = {}
    variants: list[tuple[str, str, Decision, dict[str, Any]]] = [
        ("posterior", "the training prior's posterior (tau 0): argmax of softmax(z / T)",
         _refit_malignant(dataclasses.replace(decision, tau=0.0), val, classes,
                          target_sensitivity), {}),
        ("uniform", "every class equally likely a priori (tau 1): the balanced rule",
         _refit_malignant(dataclasses.replace(decision, tau=1.0), val, classes,
                          target_sensitivity), {}),
    ]
    if metadata is not None and rows is not None:
        variants.append(("metadata", f"the served rule with each image's own "
                         f"{', '.join(metadata.fields)}", decision,
                         {"metadata": metadata, "rows": rows}))
    if preds.tta_logits is not None:
        variants.append(("tta", "the served rule on logits averaged over 4 flips", decision,
                         {"tta": True}))
    for name, what, rule, extra in variants:
        m = served_metrics(preds, rule, classes, units, ece_bins=ece_bins, reps=reps,
                           detailed=False, interval_keys=RULE_INTERVALS, **extra)
        out[name] = {"rule": what, "tau": rule.tau, **{k: m[k] for k in keep}}
    return out
