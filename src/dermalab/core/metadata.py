"""Patient metadata (age, sex, body site) weighed beside the image: late fusion.

The image model gives logits ``z(x)`` and a temperature ``T``. A multinomial logistic
regression fitted on the training split gives ``log p(y | m)`` for the metadata ``m``; with the
training class prior ``pi``,

    r_y(m) = log p(y | m) - log pi_y = log p(m | y) - log p(m)

is the evidence the metadata adds (a log-likelihood ratio), and the fused logits are

    f_y(x, m) = z_y(x) / T + w * r_y(m).

With ``w = 1`` this is Bayes' rule when the image and the metadata are independent given the
class (naive-Bayes / product-of-experts fusion); the image already shows part of what the
metadata says (facial skin, an old person's skin), so ``w`` is fitted on validation negative
log-likelihood and the fused probabilities stay calibrated. Late fusion of patient metadata
with an image classifier: Kawahara et al., IEEE JBHI 2019 (7-point checklist); the ISIC 2019
winners fused the same three fields (Gessert et al., MethodsX 2020).

Missing fields: the regression is fitted on every training row with each subset of its fields
hidden, so ``r(m)`` for a partial ``m`` is the evidence of the fields given; with none given
``r`` is about 0 and the image decides alone.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from scipy.special import log_softmax

from dermalab.core.errors import DermalabError

AGE_EDGES = (30.0, 45.0, 60.0, 75.0)  # age bands <30, 30-44, 45-59, 60-74, 75+
AGE_RANGE = (0.0, 120.0)
MISSING = ("", "unknown", "none", "nan")


def category(value: Any) -> str | None:
    """A categorical value as lower-case text, ``None`` when missing."""
    if value is None:
        return None
    s = str(value).strip().lower()
    return None if s in MISSING else s


def _age(row: Mapping[str, Any]) -> float | None:
    """The age of a row, ``None`` when missing (imputed ages carry ``age_missing``)."""
    if row.get("age_missing") or row.get("age") in (None, ""):
        return None
    try:
        a = float(row["age"])
    except (TypeError, ValueError):
        return None
    return a if np.isfinite(a) else None


@dataclass
class MetadataModel:
    """A fitted metadata model: the encoding, the regression and the fusion weight.

    ``coef`` is ``(classes, features)``; ``log_prior`` the training prior's log; ``weight``
    the fusion weight ``w`` (see the module docstring). Plain lists, so it travels in the
    checkpoint and in ``model.json`` as JSON.
    """

    fields: list[str]
    sexes: list[str]
    sites: list[str]
    coef: list[list[float]]
    intercept: list[float]
    log_prior: list[float]
    weight: float = 1.0

    def feature_names(self) -> list[str]:
        """The columns of :meth:`encode`, in order."""
        names: list[str] = []
        if "age" in self.fields:
            bands = ["<30", "30-44", "45-59", "60-74", "75+"]
            names += ["age", "age^2", *(f"age {b}" for b in bands), "age missing"]
        if "sex" in self.fields:
            names += [f"sex={s}" for s in self.sexes] + ["sex missing"]
        if "localization" in self.fields:
            names += [f"site={s}" for s in self.sites] + ["site missing"]
        return names

    def encode(self, rows: Sequence[Mapping[str, Any]]) -> np.ndarray:
        """``(N, features)`` float64: age (centred, its square, a one-hot band) and one-hot
        sex and body site, each with a missing flag. An unseen category counts as missing."""
        cols: list[np.ndarray] = []
        n = len(rows)
        if "age" in self.fields:
            block = np.zeros((n, 8))
            for i, row in enumerate(rows):
                a = _age(row)
                if a is None:
                    block[i, 7] = 1.0
                    continue
                c = (a - 50.0) / 20.0
                block[i, 0], block[i, 1] = c, c * c
                block[i, 2 + int(np.searchsorted(AGE_EDGES, a, side="right"))] = 1.0
            cols.append(block)
        for name, values in (("sex", self.sexes), ("localization", self.sites)):
            if name not in self.fields:
                continue
            index = {v: j for j, v in enumerate(values)}
            block = np.zeros((n, len(values) + 1))
            for i, row in enumerate(rows):
                j = index.get(category(row.get(name)) or "", len(values))
                block[i, j] = 1.0
            cols.append(block)
        return np.hstack(cols) if cols else np.zeros((n, 0))

    def log_ratio(self, rows: Sequence[Mapping[str, Any]]) -> np.ndarray:
        """``r(m) = log p(y | m) - log pi_y`` per row, ``(N, classes)``."""
        z = self.encode(rows) @ np.asarray(self.coef).T + np.asarray(self.intercept)
        return np.asarray(log_softmax(z, axis=1) - np.asarray(self.log_prior)[None, :])

    def fuse(self, scaled_logits: np.ndarray, rows: Sequence[Mapping[str, Any]]) -> np.ndarray:
        """Fused logits ``z / T + w r(m)`` from temperature-scaled logits ``z / T``."""
        return np.asarray(scaled_logits + self.weight * self.log_ratio(rows))

    def parse(self, age: Any = None, sex: Any = None, site: Any = None) -> dict[str, Any]:
        """Validate what a user gave (each optional) into a metadata row.

        Raises:
            DermalabError: an age outside 0-120 or not a number, or a sex or body site this
                model does not know (the message lists the ones it knows).
        """
        row: dict[str, Any] = {}
        if age not in (None, ""):
            try:
                a = float(age)
            except (TypeError, ValueError):
                raise DermalabError(f"age {age!r} is not a number of years") from None
            if not AGE_RANGE[0] <= a <= AGE_RANGE[1]:
                raise DermalabError(f"age {a:g} is outside {AGE_RANGE[0]:g}-{AGE_RANGE[1]:g} "
                                    "years")
            row["age"] = a
        for name, value, known in (("sex", sex, self.sexes), ("localization", site, self.sites)):
            text = category(value)
            if text is None:
                continue
            if text not in known:
                what = "body site" if name == "localization" else name
                raise DermalabError(f"{what} {value!r} is not one this model knows: {known}")
            row[name] = text
        return row

    def given(self, row: Mapping[str, Any]) -> list[str]:
        """The fields of ``row`` this model uses that are present."""
        present = {"age": _age(row) is not None, "sex": category(row.get("sex")) is not None,
                   "localization": category(row.get("localization")) is not None}
        return [f for f in self.fields if present[f]]

    def to_json(self) -> dict[str, Any]:
        """Plain dict (checkpoint, ``model.json``)."""
        return asdict(self)

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> MetadataModel:
        """The inverse of :meth:`to_json`."""
        keys = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in obj.items() if k in keys})
