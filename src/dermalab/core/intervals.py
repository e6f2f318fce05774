"""95% confidence intervals by resampling lesions, not images.

Test images of one lesion are not independent evidence (HAM10000 has up to six photos of one
lesion), so resampling images understates the uncertainty. The bootstrap here resamples
*units* (the split's groups: lesions, merged with identical and near-identical files) with
replacement, within each class's units (stratified: every resample keeps the split's class
composition, as the split was dealt), and reports the percentile interval of the metric over
``reps`` resamples (Efron & Tibshirani, *An Introduction to the Bootstrap*, 1993, ch. 13; the
cluster bootstrap: Field & Welsh, JRSS B 2007).

Three uses:

- :func:`bootstrap_intervals`: one model's metrics on one split;
- :func:`pooled_intervals`: the mean of several runs (seeds) on the *same* test split, each
  resample applied to every run at once, so the interval covers test-set sampling of the
  seed-averaged metric;
- :func:`paired_difference`: recipe A minus recipe B on the same test images, resampled
  together (a paired bootstrap), with the share of resamples where A is not better.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

#: A metric of (targets, resampled rows): the caller closes over predictions/probabilities.
Metric = Callable[[np.ndarray], float | None]


def unit_indices(units: Sequence[str], targets: Sequence[int] | np.ndarray
                 ) -> list[list[np.ndarray]]:
    """Rows of each unit, grouped by the unit's class (its first row's target): the strata."""
    rows: dict[str, list[int]] = defaultdict(list)
    for i, u in enumerate(units):
        rows[u].append(i)
    by_class: dict[int, list[np.ndarray]] = defaultdict(list)
    for u in sorted(rows):
        by_class[int(targets[rows[u][0]])].append(np.asarray(rows[u], np.int64))
    return [by_class[c] for c in sorted(by_class)]


def resamples(units: Sequence[str], targets: Sequence[int] | np.ndarray, reps: int, seed: int = 0
              ) -> list[np.ndarray]:
    """``reps`` row-index arrays, each a stratified resample of units with replacement."""
    strata = unit_indices(units, targets)
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(reps):
        parts: list[np.ndarray] = []
        for stratum in strata:
            pick = rng.integers(0, len(stratum), len(stratum))
            parts.extend(stratum[j] for j in pick)
        out.append(np.concatenate(parts) if parts else np.zeros(0, np.int64))
    return out


def percentile(values: Sequence[float | None], level: float = 0.95) -> list[float] | None:
    """The central ``level`` percentile interval of the finite values (None if none)."""
    v = np.asarray([x for x in values if x is not None and np.isfinite(x)], np.float64)
    if len(v) == 0:
        return None
    a = (1.0 - level) / 2.0
    return [float(np.quantile(v, a)), float(np.quantile(v, 1.0 - a))]


def bootstrap_intervals(metrics: Mapping[str, Metric], units: Sequence[str],
                        targets: Sequence[int] | np.ndarray, reps: int = 1000, seed: int = 0,
                        level: float = 0.95) -> dict[str, list[float] | None]:
    """The ``level`` interval of each metric (name -> function of the resampled row indices)."""
    if reps <= 0 or len(units) == 0:
        return {}
    draws = resamples(units, targets, reps, seed)
    return {name: percentile([fn(idx) for idx in draws], level) for name, fn in metrics.items()}


def pooled_intervals(runs: Sequence[Mapping[str, Metric]], units: Sequence[str],
                     targets: Sequence[int] | np.ndarray, reps: int = 1000, seed: int = 0,
                     level: float = 0.95) -> dict[str, list[float] | None]:
    """The interval of the mean over ``runs`` (each a name -> metric mapping on the same rows)
    with one resample applied to every run."""
    if reps <= 0 or not runs or len(units) == 0:
        return {}
    draws = resamples(units, targets, reps, seed)
    out: dict[str, list[float] | None] = {}
    for name in runs[0]:
        means = []
        for idx in draws:
            vals = [r[name](idx) for r in runs]
            means.append(None if any(v is None for v in vals)
                         else float(np.mean([float(v) for v in vals if v is not None])))
        out[name] = percentile(means, level)
    return out


def with_interval(value: float | None, interval: Sequence[float] | None, digits: int = 4,
                  ci_digits: int = 3, missing: str = "undefined") -> str:
    """``0.7123 [0.680, 0.741]``: a value and its interval as the CLI and report print them
    (``missing`` for no value; the value alone without an interval)."""
    if value is None:
        return missing
    return f"{value:.{digits}f}" + (f" [{interval[0]:.{ci_digits}f}, {interval[1]:.{ci_digits}f}]"
                                    if interval else "")


def paired_difference(a: Sequence[Metric], b: Sequence[Metric], units: Sequence[str],
                      targets: Sequence[int] | np.ndarray, reps: int = 1000, seed: int = 0,
                      level: float = 0.95) -> dict[str, Any]:
    """Mean over ``a``'s runs minus mean over ``b``'s, on the same rows: the observed
    difference, its ``level`` interval and ``p_not_better`` (the share of resamples where the
    difference is <= 0: a one-sided bootstrap p-value for "A is better")."""
    full = np.arange(len(units))
    observed = float(np.mean([f(full) for f in a]) - np.mean([f(full) for f in b]))
    diffs = []
    for idx in resamples(units, targets, reps, seed):
        va, vb = [f(idx) for f in a], [f(idx) for f in b]
        if any(v is None for v in va + vb):
            continue
        diffs.append(float(np.mean(va) - np.mean(vb)))  # type: ignore[arg-type]
    d = np.asarray(diffs)
    return {"difference": observed, "interval": percentile(diffs, level),
            "p_not_better": float(np.mean(d <= 0)) if len(d) else None, "reps": len(d)}
