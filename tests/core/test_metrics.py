"""Metrics agree with scikit-learn, including when classes are missing."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn import metrics as skm

from dermalab.core.metrics import classification_metrics

CLASSES = ["a", "b", "c", "d"]


def _data(seed: int = 0, n: int = 300) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.choice(4, n, p=[0.6, 0.2, 0.15, 0.05])
    logits = rng.normal(size=(n, 4)) + 2.0 * np.eye(4)[y] * rng.random((n, 1))
    p = np.exp(logits)
    return y, p / p.sum(1, keepdims=True)


def test_against_sklearn() -> None:
    y, p = _data()
    pred = p.argmax(1)
    m = classification_metrics(y, p, CLASSES)
    assert m["accuracy"] == pytest.approx(skm.accuracy_score(y, pred))
    assert m["balanced_accuracy"] == pytest.approx(skm.balanced_accuracy_score(y, pred))
    assert m["macro_f1"] == pytest.approx(skm.f1_score(y, pred, average="macro"))
    assert m["weighted_precision"] == pytest.approx(
        skm.precision_score(y, pred, average="weighted"))
    assert m["weighted_recall"] == pytest.approx(skm.recall_score(y, pred, average="weighted"))
    assert m["roc_auc_macro"] == pytest.approx(
        skm.roc_auc_score(y, p, multi_class="ovr", average="macro"))
    assert m["confusion_matrix"] == skm.confusion_matrix(y, pred).tolist()
    report = skm.classification_report(y, pred, output_dict=True, zero_division=0)
    for i, c in enumerate(CLASSES):
        assert m["per_class"][c]["recall"] == pytest.approx(report[str(i)]["recall"])
        assert m["per_class"][c]["support"] == report[str(i)]["support"]
    rows = np.asarray(m["confusion_matrix_normalized"])
    assert rows.sum(1) == pytest.approx(np.ones(4), abs=1e-3)


def test_missing_class_in_truth() -> None:
    y, p = _data(1)
    keep = y != 3
    y, p = y[keep], p[keep]
    m = classification_metrics(y, p, CLASSES)
    assert m["per_class"]["d"]["roc_auc"] is None and m["per_class"]["d"]["support"] == 0
    aucs = [skm.roc_auc_score((y == k).astype(int), p[:, k]) for k in range(3)]
    assert m["roc_auc_macro"] == pytest.approx(np.mean(aucs))
    assert m["balanced_accuracy"] == pytest.approx(skm.balanced_accuracy_score(y, p.argmax(1)))


def test_macro_f1_counts_a_class_predicted_but_absent_from_the_truth() -> None:
    # Class 2 is predicted twice but never true: its F1 is 0 and it is in the mean.
    y = np.array([0, 0, 1, 1, 0, 1])
    pred = np.array([0, 2, 1, 1, 0, 2])
    p = np.eye(4)[pred] * 0.9 + 0.025
    m = classification_metrics(y, p, CLASSES)
    expected = skm.f1_score(y, pred, average="macro", zero_division=0)
    assert m["macro_f1"] == pytest.approx(expected)
    assert m["macro_f1"] == pytest.approx((0.8 + 0.8 + 0.0) / 3)


def test_shape_mismatch_is_an_error() -> None:
    with pytest.raises(ValueError, match="probs must be"):
        classification_metrics([0, 1], np.ones((2, 3)) / 3, CLASSES)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_fast_forms_equal_scikit_learn(seed: int) -> None:
    """The resampling forms (core.metrics) against scikit-learn, with a class missing from
    the truth, a class never predicted, and tied scores."""
    from dermalab.core.metrics import balanced_accuracy, binary_auc, macro_auc, macro_f1

    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, 80)  # class 3 never true
    p = rng.dirichlet(np.ones(4), 80)
    p[:10] = 0.25  # ties
    pred = p.argmax(1)
    assert balanced_accuracy(y, pred, 4) == pytest.approx(skm.balanced_accuracy_score(y, pred))
    assert macro_f1(y, pred, 4) == pytest.approx(
        skm.f1_score(y, pred, labels=np.union1d(y, pred), average="macro", zero_division=0))
    for k in range(3):
        assert binary_auc(y == k, p[:, k]) == pytest.approx(
            skm.roc_auc_score((y == k).astype(int), p[:, k]))
    assert binary_auc(y == 3, p[:, 3]) is None
    assert macro_auc(y, p) == pytest.approx(classification_metrics(y, p, CLASSES)
                                            ["roc_auc_macro"])


def test_the_metric_registry_names_what_is_computed_and_what_can_be_monitored() -> None:
    """Every registered metric is computed by classification_metrics, every train.monitor
    choice but the loss is recorded per epoch, and the history records exactly those."""
    import typing

    from dermalab.core.config import Monitor
    from dermalab.core.metrics import METRICS, metric_names
    from dermalab.train.fit import VAL_KEYS

    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.ones(3), size=30)
    out = classification_metrics(rng.integers(0, 3, 30), probs, ["a", "b", "c"], detailed=False)
    assert set(metric_names()) <= set(out)
    assert len({m.name for m in METRICS}) == len(METRICS)
    assert set(typing.get_args(Monitor)) - {"loss"} <= set(metric_names(per_epoch=True))
    assert metric_names(per_epoch=True) == VAL_KEYS
    assert metric_names(headline=True) == ("accuracy", "balanced_accuracy", "macro_f1",
                                           "roc_auc_macro")
