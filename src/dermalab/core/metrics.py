"""Classification metrics as pure functions on arrays, computed with scikit-learn.

Balanced accuracy (mean per-class recall) is the ISIC 2018 Task 3 metric and the default model
selection criterion: on HAM10000 a model that always says "nevus" has 67% accuracy but 1/7
balanced accuracy.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from sklearn import metrics as skm


@dataclass(frozen=True)
class MetricSpec:
    """One summary metric of :func:`classification_metrics`: its name (the key everywhere: the
    history's ``val_<name>``, MLflow, ``metrics.json``, the report), which way is better, its
    definition, and where it is recorded."""

    name: str
    higher_is_better: bool
    formula: str  # the definition, with its scikit-learn equivalent
    per_epoch: bool = False  # measured on validation every epoch (history ``val_<name>``)
    headline: bool = False  # in summaries, model cards and comparisons


#: The registry: a new summary metric is an entry here and its value in
#: :func:`classification_metrics`; the history, MLflow, the report, the model card and the
#: comparisons read their keys from here.
METRICS: tuple[MetricSpec, ...] = (
    MetricSpec("accuracy", True, "share of correct top-1 answers (accuracy_score)",
               per_epoch=True, headline=True),
    MetricSpec("balanced_accuracy", True, "mean per-class recall, (1/K) sum_k TP_k / N_k "
               "(balanced_accuracy_score; ISIC 2018 Task 3)", per_epoch=True, headline=True),
    MetricSpec("macro_f1", True, "unweighted mean of per-class F1 (f1_score, average='macro')",
               per_epoch=True, headline=True),
    MetricSpec("weighted_precision", True, "per-class precision weighted by support "
               "(precision_score, average='weighted')", per_epoch=True),
    MetricSpec("weighted_recall", True, "per-class recall weighted by support (recall_score, "
               "average='weighted'; equals accuracy)", per_epoch=True),
    MetricSpec("weighted_f1", True, "per-class F1 weighted by support (f1_score, "
               "average='weighted')"),
    MetricSpec("roc_auc_macro", True, "one-vs-rest ROC AUC averaged over the classes present "
               "(roc_auc_score, multi_class='ovr', average='macro')", per_epoch=True,
               headline=True),
)


def metric_names(*, per_epoch: bool | None = None, headline: bool | None = None
                 ) -> tuple[str, ...]:
    """The registry's names, in its order, filtered by where they are recorded."""
    return tuple(m.name for m in METRICS
                 if (per_epoch is None or m.per_epoch == per_epoch)
                 and (headline is None or m.headline == headline))


def _safe_roc_auc(
    y_true: np.ndarray, probs: np.ndarray, n_classes: int
) -> tuple[float | None, list[float | None]]:
    """Macro one-vs-rest ROC-AUC over the classes present in ``y_true`` (with at least one
    negative), plus per-class AUCs (``None`` where undefined).

    scikit-learn's ``roc_auc_score(multi_class="ovr")`` raises when a class is missing from
    ``y_true``; small validation splits do miss rare classes, so undefined classes are skipped
    and the macro mean is over the defined ones.
    """
    per_class: list[float | None] = []
    for k in range(n_classes):
        pos = y_true == k
        if pos.all() or not pos.any():
            per_class.append(None)
            continue
        per_class.append(float(skm.roc_auc_score(pos.astype(int), probs[:, k])))
    defined = [a for a in per_class if a is not None]
    return (float(np.mean(defined)) if defined else None), per_class


def classification_metrics(
    y_true: Sequence[int] | np.ndarray,
    probs: np.ndarray,
    class_names: Sequence[str],
    *,
    detailed: bool = True,
) -> dict[str, Any]:
    """Metrics of predicted probabilities against true class indices.

    Args:
        y_true: ``(N,)`` true class indices.
        probs: ``(N, K)`` class probabilities (rows sum to 1).
        class_names: ``K`` names, in index order.
        detailed: add the per-class report, confusion matrices and per-class AUC.

    Returns:
        ``accuracy``, ``balanced_accuracy``, ``macro_f1``, ``weighted_precision``,
        ``weighted_recall``, ``weighted_f1``, ``roc_auc_macro`` (and with ``detailed``:
        ``per_class``, ``confusion_matrix``, ``confusion_matrix_normalized``).
    """
    y = np.asarray(y_true, dtype=np.int64)
    p = np.asarray(probs, dtype=np.float64)
    k = len(class_names)
    if p.ndim != 2 or p.shape != (len(y), k):
        raise ValueError(f"probs must be (N={len(y)}, K={k}), got {p.shape}")
    pred = p.argmax(axis=1)
    labels = list(range(k))
    out: dict[str, Any] = {
        "n": len(y),
        "accuracy": float(skm.accuracy_score(y, pred)),
        # sklearn averages recall over classes present in y_true; classes absent from y_true
        # have no defined recall.
        "balanced_accuracy": float(skm.balanced_accuracy_score(y, pred)) if len(y) else 0.0,
        # Like scikit-learn's default (and torchmetrics): the mean over the classes in
        # y_true or y_pred, so a class predicted but absent from the truth counts as F1 = 0.
        "macro_f1": float(skm.f1_score(y, pred, labels=np.union1d(y, pred), average="macro",
                                       zero_division=0)) if len(y) else 0.0,
        "weighted_precision": float(skm.precision_score(y, pred, labels=labels,
                                                        average="weighted", zero_division=0)),
        "weighted_recall": float(skm.recall_score(y, pred, labels=labels, average="weighted",
                                                  zero_division=0)),
        "weighted_f1": float(skm.f1_score(y, pred, labels=labels, average="weighted",
                                          zero_division=0)),
    }
    auc, per_auc = _safe_roc_auc(y, p, k)
    out["roc_auc_macro"] = auc
    if detailed:
        prec, rec, f1, sup = skm.precision_recall_fscore_support(y, pred, labels=labels,
                                                                 zero_division=0)
        out["per_class"] = {
            name: {"precision": float(prec[i]), "recall": float(rec[i]), "f1": float(f1[i]),
                   "support": int(sup[i]), "roc_auc": per_auc[i]}
            for i, name in enumerate(class_names)
        }
        cm = skm.confusion_matrix(y, pred, labels=labels)
        rows = cm.sum(axis=1, keepdims=True)
        out["confusion_matrix"] = cm.tolist()
        out["confusion_matrix_normalized"] = np.divide(
            cm, rows, out=np.zeros(cm.shape, dtype=np.float64), where=rows > 0).round(4).tolist()
        out["classes"] = list(class_names)
    return out


# -- fast forms for resampling (core.intervals): the same numbers as scikit-learn's ----------
def balanced_accuracy(y: np.ndarray, pred: np.ndarray, n_classes: int) -> float:
    """Mean recall over the classes present in ``y`` (``skm.balanced_accuracy_score``)."""
    support = np.bincount(y, minlength=n_classes)
    hits = np.bincount(y[pred == y], minlength=n_classes)
    present = support > 0
    return float(np.mean(hits[present] / support[present])) if present.any() else 0.0


def macro_f1(y: np.ndarray, pred: np.ndarray, n_classes: int) -> float:
    """F1 averaged over the classes in ``y`` or ``pred`` (``skm.f1_score(labels=union,
    average="macro", zero_division=0)``, as :func:`classification_metrics`)."""
    support = np.bincount(y, minlength=n_classes)
    predicted = np.bincount(pred, minlength=n_classes)
    hits = np.bincount(y[pred == y], minlength=n_classes)
    used = (support > 0) | (predicted > 0)
    if not used.any():
        return 0.0
    denom = support + predicted
    f1 = np.divide(2.0 * hits, denom, out=np.zeros(n_classes), where=denom > 0)
    return float(np.mean(f1[used]))


def binary_auc(positive: np.ndarray, score: np.ndarray) -> float | None:
    """ROC-AUC of ``score`` for ``positive`` by the rank-sum (Mann-Whitney U) identity, ties
    counted half (``skm.roc_auc_score``); ``None`` without both classes."""
    from scipy.stats import rankdata

    pos = np.asarray(positive, bool)
    n_pos = int(pos.sum())
    n_neg = len(pos) - n_pos
    if n_pos == 0 or n_neg == 0:
        return None
    ranks = rankdata(score)
    return float((ranks[pos].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def macro_auc(y: np.ndarray, probs: np.ndarray) -> float | None:
    """Macro one-vs-rest AUC over the classes with positives and negatives in ``y`` (the
    ``roc_auc_macro`` of :func:`classification_metrics`)."""
    aucs = [binary_auc(y == k, probs[:, k]) for k in range(probs.shape[1])]
    defined = [a for a in aucs if a is not None]
    return float(np.mean(defined)) if defined else None
