"""Post-hoc logit adjustment: the Bayes rule for balanced error on a known model, chosen on
validation only, reported beside the plain argmax."""

from __future__ import annotations

import numpy as np
from sklearn import metrics as skm

from dermalab.core.config import EvalConfig
from dermalab.core.runs import Predictions
from dermalab.evaluate.analysis import adjusted_argmax, analyze, logit_adjustment

PRIOR = np.array([0.8, 0.15, 0.05])


def _posterior_logits(n: int, seed: int) -> Predictions:
    """Three 1-D Gaussian classes (means 0, 1, 2; sd 1) drawn with PRIOR, scored with their
    exact log-posterior under PRIOR: a perfectly calibrated model of an imbalanced problem."""
    r = np.random.default_rng(seed)
    y = r.choice(3, n, p=PRIOR)
    x = r.normal(y.astype(float), 1.0)
    logits = -0.5 * (x[:, None] - np.arange(3)[None, :]) ** 2 + np.log(PRIOR)[None, :]
    return Predictions([f"s{i}" for i in range(n)], y, logits)


def test_tau_zero_is_the_plain_argmax_and_tau_one_removes_the_prior() -> None:
    p = _posterior_logits(500, 0)
    assert np.array_equal(adjusted_argmax(p.logits, PRIOR, 0.0), p.logits.argmax(1))
    likelihood = p.logits - np.log(PRIOR)[None, :]
    assert np.array_equal(adjusted_argmax(p.logits, PRIOR, 1.0), likelihood.argmax(1))


def test_fitted_tau_is_near_the_bayes_rule_and_raises_balanced_accuracy() -> None:
    """For log-posterior scores the balanced-error Bayes rule is tau = 1 (Menon et al. 2021);
    tau fitted on validation lands near it, and test balanced accuracy (sklearn's) rises
    while plain accuracy falls, as trading majority hits for minority ones must."""
    val, test = _posterior_logits(4000, 1), _posterior_logits(4000, 2)
    out = logit_adjustment(val, test, PRIOR)
    assert 0.6 <= out["tau"] <= 1.4
    pred = adjusted_argmax(test.logits, PRIOR, out["tau"])
    assert out["balanced_accuracy"] == skm.balanced_accuracy_score(test.targets, pred)
    assert out["balanced_accuracy"] > out["balanced_accuracy_without"] + 0.1
    assert out["accuracy"] < out["accuracy_without"]
    assert out["val_balanced_accuracy"] >= out["val_balanced_accuracy_without"]


def test_a_balanced_model_keeps_tau_zero() -> None:
    """Scores with the prior already removed (what a re-balanced loss aims at): no tau helps
    on validation beyond ties, and ties go to tau = 0."""
    val, test = _posterior_logits(3000, 3), _posterior_logits(3000, 4)
    flat = [Predictions(p.ids, p.targets, p.logits - np.log(PRIOR)[None, :]) for p in (val, test)]
    out = logit_adjustment(*flat, np.full(3, 1 / 3))
    assert out["tau"] == 0.0
    assert out["balanced_accuracy"] == out["balanced_accuracy_without"]


def test_analyze_reports_it_only_with_every_training_class_counted() -> None:
    val, test = _posterior_logits(600, 5), _posterior_logits(600, 6)
    cfg = EvalConfig(malignant_classes=[])
    counts = np.array([480, 90, 30])
    out = analyze(val, test, ["a", "b", "c"], cfg, train_counts=counts)
    assert out["logit_adjustment"] == logit_adjustment(val, test, counts / counts.sum())
    assert "logit_adjustment" not in analyze(val, test, ["a", "b", "c"], cfg)
    assert "logit_adjustment" not in analyze(val, test, ["a", "b", "c"], cfg,
                                             train_counts=np.array([480, 90, 0]))
