"""``dermalab segment train``: fit the lesion U-Net, select on validation Dice, measure on test.

The run directory has the classifier's layout (:class:`~dermalab.core.runs.RunPaths`):
``config.yaml``, ``splits.csv`` (lesion-grouped; pass the classifier's with ``data.split_file``
to segment on the same split), ``history.csv``, ``checkpoints/{best,last}.pt`` (``kind:
segmentation``), ``metrics.json`` (written last: a finished run), ``plots/worst_masks.png``.
A cut-off run continues from ``last.pt`` with ``--resume``.
"""

from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
from accelerate import Accelerator
from torch.utils.data import DataLoader

from dermalab.core import plots
from dermalab.core.config import ExperimentConfig, from_dict, save_config, to_dict
from dermalab.core.errors import ConfigError, TrainingDivergedError
from dermalab.core.runs import (
    RunPaths,
    load_checkpoint,
    read_metrics,
    save_checkpoint,
    write_history,
    write_metrics,
)
from dermalab.data.prepare import prepare_data
from dermalab.data.transforms import eval_transform, train_transform
from dermalab.segment.data import MaskDataset, MaskedData, load_masks
from dermalab.segment.metrics import segmentation_metrics
from dermalab.segment.model import DiceBCELoss, build_segmenter
from dermalab.segment.postprocess import clean_mask
from dermalab.train.accel import epoch_seed, make_accelerator, seed_everything

HISTORY = ("epoch", "lr", "train_loss", "val_loss", "val_dice", "val_jaccard",
           "val_thresholded_jaccard", "epoch_seconds", "train_images_per_s")


@torch.no_grad()
def predict_masks(model: torch.nn.Module, loader: DataLoader[Any], threshold: float,
                  postprocess: bool, device: torch.device | str = "cpu"
                  ) -> tuple[list[np.ndarray], list[np.ndarray], float]:
    """Binary masks (thresholded sigmoid, optionally cleaned), the true masks and the mean loss
    of ``loader``, computed on ``device``."""
    model.eval()
    preds, truths, losses, n = [], [], 0.0, 0
    loss_fn = torch.nn.functional.binary_cross_entropy_with_logits
    for x, y in loader:
        logits = model(x.to(device).contiguous(memory_format=torch.channels_last)).float().cpu()
        losses += float(loss_fn(logits, y, reduction="sum")) / y[0].numel()
        n += len(y)
        for p, t in zip(torch.sigmoid(logits)[:, 0].numpy(), y[:, 0].numpy(), strict=True):
            m = p >= threshold
            preds.append(clean_mask(m) if postprocess else m)
            truths.append(t > 0.5)
    return preds, truths, losses / max(n, 1)


def _loader(md: MaskedData, ids: list[str], tf: Any, batch: int, shuffle: bool,
            generator: torch.Generator | None = None) -> DataLoader[Any]:
    return DataLoader(MaskDataset(md, ids, tf), batch_size=batch, shuffle=shuffle,
                      drop_last=shuffle and len(ids) > batch, generator=generator)


def _worst_gallery(md: MaskedData, ids: list[str], preds: list[np.ndarray],
                   dice: list[float], out: Path, n: int = 12) -> None:
    """The test images with the lowest Dice: true outline green, predicted outline red."""
    from scipy import ndimage

    order = np.argsort(dice, kind="stable")[:n]
    shown, titles = [], []
    for i in order:
        img = md.data.store.get(ids[i]).copy()
        for mask, colour in ((md.masks[ids[i]], (0, 220, 0)), (preds[i], (230, 0, 0))):
            edge = mask & ~ndimage.binary_erosion(mask)
            img[edge] = colour
        shown.append(img)
        titles.append(f"{ids[i][-20:]}\nDice {dice[i]:.2f}")
    if shown:
        plots.save(plots.image_grid(shown, titles), str(out))


@dataclass
class SegTraining:
    """A segmentation run set up for its epochs, and where the epochs stand (all of it saved in
    ``last.pt`` for an exact resume)."""

    cfg: ExperimentConfig
    paths: RunPaths
    accelerator: Accelerator
    md: MaskedData
    ids: dict[str, list[str]]
    model: torch.nn.Module  # prepared: on the device, wrapped for several processes
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    train_loader: Any
    val_loader: DataLoader[Any]
    eval_tf: Any
    order: torch.Generator
    norm: dict[str, list[float]]
    origin: str
    history: list[dict[str, Any]] = field(default_factory=list)
    best: float = -1.0
    best_epoch: int = 0
    bad: int = 0
    start: int = 0
    started: float = field(default_factory=time.perf_counter)

    @property
    def is_main(self) -> bool:
        """Only the main process writes files and prints."""
        return bool(self.accelerator.is_main_process)

    @property
    def net(self) -> torch.nn.Module:
        """The model without its process wrapper (what is evaluated and saved)."""
        return cast(torch.nn.Module, self.accelerator.unwrap_model(self.model))

    def payload(self, epoch: int) -> dict[str, Any]:
        """The checkpoint after ``epoch`` epochs."""
        sc = self.cfg.segment
        return {"kind": "segmentation", "model": self.net.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(), "epoch": epoch,
                "best_value": self.best, "best_epoch": self.best_epoch,
                "bad_epochs": self.bad, "history": self.history, "config": to_dict(self.cfg),
                "encoder": sc.encoder, "normalization": self.norm, "image_size": sc.image_size,
                "resize_mode": self.cfg.data.resize_mode, "threshold": sc.threshold,
                "postprocess": sc.postprocess, "weights_origin": self.origin}


def setup_segmenter(cfg: ExperimentConfig, paths: RunPaths, state: dict[str, Any] | None,
                    progress: bool) -> SegTraining:
    """Data, model, optimiser, schedule and loaders of a segmentation run, on the device and
    processes Accelerate chose, as the classifier's (restored from ``state`` when given)."""
    sc = cfg.segment
    accelerator = make_accelerator(cfg.train)
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    seed_everything(cfg.train.seed)
    if accelerator.is_main_process:
        paths.plots.mkdir(parents=True, exist_ok=True)
        save_config(cfg, paths.config)
    with accelerator.main_process_first():  # one process builds the cache and splits.csv
        data = prepare_data(cfg.data, sc.image_size, split_path=paths.splits,
                            progress=progress and accelerator.is_main_process,
                            write=accelerator.is_main_process)
    md = load_masks(data, cfg.data, sc.image_size)
    ids = {sp: md.ids(sp) for sp in ("train", "val", "test")}
    if not ids["train"] or not ids["val"]:
        raise ConfigError("segmentation needs masked images in the train and val splits")
    if md.without_mask and accelerator.is_main_process:
        print(f"warning: {len(md.without_mask)} image(s) have no mask and are left out",
              flush=True)
    model, norm, origin = build_segmenter(sc, pretrained=False if state else None)
    model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(model.parameters(), lr=sc.lr, weight_decay=sc.weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, sc.epochs))
    order = torch.Generator()
    train_tf = train_transform(sc.image_size, norm["mean"], norm["std"], cfg.data.augment)
    eval_tf = eval_transform(norm["mean"], norm["std"])
    t = SegTraining(cfg=cfg, paths=paths, accelerator=accelerator, md=md, ids=ids,
                    model=model, optimizer=opt, scheduler=sched,
                    train_loader=_loader(md, ids["train"], train_tf, sc.batch_size, True,
                                         order),
                    val_loader=_loader(md, ids["val"], eval_tf, sc.batch_size, False),
                    eval_tf=eval_tf, order=order, norm=norm, origin=origin)
    if state is not None:
        t.origin = state["weights_origin"]
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        t.history, t.start = list(state["history"]), int(state["epoch"])
        t.best, t.best_epoch, t.bad = state["best_value"], state["best_epoch"], state["bad_epochs"]
    # The scheduler stays outside prepare(): it steps once per epoch, not per process.
    t.model, t.optimizer, t.train_loader = accelerator.prepare(model, opt, t.train_loader)
    return t


def train_epoch(t: SegTraining, epoch: int) -> tuple[float, int, float]:
    """One epoch of Dice + BCE on this process's share of the training images: (mean loss,
    images seen, seconds)."""
    sc, seed = t.cfg.segment, epoch_seed(t.cfg.train.seed, epoch)
    t.order.manual_seed(seed)
    torch.manual_seed(seed)
    random.seed(seed)
    loss_fn = DiceBCELoss(sc.dice_weight)
    t.model.train()
    t0, total, seen = time.perf_counter(), 0.0, 0
    for i, (x, y) in enumerate(t.train_loader):
        if sc.max_batches is not None and i >= sc.max_batches:
            break
        logits = t.model(x.contiguous(memory_format=torch.channels_last))
        loss = loss_fn(logits.float(), y)
        t.optimizer.zero_grad(set_to_none=True)
        t.accelerator.backward(loss)
        t.optimizer.step()
        total += loss.item() * len(y)
        seen += len(y)
    t.scheduler.step()
    if not math.isfinite(total):
        raise TrainingDivergedError(f"segmentation training diverged in epoch {epoch + 1}; "
                                    f"lower segment.lr (now {sc.lr})")
    return total / max(seen, 1), seen, time.perf_counter() - t0


def run_epoch(t: SegTraining, epoch: int) -> None:
    """Train one epoch, select on validation Dice (every process computes the same value from
    the whole validation split, so all stop together), and checkpoint on the main process."""
    sc = t.cfg.segment
    lr = t.optimizer.param_groups[0]["lr"]
    train_loss, seen, seconds = train_epoch(t, epoch)
    preds, truths, val_loss = predict_masks(t.net, t.val_loader, sc.threshold, sc.postprocess,
                                            t.accelerator.device)
    vm = segmentation_metrics(preds, truths)
    improved = float(vm["dice"]) > t.best
    if improved:
        t.best, t.best_epoch, t.bad = float(vm["dice"]), epoch + 1, 0
    else:
        t.bad += 1
    t.history.append({"epoch": epoch + 1, "lr": lr, "train_loss": train_loss,
                      "val_loss": val_loss, "val_dice": vm["dice"],
                      "val_jaccard": vm["jaccard"],
                      "val_thresholded_jaccard": vm["thresholded_jaccard"],
                      "epoch_seconds": round(seconds, 2),
                      "train_images_per_s": round(seen / seconds, 2) if seconds else 0.0})
    if t.is_main:
        if improved:
            save_checkpoint(t.payload(epoch + 1), t.paths.best)
        write_history(t.paths, t.history, HISTORY)
        save_checkpoint(t.payload(epoch + 1), t.paths.last)
        print(f"epoch {epoch + 1:>3}/{sc.epochs} train loss {train_loss:.4f} | val "
              f"Dice {vm['dice']:.4f} Jaccard {vm['jaccard']:.4f} thresholded "
              f"{vm['thresholded_jaccard']:.4f}{' *' if improved else ''} ({seconds:.0f}s)",
              flush=True)
    t.accelerator.wait_for_everyone()  # best.pt is written before any process reads it


def measure_test(t: SegTraining) -> dict[str, Any]:
    """The best epoch's weights on the test split: Dice, Jaccard, the worst masks' gallery and
    the PyTorch speed; what ``metrics.json`` holds."""
    sc = t.cfg.segment
    net = t.net
    net.load_state_dict(load_checkpoint(t.paths.best)["model"])
    results: dict[str, Any] = {"kind": "segmentation", "best_epoch": t.best_epoch,
                               "epochs_run": len(t.history), "best_val_dice": t.best}
    if t.ids["test"]:
        loader = _loader(t.md, t.ids["test"], t.eval_tf, sc.batch_size, False)
        preds, truths, _ = predict_masks(net, loader, sc.threshold, sc.postprocess,
                                         t.accelerator.device)
        tm = segmentation_metrics(preds, truths)
        per = tm.pop("per_image")
        results.update(tm)
        _worst_gallery(t.md, t.ids["test"], preds, per["dice"],
                       t.paths.plots / "worst_masks.png")
        t0 = time.perf_counter()
        with torch.no_grad():
            x = torch.randn(8, 3, sc.image_size, sc.image_size, device=t.accelerator.device)
            net(x.contiguous(memory_format=torch.channels_last))
            results["ms_per_image_torch"] = round((time.perf_counter() - t0) * 1000 / 8, 2)
    results.update({"encoder": sc.encoder, "weights_origin": t.origin,
                    "image_size": sc.image_size, "without_mask": len(t.md.without_mask),
                    "split": {k: len(v) for k, v in t.ids.items()},
                    "processes": t.accelerator.num_processes,
                    "train_seconds_total": round(sum(float(r["epoch_seconds"])
                                                     for r in t.history), 1),
                    "wall_seconds_this_session": round(time.perf_counter() - t.started, 1)})
    return results


def train_segmenter(cfg: ExperimentConfig | None, run_dir: str | Path, *, resume: bool = False,
                    progress: bool = True) -> dict[str, Any]:
    """Train (or, with ``resume``, continue) a segmentation run; returns ``metrics.json``.

    Runs where the classifier runs (Accelerate: CPU, a GPU, or several processes under
    ``torchrun``/``accelerate launch``, each training on its share of every epoch)."""
    paths = RunPaths(Path(run_dir))
    state: dict[str, Any] | None = None
    if resume:
        if paths.is_finished:
            return read_metrics(paths)
        state = load_checkpoint(paths.last)
        cfg = from_dict(state["config"])
    if cfg is None:
        raise ConfigError("a new segmentation run needs a config")
    t = setup_segmenter(cfg, paths, state, progress)
    sc = cfg.segment
    if t.is_main:
        n = t.accelerator.num_processes
        print(f"dermalab segment: U-Net on {sc.encoder} ({t.origin} weights) on "
              f"{len(t.ids['train'])} train / {len(t.ids['val'])} val / {len(t.ids['test'])} "
              f"test images at {sc.image_size}px on {t.accelerator.device}"
              f"{f' ({n} processes)' if n > 1 else ''}", flush=True)
    for epoch in range(t.start, sc.epochs):
        if sc.patience and t.bad >= sc.patience:
            break
        run_epoch(t, epoch)
    if not t.is_main:
        return {}
    results = measure_test(t)
    write_metrics(paths, results)
    if t.ids["test"]:
        print(f"\ntest ({results['n']} images): Dice {results['dice']:.4f}, Jaccard "
              f"{results['jaccard']:.4f}, thresholded Jaccard "
              f"{results['thresholded_jaccard']:.4f}", flush=True)
    return results
