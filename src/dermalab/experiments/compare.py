"""Backbone comparison: the same recipe, split and seed for each backbone, one table.

``dermalab compare`` trains each backbone with the training pipeline in ``OUT/<backbone>`` (a
finished run is reused, a cut-off one resumed), all on one split written once to
``OUT/splits.csv``, then writes ``comparison.csv``, ``comparison.md`` and ``comparison.png``:
test accuracy, balanced accuracy, macro-F1, macro AUC, ECE after temperature scaling,
parameters, training time and inference time per image (PyTorch eager on this machine, batch 1
and batch 32). A backbone written ``name:scratch`` is trained from random weights: the control
that shows what ImageNet pretraining contributes. With tracking on, the runs are MLflow child
runs of one ``compare`` parent run.
"""

from __future__ import annotations

import csv
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dermalab.core.atomic import atomic_write_text
from dermalab.core.config import ExperimentConfig, load_config, with_values
from dermalab.core.errors import ConfigError
from dermalab.core.metrics import metric_names
from dermalab.core.runs import load_run
from dermalab.core.tracking import child_tracking, start_parent_run, store_uri

COLUMNS = ["backbone", "pretrained", "val_balanced_accuracy", "val_roc_auc_macro", "accuracy",
           "balanced_accuracy", "balanced_accuracy_ci", "macro_f1", "roc_auc_macro",
           "ece_after", "parameters_m", "train_minutes", "epochs_run",
           "best_epoch", "ms_per_image_b1", "ms_per_image_b32", "run_dir"]


def parse_backbones(text: str) -> list[tuple[str, bool]]:
    """``"a,b,c:scratch"`` -> ``[("a", True), ("b", True), ("c", False)]``."""
    out = []
    for item in (t.strip() for t in text.split(",")):
        if not item:
            continue
        name, _, mode = item.partition(":")
        if mode not in ("", "scratch"):
            raise ConfigError(f"backbone '{item}': the only suffix is ':scratch' (random init)")
        out.append((name, mode != "scratch"))
    if not out:
        raise ConfigError("--backbones names no backbone")
    return out


def inference_ms(run_dir: Path, batch: int, repeats: int) -> float:
    """Milliseconds per image of the run's best model, PyTorch eager on the CPU threads torch
    uses by default, after a warm-up; median of ``repeats`` timed batches."""
    run = load_run(run_dir)
    model = run.model.to(memory_format=torch.channels_last)
    x = torch.randn(batch, 3, run.info.image_size, run.info.image_size).contiguous(
        memory_format=torch.channels_last)
    times = []
    with torch.inference_mode():
        model(x)
        for _ in range(repeats):
            t0 = time.perf_counter()
            model(x)
            times.append(time.perf_counter() - t0)
    return float(np.median(times)) * 1000 / batch


def _parent(base: ExperimentConfig, out: Path) -> ExperimentConfig:
    """Child runs under one MLflow parent run (its id kept in ``OUT/mlflow_parent.txt``)."""
    if not base.tracking.enabled:
        return base
    uri = store_uri(base.tracking, out)
    marker = out / "mlflow_parent.txt"
    if marker.is_file():
        parent = marker.read_text().strip()
    else:
        parent = start_parent_run(base.tracking, uri, f"compare:{base.name}", {})
        atomic_write_text(marker, parent)
    return with_values(base, child_tracking(base.tracking, uri, parent))


def compare(config: str | None, backbones: list[tuple[str, bool]], out: str | Path,
            sets: list[str], *, progress: bool = False) -> list[dict[str, Any]]:
    """Train (or reuse) one run per backbone and write the comparison table; returns its rows."""
    from dermalab.data.inspect import shared_split
    from dermalab.pipeline import run_or_reuse

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    base = _parent(shared_split(load_config(config, sets), out), out)
    rows = []
    for name, pretrained in backbones:
        run_dir = out / (name if pretrained else f"{name}_scratch")
        cfg = with_values(base, {"model.backbone": name, "model.pretrained": pretrained,
                                 "name": f"{base.name}-{run_dir.name}"})
        res = run_or_reuse(cfg, run_dir, progress=progress)
        val = res.get("val") or {}
        rows.append({
            "backbone": name, "pretrained": pretrained,
            "val_balanced_accuracy": val.get("balanced_accuracy"),
            "val_roc_auc_macro": val.get("roc_auc_macro"),
            "balanced_accuracy_ci": (res.get("intervals") or {}).get("balanced_accuracy"),
            **{k: res.get(k) for k in (*metric_names(headline=True), "ece_after",
                                       "epochs_run", "best_epoch")},
            "parameters_m": round(res["parameters"] / 1e6, 2),
            "train_minutes": round(res["train_seconds_total"] / 60, 1),
            "ms_per_image_b1": round(inference_ms(run_dir, 1, 20), 2),
            "ms_per_image_b32": round(inference_ms(run_dir, 32, 3), 2),
            "run_dir": str(run_dir),
        })
    write_comparison(rows, out, base)
    return rows


def write_comparison(rows: list[dict[str, Any]], out: Path, base: ExperimentConfig) -> None:
    """``comparison.csv``, ``comparison.md`` and a bar chart ``comparison.png``."""
    with open(out / "comparison.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS, lineterminator="\n")
        w.writeheader()
        w.writerows(rows)
    size = base.data.image_size or "native"
    md = [f"# Backbone comparison: `{base.name}`", "",
          f"Same recipe, split (`{base.data.split_file}`) and seed ({base.train.seed}) for every "
          f"backbone; {size} px; up to {base.train.epochs} epochs, early stopping on validation "
          f"`{base.train.monitor}`. Every number is the served answer (the run's decision, "
          "fitted on validation). Choose on the validation columns; the test columns (95% "
          "interval of balanced accuracy over the test lesions) are for the backbone you "
          "choose, not for choosing. ECE of the served probabilities; inference is PyTorch "
          "eager on this machine's CPU.", "",
          "| backbone | weights | val bal. acc | val AUC | test acc | test bal. acc [95%] | "
          "macro-F1 | AUC | ECE | params (M) | train min | epochs (best) | ms/img b1 | "
          "ms/img b32 |",
          "|" + " --- |" * 14]
    for r in rows:
        ci = r.get("balanced_accuracy_ci")
        bal = _f(r["balanced_accuracy"]) + (f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else "")
        md.append(f"| {r['backbone']} | {'ImageNet' if r['pretrained'] else 'random init'} | "
                  f"{_f(r.get('val_balanced_accuracy'))} | {_f(r.get('val_roc_auc_macro'))} | "
                  f"{_f(r['accuracy'])} | {bal} | {_f(r['macro_f1'])} | "
                  f"{_f(r['roc_auc_macro'])} | {_f(r['ece_after'])} | {r['parameters_m']} | "
                  f"{r['train_minutes']} | {r['epochs_run']} ({r['best_epoch']}) | "
                  f"{r['ms_per_image_b1']} | {r['ms_per_image_b32']} |")
    (out / "comparison.md").write_text("\n".join(md) + "\n")
    _chart(rows, out / "comparison.png")


def _f(x: float | None) -> str:
    return "–" if x is None else f"{x:.3f}"


def _chart(rows: list[dict[str, Any]], path: Path) -> None:
    from dermalab.core import plots

    labels = [r["backbone"] + ("" if r["pretrained"] else "\n(random init)") for r in rows]
    metrics = {"val balanced accuracy": [r.get("val_balanced_accuracy") or 0.0 for r in rows],
               "val macro AUC": [r.get("val_roc_auc_macro") or 0.0 for r in rows]}
    plots.save(plots.grouped_bars(labels, metrics, "validation metrics by backbone (choose "
                                  "on these)", fmt="%.3f"), str(path))
