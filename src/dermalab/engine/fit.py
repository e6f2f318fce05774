"""``fit()``: train a backbone on a dataset and evaluate the best checkpoint honestly.

Reads top to bottom: data -> model -> loss/optimiser/schedule -> resume -> epochs (train,
validate, schedule, early stopping, checkpoints, history) -> test evaluation of the best
checkpoint -> files and tracking. ``dermalab train`` and the tuner both call it.

Reproducibility and exact resume: the order of the training samples (shuffling, oversampling)
draws from one generator reseeded from ``(seed, epoch)`` at the start of each epoch, the same on
every process; augmentation and dropout draw from torch's global RNG, reseeded from
``(seed, epoch, process index)``. A run resumed from the last completed epoch therefore replays
the same batches as an uninterrupted one (bit-identical on CPU), on any number of processes.

Data parallelism (``accelerate launch`` / ``torchrun``): every process builds the same loaders;
Accelerate gives each one a disjoint shard of each epoch's batches (``train.batch_size`` is per
process) and averages gradients; predictions are gathered once per sample. The main process
prepares the data first (cache, ``splits.csv``) and alone writes files and MLflow records.
"""

from __future__ import annotations

import csv
import json
import math
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import timm
import torch
from accelerate import Accelerator
from accelerate.utils import DataLoaderConfiguration, DistributedDataParallelKwargs

from dermalab.analysis import Predictions
from dermalab.atomic import atomic_path, atomic_write_text
from dermalab.calibration import calibrated_probs
from dermalab.config import ExperimentConfig, TrainConfig, from_dict, save_config, to_dict
from dermalab.config import flatten as flatten_config
from dermalab.data.dataset import ImageDataset, balanced_sampler, class_counts, make_loader
from dermalab.data.prepare import PreparedData, prepare_data
from dermalab.data.transforms import eval_transform, train_transform
from dermalab.engine.checkpoint import load_checkpoint, save_checkpoint
from dermalab.engine.loop import mean_loss, predict, train_one_epoch
from dermalab.engine.optim import EpochScheduler, build_optimizer
from dermalab.errors import ConfigError, StopTraining, TrainingDivergedError
from dermalab.losses import build_loss
from dermalab.metrics import classification_metrics
from dermalab.models import count_parameters, create_model, get_spec, set_body_trainable
from dermalab.tracking import Tracker

HISTORY_KEYS = (
    "epoch", "lr", "train_loss", "train_accuracy", "val_loss", "val_accuracy",
    "val_balanced_accuracy", "val_macro_f1", "val_weighted_precision", "val_weighted_recall",
    "val_roc_auc_macro", "train_images_per_s", "epoch_seconds", "frozen_body",
)


@dataclass
class RunPaths:
    """The files of a run directory."""

    root: Path
    config: Path = field(init=False)
    splits: Path = field(init=False)
    history: Path = field(init=False)
    metrics: Path = field(init=False)
    best: Path = field(init=False)
    last: Path = field(init=False)
    plots: Path = field(init=False)

    def __post_init__(self) -> None:
        self.config = self.root / "config.yaml"
        self.splits = self.root / "splits.csv"
        self.history = self.root / "history.csv"
        self.metrics = self.root / "metrics.json"
        self.best = self.root / "checkpoints" / "best.pt"
        self.last = self.root / "checkpoints" / "last.pt"
        self.plots = self.root / "plots"


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def default_image_size(backbone: str) -> int:
    """The backbone's native input side from timm's pretrained config (224 if unknown)."""
    try:
        pcfg = timm.models.get_pretrained_cfg(get_spec(backbone).timm_name)
    except Exception:
        pcfg = None
    size = getattr(pcfg, "input_size", None) if pcfg is not None else None
    return int(size[-1]) if size else 224


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


def epoch_seed(seed: int, epoch: int) -> int:
    """The seed of one epoch's sample order."""
    return seed * 100_003 + epoch


def check_gathered(targets: np.ndarray, expected: list[int], split: str) -> None:
    """Gathered predictions must cover the split exactly once, in order (no padding duplicates,
    nothing lost between processes)."""
    if len(targets) != len(expected) or not np.array_equal(targets, np.asarray(expected)):
        raise RuntimeError(f"gathered {len(targets)} {split} predictions for {len(expected)} "
                           f"{split} images (or in another order): the evaluation would be wrong")


def _monitor_value(metrics: dict[str, Any], loss: float, monitor: str) -> float:
    return loss if monitor == "loss" else float(metrics[monitor])


def _improved(value: float, best: float | None, monitor: str, min_delta: float) -> bool:
    if best is None or not math.isfinite(best):
        return math.isfinite(value)
    return value < best - min_delta if monitor == "loss" else value > best + min_delta


def write_history(path: Path, history: list[dict[str, Any]]) -> None:
    """One row per epoch (rewritten whole each epoch, atomically)."""
    with atomic_path(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=list(HISTORY_KEYS), extrasaction="ignore")
        w.writeheader()
        w.writerows(history)


def write_predictions(path: Path, ids: list[str], targets: np.ndarray, probs: np.ndarray,
                      classes: list[str]) -> None:
    """Per-sample predictions (for calibration, galleries and audits)."""
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["sample_id", "label", "pred", *[f"p_{c}" for c in classes]])
        for sid, t, p in zip(ids, targets, probs, strict=True):
            w.writerow([sid, classes[int(t)], classes[int(p.argmax())],
                        *[f"{v:.6f}" for v in p]])


def _log(accelerator: Accelerator, msg: str) -> None:
    if accelerator.is_main_process:
        print(msg, flush=True)


def fit_or_reuse(cfg: ExperimentConfig, run_dir: str | Path, *, progress: bool = True
                 ) -> dict[str, Any]:
    """A finished run's metrics (``metrics.json`` present), a cut-off run resumed from its last
    checkpoint (with its saved config), or a new run of ``cfg``: what a batch of runs (a
    comparison, a benchmark) re-run after an interruption should do."""
    run_dir = Path(run_dir)
    metrics = run_dir / "metrics.json"
    if metrics.is_file():
        result: dict[str, Any] = json.loads(metrics.read_text())
        return result
    if (run_dir / "checkpoints" / "last.pt").is_file():
        return fit(None, run_dir, resume=True, progress=progress)  # type: ignore[arg-type]
    return fit(cfg, run_dir, progress=progress)


def fit(
    cfg: ExperimentConfig,
    run_dir: str | Path,
    *,
    resume: bool = False,
    progress: bool = True,
    trial_callback: Any = None,
) -> dict[str, Any]:
    """Train and evaluate; returns the test metrics of the best checkpoint.

    Args:
        cfg: the experiment config (ignored in favour of the saved one when resuming).
        run_dir: output directory (created).
        resume: continue from ``run_dir/checkpoints/last.pt``.
        progress: progress bars.
        trial_callback: optional ``f(epoch, monitored_value)`` called after each epoch (the
            tuner's pruning hook); it may raise :class:`StopTraining`.
    """
    paths = RunPaths(Path(run_dir))
    state: dict[str, Any] | None = None
    if resume:
        state = load_checkpoint(paths.last)
        cfg = from_dict(state["config"])
    t_start = time.perf_counter()
    accelerator = make_accelerator(cfg.train, freezes_body=cfg.model.freeze_epochs > 0)
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    seed_everything(cfg.train.seed)
    if accelerator.is_main_process:
        paths.root.mkdir(parents=True, exist_ok=True)
        paths.plots.mkdir(exist_ok=True)
        save_config(cfg, paths.config)

    # -- data ----------------------------------------------------------------------------------
    size = cfg.data.image_size or default_image_size(cfg.model.backbone)
    with accelerator.main_process_first():  # one process builds the cache and splits.csv
        data = prepare_data(cfg.data, size, split_path=paths.splits,
                            progress=progress and accelerator.is_main_process,
                            write=accelerator.is_main_process)
    classes = data.classes
    if accelerator.is_main_process and (data.source.bad or data.source.ignored):
        # Skipped inputs are listed, never dropped silently.
        (paths.root / "skipped_inputs.json").write_text(json.dumps(
            {"bad": data.source.bad, "ignored": data.source.ignored}, indent=2))
    if data.source.bad:
        _log(accelerator, f"warning: {len(data.source.bad)} bad input(s) skipped "
                          f"(data.skip_bad=true); listed in {paths.root / 'skipped_inputs.json'}")
    for warning in data.split.warnings:
        _log(accelerator, f"warning: {warning}")
    if data.leaks.leaky:
        _log(accelerator, f"WARNING: the split leaks {data.leaks.group_overlap} group(s) between "
                          "splits (allowed by data.allow_leaks); test results are optimistic")
    train_targets, val_targets = data.targets("train"), data.targets("val")
    if not train_targets or not val_targets:
        raise ConfigError("the split has an empty train or val part; check data.split_ratios")
    counts = class_counts(train_targets, len(classes))

    # -- model, loss, optimiser ----------------------------------------------------------------
    if state is not None:
        cfg_model = cfg.model.__class__(**{**to_dict(cfg.model), "pretrained": False})
        model, data_cfg, _ = create_model(cfg_model, len(classes))
        origin = state["weights_origin"]
    else:
        model, data_cfg, origin = create_model(cfg.model, len(classes))
    mean, std = list(data_cfg["mean"]), list(data_cfg["std"])
    if cfg.model.channels_last:
        model = model.to(memory_format=torch.channels_last)
    loss_fn = build_loss(cfg.loss, counts)  # CPU copy: losses on gathered logits
    optimizer = build_optimizer(cfg.optim, model)
    monitor_mode = "min" if cfg.train.monitor == "loss" else "max"
    scheduler = EpochScheduler(cfg.sched, optimizer, cfg.train.epochs, monitor_mode)
    history: list[dict[str, Any]] = []
    best_value: float | None = None
    best_epoch = 0
    bad_epochs = 0
    start_epoch = 0
    stopped_early = False
    mlflow_id = None
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        history = list(state["history"])
        best_value, best_epoch = state["best_value"], state["best_epoch"]
        bad_epochs, start_epoch = state["bad_epochs"], state["epoch"]
        stopped_early = state["stopped_early"]
        mlflow_id = state.get("mlflow_run_id")

    # -- loaders -------------------------------------------------------------------------------
    ids = {sp: [s.sample_id for s in data.samples(sp)] for sp in ("train", "val", "test")}
    tf_train = train_transform(size, mean, std, cfg.data.augment)
    tf_eval = eval_transform(mean, std)
    train_ds = ImageDataset(data.store, ids["train"], train_targets, tf_train)
    order = torch.Generator()
    sampler = None
    if cfg.data.sampler != "none":
        power = 1.0 if cfg.data.sampler == "oversample" else 0.5
        sampler = balanced_sampler(train_targets, len(classes), power, generator=order)
    train_loader = make_loader(train_ds, cfg.train.batch_size, shuffle=True, sampler=sampler,
                               num_workers=cfg.data.num_workers, drop_last=len(train_ds) >
                               cfg.train.batch_size, generator=order)
    val_loader = make_loader(ImageDataset(data.store, ids["val"], val_targets, tf_eval),
                             cfg.train.eval_batch_size, num_workers=cfg.data.num_workers)
    model, optimizer, train_loader, val_loader = accelerator.prepare(
        model, optimizer, train_loader, val_loader)
    loss_dev = build_loss(cfg.loss, counts).to(accelerator.device)

    # -- tracking ------------------------------------------------------------------------------
    tracker = Tracker(cfg.tracking, paths.root, active=accelerator.is_main_process)
    mlflow_id = tracker.start(cfg.name, resume_id=mlflow_id)
    tracker.log_params({**flatten_config(to_dict(cfg)), "n_classes": len(classes),
                        "image_size": size, "weights_origin": origin,
                        **{f"n_train_{c}": int(n) for c, n in zip(classes, counts, strict=True)}})
    tracker.backfill(history)

    def checkpoint_payload(epoch: int) -> dict[str, Any]:
        return {
            "model": accelerator.unwrap_model(model).state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "epoch": epoch,
            "best_value": best_value,
            "best_epoch": best_epoch,
            "bad_epochs": bad_epochs,
            "stopped_early": stopped_early,
            "history": history,
            "config": to_dict(cfg),
            "classes": classes,
            "display_names": data.source.display_names,
            "backbone": cfg.model.backbone,
            "normalization": {"mean": mean, "std": std},
            "image_size": size,
            "resize_mode": cfg.data.resize_mode,
            "weights_origin": origin,
            "mlflow_run_id": mlflow_id,
        }

    _log(accelerator, f"dermalab: {cfg.model.backbone} ({origin} weights, "
                      f"{count_parameters(model) / 1e6:.1f}M params) on {len(ids['train'])} train "
                      f"/ {len(ids['val'])} val / {len(ids['test'])} test images at {size}px, "
                      f"{len(classes)} classes, device {accelerator.device}"
                      + (f", {accelerator.num_processes} processes (global batch "
                         f"{cfg.train.batch_size * accelerator.num_processes})"
                         if accelerator.num_processes > 1 else ""))
    status = "FAILED"
    try:
        # -- epochs ----------------------------------------------------------------------------
        epoch = start_epoch
        for epoch in range(start_epoch, cfg.train.epochs):
            if stopped_early:
                break
            order.manual_seed(epoch_seed(cfg.train.seed, epoch))
            # Augmentation differs between processes (their images differ anyway).
            local = epoch_seed(cfg.train.seed, epoch) + 7_919 * accelerator.process_index
            torch.manual_seed(local)
            random.seed(local)
            frozen = epoch < cfg.model.freeze_epochs
            set_body_trainable(accelerator.unwrap_model(model), not frozen)
            scheduler.start_epoch(epoch)
            lr = optimizer.param_groups[-1]["lr"]
            stats = train_one_epoch(model, train_loader, loss_dev, optimizer, accelerator,
                                    channels_last=cfg.model.channels_last,
                                    max_batches=cfg.train.max_batches, progress=progress,
                                    desc=f"epoch {epoch + 1}/{cfg.train.epochs}")
            logits, targets = predict(model, val_loader, accelerator,
                                      channels_last=cfg.model.channels_last)
            check_gathered(targets, val_targets, "val")
            if not (math.isfinite(stats.loss) and np.isfinite(logits).all()):
                raise TrainingDivergedError(
                    f"training diverged in epoch {epoch + 1}: the "
                    f"{'training loss' if not math.isfinite(stats.loss) else 'model output'} "
                    f"is not finite (optim.lr={cfg.optim.lr}, loss={cfg.loss.name}); lower the "
                    "learning rate or change the loss settings")
            val_loss = mean_loss(loss_fn, logits, targets)
            vm = classification_metrics(targets, calibrated_probs(logits), classes,
                                        detailed=False)
            value = _monitor_value(vm, val_loss, cfg.train.monitor)
            scheduler.end_epoch(value)
            row = {
                "epoch": epoch + 1, "lr": lr, "train_loss": stats.loss,
                "train_accuracy": stats.accuracy, "val_loss": val_loss,
                **{f"val_{k}": vm[k] for k in ("accuracy", "balanced_accuracy", "macro_f1",
                                               "weighted_precision", "weighted_recall",
                                               "roc_auc_macro")},
                "train_images_per_s": round(stats.images_per_second, 2),
                "epoch_seconds": round(stats.seconds, 2), "frozen_body": frozen,
            }
            history.append(row)
            improved = _improved(value, best_value, cfg.train.monitor, cfg.train.min_delta)
            if improved:
                best_value, best_epoch, bad_epochs = value, epoch + 1, 0
            else:
                bad_epochs += 1
            if cfg.train.patience > 0 and bad_epochs >= cfg.train.patience:
                stopped_early = True
            if accelerator.is_main_process:
                if improved:
                    save_checkpoint(checkpoint_payload(epoch + 1), paths.best)
                write_history(paths.history, history)
                # last.pt is written after best.pt, so a kill between the two resumes correctly.
                save_checkpoint(checkpoint_payload(epoch + 1), paths.last)
            accelerator.wait_for_everyone()
            tracker.log_metrics({k: v for k, v in row.items()
                                 if k not in ("epoch", "frozen_body")}, step=epoch + 1)
            _log(accelerator, f"epoch {epoch + 1:>3}/{cfg.train.epochs} lr {lr:.2e} train loss "
                              f"{stats.loss:.4f} | val loss {val_loss:.4f} bal-acc "
                              f"{vm['balanced_accuracy']:.4f} macro-F1 {vm['macro_f1']:.4f}"
                              + ("" if cfg.train.monitor in ("balanced_accuracy", "macro_f1",
                                                             "loss")
                                 else f" {cfg.train.monitor} {value:.4f}")
                              + f"{' *' if improved else ''} ({stats.seconds:.0f}s, "
                              f"{stats.images_per_second:.1f} img/s)")
            if trial_callback is not None:
                trial_callback(epoch + 1, value)
            if stopped_early:
                _log(accelerator, f"early stopping: no {cfg.train.monitor} improvement for "
                                  f"{bad_epochs} epoch(s); best epoch {best_epoch}")
        # -- final evaluation of the best checkpoint -------------------------------------------
        best_state = load_checkpoint(paths.best)
        accelerator.unwrap_model(model).load_state_dict(best_state["model"])
        results = final_evaluation(model, data, ids, tf_eval, cfg, accelerator, loss_fn,
                                   paths)
        results.update({
            "best_epoch": best_epoch, "epochs_run": len(history), "stopped_early": stopped_early,
            "monitor": cfg.train.monitor, "best_val_monitor": best_value,
            "image_size": size, "backbone": cfg.model.backbone, "weights_origin": origin,
            "parameters": count_parameters(accelerator.unwrap_model(model)),
            "wall_seconds_this_session": round(time.perf_counter() - t_start, 1),
            "train_seconds_total": round(sum(float(r["epoch_seconds"]) for r in history), 1),
            "mlflow_run_id": mlflow_id,
            "processes": accelerator.num_processes,
        })
        if accelerator.is_main_process:
            atomic_write_text(paths.metrics, json.dumps(results, indent=2))
            write_run_plots(history, results, classes, paths)
            if ids["val"] and ids["test"]:
                from dermalab.engine.finalize import finalize_run

                results = finalize_run(paths.root, data=data)
            tracker.log_metrics({f"test_{k}": results.get(k) for k in
                                 ("accuracy", "balanced_accuracy", "macro_f1", "roc_auc_macro",
                                  "weighted_precision", "weighted_recall", "ece_before",
                                  "ece_after", "nll_before", "nll_after", "temperature")})
            if results.get("malignant"):
                tracker.log_metrics({f"test_malignant_{k}": results["malignant"][k]
                                     for k in ("sensitivity", "specificity", "threshold")})
            for p in [paths.metrics, paths.history, paths.config, paths.splits,
                      paths.root / "report.html", *sorted(paths.plots.glob("*.png"))]:
                tracker.log_artifact(p)
            print(summary(results, classes), flush=True)
            if cfg.tracking.upload_to:
                from dermalab.data.s3 import push

                dest = f"{cfg.tracking.upload_to.rstrip('/')}/{paths.root.resolve().name}"
                res = push(paths.root, dest, progress=progress)
                print(f"uploaded the run to {dest} ({res.transferred} files sent, "
                      f"{res.skipped} unchanged, all verified)", flush=True)
        status = "FINISHED"
        return results
    except StopTraining:
        status = "KILLED"
        raise
    finally:
        tracker.end(status)


def final_evaluation(
    model: torch.nn.Module,
    data: PreparedData,
    ids: dict[str, list[str]],
    tf_eval: Any,
    cfg: ExperimentConfig,
    accelerator: Accelerator,
    loss_fn: torch.nn.Module,
    paths: RunPaths,
) -> dict[str, Any]:
    """Val and test predictions of the (best) model; detailed test metrics."""
    out: dict[str, Any] = {}
    out_val: dict[str, Any] = {}
    for sp in ("val", "test"):
        if not ids[sp]:
            continue
        loader = accelerator.prepare(make_loader(
            ImageDataset(data.store, ids[sp], data.targets(sp), tf_eval),
            cfg.train.eval_batch_size, num_workers=cfg.data.num_workers))
        logits, targets = predict(model, loader, accelerator,
                                  channels_last=cfg.model.channels_last)
        check_gathered(targets, data.targets(sp), sp)
        tta_logits = None
        if cfg.eval.tta:
            tta_logits, _ = predict(model, loader, accelerator,
                                    channels_last=cfg.model.channels_last, tta=True)
        probs = calibrated_probs(logits)
        if accelerator.is_main_process:
            write_predictions(paths.root / f"predictions_{sp}.csv", ids[sp], targets, probs,
                              data.classes)
            Predictions(ids[sp], targets, logits, tta_logits).save(
                paths.root / f"predictions_{sp}.npz")
        if sp == "test":
            out = classification_metrics(targets, probs, data.classes)
            out["loss"] = mean_loss(loss_fn, logits, targets)
        else:
            vm = classification_metrics(targets, probs, data.classes, detailed=False)
            out_val = {k: vm[k] for k in ("accuracy", "balanced_accuracy", "macro_f1",
                                          "roc_auc_macro")}
    out["val"] = out_val
    out["split"] = {"origin": data.split.origin, "counts": data.counts(),
                    "group_overlap": data.leaks.group_overlap,
                    "duplicate_overlap": data.leaks.duplicate_overlap}
    return out


def write_run_plots(history: list[dict[str, Any]], results: dict[str, Any], classes: list[str],
                    paths: RunPaths) -> None:
    """Per-epoch curves and confusion matrices as PNG files in ``plots/``."""
    from dermalab import plots

    h = {k: [float(r[k]) if r[k] is not None else float("nan") for r in history]
         for k in HISTORY_KEYS if k != "frozen_body"}
    specs = [
        ("loss", ["train_loss", "val_loss"], "loss"),
        ("accuracy", ["train_accuracy", "val_accuracy"], "accuracy"),
        ("balanced_accuracy", ["val_balanced_accuracy"], "balanced accuracy"),
        ("macro_f1", ["val_macro_f1"], "macro F1"),
        ("precision", ["val_weighted_precision"], "weighted precision"),
        ("recall", ["val_weighted_recall"], "weighted recall"),
        ("lr", ["lr"], "learning rate"),
    ]
    for name, keys, label in specs:
        plots.save(plots.curves(h, keys, label + " per epoch", label),
                   str(paths.plots / f"{name}.png"))
    cm = np.asarray(results["confusion_matrix"])
    plots.save(plots.confusion_matrix_figure(cm, classes), str(paths.plots /
                                                                "confusion_matrix.png"))
    plots.save(plots.confusion_matrix_figure(cm, classes, normalize=True),
               str(paths.plots / "confusion_matrix_normalized.png"))


def summary(results: dict[str, Any], classes: list[str]) -> str:
    """One screen: headline test metrics and the per-class table."""
    auc = results.get("roc_auc_macro")
    lines = [
        "",
        f"test ({results['n']} images, best epoch {results['best_epoch']} of "
        f"{results['epochs_run']}):",
        f"  balanced accuracy {results['balanced_accuracy']:.4f}   accuracy "
        f"{results['accuracy']:.4f}   macro-F1 {results['macro_f1']:.4f}   ROC-AUC (macro OvR) "
        f"{auc:.4f}" if auc is not None else "  ROC-AUC undefined",
        "",
        f"  {'class':<10}{'precision':>10}{'recall':>10}{'f1':>10}{'auc':>10}{'support':>10}",
    ]
    for c in classes:
        r = results["per_class"][c]
        a = f"{r['roc_auc']:.3f}" if r["roc_auc"] is not None else "-"
        lines.append(f"  {c:<10}{r['precision']:>10.3f}{r['recall']:>10.3f}{r['f1']:>10.3f}"
                     f"{a:>10}{r['support']:>10}")
    return "\n".join(lines)
