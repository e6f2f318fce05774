"""Fit the metadata model of :mod:`dermalab.core.metadata`: the regression on the training
split only, the fusion weight on validation (``evaluate.decision``). What it adds on test is
measured as one of the decision rules beside the served one (``evaluate.served``)."""

from __future__ import annotations

import itertools
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from scipy.optimize import minimize_scalar
from sklearn.linear_model import LogisticRegression

from dermalab.core.calibration import nll
from dermalab.core.errors import DataError
from dermalab.core.metadata import MetadataModel, category

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
