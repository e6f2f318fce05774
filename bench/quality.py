"""Benchmark: how good. The default recipe end to end on HAM10000, and the size of the leak.

1. ``configs/ham10000_default.yaml`` on the lesion-grouped split saved by the data layer (test
   never used for a choice): test balanced accuracy (the ISIC 2018 metric), accuracy, macro-F1,
   macro AUC, ECE after temperature scaling, and malignant sensitivity/specificity at the
   threshold chosen on validation; and the same test metrics with flip TTA
   (``dermalab evaluate RUN --tta``), beside them.
2. The same recipe on a random image-level split (``data.split_by=image``), which puts images
   of one lesion on both sides: the difference is the optimism that leaky splits carry.

Anchors printed beside ours (not comparable one to one; see the notes in the table).

    .venv/bin/python bench/quality.py [--set KEY=VALUE ...] [--only grouped|image]

Run directories go to ``bench/work/quality/`` (finished runs reused, cut-off runs resumed);
results to ``bench/results/quality.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (
    HAM,
    REPO,
    WORK,
    dermalab_cmd,
    fmt,
    machine,
    repo_relative,
    train_run,
    write_results,
)

ANCHORS = [
    ("seeds' best HAM10000 figure: EfficientNet-B0, random image-level split (leaks lesions)",
     {"accuracy": 0.8104}),
    ("ISIC 2018 Task 3 winner (ensembles, external data)", {"balanced_accuracy": 0.885}),
    ("ResNet-18 at 224 px, leak-corrected DermaMNIST split (Abhishek et al. 2025)",
     {"accuracy": 0.836, "roc_auc_macro": 0.953}),
]
TARGET = {"balanced_accuracy": 0.75, "roc_auc_macro": 0.94}


def tta_test(run_dir: Path) -> dict[str, Any]:
    """Test metrics of the run's best checkpoint with flip test-time augmentation
    (``dermalab evaluate RUN --tta``; its temperature is refitted on validation with TTA).
    Reported beside the plain numbers, never used to pick anything; cached in the run."""
    cached = run_dir / "tta_test.json"
    if cached.is_file():
        return dict(json.loads(cached.read_text()))
    out = subprocess.run([*dermalab_cmd(), "evaluate", str(run_dir), "--tta", "--json"],
                         check=True, capture_output=True, text=True, cwd=REPO)
    res: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    cached.write_text(json.dumps(res, indent=2))
    return res


def row(name: str, m: dict[str, Any], tta: dict[str, Any]) -> dict[str, Any]:
    mal = m.get("malignant") or {}
    return {"name": name, "n_test": m["n"], "accuracy": m["accuracy"],
            "balanced_accuracy": m["balanced_accuracy"], "macro_f1": m["macro_f1"],
            "roc_auc_macro": m["roc_auc_macro"], "ece_after": m.get("ece_after"),
            "temperature": m.get("temperature"),
            "malignant_sensitivity": mal.get("sensitivity"),
            "malignant_specificity": mal.get("specificity"),
            "tta_balanced_accuracy": tta.get("balanced_accuracy"),
            "tta_accuracy": tta.get("accuracy"), "tta_roc_auc_macro": tta.get("roc_auc_macro"),
            "best_epoch": m["best_epoch"], "epochs_run": m["epochs_run"],
            "train_minutes": round(m["train_seconds_total"] / 60, 1),
            "lesions_shared": m["split"]["group_overlap"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", default=str(REPO / "configs" / "ham10000_default.yaml"))
    ap.add_argument("--set", dest="sets", nargs="+", default=[])
    ap.add_argument("--only", choices=["grouped", "image"])
    ap.add_argument("--work", default=str(WORK / "quality"))
    args = ap.parse_args()
    work = Path(args.work)
    rows = []
    if args.only in (None, "grouped"):
        m = train_run(work / "grouped", args.config, args.sets, str(HAM))
        rows.append(row("lesion-grouped split (honest)", m, tta_test(work / "grouped")))
    if args.only in (None, "image"):
        m = train_run(work / "by_image", args.config,
                      [*args.sets, "data.split_by=image", "data.allow_leaks=true"], str(HAM))
        rows.append(row("random image-level split (leaky)", m, tta_test(work / "by_image")))
    report = {"date": time.strftime("%Y-%m-%d"), "machine": machine(),
              "config": repo_relative(args.config),
              "overrides": args.sets, "rows": rows, "target": TARGET,
              "anchors": [{"what": w, **v} for w, v in ANCHORS]}
    if len(rows) == 2:
        report["leak_inflation"] = {k: rows[1][k] - rows[0][k] for k in
                                    ("accuracy", "balanced_accuracy", "macro_f1",
                                     "roc_auc_macro")}
    md = [f"# Quality on HAM10000 ({report['date']}, {report['machine']['cpus']} CPUs"
          f"{', GPU ' + report['machine']['cuda'] if report['machine']['cuda'] else ''})", "",
          f"Recipe `{Path(args.config).name}`"
          + (f" with `{' '.join(args.sets)}`" if args.sets else "")
          + f". Target for the CPU budget: balanced accuracy >= {TARGET['balanced_accuracy']}, "
          f"AUC >= {TARGET['roc_auc_macro']}.", "",
          "| split | test n | bal. acc | acc | macro-F1 | AUC | ECE (after T) | malignant "
          "sens / spec | flip TTA: bal. acc / acc / AUC | epochs (best) | train min | "
          "lesions shared |",
          "|" + " --- |" * 12]
    for r in rows:
        md.append(f"| {r['name']} | {r['n_test']} | **{fmt(r['balanced_accuracy'])}** | "
                  f"{fmt(r['accuracy'])} | {fmt(r['macro_f1'])} | {fmt(r['roc_auc_macro'])} | "
                  f"{fmt(r['ece_after'])} | {fmt(r['malignant_sensitivity'], 2)} / "
                  f"{fmt(r['malignant_specificity'], 2)} | {fmt(r['tta_balanced_accuracy'])} / "
                  f"{fmt(r['tta_accuracy'])} / {fmt(r['tta_roc_auc_macro'])} | "
                  f"{r['epochs_run']} ({r['best_epoch']}) | {r['train_minutes']} | "
                  f"{r['lesions_shared']} |")
    if "leak_inflation" in report:
        li = report["leak_inflation"]
        md += ["", "Leak size (image-level minus lesion-grouped): " + ", ".join(
            f"{k} {v:+.3f}" for k, v in li.items()) + "."]
    md += ["", "Anchors (other splits, resolutions and budgets):", ""]
    md += [f"- {w}: " + ", ".join(f"{k} {v:.3f}" for k, v in vals.items()) for w, vals in ANCHORS]
    write_results("quality", report, md)


if __name__ == "__main__":
    main()
