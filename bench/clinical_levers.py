"""Benchmark: which changes move the clinical-photo model (DermNet NZ, ``dermnet_clinical.yaml``).

Each recipe is ``configs/dermnet_clinical.yaml`` plus overrides (``RECIPES``). A lever is kept
only when it raises **validation** balanced accuracy (the number the recipe is chosen on)
beyond the seed-to-seed spread; the test columns are reported, never used to choose. Per run:
the best validation balanced accuracy (the monitored epoch), test balanced accuracy, macro AUC
and macro-F1, and training minutes.

    .venv/bin/python bench/clinical_levers.py [--recipe NAME ...] [--seeds 42 1 7] [--table-only]

Run directories: ``bench/work/clinical_levers/<recipe>/s<seed>/`` (finished runs reused, cut-off
runs resumed, runs from earlier sessions may be linked in); the tables are rebuilt from every
finished run there. Results: ``bench/results/clinical_levers.{json,md}``.
"""

from __future__ import annotations

import csv
import json
import sys
from datetime import date
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import numpy as np
from common import (
    REPO,
    WORK,
    finished_runs,
    fmt,
    machine,
    pm,
    recipe_parser,
    train_recipes,
    write_results,
)
from scipy.special import softmax
from sklearn.metrics import balanced_accuracy_score, roc_auc_score

CONFIG = REPO / "configs" / "dermnet_clinical.yaml"
TARGET = {"balanced_accuracy": 0.60, "roc_auc_macro": 0.90}

#: name -> (what changes, overrides of configs/dermnet_clinical.yaml)
RECIPES: dict[str, tuple[str, list[str]]] = {
    "default": ("the recipe as configured (EfficientNet-Lite0, 256 px, Mixup/CutMix on half "
                "the batches)", []),
    "px192": ("192 px input (the recipe before 2026-11-30)", ["data.image_size=192"]),
    "no-mix": ("no Mixup/CutMix, at 192 px", ["data.augment.mixup=0", "data.augment.cutmix=0",
                                            "data.image_size=192"]),
    "lite2": ("EfficientNet-Lite2 backbone (ImageNet top-1 77.5 vs Lite0's 75.1), at 192 px",
              ["model.backbone=tf_efficientnet_lite2", "data.image_size=192"]),
}


def best_val(run_dir: Path, best_epoch: int) -> float:
    """Validation balanced accuracy at the selected epoch (from ``history.csv``)."""
    with open(run_dir / "history.csv", newline="") as f:
        for rec in csv.DictReader(f):
            if int(rec["epoch"]) == best_epoch:
                return float(rec["val_balanced_accuracy"])
    raise ValueError(f"{run_dir}: epoch {best_epoch} is not in history.csv")


def row(recipe: str, run_dir: Path) -> dict[str, Any]:
    m = json.loads((run_dir / "metrics.json").read_text())
    return {"recipe": recipe, "seed": int(run_dir.name[1:]),
            "n_val": sum(m["split"]["counts"]["val"].values()),
            "n_test": m["n"], "backbone": m["backbone"], "image_size": m["image_size"],
            "val_balanced_accuracy": best_val(run_dir, m["best_epoch"]),
            "balanced_accuracy": m["balanced_accuracy"], "roc_auc_macro": m["roc_auc_macro"],
            "macro_f1": m["macro_f1"],
            "best_epoch": m["best_epoch"], "epochs_run": m["epochs_run"],
            "train_minutes": round(m["train_seconds_total"] / 60, 1)}


def ensemble(recipe: str, runs: list[Path]) -> dict[str, Any]:
    """The seeds of one recipe averaged (mean of softmax probabilities): validation and test
    balanced accuracy and macro AUC. Reported only: it multiplies training time and inference
    cost by the number of seeds."""
    out: dict[str, Any] = {"recipe": recipe, "seeds": sorted(int(r.name[1:]) for r in runs)}
    for split in ("val", "test"):
        probs, targets, ids = [], None, None
        for run in runs:
            with np.load(run / f"predictions_{split}.npz") as d:
                if ids is not None and not np.array_equal(ids, d["ids"]):
                    raise ValueError(f"{run}: its {split} images differ from {runs[0]}'s; "
                                     "only runs on one split can be averaged")
                probs.append(softmax(d["logits"], axis=1))
                targets, ids = d["targets"], d["ids"]
        mean = np.mean(probs, axis=0)
        key = "val_" if split == "val" else ""
        out[key + "balanced_accuracy"] = float(balanced_accuracy_score(targets, mean.argmax(1)))
        out[key + "roc_auc_macro"] = float(roc_auc_score(targets, mean, multi_class="ovr",
                                                         average="macro"))
    return out


def tables(rows: list[dict[str, Any]], ensembles: list[dict[str, Any]]) -> list[str]:
    by: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        by.setdefault(r["recipe"], []).append(r)
    md = ["## Per run", "",
          "| recipe | seed | val bal. acc (selected epoch) | test bal. acc | AUC | macro-F1 | "
          "epochs (best) | train min |", "|" + " --- |" * 8]
    md += [f"| {r['recipe']} | {r['seed']} | {fmt(r['val_balanced_accuracy'])} | "
           f"**{fmt(r['balanced_accuracy'])}** | {fmt(r['roc_auc_macro'])} | "
           f"{fmt(r['macro_f1'])} | {r['epochs_run']} ({r['best_epoch']}) | "
           f"{r['train_minutes']} |" for r in rows]
    md += ["", "## Per recipe (mean ± sd over seeds)", "",
           "| recipe | what changes | seeds | val bal. acc | test bal. acc | AUC | "
           "macro-F1 | train min |", "|" + " --- |" * 8]
    for name, (what, sets) in RECIPES.items():
        rs = by.get(name)
        if not rs:
            continue
        change = what + (f" (`{' '.join(sets)}`)" if sets else "")
        md.append(f"| {name} | {change} | {', '.join(str(r['seed']) for r in rs)} | "
                  + " | ".join(pm([r[k] for r in rs]) for k in
                               ("val_balanced_accuracy", "balanced_accuracy", "roc_auc_macro",
                                "macro_f1"))
                  + f" | {pm([r['train_minutes'] for r in rs], 1)} |")
    if ensembles:
        md += ["", "## Seed ensembles (mean of the seeds' probabilities; reported, not served)",
               "", "Training time and inference cost are multiplied by the number of seeds.", "",
               "| recipe | seeds | val bal. acc | val AUC | test bal. acc | test AUC |",
               "|" + " --- |" * 6]
        md += [f"| {e['recipe']} | {', '.join(map(str, e['seeds']))} | "
               f"{fmt(e['val_balanced_accuracy'])} | {fmt(e['val_roc_auc_macro'])} | "
               f"{fmt(e['balanced_accuracy'])} | {fmt(e['roc_auc_macro'])} |" for e in ensembles]
    return md


def main() -> None:
    args = recipe_parser(__doc__, RECIPES, WORK / "clinical_levers").parse_args()
    work = Path(args.work)
    if not args.table_only:
        train_recipes(work, str(CONFIG), RECIPES, args.recipe, args.seeds)
    if args.train_only:
        return
    found = finished_runs(work, RECIPES)
    rows = [row(recipe, run) for recipe, run in found]
    by_recipe: dict[str, list[Path]] = {}
    for recipe, run in found:
        by_recipe.setdefault(recipe, []).append(run)
    ensembles = [ensemble(k, v) for k, v in by_recipe.items() if len(v) > 1]
    n = f"validation n = {rows[0]['n_val']}, test n = {rows[0]['n_test']}" if rows else ""
    md = [f"# Clinical-photo model levers ({date.today().isoformat()}, 2 CPUs)", "",
          f"Recipe `dermnet_clinical.yaml`, DermNet NZ photos, duplicate-grouped split; {n}. "
          f"Target on test: balanced accuracy >= {TARGET['balanced_accuracy']}, macro AUC >= "
          f"{TARGET['roc_auc_macro']}. Levers are chosen on validation balanced accuracy; "
          "differences smaller than the default's seed-to-seed spread are noise.", "",
          *tables(rows, ensembles)]
    write_results("clinical_levers", {"machine": machine(), "target": TARGET,
                                      "recipes": {k: {"what": w, "overrides": s}
                                                  for k, (w, s) in RECIPES.items()},
                                      "runs": rows, "ensembles": ensembles}, md)


if __name__ == "__main__":
    main()
