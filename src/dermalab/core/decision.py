"""The served decision: how a model's logits become the answer a person is shown.

One rule, stored with the model (``decision.json`` in a run, ``model.json`` in an export, the
page's on-device bundle) and applied by everything that answers or measures answers:
``dermalab predict``, the web service, the page's on-device analysis
(``serve/static/ondevice/core.js``, ``servedLogits``) and the evaluation that reports what those
answer (``evaluate.served``). Nothing else turns logits into an answer.

**Probabilities.** A network trained on data with class shares ``pi`` (the training prior)
gives, after temperature scaling (Guo et al., ICML 2017), ``p_pi(y | x) = softmax(z / T)``. The
people a model serves need not have HAM10000's shares (two thirds naevi). Under another prior
``q`` the posterior is (Saerens, Latinne & Decaestecker, Neural Computation 2002)

    p_q(y | x) ∝ p_pi(y | x) · q_y / pi_y.

dermalab declares ``q ∝ pi^(1 - tau)`` with ``tau`` in [0, 1]: ``tau = 0`` keeps the training
shares, ``tau = 1`` makes every class equally likely before the photo is seen (the Bayes
decision for balanced accuracy, as in post-hoc logit adjustment: Menon et al., "Long-tail
learning via logit adjustment", ICLR 2021). The served logits are

    s(x) = z(x) / T - tau · log pi   (+ w · r(m) with patient metadata: core.metadata)

and everything shown derives from ``softmax(s)``: the listed probabilities (calibrated for
the declared population when ``softmax(z / T)`` is for the training one), the top class
(``argmax s``), "not sure" and "possibly malignant". So the probabilities and the answer
cannot disagree. ``tau`` and both thresholds are chosen on validation (``evaluate.decision``).

**Not sure.** The top probability is below ``uncertain_threshold``, fitted on validation so
that the answers at or above it reach ``eval.uncertain_target_accuracy``
(``uncertain_threshold_metadata`` for answers that weighed any patient metadata).

**Possibly malignant.** The summed probability of ``malignant_classes`` reaches
``malignant_threshold``, fitted on validation for ``eval.target_sensitivity``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from dermalab.core.calibration import calibrated_probs
from dermalab.core.metadata import MetadataModel

#: How ``tau`` was chosen: ``training`` (0: the training shares), ``uniform`` (1: every class
#: equally likely), ``fit`` (on validation: see evaluate.decision).
PRIOR_RULES = ("fit", "training", "uniform")


@dataclass
class Answer:
    """The decision for one image, before any wording."""

    order: list[int]  # class indices, most probable first (top-k)
    uncertain: bool  # the top probability is below the "not sure" line
    malignant_probability: float | None  # summed probability of the malignant classes
    malignant_flag: bool  # ... at or above its operating point


@dataclass
class Decision:
    """The served rule (see the module docstring); plain fields, so it travels as JSON."""

    temperature: float = 1.0
    tau: float = 0.0
    log_prior: list[float] | None = None  # log training class shares; None: no prior shift
    prior_rule: str = "training"
    uncertain_threshold: float = 0.0
    uncertain_threshold_metadata: float | None = None
    malignant_classes: list[str] = field(default_factory=list)
    malignant_threshold: float | None = None

    # -- the probabilities ----------------------------------------------------------------------
    def shift(self, n_classes: int) -> np.ndarray:
        """The prior shift ``-tau log pi`` added to the scaled logits (zeros without one)."""
        if self.log_prior is None or self.tau == 0.0:
            return np.zeros(n_classes)
        lp = np.asarray(self.log_prior, np.float64)
        if len(lp) != n_classes:
            raise ValueError(f"the decision's prior has {len(lp)} classes, the model "
                             f"{n_classes}")
        return np.asarray(-self.tau * lp)

    def deployment_prior(self) -> np.ndarray | None:
        """The declared class shares ``q ∝ pi^(1 - tau)`` (None without a training prior)."""
        if self.log_prior is None:
            return None
        q = np.exp((1.0 - self.tau) * np.asarray(self.log_prior, np.float64))
        return np.asarray(q / q.sum())

    def logits(self, logits: np.ndarray, metadata: MetadataModel | None = None,
               rows: Sequence[Mapping[str, Any]] | None = None) -> np.ndarray:
        """Served logits ``s = z / T (+ w r(m)) - tau log pi`` of raw logits ``(N, K)``;
        ``rows`` (one metadata row per image, fields may be missing) are weighed when the
        model has a ``metadata`` model."""
        z = np.asarray(logits, np.float64) / self.temperature
        if metadata is not None and rows is not None:
            z = metadata.fuse(z, rows)
        return np.asarray(z + self.shift(z.shape[1])[None, :])

    def probabilities(self, logits: np.ndarray, metadata: MetadataModel | None = None,
                      rows: Sequence[Mapping[str, Any]] | None = None) -> np.ndarray:
        """``softmax`` of :meth:`logits`: the probabilities a person is shown."""
        return calibrated_probs(self.logits(logits, metadata, rows))

    def predict(self, logits: np.ndarray, metadata: MetadataModel | None = None,
                rows: Sequence[Mapping[str, Any]] | None = None) -> np.ndarray:
        """The served top class of each image."""
        return np.asarray(self.logits(logits, metadata, rows).argmax(axis=1))

    # -- the verdict ----------------------------------------------------------------------------
    def malignant_indices(self, classes: Sequence[str]) -> list[int]:
        """Indices of the malignant classes this model has."""
        wanted = set(self.malignant_classes)
        return [i for i, c in enumerate(classes) if c in wanted]

    def malignant_score(self, probs: np.ndarray, classes: Sequence[str]) -> np.ndarray | None:
        """Summed probability of the malignant classes per image (None: the model has none)."""
        idx = self.malignant_indices(classes)
        return np.asarray(np.asarray(probs)[:, idx].sum(axis=1)) if idx else None

    def uncertain_line(self, used_metadata: bool) -> float:
        """The "not sure" threshold for an answer that weighed metadata or not."""
        if used_metadata and self.uncertain_threshold_metadata is not None:
            return float(self.uncertain_threshold_metadata)
        return float(self.uncertain_threshold)

    def answer(self, probs: np.ndarray, classes: Sequence[str], top_k: int = 3,
               used_metadata: bool = False) -> Answer:
        """The decision for one image's served probabilities ``(K,)``."""
        p = np.asarray(probs, np.float64)
        order = [int(i) for i in np.argsort(-p, kind="stable")[:max(1, top_k)]]
        score = self.malignant_score(p[None], classes)
        mal_p = float(score[0]) if score is not None else None
        flag = (mal_p is not None and self.malignant_threshold is not None
                and mal_p >= self.malignant_threshold)
        return Answer(order, bool(p[order[0]] < self.uncertain_line(used_metadata)), mal_p,
                      bool(flag))

    # -- JSON -----------------------------------------------------------------------------------
    def to_json(self) -> dict[str, Any]:
        """Plain dict (``decision.json``, ``model.json``, the on-device bundle)."""
        return asdict(self)

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> Decision:
        """The inverse of :meth:`to_json`."""
        keys = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in obj.items() if k in keys})

    @classmethod
    def legacy(cls, temperature: float, malignant: Mapping[str, Any] | None,
               uncertain: Mapping[str, Any] | None = None) -> Decision:
        """The rule of a model finalised before decisions were stored (format 0): its
        temperature, the plain posterior (no prior shift) and its thresholds."""
        mal = malignant or {}
        unsure = uncertain or {}
        t_meta = unsure.get("uncertain_threshold_metadata")
        return cls(temperature=float(temperature),
                   uncertain_threshold=float(unsure.get("uncertain_threshold", 0.0)),
                   uncertain_threshold_metadata=float(t_meta) if t_meta is not None else None,
                   malignant_classes=list(mal.get("classes") or []),
                   malignant_threshold=(float(mal["threshold"])
                                        if mal.get("threshold") is not None else None))
