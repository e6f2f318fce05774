"""Subgroups of the served answer: sex, age band, body site and skin type, each group with its
95% interval and each attribute with its worst-to-best gap.

Works on saved predictions and the run's served decision, so ``dermalab report`` can redo it
without re-running the model.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from dermalab.core.decision import Decision
from dermalab.core.intervals import Metric, bootstrap_intervals
from dermalab.core.metrics import balanced_accuracy, binary_auc
from dermalab.core.skin import skin_type_group

#: Groups smaller than this are listed but left out of an attribute's gap (noise).
GAP_MIN_SUPPORT = 10


def age_band(age: Any) -> str:
    """HAM10000 ages in bands (missing ages are their own band, even when imputed)."""
    if age is None:
        return "unknown"
    a = float(age)
    for hi, name in ((30, "<30"), (45, "30-44"), (60, "45-59"), (75, "60-74")):
        if a < hi:
            return name
    return "75+"


def subgroup_values(meta: Sequence[Mapping[str, Any]]) -> dict[str, list[str]]:
    """Each attribute's value per image, for the attributes the metadata has: ``sex``,
    ``age_band``, ``localization``, ``skin_type`` (labelled Fitzpatrick type) and
    ``skin_type_estimated`` (from the Individual Typology Angle: data.skin_tone)."""
    keys: dict[str, list[str]] = defaultdict(list)
    for m in meta:
        keys["sex"].append(str(m.get("sex") or "unknown"))
        keys["age_band"].append("unknown" if m.get("age_missing") else age_band(m.get("age")))
        keys["localization"].append(str(m.get("localization") or "unknown"))
        keys["skin_type"].append(skin_type_group(m.get("fitzpatrick")))
        keys["skin_type_estimated"].append(skin_type_group(m.get("fitzpatrick_estimated")))
    return {k: v for k, v in keys.items() if any(x != "unknown" for x in v)}


def group_functions(y: np.ndarray, probs: np.ndarray, decision: Decision,
                    mal_idx: Sequence[int]) -> dict[str, Metric]:
    """One group's metrics as functions of resampled row indices (for the bootstrap):
    balanced accuracy of the served top class, and malignant sensitivity, specificity (at the
    served operating point) and AUC of P(malignant)."""
    k = probs.shape[1]
    pred = probs.argmax(1)
    mal = list(mal_idx)
    positive = np.isin(y, mal)
    flagged = (probs[:, mal].sum(1) >= decision.malignant_threshold
               if mal and decision.malignant_threshold is not None
               else np.zeros(len(y), bool))

    def sens(i: np.ndarray) -> float | None:
        sel = positive[i]
        return float(np.mean(flagged[i][sel])) if sel.any() and mal else None

    def spec(i: np.ndarray) -> float | None:
        sel = ~positive[i]
        return float(np.mean(~flagged[i][sel])) if sel.any() and mal else None

    def auc(i: np.ndarray) -> float | None:
        return binary_auc(positive[i], probs[i][:, mal].sum(1)) if mal else None

    return {"balanced_accuracy": lambda i: balanced_accuracy(y[i], pred[i], k),
            "malignant_sensitivity": sens, "malignant_specificity": spec, "malignant_auc": auc}


def gap_function(y: np.ndarray, probs: np.ndarray, best: np.ndarray, worst: np.ndarray
                 ) -> Metric:
    """The balanced-accuracy gap ``bal(best group) - bal(worst group)`` as a function of
    resampled row indices of the whole split (``best``/``worst``: each row's membership);
    None when a resample holds no row of either group."""
    k = probs.shape[1]
    pred = probs.argmax(1)

    def gap(i: np.ndarray) -> float | None:
        b, w = i[best[i]], i[worst[i]]
        if len(b) == 0 or len(w) == 0:
            return None
        return balanced_accuracy(y[b], pred[b], k) - balanced_accuracy(y[w], pred[w], k)

    return gap


def _group(y: np.ndarray, probs: np.ndarray, units: np.ndarray, decision: Decision,
           mal_idx: list[int], reps: int) -> dict[str, Any]:
    fns = group_functions(y, probs, decision, mal_idx)
    full = np.arange(len(y))
    positive = np.isin(y, mal_idx)
    out: dict[str, Any] = {"support": len(y),
                           "accuracy": float(np.mean(probs.argmax(1) == y)),
                           "malignant_support": int(positive.sum()) if mal_idx else 0,
                           **{name: fn(full) for name, fn in fns.items()}}
    out["intervals"] = bootstrap_intervals(fns, list(units), y, reps)
    return out


def subgroup_metrics(targets: np.ndarray, probs: np.ndarray, meta: Sequence[Mapping[str, Any]],
                     classes: Sequence[str], decision: Decision,
                     units: Sequence[str] | None = None, reps: int = 0, min_support: int = 1
                     ) -> dict[str, dict[str, Any]]:
    """Per attribute (see :func:`subgroup_values`): for each group its support, accuracy,
    balanced accuracy, malignant sensitivity / specificity at the served operating point and
    malignant AUC, with 95% intervals (``reps`` lesion-grouped resamples within the group),
    and ``gap``: the worst and best group's balanced accuracy (groups of at least
    ``GAP_MIN_SUPPORT`` images, "unknown" left out), their difference and its 95% interval
    (the same resamples of the whole split, the two groups fixed).

    ``probs`` are the served probabilities (:meth:`Decision.probabilities`)."""
    if not meta or all(not m for m in meta):
        return {}
    y = np.asarray(targets, np.int64)
    p = np.asarray(probs, np.float64)
    u = np.asarray(units if units is not None else [str(i) for i in range(len(y))])
    mal_idx = decision.malignant_indices(classes)
    out: dict[str, dict[str, Any]] = {}
    for key, values in subgroup_values(meta).items():
        arr = np.asarray(values)
        groups: dict[str, Any] = {}
        for v in sorted(set(values)):
            sel = arr == v
            if int(sel.sum()) >= min_support:
                groups[v] = _group(y[sel], p[sel], u[sel], decision, mal_idx, reps)
        scored = {v: g["balanced_accuracy"] for v, g in groups.items()
                  if v != "unknown" and g["support"] >= GAP_MIN_SUPPORT}
        gap = None
        if len(scored) >= 2:
            worst, best = min(scored, key=scored.__getitem__), max(scored, key=scored.__getitem__)
            gap = {"worst": worst, "best": best,
                   "difference": scored[best] - scored[worst]}
            fn = gap_function(y, p, arr == best, arr == worst)
            gap["interval"] = bootstrap_intervals({"gap": fn}, list(u), y, reps).get("gap")
        out[key] = {"groups": groups, "gap": gap}
    return out
