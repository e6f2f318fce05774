"""ECE on a hand-computed example, temperature scaling, and the malignant operating point."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.special import softmax

from dermalab.core.calibration import (
    choose_threshold,
    expected_calibration_error,
    fit_temperature,
    nll,
    prior_weights,
    reliability,
    sensitivity_specificity,
)
from dermalab.core.decision import Decision
from dermalab.evaluate.analysis import subgroup_metrics


def test_ece_hand_example() -> None:
    # 4 samples, 2 classes, 2 bins: (0, 0.5], (0.5, 1].
    probs = np.array([[0.9, 0.1], [0.8, 0.2], [0.6, 0.4], [0.3, 0.7]])
    targets = np.array([0, 1, 0, 1])
    # All top confidences (0.9, 0.8, 0.6, 0.7) fall in bin 2: mean conf 0.75, accuracy 3/4.
    assert expected_calibration_error(probs, targets, n_bins=2) == pytest.approx(0.0)
    # 10 bins: bins (0.5,0.6]: {0.6 ok}, (0.6,0.7]: {0.7 ok}, (0.7,0.8]: {0.8 wrong},
    # (0.8,0.9]: {0.9 ok} -> 1/4 * (|1-.6| + |1-.7| + |0-.8| + |1-.9|) = 0.4
    assert expected_calibration_error(probs, targets, n_bins=10) == pytest.approx(0.4)
    r = reliability(probs, targets, n_bins=10)
    assert r.count.tolist() == [0, 0, 0, 0, 0, 1, 1, 1, 1, 0]


def test_ece_of_perfectly_calibrated_data_is_small() -> None:
    rng = np.random.default_rng(0)
    conf = rng.uniform(0.5, 1.0, 20000)
    correct = rng.random(20000) < conf
    probs = np.stack([conf, 1 - conf], 1)
    targets = np.where(correct, 0, 1)
    assert expected_calibration_error(probs, targets) < 0.02


def test_temperature_recovers_overconfidence() -> None:
    rng = np.random.default_rng(1)
    n, k = 4000, 5
    true_logits = rng.normal(0, 1.5, (n, k))
    targets = np.array([rng.choice(k, p=p) for p in softmax(true_logits, axis=1)])
    over = true_logits * 3.0  # a model 3x too confident
    t = fit_temperature(over, targets)
    assert t == pytest.approx(3.0, rel=0.1)
    assert nll(over, targets, t) < nll(over, targets, 1.0)
    assert expected_calibration_error(softmax(over / t, 1), targets) < \
        expected_calibration_error(softmax(over, 1), targets)


def test_threshold_reaches_target_sensitivity() -> None:
    scores = np.array([0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9])
    pos = np.array([0, 0, 1, 0, 1, 0, 1, 1, 1, 1], bool)
    t = choose_threshold(scores, pos, 0.9)  # 6 positives: need 6 (ceil 5.4) -> lowest = 0.2
    assert t == pytest.approx(0.2)
    op = sensitivity_specificity(scores, pos, t)
    assert op["sensitivity"] == 1.0 and op["specificity"] == pytest.approx(2 / 4)
    assert choose_threshold(scores, pos, 0.5) == pytest.approx(0.7)  # top 3 positives


def test_weighted_ece_counts_each_image_its_weight() -> None:
    rng = np.random.default_rng(3)
    probs = rng.dirichlet(np.ones(3), 300)
    y = rng.integers(0, 3, 300)
    assert expected_calibration_error(probs, y, 10, np.ones(300)) == pytest.approx(
        expected_calibration_error(probs, y, 10))
    w = rng.integers(1, 4, 300)
    repeated = np.repeat(np.arange(300), w)
    assert expected_calibration_error(probs, y, 10, w.astype(float)) == pytest.approx(
        expected_calibration_error(probs[repeated], y[repeated], 10))


def test_prior_weights_give_the_declared_class_shares() -> None:
    y = np.array([0] * 70 + [1] * 20 + [2] * 10)
    q = np.array([0.2, 0.3, 0.5])
    w = prior_weights(y, q)
    shares = np.bincount(y, weights=w) / w.sum()
    assert shares == pytest.approx(q)
    assert prior_weights(y, np.bincount(y) / len(y)) == pytest.approx(np.ones(100))


def test_subgroup_metrics_equal_a_hand_computation() -> None:
    """Per group: balanced accuracy by scikit-learn on the group's images, malignant
    sensitivity/specificity at the served threshold, the gap between the extreme groups."""
    from sklearn.metrics import balanced_accuracy_score

    rng = np.random.default_rng(4)
    classes = ["mel", "nv", "bkl"]
    n = 240
    y = rng.integers(0, 3, n)
    probs = rng.dirichlet(np.ones(3), n)
    probs[np.arange(n), y] += rng.random(n) * (np.arange(n) % 3)  # groups differ in skill
    probs /= probs.sum(1, keepdims=True)
    meta = [{"sex": ["female", "male"][i % 2], "fitzpatrick": [1, 3, 6][i % 3]}
            for i in range(n)]
    d = Decision(malignant_classes=["mel"], malignant_threshold=0.4)
    out = subgroup_metrics(y, probs, meta, classes, d, [f"u{i}" for i in range(n)], reps=50)
    assert set(out) == {"sex", "skin_type"}
    for name, code in (("I-II", 0), ("III-IV", 1), ("V-VI", 2)):
        sel = np.arange(n) % 3 == code
        g = out["skin_type"]["groups"][name]
        assert g["support"] == sel.sum()
        assert g["balanced_accuracy"] == pytest.approx(
            balanced_accuracy_score(y[sel], probs[sel].argmax(1)))
        pos = sel & (y == 0)
        assert g["malignant_sensitivity"] == pytest.approx(np.mean(probs[pos, 0] >= 0.4))
        neg = sel & (y != 0)
        assert g["malignant_specificity"] == pytest.approx(np.mean(probs[neg, 0] < 0.4))
        lo, hi = g["intervals"]["balanced_accuracy"]
        assert lo <= g["balanced_accuracy"] <= hi
    gap = out["skin_type"]["gap"]
    bal = {k: v["balanced_accuracy"] for k, v in out["skin_type"]["groups"].items()}
    assert gap["difference"] == pytest.approx(max(bal.values()) - min(bal.values()))
    assert gap["worst"] == min(bal, key=bal.__getitem__) == "I-II"
    # its interval: the same difference on resamples of the whole split, so it holds the
    # observed difference and, with groups this different, excludes no gap at all
    lo, hi = gap["interval"]
    assert 0 < lo <= gap["difference"] <= hi


def test_subgroups_absent_without_metadata() -> None:
    probs = np.full((4, 2), 0.5)
    assert subgroup_metrics(np.array([0, 1, 0, 1]), probs, [{}] * 4, ["a", "b"],
                            Decision()) == {}
