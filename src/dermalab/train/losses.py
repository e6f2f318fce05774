"""Losses for imbalanced classification, as ``nn.Module``s.

All take ``logits`` of shape ``(N, K)`` and integer ``target`` of shape ``(N,)`` and return the
mean loss. Each reduces to plain cross-entropy in its limit (tested): focal with ``gamma=0``,
class-balanced with ``beta=0``, logit-adjusted with ``tau=0``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from dermalab.core.config import LossConfig
from dermalab.data.dataset import sampled_class_prior


def effective_number_weights(counts: Sequence[int] | np.ndarray, beta: float) -> np.ndarray:
    """Class weights from the effective number of samples (Cui et al., CVPR 2019).

    ``E_n = (1 - beta^n) / (1 - beta)``; ``w_c = 1 / E_{n_c}``, normalised so that
    ``sum_c w_c = K``. ``beta = 0`` gives equal weights; ``beta -> 1`` approaches inverse class
    frequency. https://arxiv.org/abs/1901.05555

    Args:
        counts: training images per class (the ORIGINAL counts, also when oversampling).
        beta: in ``[0, 1)``.
    """
    if not 0.0 <= beta < 1.0:
        raise ValueError(f"beta must be in [0, 1), got {beta}")
    n = np.asarray(counts, dtype=np.float64)
    effective = (1.0 - np.power(beta, n)) / (1.0 - beta)
    w = np.where(n > 0, 1.0 / np.maximum(effective, 1e-12), 0.0)
    return w / w.sum() * np.count_nonzero(n)


def inverse_frequency_weights(counts: Sequence[int] | np.ndarray) -> np.ndarray:
    """``w_c = N / (K * n_c)`` (scikit-learn's "balanced" class weights)."""
    n = np.asarray(counts, dtype=np.float64)
    k = np.count_nonzero(n)
    return np.where(n > 0, n.sum() / (k * np.maximum(n, 1.0)), 0.0)


def focal_factor(p: torch.Tensor, gamma: float) -> torch.Tensor:
    """``(1 - p)^gamma``, the focal modulating factor, with ``1 - p`` kept >= 1e-6.

    For ``0 < gamma < 1`` the derivative ``-gamma (1 - p)^(gamma - 1)`` is infinite where a
    confident prediction rounds ``p`` to 1 in float32, and ``inf * 0`` turns the whole
    gradient into NaN (seen in a real search at gamma = 0.09). Below the floor the clamp passes
    no gradient, which is right: such a sample is already classified with certainty.
    """
    return (1 - p).clamp_min(1e-6).pow(gamma)


class FocalLoss(nn.Module):
    """Softmax focal loss (Lin et al., ICCV 2017, https://arxiv.org/abs/1708.02002).

    ``FL = -w_y (1 - p_y)^gamma log p_y`` averaged over the batch (weighted mean when class
    weights are given, like ``F.cross_entropy``). ``gamma = 0`` is (weighted) cross-entropy.

    Args:
        gamma: focusing parameter, >= 0.
        weight: optional ``(K,)`` class weights.
        label_smoothing: in ``[0, 1)``; smooths the target before the focal term.
    """

    def __init__(self, gamma: float = 2.0, weight: torch.Tensor | None = None,
                 label_smoothing: float = 0.0) -> None:
        super().__init__()
        if gamma < 0:
            raise ValueError(f"gamma must be >= 0, got {gamma}")
        self.gamma = gamma
        self.label_smoothing = label_smoothing
        self.register_buffer("weight", weight if weight is not None else None)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        logp = F.log_softmax(logits.float(), dim=1)
        k = logits.shape[1]
        onehot = F.one_hot(target, k).float()
        if self.label_smoothing > 0:
            onehot = onehot * (1 - self.label_smoothing) + self.label_smoothing / k
        p = logp.exp()
        per_class = -onehot * focal_factor(p, self.gamma) * logp
        loss = per_class.sum(dim=1)
        if self.weight is not None:
            w = self.weight[target]  # type: ignore[index]
            return (loss * w).sum() / w.sum()
        return loss.mean()


class ClassBalancedLoss(nn.Module):
    """Class-balanced loss (Cui et al., CVPR 2019, https://arxiv.org/abs/1901.05555).

    ``CB(p, y) = w_y * L(p, y)`` with ``w`` from :func:`effective_number_weights`, and ``L``
    softmax cross-entropy, sigmoid (one-vs-all binary) cross-entropy, or focal loss. Following
    the paper's reference code the weighted losses are averaged over the batch (weights sum to
    ``K``), so ``beta = 0`` gives weights of 1 and the plain loss.

    Args:
        counts: training images per class.
        beta: effective-number parameter in ``[0, 1)``.
        loss_type: ``softmax`` | ``sigmoid`` | ``focal``.
        gamma: focal parameter for ``focal`` (and the sigmoid focal term when > 0).
        label_smoothing: for the softmax variant.
    """

    def __init__(self, counts: Sequence[int] | np.ndarray, beta: float = 0.999,
                 loss_type: str = "focal", gamma: float = 2.0,
                 label_smoothing: float = 0.0) -> None:
        super().__init__()
        if loss_type not in ("softmax", "sigmoid", "focal"):
            raise ValueError(f"loss_type must be softmax, sigmoid or focal, got {loss_type!r}")
        self.loss_type = loss_type
        self.gamma = gamma
        self.label_smoothing = label_smoothing
        w = torch.as_tensor(effective_number_weights(counts, beta), dtype=torch.float32)
        self.register_buffer("weight", w)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        logits = logits.float()
        w = self.weight[target]  # type: ignore[index]
        if self.loss_type == "softmax":
            per = F.cross_entropy(logits, target, reduction="none",
                                  label_smoothing=self.label_smoothing)
        elif self.loss_type == "focal":
            logp = F.log_softmax(logits, dim=1).gather(1, target[:, None])[:, 0]
            per = -focal_factor(logp.exp(), self.gamma) * logp
        else:
            onehot = F.one_hot(target, logits.shape[1]).float()
            bce = F.binary_cross_entropy_with_logits(logits, onehot, reduction="none")
            if self.gamma > 0:
                p = torch.sigmoid(logits)
                pt = onehot * p + (1 - onehot) * (1 - p)
                bce = focal_factor(pt, self.gamma) * bce
            per = bce.sum(dim=1)
        return (w * per).mean()


def _log_shares(shares: np.ndarray) -> np.ndarray:
    """``log`` of class shares, an empty class at ``log 1e-12`` rather than ``-inf`` (a large
    negative offset, no NaN in a softmax)."""
    return np.log(np.maximum(np.asarray(shares, dtype=np.float64), 1e-12))


class LogitAdjustedLoss(nn.Module):
    """Logit-adjusted softmax cross-entropy (Menon et al., "Long-tail learning via logit
    adjustment", ICLR 2021, eq. 11, https://arxiv.org/abs/2007.07314; with ``tau = 1`` the
    Balanced Softmax of Ren et al., NeurIPS 2020).

    ``LA(z, y) = -log softmax(z + tau log pi)_y``, ``pi`` the class shares of the training
    batches. The offset asks a rare class for a larger margin than a common one, and a
    reweighted loss cannot do that: once the network fits its training set, class weights stop
    moving the boundary (Byrd & Lipton, ICML 2019). The model's own logits ``z`` then estimate
    ``log p(x | y)`` up to a constant (for ``tau = 1``): their argmax is the balanced-error
    rule. :func:`posterior_offset` turns them back into posterior logits.

    Args:
        prior: ``(K,)`` class shares of the training batches (:func:`sampled_class_prior`).
        tau: offset scale, >= 0; 0 is plain cross-entropy.
        label_smoothing: as in ``F.cross_entropy``.
    """

    def __init__(self, prior: np.ndarray, tau: float = 1.0, label_smoothing: float = 0.0
                 ) -> None:
        super().__init__()
        if tau < 0:
            raise ValueError(f"tau must be >= 0, got {tau}")
        self.label_smoothing = label_smoothing
        self.offset: torch.Tensor
        self.register_buffer("offset", torch.as_tensor(tau * _log_shares(prior),
                                                       dtype=torch.float32))

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits.float() + self.offset, target,
                               label_smoothing=self.label_smoothing)


def posterior_offset(cfg: LossConfig, train_counts: Sequence[int] | np.ndarray
                     ) -> np.ndarray | None:
    """What to add to the logits of a model trained with ``cfg`` so that they estimate the
    posterior under the training labels' class frequencies; ``None``: nothing (every loss but
    ``la``).

    For ``la`` it is ``tau log(n_c / N)``: by Bayes, ``log P(y | x) = log p(x | y) + log pi_y
    + const``, and the logit-adjusted model's logits estimate ``log p(x | y)``. The trained
    model carries it in its classifier bias (``best.pt``), so the temperature, the metadata
    fusion, the served probabilities and the post-hoc logit adjustment (whose tau is fitted
    on validation) all see posterior logits, as they do for every other loss.
    """
    if cfg.name != "la":
        return None
    return cfg.tau * _log_shares(sampled_class_prior(train_counts, "none"))


def build_loss(cfg: LossConfig, train_counts: Sequence[int] | np.ndarray,
               sampler: str = "none") -> nn.Module:
    """The configured loss; class weights always come from the ORIGINAL training counts.

    Oversampling changes what the model sees, not the true class frequencies; the loss weights
    are computed from the un-resampled counts so the two tools stay complementary. The
    logit-adjusted loss's offsets are the opposite case: they must match the class shares the
    batches really have, so they follow ``sampler`` (``data.sampler``).
    """
    counts = np.asarray(train_counts)
    if cfg.name == "ce":
        return nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
    if cfg.name == "weighted_ce":
        w = torch.as_tensor(inverse_frequency_weights(counts), dtype=torch.float32)
        return nn.CrossEntropyLoss(weight=w, label_smoothing=cfg.label_smoothing)
    if cfg.name == "focal":
        return FocalLoss(cfg.gamma, label_smoothing=cfg.label_smoothing)
    if cfg.name == "cb":
        return ClassBalancedLoss(counts, cfg.beta, cfg.cb_type, cfg.gamma, cfg.label_smoothing)
    if cfg.name == "la":
        return LogitAdjustedLoss(sampled_class_prior(counts, sampler), cfg.tau,
                                 cfg.label_smoothing)
    raise ValueError(f"unknown loss {cfg.name!r}")
