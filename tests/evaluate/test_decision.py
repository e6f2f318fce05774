"""Choosing the served decision on validation (evaluate.decision) and measuring it
(evaluate.served) on a model whose truth is known."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn import metrics as skm

from dermalab.core.calibration import fit_temperature
from dermalab.core.config import EvalConfig
from dermalab.core.runs import Predictions
from dermalab.evaluate.decision import choose_tau, fit_decision, tau_table
from dermalab.evaluate.served import served_metrics

PRIOR = np.array([0.8, 0.15, 0.05])
CLASSES = ["nv", "mel", "df"]


def _posterior_logits(n: int, seed: int) -> Predictions:
    """Three 1-D Gaussian classes (means 0, 1.5, 3; sd 1) drawn with PRIOR, scored with their
    exact log-posterior under PRIOR: a perfectly calibrated model of an imbalanced problem."""
    r = np.random.default_rng(seed)
    y = r.choice(3, n, p=PRIOR)
    x = r.normal(1.5 * y.astype(float), 1.0)
    logits = -0.5 * (x[:, None] - 1.5 * np.arange(3)[None, :]) ** 2 + np.log(PRIOR)[None, :]
    return Predictions([f"s{i}" for i in range(n)], y, logits)


def test_tau_rules() -> None:
    val = _posterior_logits(3000, 1)
    table = tau_table(val.logits, val.targets, np.log(PRIOR).tolist())
    assert [r["tau"] for r in table][:3] == [0.0, 0.05, 0.1] and table[-1]["tau"] == 1.0
    assert choose_tau(table, "training", 0.0) == 0.0
    assert choose_tau(table, "uniform", 0.0) == 1.0
    # The balanced Bayes rule of a calibrated model is tau = 1: "fit" lands near it ...
    free = choose_tau(table, "fit", 0.0)
    assert free >= 0.7
    # ... and an accuracy floor pulls it back towards the training prior, never below it.
    acc = {r["tau"]: r["accuracy"] for r in table}
    floor = acc[0.0] - 0.02
    held = choose_tau(table, "fit", floor)
    assert held < free and acc[held] >= floor
    assert choose_tau(table, "fit", 1.01) == 0.0  # nothing reaches it: the training prior


def test_fit_decision_on_validation() -> None:
    val = _posterior_logits(2000, 2)
    counts = np.round(PRIOR * 1000)
    d, info = fit_decision(val, CLASSES, counts, EvalConfig(malignant_classes=["mel"]))
    assert d.temperature == pytest.approx(fit_temperature(val.logits, val.targets))
    assert d.log_prior == pytest.approx(np.log(counts / counts.sum()).tolist())
    # the operating point reaches the target sensitivity on validation
    score = d.malignant_score(d.probabilities(val.logits), CLASSES)
    assert score is not None and d.malignant_threshold is not None
    assert np.mean(score[val.targets == 1] >= d.malignant_threshold) >= 0.9
    # "not sure" is a validation-accuracy line: answers above it reach the target
    p = d.probabilities(val.logits)
    above = p.max(1) >= d.uncertain_threshold
    assert np.mean(p.argmax(1)[above] == val.targets[above]) >= 0.85
    assert 0 < info["val_uncertain_rate"] < 1


def test_served_metrics_are_scikit_learns_on_the_served_answer() -> None:
    val, test = _posterior_logits(2000, 4), _posterior_logits(1500, 5)
    d, _ = fit_decision(val, CLASSES, PRIOR * 1000, EvalConfig(malignant_classes=["mel"]))
    units = [f"u{i // 2}" for i in range(len(test.ids))]  # two photos per lesion
    m = served_metrics(test, d, CLASSES, units, reps=200)
    pred = d.predict(test.logits)
    assert m["balanced_accuracy"] == pytest.approx(skm.balanced_accuracy_score(test.targets,
                                                                               pred))
    assert m["accuracy"] == pytest.approx(skm.accuracy_score(test.targets, pred))
    for key in ("accuracy", "balanced_accuracy", "macro_f1", "roc_auc_macro", "ece",
                "malignant_sensitivity", "malignant_specificity"):
        lo, hi = m["intervals"][key]
        value = m[key] if not key.startswith("malignant") else \
            m["malignant"][key.removeprefix("malignant_")]
        assert lo <= value <= hi, key
    # the balanced rule trades accuracy for balanced accuracy on this imbalanced problem
    plain = served_metrics(test, fit_decision(val, CLASSES, PRIOR * 1000,
                                              EvalConfig(prior="training"))[0], CLASSES,
                           units, reps=0)
    assert plain["accuracy"] > m["accuracy"]
    assert plain["balanced_accuracy"] < m["balanced_accuracy"]
    # calibrated for the declared prior: the served ECE is small; under the test split's
    # own shares (not the declared ones) it is not
    assert m["ece"] < 0.05 < m["ece_split_prior"]


def test_each_rule_beside_gets_its_own_malignant_operating_point() -> None:
    """Shifting the prior moves the malignant score, so the posterior rule is measured at the
    threshold fitted for its own probabilities on validation, as the served one is."""
    from dermalab.evaluate.served import rules_beside

    val, test = _posterior_logits(3000, 6), _posterior_logits(1500, 7)
    cfg = EvalConfig(malignant_classes=["mel"], prior="uniform")
    d, _ = fit_decision(val, CLASSES, PRIOR * 1000, cfg)
    units = [str(i) for i in range(len(test.ids))]
    rules = rules_beside(test, d, CLASSES, units, ece_bins=15, reps=0, val=val,
                         target_sensitivity=0.9)
    posterior = rules["posterior"]["malignant"]
    assert posterior["threshold"] != pytest.approx(d.malignant_threshold)
    # on test both reach about the validation target: neither rule is handicapped
    served = served_metrics(test, d, CLASSES, units, reps=0)["malignant"]
    assert abs(posterior["sensitivity"] - served["sensitivity"]) < 0.06
