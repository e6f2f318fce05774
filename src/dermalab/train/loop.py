"""One training epoch and one evaluation pass, through HF Accelerate.

The same code runs on one CPU, one GPU or many processes: Accelerate moves batches, scales the
loss under mixed precision, synchronises gradients, and ``gather_for_metrics`` collects
predictions from all processes once per sample (dropping the padding of the last batch).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from accelerate import Accelerator
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from dermalab.core.runs import Predictions
from dermalab.data.dataset import ImageDataset, make_loader
from dermalab.data.prepare import PreparedData
from dermalab.data.transforms import eval_transform
from dermalab.train.mixing import BatchMixer, MixedBatch, mixed_correct, mixed_loss


@dataclass
class EpochStats:
    """Mean training loss, accuracy on the (augmented) training batches, and speed."""

    loss: float
    accuracy: float
    images: int
    seconds: float

    @property
    def images_per_second(self) -> float:
        """Training throughput."""
        return self.images / self.seconds if self.seconds > 0 else 0.0


def frozen_bn_eval(model: nn.Module) -> None:
    """BatchNorm layers whose weights are frozen keep their pretrained running statistics."""
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.weight is not None \
                and not m.weight.requires_grad:
            m.eval()


def train_one_epoch(
    model: nn.Module,
    loader: DataLoader[Any],
    loss_fn: nn.Module,
    optimizer: torch.optim.Optimizer,
    accelerator: Accelerator,
    *,
    channels_last: bool = False,
    batch_transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
    after_step: Callable[[], None] | None = None,
    mixer: BatchMixer | None = None,
    max_batches: int | None = None,
    progress: bool = True,
    desc: str = "train",
) -> EpochStats:
    """One pass over ``loader``; returns loss/accuracy averaged over all processes.

    ``batch_transform`` (``data.augment.batched``) augments and normalises each uint8 batch
    the loader yields, in this process; ``mixer`` (``data.augment.mixup``/``cutmix``) then
    mixes the batch and the loss follows the mixed labels; ``after_step`` runs after each
    optimiser step (the weight average's update)."""
    model.train()
    frozen_bn_eval(model)
    total_loss = torch.zeros((), device=accelerator.device, dtype=torch.float64)
    correct = torch.zeros((), device=accelerator.device, dtype=torch.float64)
    seen = torch.zeros((), device=accelerator.device, dtype=torch.float64)
    start = time.perf_counter()
    n_batches = len(loader) if max_batches is None else min(len(loader), max_batches)
    bar = tqdm(loader, total=n_batches, desc=desc, leave=False, unit="batch",
               disable=not (progress and accelerator.is_main_process))
    for i, (images, targets) in enumerate(bar):
        if max_batches is not None and i >= max_batches:
            break
        if batch_transform is not None:
            images = batch_transform(images)
        batch = mixer(images, targets) if mixer is not None else MixedBatch(
            images, targets, targets, 1.0)
        images = batch.images
        if channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        with accelerator.autocast():
            logits = model(images)
            loss = mixed_loss(loss_fn, logits, batch)
        optimizer.zero_grad(set_to_none=True)
        accelerator.backward(loss)
        optimizer.step()
        if after_step is not None:
            after_step()
        n = targets.shape[0]
        total_loss += loss.detach().double() * n
        correct += mixed_correct(logits.detach().argmax(1), batch)
        seen += n
        bar.set_postfix(loss=f"{loss.item():.3f}")
    bar.close()
    totals = accelerator.reduce(torch.stack([total_loss, correct, seen]), reduction="sum")
    tl, c, s = (float(v) for v in totals)
    return EpochStats(tl / max(s, 1), c / max(s, 1), int(s), time.perf_counter() - start)


def tta_views(images: torch.Tensor) -> list[torch.Tensor]:
    """The flip views of test-time augmentation: identity, horizontal, vertical, both.

    Dermoscopy has no canonical orientation, so each view is as valid as the original.
    """
    return [images, images.flip(-1), images.flip(-2), images.flip(-1).flip(-2)]


def forward_tta(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """Mean logits over the flip views (a log-space average, which temperature scaling
    then calibrates like plain logits)."""
    return torch.stack([model(v) for v in tta_views(images)]).mean(0)


@torch.no_grad()
def predict(
    model: nn.Module,
    loader: DataLoader[Any],
    accelerator: Accelerator,
    *,
    channels_last: bool = False,
    progress: bool = False,
    desc: str = "eval",
    tta: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """Logits and targets for every sample of ``loader``, gathered from all processes once.

    Returns:
        ``(logits (N, K) float32, targets (N,) int64)`` in loader order.
    """
    model.eval()
    all_logits, all_targets = [], []
    bar = tqdm(loader, desc=desc, leave=False, unit="batch",
               disable=not (progress and accelerator.is_main_process))
    for images, targets in bar:
        if channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        with accelerator.autocast():
            logits = forward_tta(model, images) if tta else model(images)
        logits, targets = accelerator.gather_for_metrics((logits.float(), targets))
        all_logits.append(logits.cpu())
        all_targets.append(targets.cpu())
    bar.close()
    if not all_logits:
        return np.zeros((0, 0), np.float32), np.zeros(0, np.int64)
    return torch.cat(all_logits).numpy(), torch.cat(all_targets).numpy().astype(np.int64)


def mean_loss(loss_fn: nn.Module, logits: np.ndarray, targets: np.ndarray) -> float:
    """The training loss evaluated on gathered logits (same weighting as training)."""
    if len(targets) == 0:
        return float("nan")
    with torch.no_grad():
        return float(loss_fn(torch.from_numpy(logits), torch.from_numpy(targets)))


def check_gathered(targets: np.ndarray, expected: list[int], split: str) -> None:
    """Gathered predictions must cover the split exactly once, in order (no padding duplicates,
    nothing lost between processes)."""
    if len(targets) != len(expected) or not np.array_equal(targets, np.asarray(expected)):
        raise RuntimeError(f"gathered {len(targets)} {split} predictions for {len(expected)} "
                           f"{split} images (or in another order): the evaluation would be wrong")


def predict_split(
    model: nn.Module,
    data: PreparedData,
    split: str,
    classes: Sequence[str],
    mean: Sequence[float],
    std: Sequence[float],
    accelerator: Accelerator,
    *,
    batch_size: int,
    num_workers: int = 0,
    channels_last: bool = False,
    tta: bool = False,
    progress: bool = False,
) -> Predictions:
    """The model's logits on one split of a prepared dataset (``all``: train, val and test).

    Labels are indexed by ``classes`` (the model's), so a dataset holding a subset of them
    is evaluated correctly. Predictions are gathered from all processes and checked to cover
    the split exactly once, in order. With ``tta``, flip-averaged logits are added.
    """
    parts = ("train", "val", "test") if split == "all" else (split,)
    samples = [s for sp in parts for s in data.samples(sp)]
    index = {c: i for i, c in enumerate(classes)}
    ids = [s.sample_id for s in samples]
    targets = [index[s.label] for s in samples]
    loader = accelerator.prepare(make_loader(
        ImageDataset(data.store, ids, targets, eval_transform(list(mean), list(std))),
        batch_size, num_workers=num_workers))
    logits, y = predict(model, loader, accelerator, channels_last=channels_last,
                        progress=progress, desc=split)
    check_gathered(y, targets, split)
    tta_logits = (predict(model, loader, accelerator, channels_last=channels_last, tta=True)[0]
                  if tta else None)
    return Predictions(ids, y, logits, tta_logits)
