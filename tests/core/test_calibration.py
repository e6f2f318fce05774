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
    reliability,
    sensitivity_specificity,
)
from dermalab.core.config import EvalConfig
from dermalab.core.runs import Predictions
from dermalab.evaluate.analysis import analyze, subgroup_metrics


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


def test_analyze_uses_validation_only_and_reports_subgroups() -> None:
    rng = np.random.default_rng(2)
    classes = ["bkl", "mel", "nv"]

    def preds(n: int, seed: int) -> Predictions:
        r = np.random.default_rng(seed)
        y = r.choice(3, n, p=[0.2, 0.2, 0.6])
        logits = 4.0 * (np.eye(3)[y] + r.normal(0, 0.8, (n, 3)))
        return Predictions([f"s{i}" for i in range(n)], y, logits)

    val, test = preds(600, 3), preds(800, 4)
    meta = [{"sex": ["male", "female"][i % 2], "age": float(20 + i % 60), "age_missing": False,
             "localization": "back"} for i in range(800)]
    out = analyze(val, test, classes, EvalConfig(malignant_classes=["mel", "bcc"]), meta)
    assert out["temperature"] == pytest.approx(fit_temperature(val.logits, val.targets))
    assert out["nll_after"] <= out["nll_before"] + 1e-9
    assert out["malignant"]["classes"] == ["mel"]
    assert out["malignant"]["val_sensitivity"] >= 0.9
    assert set(out["subgroups"]) == {"sex", "age_band", "localization"}
    assert sum(g["support"] for g in out["subgroups"]["sex"].values()) == 800
    del rng


def test_subgroups_absent_without_metadata() -> None:
    probs = np.full((4, 2), 0.5)
    assert subgroup_metrics(np.array([0, 1, 0, 1]), probs, [{}] * 4, ["a", "b"], [], None) == {}
