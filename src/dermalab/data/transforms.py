"""Train/eval transforms on cached uint8 images, normalised with the backbone's own statistics.

Images arrive already resized to ``S x S`` (see :mod:`dermalab.data.cache`), so evaluation only
converts and normalises (deterministic, identical to what export and serving do), while training
adds RandomResizedCrop, flips, rotation and colour jitter (torchvision ``transforms.v2`` on uint8
tensors, which is much cheaper than on PIL images).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torchvision.transforms import v2

from dermalab.core.config import AugmentConfig


def eval_transform(mean: Sequence[float], std: Sequence[float]) -> v2.Compose:
    """uint8 CHW tensor -> normalised float tensor."""
    return v2.Compose([v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(mean), list(std))])


def train_transform(
    size: int, mean: Sequence[float], std: Sequence[float], aug: AugmentConfig
) -> v2.Compose:
    """Augmentation for training; each part can be switched off in :class:`AugmentConfig`."""
    steps: list[torch.nn.Module] = []
    if aug.scale_min < 1.0:
        steps.append(v2.RandomResizedCrop(size, scale=(aug.scale_min, 1.0), antialias=True))
    if aug.hflip:
        steps.append(v2.RandomHorizontalFlip())
    if aug.vflip:
        steps.append(v2.RandomVerticalFlip())
    if aug.rotation > 0:
        steps.append(v2.RandomRotation(aug.rotation))
    if aug.color_jitter > 0 or aug.hue > 0:
        j = aug.color_jitter
        steps.append(v2.ColorJitter(brightness=j, contrast=j, saturation=j, hue=aug.hue))
    steps += [v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(mean), list(std))]
    return v2.Compose(steps)
