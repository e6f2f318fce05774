"""Images and their lesion masks for segmentation: the classifier's prepared data (decoded
cache, lesion-grouped split) plus each image's mask, resized with the image's geometry."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset
from torchvision import tv_tensors

from dermalab.core.config import DataConfig
from dermalab.data.lesion import read_masks
from dermalab.data.prepare import PreparedData


@dataclass
class MaskedData:
    """Prepared images, and their masks at the model's input size (only samples that have
    one)."""

    data: PreparedData
    masks: dict[str, np.ndarray]
    without_mask: list[str]

    def ids(self, split: str) -> list[str]:
        """Sample ids of a split that have a mask."""
        return [s.sample_id for s in self.data.samples(split) if s.sample_id in self.masks]


def load_masks(data: PreparedData, cfg: DataConfig, size: int) -> MaskedData:
    """Every sample's mask, checked against its image and resized like it.

    Raises:
        DataError: no ``data.masks`` configured, or no sample has a mask.
        MaskError: an unusable mask (unless ``data.skip_bad``, which leaves it out).
    """
    lm = read_masks(data.source, cfg, size)
    masks = {sid: m for sid in lm.packed if (m := lm.get(sid)) is not None}
    return MaskedData(data, masks, lm.without)


class MaskDataset(Dataset[tuple[torch.Tensor, torch.Tensor]]):
    """``(normalised image, float mask (1, S, S))`` pairs; ``transform`` moves both together
    (torchvision v2 with :class:`tv_tensors.Mask`)."""

    def __init__(self, md: MaskedData, ids: list[str], transform: Any) -> None:
        self.md, self.ids, self.transform = md, list(ids), transform

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        sid = self.ids[i]
        img = torch.from_numpy(self.md.data.store.get(sid)).permute(2, 0, 1).contiguous()
        mask = tv_tensors.Mask(torch.from_numpy(self.md.masks[sid].astype(np.uint8))[None])
        x, y = self.transform(img, mask)
        return x, y.float()
