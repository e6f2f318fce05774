"""Fit the metadata model of :mod:`dermalab.core.metadata` and measure what it adds.

The regression sees the training split only; the fusion weight is fitted on validation; test
is only measured (with and without the metadata, so the report shows the difference).
"""

from __future__ import annotations

import itertools
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from scipy.optimize import minimize_scalar
from sklearn.linear_model import LogisticRegression

from dermalab.core.calibration import (
    calibrated_probs,
    malignant_score,
    nll,
    sensitivity_specificity,
)
from dermalab.core.errors import DataError
from dermalab.core.metadata import MetadataModel, category
from dermalab.core.metrics import classification_metrics
from dermalab.core.runs import Predictions
from dermalab.evaluate.analysis import logit_adjustment

WEIGHT_BOUNDS = (0.0, 3.0)


def _hidden(row: Mapping[str, Any], fields: Sequence[str]) -> dict[str, Any]:
    """``row`` with ``fields`` removed (the age also loses its value, not only its flag)."""
    out = {k: v for k, v in row.items() if k not in fields}
    if "age" in fields:
        out["age_missing"] = True
    return out


def fit_metadata_model(rows: Sequence[Mapping[str, Any]], targets: np.ndarray,
                       n_classes: int, fields: Sequence[str], c: float = 0.3
                       ) -> MetadataModel:
    """A multinomial logistic regression (L2, inverse strength ``c``) of the class on the
    metadata of the training rows, each row repeated with every subset of ``fields``
    hidden (so partial metadata is modelled, not imputed).

    Raises:
        DataError: no training row has any of ``fields``, or a class is missing from training.
    """
    counts = np.bincount(targets, minlength=n_classes)
    if counts.min() == 0:
        raise DataError(f"eval.metadata: class index {int(counts.argmin())} has no training "
                        "images, so its metadata cannot be modelled")
    sexes = sorted({t for r in rows if (t := category(r.get("sex")))})
    sites = sorted({t for r in rows if (t := category(r.get("localization")))})
    model = MetadataModel(fields=list(fields), sexes=sexes, sites=sites, coef=[], intercept=[],
                          log_prior=np.log(counts / counts.sum()).tolist())
    if not any(model.given(r) for r in rows):
        raise DataError(f"eval.metadata={list(fields)}, but no training image has any of them "
                        "(the HAM10000 and ISIC 2019 formats carry age, sex and localization); "
                        "set eval.metadata=[]")
    subsets = [s for k in range(len(fields) + 1) for s in itertools.combinations(fields, k)]
    x = np.vstack([model.encode([_hidden(r, s) for r in rows]) for s in subsets])
    y = np.tile(targets, len(subsets))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # lbfgs' convergence chatter on separable one-hots
        reg = LogisticRegression(C=c, max_iter=3000).fit(x, y)
    model.coef = reg.coef_.tolist()
    model.intercept = reg.intercept_.tolist()
    return model


def fit_weight(scaled_logits: np.ndarray, ratio: np.ndarray, targets: np.ndarray) -> float:
    """The fusion weight ``w`` in [0, 3] minimising validation NLL of ``z/T + w r``."""
    res = minimize_scalar(lambda w: nll(scaled_logits + w * ratio, targets),
                          bounds=WEIGHT_BOUNDS, method="bounded", options={"xatol": 1e-4})
    return float(res.x)


def metadata_fusion(model: MetadataModel, temperature: float, val: Predictions,
                    test: Predictions, val_rows: Sequence[Mapping[str, Any]],
                    test_rows: Sequence[Mapping[str, Any]], classes: Sequence[str],
                    malignant: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Fit ``model.weight`` on validation (in place) and measure test with and without the
    metadata: accuracy, balanced accuracy, macro AUC, NLL, balanced accuracy with logit
    adjustment refitted on the fused validation logits, and (given the image model's
    ``malignant`` operating point: ``classes``, ``threshold``) the malignant sensitivity and
    specificity at that same threshold. For ``metrics.json``."""
    v_scaled, t_scaled = val.logits / temperature, test.logits / temperature
    v_ratio, t_ratio = model.log_ratio(val_rows), model.log_ratio(test_rows)
    model.weight = fit_weight(v_scaled, v_ratio, val.targets)
    v_fused = v_scaled + model.weight * v_ratio
    t_fused = t_scaled + model.weight * t_ratio
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # classes missing from a small validation split
        after, before, val_after, val_before = (
            classification_metrics(t, calibrated_probs(z), classes, detailed=False)
            for t, z in ((test.targets, t_fused), (test.targets, t_scaled),
                         (val.targets, v_fused), (val.targets, v_scaled)))
    prior = np.exp(np.asarray(model.log_prior))
    adjusted = logit_adjustment(Predictions(val.ids, val.targets, v_fused),
                                Predictions(test.ids, test.targets, t_fused), prior)
    out: dict[str, Any] = {
        "fields": list(model.fields), "weight": model.weight,
        "test_images_with_metadata": int(sum(bool(model.given(r)) for r in test_rows)),
        "val_nll": nll(v_fused, val.targets), "val_nll_without": nll(v_scaled, val.targets),
        "nll": nll(t_fused, test.targets), "nll_without": nll(t_scaled, test.targets),
        "val_balanced_accuracy": val_after["balanced_accuracy"],
        "val_balanced_accuracy_without": val_before["balanced_accuracy"],
        "logit_adjusted_balanced_accuracy": adjusted["balanced_accuracy"],
        "logit_adjustment_tau": adjusted["tau"],
    }
    for key in ("accuracy", "balanced_accuracy", "macro_f1", "roc_auc_macro"):
        out[key], out[key + "_without"] = after[key], before[key]
    if malignant and malignant.get("threshold") is not None:
        mal = list(malignant["classes"])
        positive = np.isin(test.targets, [classes.index(c) for c in mal])
        for suffix, z in (("", t_fused), ("_without", t_scaled)):
            op = sensitivity_specificity(malignant_score(calibrated_probs(z), classes, mal),
                                         positive, float(malignant["threshold"]))
            out["malignant_sensitivity" + suffix] = op["sensitivity"]
            out["malignant_specificity" + suffix] = op["specificity"]
    return out

