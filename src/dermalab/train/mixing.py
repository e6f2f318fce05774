"""Mixup and CutMix on training batches, with the matching loss.

Mixup (Zhang et al., ICLR 2018, https://arxiv.org/abs/1710.09412) trains on convex
combinations ``x~ = lam x_i + (1 - lam) x_j`` with ``lam ~ Beta(alpha, alpha)``; CutMix (Yun et
al., ICCV 2019, https://arxiv.org/abs/1905.04899) pastes a box of ``x_j`` into ``x_i`` instead
and sets ``lam`` to the share of ``x_i`` left visible. Both regularise a network that memorises
a small training set (the DermNet clinical model reaches a training loss of 0.09 while its
validation loss rises).

The loss is the papers' ``lam L(logits, y_i) + (1 - lam) L(logits, y_j)``. For cross-entropy
this is exactly the cross-entropy against the mixed one-hot target; with class-balanced
weights ``w`` it is ``-sum_c (lam [c = y_i] w_{y_i} + (1 - lam) [c = y_j] w_{y_j}) log p_c``,
so every loss of :mod:`dermalab.train.losses` keeps its integer-target form. The partner
``j`` of sample ``i`` is the batch reversed (as in timm), and the box comes from timm's
:func:`~timm.data.mixup.cutmix_bbox_and_lam`.

Random draws come from torch's global generator, which the training loop reseeds every epoch,
so a resumed run mixes as the uninterrupted one would.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from timm.data.mixup import cutmix_bbox_and_lam
from torch import nn

from dermalab.core.config import AugmentConfig
from dermalab.core.errors import ConfigError


@dataclass(frozen=True)
class MixedBatch:
    """A mixed batch: images, each image's own label, its partner's label, and ``lam``, the
    weight of the own label (1.0: nothing was mixed)."""

    images: torch.Tensor
    targets: torch.Tensor
    partner_targets: torch.Tensor
    lam: float


def mixup(images: torch.Tensor, lam: float) -> torch.Tensor:
    """``lam x_i + (1 - lam) x_{N-1-i}``: each image blended with the reversed batch."""
    return images * lam + images.flip(0) * (1.0 - lam)


def cutmix(images: torch.Tensor, lam: float) -> tuple[torch.Tensor, float]:
    """Paste a box of the reversed batch into each image.

    The box has area share ``1 - lam`` and is clipped at the border, so the returned weight
    is the share of each image actually left visible (timm's ``correct_lam``).
    """
    (y0, y1, x0, x1), kept = cutmix_bbox_and_lam(images.shape, lam, correct_lam=True)
    out = images.clone()
    out[..., y0:y1, x0:x1] = images.flip(0)[..., y0:y1, x0:x1]
    return out, float(kept)


class BatchMixer:
    """Mixes each training batch with probability ``mix_prob``: CutMix or Mixup, half each when
    both are configured.

    Args:
        aug: ``mixup`` and ``cutmix`` are the Beta concentrations ``alpha`` (0 disables one);
            ``mix_prob`` is the share of batches mixed.
    """

    def __init__(self, aug: AugmentConfig) -> None:
        for name in ("mixup", "cutmix"):
            alpha = getattr(aug, name)
            if alpha < 0:
                raise ConfigError(f"data.augment.{name} must be >= 0 (0 disables it), got {alpha}")
        if not 0.0 <= aug.mix_prob <= 1.0:
            raise ConfigError(f"data.augment.mix_prob must be in [0, 1], got {aug.mix_prob}")
        self.mixup_alpha = aug.mixup
        self.cutmix_alpha = aug.cutmix
        self.prob = aug.mix_prob

    @property
    def enabled(self) -> bool:
        """Whether any batch will be mixed."""
        return self.prob > 0 and (self.mixup_alpha > 0 or self.cutmix_alpha > 0)

    def __call__(self, images: torch.Tensor, targets: torch.Tensor) -> MixedBatch:
        """Mix one batch of normalised images (or leave it, with ``lam = 1``)."""
        if not self.enabled or images.shape[0] < 2 or float(torch.rand(())) >= self.prob:
            return MixedBatch(images, targets, targets, 1.0)
        use_cutmix = self.cutmix_alpha > 0 and (
            self.mixup_alpha <= 0 or float(torch.rand(())) < 0.5)
        alpha = self.cutmix_alpha if use_cutmix else self.mixup_alpha
        lam = float(torch.distributions.Beta(alpha, alpha).sample())
        if use_cutmix:
            mixed, lam = cutmix(images, lam)
        else:
            mixed = mixup(images, lam)
        return MixedBatch(mixed, targets, targets.flip(0), lam)


def mixed_loss(loss_fn: nn.Module, logits: torch.Tensor, batch: MixedBatch) -> torch.Tensor:
    """``lam L(logits, y) + (1 - lam) L(logits, y_partner)``; plain ``L`` when unmixed."""
    if batch.lam >= 1.0:
        return loss_fn(logits, batch.targets)
    return (batch.lam * loss_fn(logits, batch.targets)
            + (1.0 - batch.lam) * loss_fn(logits, batch.partner_targets))


def mixed_correct(predicted: torch.Tensor, batch: MixedBatch) -> torch.Tensor:
    """Training accuracy's numerator on a mixed batch: each label counts with its weight."""
    own = (predicted == batch.targets).sum().double()
    if batch.lam >= 1.0:
        return own
    return batch.lam * own + (1.0 - batch.lam) * (predicted == batch.partner_targets).sum().double()
