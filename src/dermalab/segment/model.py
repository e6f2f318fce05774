"""The lesion segmentation network and its loss.

A U-Net (Ronneberger et al., MICCAI 2015, https://arxiv.org/abs/1505.04597) from
segmentation-models-pytorch on a timm encoder ("tu-" universal encoder). The encoder gets the
same ImageNet weights as the classifier (offline for EfficientNet-Lite0 and MobileNetV2): they
are loaded into the classification backbone by :func:`dermalab.core.models.create_model` and
copied into the encoder by parameter name.
"""

from __future__ import annotations

from typing import Any

import segmentation_models_pytorch as smp
import timm
import torch
from torch import nn

from dermalab.core.config import ModelConfig, SegmentConfig
from dermalab.core.errors import PretrainedWeightsUnavailableError
from dermalab.core.models import create_model, get_spec


def build_segmenter(cfg: SegmentConfig, pretrained: bool | None = None
                    ) -> tuple[nn.Module, dict[str, Any], str]:
    """``(U-Net, data config (mean, std), weights origin)``; one output channel (logits)."""
    spec = get_spec(cfg.encoder)
    net = smp.Unet(f"tu-{spec.timm_name}", encoder_weights=None, classes=1)
    use_weights = cfg.pretrained if pretrained is None else pretrained
    if use_weights:
        body, data_cfg, origin = create_model(ModelConfig(backbone=cfg.encoder), 2)
        enc = net.encoder.model
        src = body.state_dict()
        want = enc.state_dict()
        missing = [k for k in want if k not in src or src[k].shape != want[k].shape]
        if missing:
            raise PretrainedWeightsUnavailableError(
                f"{cfg.encoder}: {len(missing)} encoder tensors have no pretrained counterpart "
                f"(e.g. {missing[0]}); set segment.pretrained=false to train from scratch")
        enc.load_state_dict({k: src[k] for k in want})
    else:
        data_cfg = dict(timm.data.resolve_model_data_config(
            timm.create_model(spec.timm_name, pretrained=False)))
        origin = "random"
    return net, {"mean": list(data_cfg["mean"]), "std": list(data_cfg["std"])}, origin


class DiceBCELoss(nn.Module):
    """``w · (1 − soft Dice) + (1 − w) · BCE`` on logits, the usual loss for lesion masks.

    Soft Dice per image (Milletari et al., V-Net, 3DV 2016, https://arxiv.org/abs/1606.04797):
    ``D = (2 Σ p·y + ε) / (Σ p + Σ y + ε)`` with ``p = sigmoid(logits)``, averaged over the
    batch; BCE is ``binary_cross_entropy_with_logits`` over all pixels. With ``w = 0`` it is
    plain BCE; with ``w = 1`` plain soft Dice.

    Args:
        dice_weight: ``w`` in [0, 1].
        eps: smoothing, so an empty prediction of an empty mask scores Dice 1.

    Shapes: logits and targets ``(N, 1, H, W)`` (targets in {0, 1}).
    """

    def __init__(self, dice_weight: float = 0.5, eps: float = 1.0) -> None:
        super().__init__()
        if not 0.0 <= dice_weight <= 1.0:
            raise ValueError(f"dice_weight must be in [0, 1], got {dice_weight}")
        self.dice_weight, self.eps = dice_weight, eps

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        targets = targets.to(logits.dtype)
        bce = nn.functional.binary_cross_entropy_with_logits(logits, targets)
        p = torch.sigmoid(logits).flatten(1)
        y = targets.flatten(1)
        dice = (2 * (p * y).sum(1) + self.eps) / (p.sum(1) + y.sum(1) + self.eps)
        return self.dice_weight * (1 - dice.mean()) + (1 - self.dice_weight) * bce
