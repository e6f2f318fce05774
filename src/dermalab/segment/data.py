"""Images and their lesion masks for segmentation: the classifier's prepared data (decoded
cache, lesion-grouped split) plus each image's mask, resized with the image's geometry."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset
from torchvision import tv_tensors

from dermalab.core.config import DataConfig
from dermalab.core.errors import DataError
from dermalab.data.masks import load_mask, resize_mask
from dermalab.data.prepare import PreparedData
from dermalab.data.samples import Sample

EXIF_ROTATED = (5, 6, 7, 8)  # orientations that swap width and height


def image_size_of(sample: Sample, data: PreparedData) -> tuple[int, int]:
    """``(width, height)`` of the sample's image as decoded (EXIF orientation applied)."""
    if sample.path is None:
        assert data.source.arrays is not None and sample.index is not None
        arr = data.source.arrays[sample.index]
        return int(arr.shape[1]), int(arr.shape[0])
    with Image.open(sample.path) as img:
        w, h = img.size
        rotated = img.getexif().get(274) in EXIF_ROTATED
    return (h, w) if rotated else (w, h)


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
    if not cfg.masks:
        raise DataError("segmentation needs lesion masks: set data.masks to a folder of masks "
                        "or to 'labelme'")
    masks: dict[str, np.ndarray] = {}
    without: list[str] = []
    for s in data.source.samples:
        try:
            m = load_mask(s, cfg, image_size_of(s, data))
        except DataError:
            if not cfg.skip_bad:
                raise
            m = None
        if m is None:
            without.append(s.sample_id)
        else:
            masks[s.sample_id] = resize_mask(m, size, cfg.resize_mode)
    if not masks:
        raise DataError(f"no image of {data.source.location} has a mask in {cfg.masks}")
    return MaskedData(data, masks, without)


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
