"""``fit()``: the training loop, and only that.

Reads top to bottom: :func:`setup_training` turns a config into data, model, loss, optimiser,
schedule and loaders (or restores them from ``last.pt``); :func:`fit` runs the epochs (train,
validate, schedule, early stopping, checkpoints, history). Evaluating the best checkpoint,
calibration, the report, tracking and upload are later stages (``dermalab.pipeline`` runs
them in order).

Reproducibility and exact resume: the order of the training samples (shuffling, oversampling)
draws from one generator reseeded from ``(seed, epoch)`` at the start of each epoch, the same on
every process; augmentation and dropout draw from torch's global RNG, reseeded from
``(seed, epoch, process index)``. A run resumed from the last completed epoch therefore replays
the same batches as an uninterrupted one (bit-identical on CPU), on any number of processes.

Data parallelism (``accelerate launch`` / ``torchrun``): every process builds the same loaders;
Accelerate gives each one a disjoint shard of each epoch's batches (``train.batch_size`` is per
process) and averages gradients; predictions are gathered once per sample. The main process
prepares the data first (cache, ``splits.csv``) and alone writes files.
"""

from __future__ import annotations

import json
import math
import random
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import timm
import torch
from accelerate import Accelerator
from timm.utils import ModelEmaV3
from torch import nn
from torch.utils.data import ConcatDataset, Dataset

from dermalab.core.calibration import calibrated_probs
from dermalab.core.config import ExperimentConfig, from_dict, save_config, to_dict
from dermalab.core.errors import ConfigError, TrainingDivergedError
from dermalab.core.metrics import classification_metrics, metric_names
from dermalab.core.models import (
    count_parameters,
    create_model,
    get_spec,
    head_bias_key,
    set_body_trainable,
)
from dermalab.core.runs import ModelInfo, RunPaths, load_checkpoint, save_checkpoint, write_history
from dermalab.data.batch_augment import BatchAugment
from dermalab.data.dataset import (
    SAMPLER_POWER,
    ImageDataset,
    balanced_sampler,
    class_counts,
    make_loader,
)
from dermalab.data.prepare import PreparedData, prepare_data
from dermalab.data.transforms import eval_transform, train_transform
from dermalab.train.accel import epoch_seed, make_accelerator, seed_everything
from dermalab.train.fold import fold_frozen_batchnorms, unfold_batchnorms
from dermalab.train.loop import check_gathered, mean_loss, predict, train_one_epoch
from dermalab.train.losses import build_loss, posterior_offset
from dermalab.train.mixing import BatchMixer
from dermalab.train.optim import EpochScheduler, build_optimizer
from dermalab.train.same_pad import restore_same_padding, use_static_same_padding

#: Validation metrics recorded per epoch (``val_<name>`` in the history).
VAL_KEYS = metric_names(per_epoch=True)


@dataclass
class TrainState:
    """Where the epochs stand; all of it is saved in ``last.pt`` for an exact resume."""

    history: list[dict[str, Any]] = field(default_factory=list)
    best_value: float | None = None
    best_epoch: int = 0
    bad_epochs: int = 0
    epoch: int = 0  # epochs completed
    stopped_early: bool = False
    mlflow_run_id: str | None = None
    steps: int = 0  # optimiser steps taken (the EMA's decay warm-up counts them)

    def to_checkpoint(self) -> dict[str, Any]:
        """Plain-typed checkpoint keys."""
        return {"history": self.history, "best_value": self.best_value,
                "best_epoch": self.best_epoch, "bad_epochs": self.bad_epochs,
                "epoch": self.epoch, "stopped_early": self.stopped_early,
                "mlflow_run_id": self.mlflow_run_id, "steps": self.steps}

    @classmethod
    def from_checkpoint(cls, ckpt: dict[str, Any]) -> TrainState:
        """The inverse of :meth:`to_checkpoint`."""
        return cls(history=list(ckpt["history"]), best_value=ckpt["best_value"],
                   best_epoch=ckpt["best_epoch"], bad_epochs=ckpt["bad_epochs"],
                   epoch=ckpt["epoch"], stopped_early=ckpt["stopped_early"],
                   mlflow_run_id=ckpt.get("mlflow_run_id"), steps=int(ckpt.get("steps", 0)))


@dataclass
class Training:
    """A run set up for its epochs (what :func:`fit` needs, and later stages read)."""

    cfg: ExperimentConfig
    paths: RunPaths
    accelerator: Accelerator
    data: PreparedData
    info: ModelInfo
    weights_origin: str
    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: EpochScheduler
    loss_fn: nn.Module  # on the CPU: losses of gathered logits
    train_loader: Any
    val_loader: Any
    order: torch.Generator
    counts: np.ndarray
    state: TrainState
    batch_augment: Callable[[torch.Tensor], torch.Tensor] | None = None  # data.augment.batched
    ema: ModelEmaV3 | None = None  # train.ema_decay > 0
    mixer: BatchMixer | None = None  # data.augment.mixup / cutmix
    # loss.name=la: (the head bias's state_dict key, the offset best.pt's weights carry)
    head_offset: tuple[str, torch.Tensor] | None = None
    started: float = field(default_factory=time.perf_counter)

    @property
    def is_main(self) -> bool:
        """Only the main process writes files and prints."""
        return bool(self.accelerator.is_main_process)

    def log(self, msg: str) -> None:
        """Print once (on the main process)."""
        if self.is_main:
            print(msg, flush=True)


def default_image_size(backbone: str) -> int:
    """The backbone's native input side from timm's pretrained config (224 if unknown)."""
    try:
        pcfg = timm.models.get_pretrained_cfg(get_spec(backbone).timm_name)
    except Exception:
        pcfg = None
    size = getattr(pcfg, "input_size", None) if pcfg is not None else None
    return int(size[-1]) if size else 224


def _monitor_value(metrics: dict[str, Any], loss: float, monitor: str) -> float:
    return loss if monitor == "loss" else float(metrics[monitor])


def _improved(value: float, best: float | None, monitor: str, min_delta: float) -> bool:
    if best is None or not math.isfinite(best):
        return math.isfinite(value)
    return value < best - min_delta if monitor == "loss" else value > best + min_delta


def _build_model(cfg: ExperimentConfig, data: PreparedData, size: int,
                 resume: dict[str, Any] | None) -> tuple[nn.Module, ModelInfo, str]:
    """The backbone with its head for ``data``'s classes (pretrained, or to be filled from the
    checkpoint ``resume``), what a served model needs besides its weights, and the weights'
    origin; the stages ``model.freeze_stages`` names frozen."""
    in_chans = 4 if cfg.data.input == "mask_channel" else 3
    if resume is not None:  # the weights come from the checkpoint: no pretrained download
        cfg_model = cfg.model.__class__(**{**to_dict(cfg.model), "pretrained": False})
        model, data_cfg, _ = create_model(cfg_model, len(data.classes), in_chans)
        origin = str(resume["weights_origin"])
    else:
        model, data_cfg, origin = create_model(cfg.model, len(data.classes), in_chans)
    info = ModelInfo(classes=data.classes, display_names=data.source.display_names,
                     mean=list(data_cfg["mean"]), std=list(data_cfg["std"]), image_size=size,
                     resize_mode=cfg.data.resize_mode, backbone=cfg.model.backbone,
                     input_mode=cfg.data.input, crop_margin=cfg.data.crop_margin,
                     image_type=cfg.data.image_type)
    if cfg.model.freeze_stages:
        if in_chans != 3:
            raise ConfigError("model.freeze_stages needs the stem to stay pretrained, but "
                              "data.input=mask_channel trains the stem's new mask channel; "
                              "set model.freeze_stages=0")
        # Frozen before DistributedDataParallel wraps the model, which then ignores them.
        set_body_trainable(model, True, cfg.model.freeze_stages)
    return model, info, origin


def setup_training(cfg: ExperimentConfig | None, paths: RunPaths, *,
                   resume: dict[str, Any] | None = None, progress: bool = True) -> Training:
    """Data, model, loss, optimiser, schedule and loaders of a run (restored from the
    checkpoint ``resume`` when given; its saved config then replaces ``cfg``)."""
    if resume is not None:
        cfg = from_dict(resume["config"])
    if cfg is None:
        raise ConfigError("a new run needs a config")
    accelerator = make_accelerator(cfg.train, freezes_body=cfg.model.freeze_epochs > 0)
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    seed_everything(cfg.train.seed)
    if accelerator.is_main_process:
        paths.plots.mkdir(parents=True, exist_ok=True)
        save_config(cfg, paths.config)

    size = cfg.data.image_size or default_image_size(cfg.model.backbone)
    with accelerator.main_process_first():  # one process builds the cache and splits.csv
        data = prepare_data(cfg.data, size, split_path=paths.splits,
                            progress=progress and accelerator.is_main_process,
                            write=accelerator.is_main_process)
    train_targets = data.targets("train")
    if not train_targets or not data.targets("val"):
        raise ConfigError("the split has an empty train or val part; check data.split_ratios")
    counts = class_counts(train_targets, len(data.classes))

    model, info, origin = _build_model(cfg, data, size, resume)
    if accelerator.is_main_process:
        copy_segmenter(cfg.data.segmenter, paths)
    if cfg.model.channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = build_optimizer(cfg.optim, model)
    scheduler = EpochScheduler(cfg.sched, optimizer, cfg.train.epochs,
                               "min" if cfg.train.monitor == "loss" else "max")
    state = TrainState()
    if resume is not None:
        model.load_state_dict(resume["model"])
        optimizer.load_state_dict(resume["optimizer"])
        scheduler.load_state_dict(resume["scheduler"])
        state = TrainState.from_checkpoint(resume)
    if cfg.model.fold_frozen_bn:
        # After the resumed weights are in: the folded weights are computed from them.
        fold_frozen_batchnorms(model, size)
    if cfg.model.static_same_pad:
        use_static_same_padding(model)

    order = torch.Generator()
    train_ids = [s.sample_id for s in data.samples("train")]
    # Batched: the loader yields the uint8 images and the epoch loop augments each batch.
    batched = cfg.data.augment.batched
    augment = None if batched else train_transform(size, info.mean, info.std, cfg.data.augment)
    batch_augment = BatchAugment(cfg.data.augment, info.mean, info.std) if batched else None
    mixer = BatchMixer(cfg.data.augment)
    train_ds: Dataset[tuple[torch.Tensor, int]] = ImageDataset(data.store, train_ids,
                                                               train_targets, augment)
    if data.train_extra is not None:  # raw+masked: every training image raw and masked
        train_ds = ConcatDataset([train_ds, ImageDataset(data.train_extra, train_ids,
                                                         train_targets, augment)])
        train_targets = train_targets + train_targets
    sampler = None
    if cfg.data.sampler != "none":
        sampler = balanced_sampler(train_targets, len(data.classes),
                                   SAMPLER_POWER[cfg.data.sampler], generator=order)
    train_loader = make_loader(train_ds, cfg.train.batch_size, shuffle=True, sampler=sampler,
                               num_workers=cfg.data.num_workers,
                               drop_last=len(train_targets) > cfg.train.batch_size,
                               generator=order)
    val_loader = make_loader(
        ImageDataset(data.store, [s.sample_id for s in data.samples("val")],
                     data.targets("val"), eval_transform(info.mean, info.std)),
        cfg.train.eval_batch_size, num_workers=cfg.data.num_workers)
    model, optimizer, train_loader, val_loader = accelerator.prepare(
        model, optimizer, train_loader, val_loader)
    ema = None
    if cfg.train.ema_decay > 0:
        # Polyak averaging (Polyak & Juditsky 1992) of parameters and BatchNorm buffers; the
        # decay ramps up as 1 - (1 + step)^(-3/4) (timm's warm-up for short runs) to
        # train.ema_decay, so early averages do not drag in the first, random-head steps.
        # Made after prepare(), on the model's device, from the unwrapped model.
        ema = ModelEmaV3(accelerator.unwrap_model(model), decay=cfg.train.ema_decay,
                         use_warmup=True, warmup_power=0.75)
        if resume is not None and "ema" in resume:
            ema.module.load_state_dict(resume["ema"])
    offset = posterior_offset(cfg.loss, counts)
    head_offset = None if offset is None else (
        head_bias_key(accelerator.unwrap_model(model)), torch.as_tensor(offset,
                                                                        dtype=torch.float32))
    return Training(cfg=cfg, paths=paths, accelerator=accelerator, data=data, info=info,
                    weights_origin=origin, model=model, optimizer=optimizer,
                    scheduler=scheduler,
                    loss_fn=build_loss(cfg.loss, counts, sampler=cfg.data.sampler),
                    train_loader=train_loader, val_loader=val_loader, order=order,
                    counts=counts, state=state, batch_augment=batch_augment, ema=ema,
                    mixer=mixer if mixer.enabled else None, head_offset=head_offset)


def copy_segmenter(segmenter: str | None, paths: RunPaths) -> None:
    """Copy the lesion segmenter (``data.segmenter``, a ``dermalab segment train`` run) into
    the run, so predict, export and serve find the segmenter the model's input needs.

    Raises:
        ConfigError: not a segmentation run.
    """
    if not segmenter:
        return
    src = RunPaths(Path(segmenter))
    ckpt = load_checkpoint(src.require_model("data.segmenter"))
    if ckpt.get("kind") != "segmentation":
        raise ConfigError(f"data.segmenter={segmenter}: not a segmentation run; train one "
                          "with `dermalab segment train`")
    dst = paths.segmenter / "checkpoints" / "best.pt"
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src.best, dst)


def announce(t: Training) -> None:
    """Say what is about to be trained, and any data problem found while preparing it."""
    data, cfg = t.data, t.cfg
    if t.is_main and (data.source.bad or data.source.ignored or data.source.conflicts):
        # Skipped inputs are listed, never dropped silently.
        t.paths.skipped_inputs.write_text(json.dumps(
            {"bad": data.source.bad, "ignored": data.source.ignored,
             "label_conflicts": {"policy": cfg.data.conflicts,
                                 "groups": data.source.conflicts}}, indent=2))
    if data.source.bad:
        t.log(f"warning: {len(data.source.bad)} bad input(s) skipped (data.skip_bad=true); "
              f"listed in {t.paths.skipped_inputs}")
    for warning in data.warnings:
        t.log(f"warning: {warning}")
    if data.leaks.leaky:
        t.log(f"WARNING: the split leaks {data.leaks.group_overlap} group(s) between splits "
              "(allowed by data.allow_leaks); test results are optimistic")
    n = {sp: len(data.split.ids(sp)) for sp in ("train", "val", "test")}
    procs = t.accelerator.num_processes
    t.log(f"dermalab: {cfg.model.backbone} ({t.weights_origin} weights, "
          f"{count_parameters(t.model) / 1e6:.1f}M params) on {n['train']} train / {n['val']} "
          f"val / {n['test']} test images at {t.info.image_size}px, {len(data.classes)} "
          f"classes, device {t.accelerator.device}"
          + (f", {procs} processes (global batch {cfg.train.batch_size * procs})"
             if procs > 1 else ""))


def _checkpoint(t: Training, best: bool = False) -> dict[str, Any]:
    """``last.pt`` (``best=False``): the live weights, plus the EMA's to resume it; ``best.pt``:
    the weights that were validated, the EMA's when there is one, with the logit-adjusted
    loss's posterior offset added to the head bias (:func:`~dermalab.train.losses.
    posterior_offset`; training and validation use the weights without it, so resuming from
    ``last.pt`` does too)."""
    live = t.accelerator.unwrap_model(t.model).state_dict()
    ema = t.ema.module.state_dict() if t.ema is not None else None
    model = ema if best and ema is not None else live
    if best and t.head_offset is not None:
        key, offset = t.head_offset
        model = {**model, key: model[key] + offset.to(model[key].device, model[key].dtype)}
    return {"model": model,
            **({"ema": ema} if ema is not None and not best else {}),
            "optimizer": t.optimizer.state_dict(), "scheduler": t.scheduler.state_dict(),
            **t.state.to_checkpoint(), "config": to_dict(t.cfg), **t.info.to_checkpoint(),
            "weights_origin": t.weights_origin}


def ema_updater(t: Training) -> Callable[[], None] | None:
    """What ``train_one_epoch`` calls after each optimiser step: the EMA update."""
    if t.ema is None:
        return None
    ema, model, state = t.ema, t.accelerator.unwrap_model(t.model), t.state

    def update() -> None:
        state.steps += 1
        ema.update(model, step=state.steps)

    return update


def fit(
    t: Training,
    *,
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
    trial_callback: Callable[[int, float], None] | None = None,
    progress: bool = True,
) -> TrainState:
    """Run the remaining epochs of ``t``; the best weights are in ``t.model`` at the end.

    Writes ``best.pt`` when the monitored value improves, ``history.csv`` and ``last.pt``
    after every epoch (in that order, so a kill between them resumes correctly).

    Args:
        t: the run, from :func:`setup_training`.
        on_epoch: called with each epoch's history row (tracking).
        trial_callback: ``f(epoch, monitored_value)`` after each epoch (the tuner's pruning
            hook); it may raise :class:`~dermalab.core.errors.StopTraining`.
        progress: progress bars.
    """
    cfg, st, acc = t.cfg, t.state, t.accelerator
    # t.loss_fn stays on the CPU (losses of gathered logits); this one follows the model.
    loss_dev = build_loss(cfg.loss, t.counts, sampler=cfg.data.sampler).to(acc.device)
    val_targets = t.data.targets("val")
    for epoch in range(st.epoch, cfg.train.epochs):
        if st.stopped_early:
            break
        t.order.manual_seed(epoch_seed(cfg.train.seed, epoch))
        # Augmentation differs between processes (their images differ anyway).
        local = epoch_seed(cfg.train.seed, epoch) + 7_919 * acc.process_index
        torch.manual_seed(local)
        random.seed(local)
        frozen = epoch < cfg.model.freeze_epochs
        set_body_trainable(acc.unwrap_model(t.model), not frozen, cfg.model.freeze_stages)
        t.scheduler.start_epoch(epoch)
        lr = t.optimizer.param_groups[-1]["lr"]
        stats = train_one_epoch(t.model, t.train_loader, loss_dev, t.optimizer, acc,
                                channels_last=cfg.model.channels_last,
                                batch_transform=t.batch_augment,
                                after_step=ema_updater(t), mixer=t.mixer,
                                max_batches=cfg.train.max_batches, progress=progress,
                                desc=f"epoch {epoch + 1}/{cfg.train.epochs}")
        logits, targets = predict(t.ema.module if t.ema is not None else t.model,
                                  t.val_loader, acc, channels_last=cfg.model.channels_last)
        check_gathered(targets, val_targets, "val")
        if not (math.isfinite(stats.loss) and np.isfinite(logits).all()):
            raise TrainingDivergedError(
                f"training diverged in epoch {epoch + 1}: the "
                f"{'training loss' if not math.isfinite(stats.loss) else 'model output'} "
                f"is not finite (optim.lr={cfg.optim.lr}, loss={cfg.loss.name}); lower the "
                "learning rate or change the loss settings")
        val_loss = mean_loss(t.loss_fn, logits, targets)
        vm = classification_metrics(targets, calibrated_probs(logits), t.info.classes,
                                    detailed=False)
        value = _monitor_value(vm, val_loss, cfg.train.monitor)
        t.scheduler.end_epoch(value)
        row = {"epoch": epoch + 1, "lr": lr, "train_loss": stats.loss,
               "train_accuracy": stats.accuracy, "val_loss": val_loss,
               **{f"val_{k}": vm[k] for k in VAL_KEYS},
               "train_images_per_s": round(stats.images_per_second, 2),
               "epoch_seconds": round(stats.seconds, 2), "frozen_body": frozen}
        st.history.append(row)
        st.epoch = epoch + 1
        improved = _improved(value, st.best_value, cfg.train.monitor, cfg.train.min_delta)
        if improved:
            st.best_value, st.best_epoch, st.bad_epochs = value, epoch + 1, 0
        else:
            st.bad_epochs += 1
        if cfg.train.patience > 0 and st.bad_epochs >= cfg.train.patience:
            st.stopped_early = True
        if t.is_main:
            if improved:
                save_checkpoint(_checkpoint(t, best=True), t.paths.best)
            write_history(t.paths, st.history)
            # last.pt is written after best.pt, so a kill between the two resumes correctly.
            save_checkpoint(_checkpoint(t), t.paths.last)
        acc.wait_for_everyone()
        if on_epoch is not None:
            on_epoch(row)
        shown = ("" if cfg.train.monitor in ("balanced_accuracy", "macro_f1", "loss")
                 else f" {cfg.train.monitor} {value:.4f}")
        t.log(f"epoch {epoch + 1:>3}/{cfg.train.epochs} lr {lr:.2e} train loss "
              f"{stats.loss:.4f} | val loss {val_loss:.4f} bal-acc "
              f"{vm['balanced_accuracy']:.4f} macro-F1 {vm['macro_f1']:.4f}{shown}"
              f"{' *' if improved else ''} ({stats.seconds:.0f}s, "
              f"{stats.images_per_second:.1f} img/s)")
        if trial_callback is not None:
            trial_callback(epoch + 1, value)
        if st.stopped_early:
            t.log(f"early stopping: no {cfg.train.monitor} improvement for {st.bad_epochs} "
                  f"epoch(s); best epoch {st.best_epoch}")
    # Evaluation, export and quantisation see timm's plain model.
    unfold_batchnorms(acc.unwrap_model(t.model))
    restore_same_padding(acc.unwrap_model(t.model))
    acc.unwrap_model(t.model).load_state_dict(load_checkpoint(t.paths.best)["model"])
    return st
