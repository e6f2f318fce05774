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
from pathlib import Path
from typing import Any

import numpy as np
import torch
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
                  postprocess: bool) -> tuple[list[np.ndarray], list[np.ndarray], float]:
    """Binary masks (thresholded sigmoid, optionally cleaned), the true masks and the mean loss
    of ``loader``."""
    model.eval()
    preds, truths, losses, n = [], [], 0.0, 0
    loss_fn = torch.nn.functional.binary_cross_entropy_with_logits
    for x, y in loader:
        logits = model(x.contiguous(memory_format=torch.channels_last))
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


def train_segmenter(cfg: ExperimentConfig | None, run_dir: str | Path, *, resume: bool = False,
                    progress: bool = True) -> dict[str, Any]:
    """Train (or, with ``resume``, continue) a segmentation run; returns ``metrics.json``."""
    paths = RunPaths(Path(run_dir))
    state: dict[str, Any] | None = None
    if resume:
        if paths.is_finished:
            return read_metrics(paths)
        state = load_checkpoint(paths.last)
        cfg = from_dict(state["config"])
    if cfg is None:
        raise ConfigError("a new segmentation run needs a config")
    sc = cfg.segment
    started = time.perf_counter()
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    seed_everything(cfg.train.seed)
    paths.plots.mkdir(parents=True, exist_ok=True)
    save_config(cfg, paths.config)
    data = prepare_data(cfg.data, sc.image_size, split_path=paths.splits, progress=progress)
    md = load_masks(data, cfg.data, sc.image_size)
    ids = {sp: md.ids(sp) for sp in ("train", "val", "test")}
    if not ids["train"] or not ids["val"]:
        raise ConfigError("segmentation needs masked images in the train and val splits")
    if md.without_mask:
        print(f"warning: {len(md.without_mask)} image(s) have no mask and are left out",
              flush=True)

    model, norm, origin = build_segmenter(sc, pretrained=False if state else None)
    if state is not None:
        origin = state["weights_origin"]
    model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(model.parameters(), lr=sc.lr, weight_decay=sc.weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, sc.epochs))
    loss_fn = DiceBCELoss(sc.dice_weight)
    history: list[dict[str, Any]] = []
    best, best_epoch, bad, start = -1.0, 0, 0, 0
    if state is not None:
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        history, start = list(state["history"]), int(state["epoch"])
        best, best_epoch, bad = state["best_value"], state["best_epoch"], state["bad_epochs"]
    make_accelerator(cfg.train)  # the same device rules as the classifier (CPU here)
    order = torch.Generator()
    train_tf = train_transform(sc.image_size, norm["mean"], norm["std"], cfg.data.augment)
    eval_tf = eval_transform(norm["mean"], norm["std"])
    train_loader = _loader(md, ids["train"], train_tf, sc.batch_size, True, order)
    val_loader = _loader(md, ids["val"], eval_tf, sc.batch_size, False)

    def payload(epoch: int) -> dict[str, Any]:
        return {"kind": "segmentation", "model": model.state_dict(),
                "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                "epoch": epoch, "best_value": best, "best_epoch": best_epoch,
                "bad_epochs": bad, "history": history, "config": to_dict(cfg),
                "encoder": sc.encoder, "normalization": norm, "image_size": sc.image_size,
                "resize_mode": cfg.data.resize_mode, "threshold": sc.threshold,
                "postprocess": sc.postprocess, "weights_origin": origin}

    print(f"dermalab segment: U-Net on {sc.encoder} ({origin} weights) on "
          f"{len(ids['train'])} train / {len(ids['val'])} val / {len(ids['test'])} test images "
          f"at {sc.image_size}px", flush=True)
    for epoch in range(start, sc.epochs):
        if sc.patience and bad >= sc.patience:
            break
        order.manual_seed(epoch_seed(cfg.train.seed, epoch))
        torch.manual_seed(epoch_seed(cfg.train.seed, epoch))
        random.seed(epoch_seed(cfg.train.seed, epoch))
        model.train()
        t0, total, seen = time.perf_counter(), 0.0, 0
        lr = opt.param_groups[0]["lr"]
        for i, (x, y) in enumerate(train_loader):
            if sc.max_batches is not None and i >= sc.max_batches:
                break
            loss = loss_fn(model(x.contiguous(memory_format=torch.channels_last)), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += loss.item() * len(y)
            seen += len(y)
        sched.step()
        seconds = time.perf_counter() - t0
        if not math.isfinite(total):
            raise TrainingDivergedError(f"segmentation training diverged in epoch {epoch + 1}; "
                                        f"lower segment.lr (now {sc.lr})")
        preds, truths, val_loss = predict_masks(model, val_loader, sc.threshold, sc.postprocess)
        vm = segmentation_metrics(preds, truths)
        improved = float(vm["dice"]) > best
        if improved:
            best, best_epoch, bad = float(vm["dice"]), epoch + 1, 0
        else:
            bad += 1
        history.append({"epoch": epoch + 1, "lr": lr, "train_loss": total / max(seen, 1),
                        "val_loss": val_loss, "val_dice": vm["dice"],
                        "val_jaccard": vm["jaccard"],
                        "val_thresholded_jaccard": vm["thresholded_jaccard"],
                        "epoch_seconds": round(seconds, 2),
                        "train_images_per_s": round(seen / seconds, 2) if seconds else 0.0})
        if improved:
            save_checkpoint(payload(epoch + 1), paths.best)
        write_history(paths, history, HISTORY)
        save_checkpoint(payload(epoch + 1), paths.last)
        print(f"epoch {epoch + 1:>3}/{sc.epochs} train loss {total / max(seen, 1):.4f} | val "
              f"Dice {vm['dice']:.4f} Jaccard {vm['jaccard']:.4f} thresholded "
              f"{vm['thresholded_jaccard']:.4f}{' *' if improved else ''} ({seconds:.0f}s)",
              flush=True)

    model.load_state_dict(load_checkpoint(paths.best)["model"])
    results: dict[str, Any] = {"kind": "segmentation", "best_epoch": best_epoch,
                               "epochs_run": len(history), "best_val_dice": best}
    if ids["test"]:
        test_loader = _loader(md, ids["test"], eval_tf, sc.batch_size, False)
        preds, truths, _ = predict_masks(model, test_loader, sc.threshold, sc.postprocess)
        tm = segmentation_metrics(preds, truths)
        per = tm.pop("per_image")
        results.update(tm)
        _worst_gallery(md, ids["test"], preds, per["dice"], paths.plots / "worst_masks.png")
        t0 = time.perf_counter()
        with torch.no_grad():
            x = torch.randn(8, 3, sc.image_size, sc.image_size).contiguous(
                memory_format=torch.channels_last)
            model(x)
            results["ms_per_image_torch"] = round((time.perf_counter() - t0) * 1000 / 8, 2)
    results.update({"encoder": sc.encoder, "weights_origin": origin,
                    "image_size": sc.image_size, "without_mask": len(md.without_mask),
                    "split": {k: len(v) for k, v in ids.items()},
                    "train_seconds_total": round(sum(float(r["epoch_seconds"])
                                                     for r in history), 1),
                    "wall_seconds_this_session": round(time.perf_counter() - started, 1)})
    write_metrics(paths, results)
    if ids["test"]:
        print(f"\ntest ({results['n']} images): Dice {results['dice']:.4f}, Jaccard "
              f"{results['jaccard']:.4f}, thresholded Jaccard "
              f"{results['thresholded_jaccard']:.4f}", flush=True)
    return results
