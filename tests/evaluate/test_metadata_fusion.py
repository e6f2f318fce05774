"""Fitting the metadata model and its fusion weight (limiting cases, scikit-learn parity)."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression

from dermalab.core.config import load_config
from dermalab.core.errors import ConfigError, DataError
from dermalab.core.runs import Predictions
from dermalab.evaluate.metadata_fusion import fit_metadata_model, fit_weight

FIELDS = ["age", "sex", "localization"]


def synthetic(n: int, seed: int) -> tuple[list[dict], np.ndarray]:
    """Class 0 lives on the face of the old, class 1 on the back, class 2 anywhere; sex is
    noise."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    rows = []
    for k in y:
        site = {0: "face", 1: "back"}.get(int(k), str(rng.choice(["face", "back", "leg"])))
        if rng.random() < 0.1:
            site = str(rng.choice(["face", "back", "leg"]))
        age = float(rng.normal(75 if k == 0 else 40, 8))
        rows.append({"age": age, "age_missing": False, "localization": site,
                     "sex": str(rng.choice(["male", "female"]))})
    return rows, y


def test_fitted_metadata_model_learns_the_planted_evidence() -> None:
    rows, y = synthetic(600, 0)
    m = fit_metadata_model(rows, y, 3, FIELDS)
    assert m.sites == ["back", "face", "leg"] and m.sexes == ["female", "male"]
    r = m.log_ratio([{"age": 80, "localization": "face"}, {"age": 35, "localization": "back"},
                     {}])
    assert r[0].argmax() == 0 and r[1].argmax() == 1
    # Bayes: p(back | 1) ~ 0.93 against ~ 0.33 for class 2 (same ages), so r_1 ~ log 2.2.
    assert r[0, 0] > 1.0 and r[1, 1] == pytest.approx(0.8, abs=0.2)
    # Nothing given: fitted with every field hidden too, so the evidence is about nil
    # instead of whatever an all-zero row would extrapolate to.
    assert np.abs(r[2]).max() < 0.05
    # A partial row is the evidence of the fields given: the site alone still says class 1.
    assert m.log_ratio([{"localization": "back"}])[0].argmax() == 1


def test_numpy_evidence_matches_scikit_learn() -> None:
    rows, y = synthetic(300, 1)
    m = fit_metadata_model(rows, y, 3, ["localization"], c=1.0)
    x = m.encode(rows)
    hidden = m.encode([{} for _ in rows])
    reg = LogisticRegression(C=1.0, max_iter=3000).fit(np.vstack([hidden, x]),
                                                       np.concatenate([y, y]))
    prior = np.bincount(y, minlength=3) / len(y)
    expected = reg.predict_log_proba(x) - np.log(prior)
    assert np.allclose(m.log_ratio(rows), expected, atol=1e-4)


def test_fusion_weight_limiting_cases() -> None:
    rng = np.random.default_rng(2)
    n, k = 2000, 3
    # Classes drawn from known posteriors p(y | m) = softmax(s) under a uniform prior, so the
    # exact evidence is r = log softmax(s) + log k.
    s = rng.normal(0, 1.5, (n, k))
    p = np.exp(s) / np.exp(s).sum(1, keepdims=True)
    y = np.array([rng.choice(k, p=row) for row in p])
    evidence = np.log(p) + np.log(k)
    # The image knows nothing: Bayes' rule uses all of the evidence, w about 1.
    assert fit_weight(np.zeros((n, k)), evidence, y) == pytest.approx(1.0, abs=0.15)
    # The metadata is noise unrelated to the class: it is switched off, w about 0.
    noise = rng.normal(0, 1.0, (n, k))
    assert fit_weight(evidence, noise, y) < 0.1


def test_fusion_is_fitted_on_validation_and_measured_beside_the_photo_alone() -> None:
    from sklearn.metrics import balanced_accuracy_score

    from dermalab.core.config import EvalConfig
    from dermalab.evaluate.decision import fit_decision
    from dermalab.evaluate.served import rules_beside, served_metrics

    rows, y = synthetic(900, 3)
    train, val, test = slice(0, 500), slice(500, 700), slice(700, 900)
    m = fit_metadata_model(rows[train], y[train], 3, FIELDS)
    rng = np.random.default_rng(4)
    logits = rng.normal(0, 1, (900, 3))
    logits[np.arange(900), y] += 0.8  # a weak image model

    def preds(s: slice) -> Predictions:
        return Predictions([f"i{i}" for i in range(s.start, s.stop)], y[s], logits[s])

    classes = ["a", "b", "c"]
    d, info = fit_decision(preds(val), classes, np.bincount(y[train]),
                           EvalConfig(malignant_classes=["a"], prior="training"), m,
                           rows[val])
    assert m.weight > 0.3  # fitted on validation
    assert "val_uncertain_rate_metadata" in info and d.uncertain_threshold_metadata is not None
    units = [f"u{i}" for i in range(200)]
    alone = served_metrics(preds(test), d, classes, units, reps=0)
    beside = rules_beside(preds(test), d, classes, units, ece_bins=15, reps=0, metadata=m,
                          rows=rows[test])["metadata"]
    assert beside["nll"] < alone["nll"]
    assert beside["balanced_accuracy"] > alone["balanced_accuracy"] + 0.1
    assert beside["roc_auc_macro"] > alone["roc_auc_macro"]
    assert alone["balanced_accuracy"] == pytest.approx(
        balanced_accuracy_score(y[test], d.predict(logits[test])))
    assert beside["balanced_accuracy"] == pytest.approx(
        balanced_accuracy_score(y[test], d.predict(logits[test], m, rows[test])))
    # the malignant operating point is the same threshold, with and without metadata
    assert beside["malignant"]["threshold"] == alone["malignant"]["threshold"]
    assert beside["malignant"]["sensitivity"] >= alone["malignant"]["sensitivity"]


def test_no_metadata_at_all_is_a_clear_error() -> None:
    rows = [{"image": "x"}] * 6
    with pytest.raises(DataError, match=r"no training image has any of them .* set "
                                        r"eval.metadata=\[\]"):
        fit_metadata_model(rows, np.array([0, 1, 2, 0, 1, 2]), 3, FIELDS)
    with pytest.raises(DataError, match="class index 2 has no training images"):
        fit_metadata_model([{"sex": "male"}] * 2, np.array([0, 1]), 3, FIELDS)


@pytest.mark.parametrize("value", ["[age,height]", "[sex,sex]"])
def test_config_names_only_known_fields(value: str) -> None:
    with pytest.raises(ConfigError, match=r"eval\.metadata"):
        load_config(None, [f"eval.metadata={value}"])
    assert load_config(None, ["eval.metadata=[sex,age]"]).eval.metadata == ["sex", "age"]
