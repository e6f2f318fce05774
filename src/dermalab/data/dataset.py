"""A map-style Dataset over an image store, and the data loaders of a run."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler, WeightedRandomSampler
from torchvision import tv_tensors

from dermalab.data.cache import ImageStore


class ImageDataset(Dataset[tuple[torch.Tensor, int]]):
    """``(image tensor, class index)`` pairs for the given sample ids.

    A bad image raises :class:`~dermalab.core.errors.ImageError` naming its file; nothing is ever
    silently replaced by another sample.
    """

    def __init__(
        self,
        store: ImageStore,
        sample_ids: Sequence[str],
        targets: Sequence[int],
        transform: Callable[..., Any] | None,
    ) -> None:
        if len(sample_ids) != len(targets):
            raise ValueError("sample_ids and targets differ in length")
        self.store = store
        self.sample_ids = list(sample_ids)
        self.targets = np.asarray(targets, dtype=np.int64)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.sample_ids)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        img = torch.from_numpy(self.store.get(self.sample_ids[i])).permute(2, 0, 1).contiguous()
        if self.transform is None:  # the uint8 image as stored (augmented later, per batch)
            return img, int(self.targets[i])
        if img.shape[0] == 4:
            # A lesion-mask channel: the mask goes through every geometric augmentation with
            # the image (tv_tensors.Mask), and through none of the colour ones or the
            # normalisation; it enters the model as 0/1.
            x, m = self.transform(tv_tensors.Image(img[:3]), tv_tensors.Mask(img[3:] > 127))
            return torch.cat([x.as_subclass(torch.Tensor),
                              m.as_subclass(torch.Tensor).to(x.dtype)]), int(self.targets[i])
        return self.transform(img), int(self.targets[i])


def class_counts(targets: Sequence[int] | np.ndarray, num_classes: int) -> np.ndarray:
    """Images per class index."""
    return np.bincount(np.asarray(targets, dtype=np.int64), minlength=num_classes)


#: ``data.sampler`` -> the power ``p`` of each image's draw weight ``1 / n_c ** p``.
SAMPLER_POWER: dict[str, float] = {"none": 0.0, "sqrt": 0.5, "oversample": 1.0}


def sampled_class_prior(counts: Sequence[int] | np.ndarray, sampler: str) -> np.ndarray:
    """The expected class shares of the training batches under ``data.sampler``.

    Each of the ``n_c`` images of class ``c`` is drawn with weight ``n_c^(-p)``, so the class
    is drawn in proportion to ``n_c^(1 - p)``: the counts themselves without a sampler,
    ``sqrt(n_c)`` for ``sqrt``, equal shares for ``oversample`` (empty classes stay at 0).
    """
    n = np.asarray(counts, dtype=np.float64)
    share = np.where(n > 0, np.maximum(n, 1.0) ** (1.0 - SAMPLER_POWER[sampler]), 0.0)
    return share / share.sum()


def balanced_sampler(
    targets: Sequence[int] | np.ndarray, num_classes: int, power: float,
    generator: torch.Generator | None = None,
) -> WeightedRandomSampler:
    """Oversample rare classes: sample weight ``1 / n_c ** power`` (1: balanced, 0.5: sqrt).

    Draws ``len(targets)`` samples with replacement per epoch from ``generator``, which the
    training loop reseeds from (seed, epoch) at every epoch: the order is the same on every
    process (each takes its own shard of the batches) and a resumed run sees exactly the
    batches an uninterrupted one would.
    """
    counts = class_counts(targets, num_classes).astype(np.float64)
    per_class = np.where(counts > 0, 1.0 / np.maximum(counts, 1.0) ** power, 0.0)
    weights = per_class[np.asarray(targets, dtype=np.int64)]
    return WeightedRandomSampler(weights.tolist(), len(weights), replacement=True,
                                 generator=generator)


def make_loader(
    dataset: Dataset[tuple[torch.Tensor, int]],
    batch_size: int,
    *,
    shuffle: bool = False,
    sampler: Sampler[int] | None = None,
    num_workers: int = 0,
    drop_last: bool = False,
    generator: torch.Generator | None = None,
) -> DataLoader[tuple[torch.Tensor, int]]:
    """A DataLoader drawing its shuffle order and worker seeds from ``generator`` (reseeded per
    epoch by the training loop, for exact resume and the same order on every process)."""
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle if sampler is None else False,
        sampler=sampler,
        num_workers=num_workers,
        drop_last=drop_last,
        persistent_workers=False,
        pin_memory=torch.cuda.is_available(),
        generator=generator,
    )
