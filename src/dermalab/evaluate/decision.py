"""Choose the served decision (:mod:`dermalab.core.decision`) on validation.

In order, each on the validation split only (test is never read here, so a model's answers
cannot depend on its test labels; ``tests/evaluate/test_decision.py`` permutes them to check):

1. the temperature ``T`` minimising validation NLL (Guo et al. 2017);
2. with patient metadata (``eval.metadata``), the fusion weight ``w`` on validation NLL
   (:mod:`dermalab.core.metadata`; the regression itself is fitted on the training split);
3. the prior shift ``tau`` by ``eval.prior``: ``training`` 0, ``uniform`` 1, ``fit`` the
   ``tau`` in {0, 0.05, ..., 1} with the highest validation balanced accuracy among those whose
   validation accuracy reaches ``eval.min_accuracy`` (ties: the smallest ``tau``, the prior
   closest to the training shares);
4. the "not sure" thresholds on the served validation probabilities (image alone, and fused
   with the validation images' own metadata);
5. the malignant operating point on the served validation malignant score, for
   ``eval.target_sensitivity``.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from dermalab.core.calibration import (
    choose_threshold,
    fit_temperature,
    selective_threshold,
    temperature_warning,
)
from dermalab.core.config import EvalConfig
from dermalab.core.decision import Decision
from dermalab.core.metadata import MetadataModel
from dermalab.core.metrics import balanced_accuracy
from dermalab.core.runs import Predictions
from dermalab.evaluate.metadata_fusion import fit_weight

#: The prior shifts ``eval.prior=fit`` weighs.
TAUS = np.round(np.arange(0.0, 1.0001, 0.05), 2) + 0.0


def log_prior(train_counts: np.ndarray) -> list[float] | None:
    """``log pi`` of the training class shares; None when a class has no training image (no
    prior to correct for)."""
    counts = np.asarray(train_counts, np.float64)
    if len(counts) == 0 or counts.min() <= 0:
        return None
    return [float(v) for v in np.log(counts / counts.sum())]


def tau_table(scaled: np.ndarray, targets: np.ndarray, prior: Sequence[float]
              ) -> list[dict[str, float]]:
    """Validation accuracy and balanced accuracy of ``argmax(z / T - tau log pi)`` per tau."""
    y = np.asarray(targets, np.int64)
    lp = np.asarray(prior)
    rows = []
    for tau in TAUS:
        pred = (scaled - tau * lp[None, :]).argmax(1)
        rows.append({"tau": float(tau), "accuracy": float(np.mean(pred == y)),
                     "balanced_accuracy": balanced_accuracy(y, pred, len(lp))})
    return rows


def choose_tau(table: list[dict[str, float]], rule: str, min_accuracy: float) -> float:
    """``tau`` by ``eval.prior`` (see the module docstring)."""
    if rule == "training":
        return 0.0
    if rule == "uniform":
        return 1.0
    ok = [r for r in table if r["accuracy"] >= min_accuracy] or [table[0]]
    best = max(ok, key=lambda r: (round(r["balanced_accuracy"], 12), -r["tau"]))
    return float(best["tau"])


def fit_decision(val: Predictions, classes: Sequence[str], train_counts: np.ndarray,
                 cfg: EvalConfig, metadata: MetadataModel | None = None,
                 val_rows: Sequence[Mapping[str, Any]] | None = None
                 ) -> tuple[Decision, dict[str, Any]]:
    """The served decision fitted on ``val`` (see the module docstring), and what the fit
    saw (for ``metrics.json``). ``metadata`` (its weight is fitted here, in place) and
    ``val_rows`` add the metadata's "not sure" line."""
    y = np.asarray(val.targets, np.int64)
    t = fit_temperature(val.logits, y)
    prior = log_prior(train_counts)
    table = tau_table(val.logits / t, y, prior) if prior is not None else []
    tau = choose_tau(table, cfg.prior, cfg.min_accuracy) if prior is not None else 0.0
    decision = Decision(temperature=t, tau=tau, log_prior=prior,
                        prior_rule=cfg.prior if prior is not None else "training",
                        malignant_classes=[c for c in cfg.malignant_classes if c in classes])
    probs = decision.probabilities(val.logits)
    correct = probs.argmax(1) == y
    decision.uncertain_threshold = selective_threshold(probs.max(1), correct,
                                                       cfg.uncertain_target_accuracy)
    info: dict[str, Any] = {
        "temperature_warning": temperature_warning(t), "tau_table": table,
        "val_uncertain_rate": float(np.mean(probs.max(1) < decision.uncertain_threshold)),
    }
    if metadata is not None and val_rows is not None:
        scaled = val.logits / t
        metadata.weight = fit_weight(scaled, metadata.log_ratio(val_rows), y)
        fused = decision.probabilities(val.logits, metadata, val_rows)
        decision.uncertain_threshold_metadata = selective_threshold(
            fused.max(1), fused.argmax(1) == y, cfg.uncertain_target_accuracy)
        info["val_uncertain_rate_metadata"] = float(
            np.mean(fused.max(1) < decision.uncertain_threshold_metadata))
    score = decision.malignant_score(probs, classes)
    if score is not None:
        positive = np.isin(y, decision.malignant_indices(classes))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            decision.malignant_threshold = choose_threshold(score, positive,
                                                            cfg.target_sensitivity)
    return decision, info
