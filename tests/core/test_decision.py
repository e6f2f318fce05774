"""The served decision: prior shift, probabilities, verdicts, JSON (core.decision)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.special import softmax

from dermalab.core.decision import Decision
from dermalab.core.metadata import MetadataModel

PRIOR = np.array([0.6, 0.25, 0.1, 0.05])


def _logits(n: int = 50, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(0, 2, (n, 4))


def test_without_a_shift_it_is_the_temperature_scaled_softmax() -> None:
    z = _logits()
    for d in (Decision(temperature=1.7), Decision(temperature=1.7, tau=0.0,
                                                  log_prior=np.log(PRIOR).tolist())):
        assert np.allclose(d.probabilities(z), softmax(z / 1.7, axis=1), atol=1e-12)


def test_uniform_prior_is_bayes_label_shift_of_the_posterior() -> None:
    """tau = 1: p_q(y|x) with q uniform is p_pi(y|x) / pi_y renormalised (Saerens et al.)."""
    z = _logits()
    post = softmax(z / 1.3, axis=1)
    by_hand = post / PRIOR
    by_hand /= by_hand.sum(1, keepdims=True)
    d = Decision(temperature=1.3, tau=1.0, log_prior=np.log(PRIOR).tolist())
    assert np.allclose(d.probabilities(z), by_hand, atol=1e-12)
    assert np.allclose(d.deployment_prior(), 0.25)
    assert np.array_equal(d.predict(z), by_hand.argmax(1))


def test_partial_shift_declares_the_interpolated_prior() -> None:
    """Under q ∝ pi^(1-tau) the shown probabilities are p_pi(y|x) q_y / pi_y normalised, and
    the top class is their argmax: probabilities and answer cannot disagree."""
    z = _logits(seed=3)
    d = Decision(temperature=0.8, tau=0.4, log_prior=np.log(PRIOR).tolist())
    q = PRIOR ** 0.6 / (PRIOR ** 0.6).sum()
    assert np.allclose(d.deployment_prior(), q)
    post = softmax(z / 0.8, axis=1) * q / PRIOR
    post /= post.sum(1, keepdims=True)
    p = d.probabilities(z)
    assert np.allclose(p, post, atol=1e-12)
    assert np.array_equal(p.argmax(1), d.predict(z))
    # a shift changes some answers towards the rarer classes on these logits
    plain = Decision(temperature=0.8).predict(z)
    assert (d.predict(z) != plain).any()
    assert np.bincount(d.predict(z), minlength=4)[0] <= np.bincount(plain, minlength=4)[0]


def test_metadata_evidence_is_added_before_the_shift() -> None:
    mm = MetadataModel(fields=["sex"], sexes=["female", "male"], sites=[],
                       coef=np.random.default_rng(1).normal(size=(4, 3)).tolist(),
                       intercept=[0.1, -0.2, 0.3, 0.0], log_prior=np.log(PRIOR).tolist(),
                       weight=0.7)
    z = _logits(5)
    rows = [{"sex": "male"}] * 5
    d = Decision(temperature=1.2, tau=0.5, log_prior=np.log(PRIOR).tolist())
    want = softmax(mm.fuse(z / 1.2, rows) - 0.5 * np.log(PRIOR), axis=1)
    assert np.allclose(d.probabilities(z, mm, rows), want, atol=1e-12)


def test_answer_applies_both_thresholds() -> None:
    d = Decision(uncertain_threshold=0.5, uncertain_threshold_metadata=0.7,
                 malignant_classes=["mel", "bcc"], malignant_threshold=0.3)
    classes = ["nv", "mel", "bcc", "bkl"]
    a = d.answer(np.array([0.55, 0.2, 0.15, 0.1]), classes, top_k=2)
    assert a.order == [0, 1] and not a.uncertain
    assert a.malignant_probability == pytest.approx(0.35) and a.malignant_flag
    assert d.answer(np.array([0.55, 0.2, 0.15, 0.1]), classes, used_metadata=True).uncertain
    b = d.answer(np.array([0.45, 0.1, 0.1, 0.35]), classes)
    assert b.uncertain and not b.malignant_flag and b.malignant_probability == pytest.approx(0.2)
    # no malignant class in the model: no score at all
    none = Decision(malignant_classes=["mel"]).answer(np.array([0.5, 0.5]), ["a", "b"])
    assert none.malignant_probability is None and not none.malignant_flag


def test_json_round_trip_and_a_wrong_prior_size() -> None:
    d = Decision(temperature=1.1, tau=0.35, log_prior=np.log(PRIOR).tolist(), prior_rule="fit",
                 uncertain_threshold=0.6, uncertain_threshold_metadata=0.65,
                 malignant_classes=["mel"], malignant_threshold=0.2)
    assert Decision.from_json(d.to_json()) == d
    with pytest.raises(ValueError, match="3 classes"):
        Decision(tau=1.0, log_prior=[0.0, 0.0, 0.0]).shift(4)


def test_legacy_models_keep_the_plain_posterior() -> None:
    d = Decision.legacy(1.5, {"classes": ["mel"], "threshold": 0.25},
                        {"uncertain_threshold": 0.55, "uncertain_threshold_metadata": 0.6})
    assert d.tau == 0.0 and d.log_prior is None and d.malignant_threshold == 0.25
    assert d.uncertain_line(False) == 0.55 and d.uncertain_line(True) == 0.6
    z = _logits(3)
    assert np.allclose(d.probabilities(z), softmax(z / 1.5, axis=1))
