"""Devices, processes and seeds: one Accelerator recipe for every stage that runs the model."""

from __future__ import annotations

import random

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import DataLoaderConfiguration, DistributedDataParallelKwargs

from dermalab.core.config import TrainConfig


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def epoch_seed(seed: int, epoch: int) -> int:
    """The seed of one epoch's sample order."""
    return seed * 100_003 + epoch


def make_accelerator(cfg: TrainConfig, freezes_body: bool = False) -> Accelerator:
    """Accelerator with mixed precision where the device benefits (bf16 on recent GPUs).

    Args:
        cfg: train config.
        freezes_body: some epochs train only the head. Under DistributedDataParallel the frozen
            parameters then get no gradient, so DDP must look for unused parameters instead
            of waiting for their gradients forever.
    """
    use_cpu = cfg.cpu or not torch.cuda.is_available()
    mp = cfg.mixed_precision
    if mp == "auto":
        mp = "no" if use_cpu else ("bf16" if torch.cuda.is_bf16_supported() else "fp16")
    return Accelerator(cpu=use_cpu, mixed_precision=mp,
                       dataloader_config=DataLoaderConfiguration(even_batches=True),
                       kwargs_handlers=[DistributedDataParallelKwargs(
                           find_unused_parameters=freezes_body)])
