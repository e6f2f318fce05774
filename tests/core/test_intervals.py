"""Lesion-grouped bootstrap intervals (core.intervals)."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from dermalab.core.intervals import (
    bootstrap_intervals,
    paired_difference,
    pooled_intervals,
    resamples,
)


def _data(n_units: int, per_unit: int, seed: int = 0, p_correct: float = 0.7
          ) -> tuple[list[str], np.ndarray, np.ndarray]:
    """``n_units`` units of ``per_unit`` identical rows each (a lesion photographed several
    times: one piece of evidence), two classes, right with probability ``p_correct``."""
    rng = np.random.default_rng(seed)
    units, y, ok = [], [], []
    for u in range(n_units):
        cls, right = u % 2, rng.random() < p_correct
        for _ in range(per_unit):
            units.append(f"L{u}")
            y.append(cls)
            ok.append(right)
    return units, np.array(y), np.array(ok)


def test_a_resample_keeps_units_whole_and_the_class_composition() -> None:
    units, y, _ = _data(30, 3)
    for idx in resamples(units, y, reps=20, seed=1):
        assert len(idx) == len(units)
        assert Counter(y[idx]) == Counter(y)  # stratified: every class keeps its units
        picked = Counter(units[i] for i in idx)
        assert all(n % 3 == 0 for n in picked.values())  # a unit comes whole or not at all


def test_interval_covers_the_estimate_and_narrows_with_more_lesions() -> None:
    def width(n: int) -> float:
        units, y, ok = _data(n, 1, seed=n)
        iv = bootstrap_intervals({"acc": lambda i: float(ok[i].mean())}, units, y, reps=400)
        lo, hi = iv["acc"]
        assert lo <= ok.mean() <= hi
        return hi - lo

    assert width(400) < width(40) * 0.6


def test_copies_of_a_lesion_add_no_evidence() -> None:
    """Five photos of each lesion: the grouped interval is as wide as with one photo each,
    while resampling the photos as if independent would be about sqrt(5) narrower."""
    units1, y1, ok1 = _data(200, 1, seed=5)
    units5, y5, ok5 = _data(200, 5, seed=5)
    metric1 = {"acc": lambda i: float(ok1[i].mean())}
    metric5 = {"acc": lambda i: float(ok5[i].mean())}
    w1 = np.diff(bootstrap_intervals(metric1, units1, y1, reps=600)["acc"])[0]
    w5 = np.diff(bootstrap_intervals(metric5, units5, y5, reps=600)["acc"])[0]
    naive = np.diff(bootstrap_intervals(metric5, [str(i) for i in range(len(y5))], y5,
                                        reps=600)["acc"])[0]
    assert w5 == pytest.approx(w1, rel=0.25)
    assert naive < w5 * 0.6


def test_no_resamples_no_intervals_and_undefined_values_are_skipped() -> None:
    units, y, ok = _data(10, 1)
    assert bootstrap_intervals({"acc": lambda i: float(ok[i].mean())}, units, y, reps=0) == {}
    iv = bootstrap_intervals({"never": lambda i: None}, units, y, reps=20)
    assert iv == {"never": None}


def test_pooled_interval_is_of_the_mean_over_runs() -> None:
    units, y, ok_a = _data(100, 2, seed=1)
    _, _, ok_b = _data(100, 2, seed=2)
    runs = [{"acc": lambda i, ok=ok: float(ok[i].mean())} for ok in (ok_a, ok_b)]
    lo, hi = pooled_intervals(runs, units, y, reps=300)["acc"]
    assert lo <= (ok_a.mean() + ok_b.mean()) / 2 <= hi


def test_paired_difference() -> None:
    units, y, ok = _data(120, 1, seed=3)
    same = paired_difference([lambda i: float(ok[i].mean())], [lambda i: float(ok[i].mean())],
                             units, y, reps=100)
    assert same["difference"] == 0.0 and same["interval"] == [0.0, 0.0]
    assert same["p_not_better"] == 1.0
    better = ok | (np.arange(len(ok)) % 3 == 0)  # right wherever ok is, and more often
    d = paired_difference([lambda i: float(better[i].mean())], [lambda i: float(ok[i].mean())],
                          units, y, reps=200)
    assert d["difference"] > 0 and d["interval"][0] > 0 and d["p_not_better"] == 0.0
