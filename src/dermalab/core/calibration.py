"""Calibration: temperature scaling, expected calibration error, NLL, reliability data, and the
operating point for "possibly malignant".

A model that says "melanoma, 0.93" must be right about 93% of the time it says so. Modern
networks are over-confident; temperature scaling (Guo et al., ICML 2017,
https://arxiv.org/abs/1706.04599) divides the logits by one scalar ``T`` fitted on the
validation split (never on test) by minimising the negative log-likelihood. It does not change
the predicted class.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.optimize import minimize_scalar
from scipy.special import log_softmax, softmax


def nll(logits: np.ndarray, targets: np.ndarray, temperature: float = 1.0) -> float:
    """Mean negative log-likelihood ``-1/N sum log softmax(z_i / T)[y_i]``."""
    if len(targets) == 0:
        return float("nan")
    logp = log_softmax(np.asarray(logits, np.float64) / temperature, axis=1)
    return float(-logp[np.arange(len(targets)), np.asarray(targets)].mean())


TEMPERATURE_BOUNDS = (0.05, 20.0)


def temperature_warning(t: float, bounds: tuple[float, float] = TEMPERATURE_BOUNDS
                        ) -> str | None:
    """What a fitted temperature on its search bound means, or ``None`` inside the bounds."""
    lo, hi = bounds
    if t >= hi * 0.999:
        return (f"the temperature hit its upper bound (T = {t:.3f}): the validation predictions "
                "are barely better than chance, so every calibrated confidence is squeezed "
                "towards 1/K and lands in one reliability bin; train longer or check the data")
    if t <= lo * 1.001:
        return (f"the temperature hit its lower bound (T = {t:.3f}): validation predictions are "
                "right but far too timid, which is unusual; check the validation split")
    return None


def fit_temperature(logits: np.ndarray, targets: np.ndarray,
                    bounds: tuple[float, float] = TEMPERATURE_BOUNDS) -> float:
    """The ``T`` minimising validation NLL (bounded scalar search over ``log T``)."""
    if len(targets) == 0:
        return 1.0
    res = minimize_scalar(lambda lt: nll(logits, targets, float(np.exp(lt))),
                          bounds=(np.log(bounds[0]), np.log(bounds[1])), method="bounded",
                          options={"xatol": 1e-5})
    return float(np.exp(res.x))


def calibrated_probs(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """``softmax(z / T)``."""
    out: np.ndarray = softmax(np.asarray(logits, np.float64) / temperature, axis=1)
    return out


@dataclass
class Reliability:
    """Per-bin top-label confidence, accuracy and count (equal-width bins on [0, 1])."""

    edges: np.ndarray
    confidence: np.ndarray
    accuracy: np.ndarray
    count: np.ndarray


def reliability(probs: np.ndarray, targets: np.ndarray, n_bins: int = 15,
                weights: np.ndarray | None = None) -> Reliability:
    """Bin samples by top-label confidence; bins are ``(lo, hi]`` (the first includes 0).
    ``weights`` (one per sample; default 1) make ``count`` a weighted count and the means
    weighted means."""
    p = np.asarray(probs, np.float64)
    conf = p.max(axis=1)
    correct = (p.argmax(axis=1) == np.asarray(targets)).astype(np.float64)
    w = np.ones(len(conf)) if weights is None else np.asarray(weights, np.float64)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    idx = np.clip(np.searchsorted(edges, conf, side="left") - 1, 0, n_bins - 1)
    count = np.bincount(idx, weights=w, minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_conf = np.bincount(idx, weights=w * conf, minlength=n_bins) / count
        mean_acc = np.bincount(idx, weights=w * correct, minlength=n_bins) / count
    return Reliability(edges, mean_conf, mean_acc, count)


def expected_calibration_error(probs: np.ndarray, targets: np.ndarray, n_bins: int = 15,
                               weights: np.ndarray | None = None) -> float:
    """Top-label ECE (Naeini et al. 2015; Guo et al. 2017):
    ``sum_b |B_b|/N * |acc(B_b) - conf(B_b)|`` over ``n_bins`` equal-width confidence bins.

    ``weights`` count each sample that many times: importance weights ``q_y / p_y`` measure
    calibration under another class prior ``q`` than the sample's own ``p`` (label shift;
    see :func:`prior_weights`)."""
    n = len(targets)
    if n == 0:
        return float("nan")
    r = reliability(probs, targets, n_bins, weights)
    used = r.count > 0
    total = float(r.count.sum())
    return float(np.sum(r.count[used] / total * np.abs(r.accuracy[used] - r.confidence[used])))


def prior_weights(targets: np.ndarray, prior: np.ndarray) -> np.ndarray:
    """Per-sample weights ``q_y / p_y`` that give these samples the class shares ``q``
    (``prior``) instead of their own ``p``: metrics under a declared deployment prior."""
    y = np.asarray(targets, np.int64)
    own = np.bincount(y, minlength=len(prior)) / max(len(y), 1)
    ratio = np.divide(np.asarray(prior, np.float64), own, out=np.zeros(len(prior)),
                      where=own > 0)
    return np.asarray(ratio[y])


def malignant_score(probs: np.ndarray, classes: Sequence[str],
                    malignant: Sequence[str]) -> np.ndarray:
    """Probability that the lesion is in any malignant-suspect class (sum of their probs)."""
    idx = [i for i, c in enumerate(classes) if c in set(malignant)]
    out: np.ndarray = np.asarray(probs)[:, idx].sum(axis=1)
    return out


def choose_threshold(scores: np.ndarray, is_positive: np.ndarray,
                     target_sensitivity: float = 0.9) -> float:
    """The largest threshold whose sensitivity (``score >= t``) on these samples is at least
    ``target_sensitivity``; picked on validation so test stays untouched."""
    pos = np.sort(np.asarray(scores)[np.asarray(is_positive, bool)])
    if len(pos) == 0:
        return 0.5
    # Flagging the top ceil(target * P) positives needs t <= the k-th largest positive score.
    k = int(np.ceil(target_sensitivity * len(pos)))
    k = min(max(k, 1), len(pos))
    return float(pos[len(pos) - k])


def sensitivity_specificity(scores: np.ndarray, is_positive: np.ndarray,
                            threshold: float) -> dict[str, Any]:
    """Sensitivity, specificity and counts of ``score >= threshold``."""
    flag = np.asarray(scores) >= threshold
    pos = np.asarray(is_positive, bool)
    tp, fn = int(np.sum(flag & pos)), int(np.sum(~flag & pos))
    tn, fp = int(np.sum(~flag & ~pos)), int(np.sum(flag & ~pos))
    return {
        "threshold": float(threshold),
        "sensitivity": tp / (tp + fn) if tp + fn else None,
        "specificity": tn / (tn + fp) if tn + fp else None,
        "tp": tp, "fn": fn, "tn": tn, "fp": fp,
    }


def selective_threshold(top_probs: np.ndarray, correct: np.ndarray,
                        target_accuracy: float = 0.85, floor: float = 0.4) -> float:
    """Smallest confidence ``t >= floor`` such that validation predictions with top probability
    ``>= t`` are at least ``target_accuracy`` accurate (1.0 if none reach it)."""
    p = np.asarray(top_probs, np.float64)
    c = np.asarray(correct, bool)
    order = np.argsort(-p)
    cum_acc = np.cumsum(c[order]) / np.arange(1, len(p) + 1)
    ok = np.flatnonzero(cum_acc >= target_accuracy)
    if len(ok) == 0:
        return 1.0
    # The largest accepted set meeting the target: accept everything down to that confidence.
    t = float(p[order][ok[-1]])
    return max(t, floor)
