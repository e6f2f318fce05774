"""Benchmark: how good. HAM10000 recipes end to end, several seeds each, and the size of the leak.

Each recipe is ``configs/ham10000_default.yaml`` plus overrides (``RECIPES``): the default
itself, the previous default, single-lever variants, and the default on a random image-level
split (``data.split_by=image``, which puts images of one lesion on both sides: the difference
is the optimism leaky splits carry). Every run is scored on its own split's test part, which
no choice ever sees (the epoch and the temperature come from validation):

- balanced accuracy (the ISIC 2018 metric), accuracy, macro-F1, macro AUC, ECE after
  temperature scaling, malignant sensitivity/specificity at the validation-chosen threshold;
- with patient metadata (``eval.metadata``: age, sex, body site fused with the image logits,
  the weight fitted on validation; what the served model answers when a user gives them):
  balanced accuracy, AUC, and with logit adjustment on top;
- beside them, never used to pick anything: flip TTA (``dermalab evaluate RUN --tta``) and
  post-hoc logit adjustment (tau chosen on validation, ``metrics.json``);
- per recipe, mean +- sd over its seeds, and the minutes of each run;
- the default is an ensemble of 2 runs (``model.members``) since 2026-12-01: its seed-s run
  has the one-model runs at seeds s and s + 1 as members (copied in when finished, else
  trained by ``dermalab train`` itself), and is set beside them.

    .venv/bin/python bench/quality.py [--recipe NAME ...] [--seeds 42 7 1] [--table-only]

Run directories go to ``bench/work/quality/<recipe>/s<seed>/`` (finished runs reused,
cut-off runs resumed); the tables are rebuilt from every finished run there, so runs added in
later sessions join them. Results: ``bench/results/quality.{json,md}``.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (
    CB_FOCAL,
    HAM,
    LITE0,
    ONE_MODEL,
    PREVIOUS_DEFAULT,
    REPO,
    RESULTS,
    SHARED,
    WORK,
    dermalab_cmd,
    finished_runs,
    fmt,
    machine,
    pm,
    recipe_parser,
    repo_relative,
    train_recipes,
    write_results,
)

from dermalab.core.config import load_config

ANCHORS = [
    ("seeds' best HAM10000 figure: EfficientNet-B0, random image-level split (leaks lesions)",
     {"accuracy": 0.8104}),
    ("ISIC 2018 Task 3 winner (ensembles, external data)", {"balanced_accuracy": 0.885}),
    ("ResNet-18 at 224 px, leak-corrected DermaMNIST split (Abhishek et al. 2025)",
     {"accuracy": 0.836, "roc_auc_macro": 0.953}),
]
TARGET = {"balanced_accuracy": 0.75, "roc_auc_macro": 0.95}
#: The leak-corrected DermaMNIST split as HAM10000 image ids (shared data, SOURCES.md).
DERMAMNIST_C = SHARED / "dermamnist_splits" / "combined_metadata_corrected.csv"
#: Abhishek et al. 2025 (DermaMNIST-C), ResNet-18 test figures by input size.
DERMAMNIST_C_PUBLISHED = {28: {"accuracy": 0.827, "roc_auc_macro": 0.947},
                          224: {"accuracy": 0.836, "roc_auc_macro": 0.953}}


def on_cb_focal(what: str, sets: list[str]) -> tuple[str, list[str]]:
    """A lever measured on the MobileNetV2 default with the class-balanced focal loss (the
    default's loss until 2026-11-30): said in its description and pinned in its overrides."""
    return f"CB focal, {what}", [*CB_FOCAL, *sets]


def on_lite0(what: str, sets: list[str]) -> tuple[str, list[str]]:
    """A lever measured on EfficientNet-Lite0 (the default until 2026-11-30): said in its
    description and pinned in its overrides alike."""
    return f"Lite0, {what}", [*LITE0, *sets]


#: name -> (what changes, overrides of configs/ham10000_default.yaml)
RECIPES: dict[str, tuple[str, list[str]]] = {
    "default": ("the default recipe as configured: since 2026-12-01 an ensemble of 2 runs "
                "(`model.members: 2`, seeds s and s + 1, the mean of their temperature-scaled "
                "logits as one model; its members are the one-model runs at those seeds)", []),
    "one-model": ("the default as one model (`model.members=1`; the default until "
                  "2026-12-01: MobileNetV2 since 2026-11-30, the logit-adjusted loss since "
                  "2026-11-30 evening)", ONE_MODEL),
    "cb-focal": ("the MobileNetV2 default with the class-balanced focal loss (Cui et al. 2019, "
                 "beta 0.999, gamma 2; the default until 2026-11-30 evening) instead of the "
                 "logit-adjusted loss, where the MobileNetV2 levers below were measured",
                 CB_FOCAL),
    "lite0-default": ("the default with EfficientNet-Lite0 (ImageNet top-1 75.1; the default "
                      "until 2026-11-30), where every Lite0 lever below was measured", LITE0),
    "previous-default": ("the default before 2026-11-29: Lite0, every stage trains, per-image "
                         "augmentation in the loader, no weight average, 12 epochs, "
                         "patience 4", PREVIOUS_DEFAULT),
    "image-split": ("the one-model default on a random image-level split (leaky)",
                    [*ONE_MODEL, "data.split_by=image", "data.allow_leaks=true"]),
    "no-ema": on_lite0("no weight average (validation and the final model use the live "
                       "weights)", ["train.ema_decay=0"]),
    "mixup": on_lite0("Mixup (alpha 0.2) or CutMix (alpha 1.0) on half the training batches",
                      ["data.augment.mixup=0.2", "data.augment.cutmix=1.0",
                       "data.augment.mix_prob=0.5"]),
    "px160": on_lite0("160 px input (from 128; the photos are 200x150)",
                      ["data.image_size=160"]),
    "freeze3": on_lite0("stem + 3 stages kept pretrained (from 2): cheaper steps",
                        ["model.freeze_stages=3"]),
    "cb-ce-ls": on_lite0("class-balanced softmax cross-entropy with label smoothing 0.1 instead "
                         "of the class-balanced focal loss (the loss of the issue's 0.709 "
                         "quick fine-tune)", ["loss.cb_type=softmax", "loss.label_smoothing=0.1"]),
    "wd05": on_lite0("AdamW weight decay 0.05 (from 1e-4; training loss falls to ~0.05 while "
                     "validation loss rises from epoch 4)", ["optim.weight_decay=0.05"]),
    "px160-mobilenetv2": on_cb_focal(
        "the MobileNetV2 default at 160 px input (from 128; the photos are 200x150): 1.56x the "
        "pixels", ["data.image_size=160"]),
    "px160-auc": on_cb_focal(
        "the MobileNetV2 default at 160 px, the epoch chosen by validation macro AUC instead "
        "of balanced accuracy (a ranking over all 1005 images, smoother than an argmax score "
        "that 12 dermatofibromas and 14 vascular lesions swing)",
        ["data.image_size=160", "train.monitor=roc_auc_macro"]),
    "ep28": on_cb_focal(
        "the MobileNetV2 default trained 28 epochs (from 16) with patience 8 (from 6): two of "
        "the default's three seeds kept epoch 13 or 14 of 16, still climbing when the cosine "
        "schedule ran out", ["train.epochs=28", "train.patience=8"]),
    "freeze0": on_cb_focal(
        "the MobileNetV2 default with every stage fine-tuned (`freeze_stages` 0 from 2; on "
        "Lite0 freezing one more stage cost 0.057 at seed 42): slower steps",
        ["model.freeze_stages=0"]),
    "oversample": on_cb_focal(
        "the MobileNetV2 default with class-balanced oversampling (every class drawn equally "
        "often) instead of sqrt-balanced: the validation-fitted logit adjustment's tau is "
        "above 0 in most runs, so the model leans to the large classes",
        ["data.sampler=oversample"]),
    "lite2": on_cb_focal("EfficientNet-Lite2 (ImageNet top-1 77.5, weights offline): more "
                         "capacity at the same 128 px, 0.65x Lite0's training images/s",
                         ["model.backbone=tf_efficientnet_lite2"]),
    "dermamnist-c": ("the one-model default on the leak-corrected DermaMNIST-C split (Abhishek "
                     "et al. 2025: 8,208 / 575 / 1,232 images, no lesion in two parts)",
                     [*ONE_MODEL, f"data.split_file={DERMAMNIST_C}"]),
    "dermamnist-c-ensemble": ("the default (an ensemble of 2 runs) on the DermaMNIST-C split; "
                              "its members are the dermamnist-c runs at seeds s and s + 1",
                              [f"data.split_file={DERMAMNIST_C}"]),
    "dermamnist-c-cb-focal": ("the MobileNetV2 CB-focal default on the DermaMNIST-C split",
                              [*CB_FOCAL, f"data.split_file={DERMAMNIST_C}"]),
    "dermamnist-c-lite0": ("the Lite0 default on the DermaMNIST-C split",
                           [*LITE0, f"data.split_file={DERMAMNIST_C}"]),
}
#: Recipes scored on a published split, with their label there: kept out of the lever table,
#: shown beside the paper.
SEPARATE = {"dermamnist-c-ensemble": "**dermalab default** (MobileNetV2, logit-adjusted loss, "
                                     "ensemble of 2)",
            "dermamnist-c": "dermalab default as one model (MobileNetV2, logit-adjusted loss)",
            "dermamnist-c-cb-focal": "dermalab, MobileNetV2 CB-focal default (until 2026-11-30)",
            "dermamnist-c-lite0": "dermalab, Lite0 default"}


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


#: Ensemble recipes and the one-model recipe whose runs are their members.
MEMBERS_FROM = {"default": "one-model", "dermamnist-c-ensemble": "dermamnist-c"}


def seed_members(work: Path, config: str, recipe: str, seed: int) -> None:
    """An ensemble recipe's members are runs of its one-model recipe (:data:`MEMBERS_FROM`)
    at seeds ``seed``, ``seed + 1``...: finished ones are copied into the ensemble's
    ``members/m<i>`` instead of being trained again (``dermalab train`` reuses a member folder
    only when its config is exactly the member's, and says so otherwise). Their wall time is
    counted in the ensemble's minutes (:func:`wall_minutes`)."""
    source = MEMBERS_FROM.get(recipe)
    k = load_config(config, RECIPES[recipe][1]).model.members
    if source is None or k < 2:
        return
    for i in range(k):
        run, dest = work / source / f"s{seed + i}", work / recipe / f"s{seed}" / "members" / f"m{i}"
        if (run / "metrics.json").is_file() and not dest.exists():
            shutil.copytree(run, dest, ignore=shutil.ignore_patterns("tta_*"))
            print(f"member {i} of {recipe} s{seed}: copied from {run}", flush=True)


def wall_minutes(run: Path, m: dict[str, Any]) -> float | None:
    """The run's wall time in its benchmark process, plus (an ensemble) its members' own
    processes where they ran apart from it; ``None`` for runs recorded before it was kept."""
    if "bench_wall_seconds" not in m:
        return None
    total = float(m["bench_wall_seconds"])
    for member in m.get("members") or []:
        mm = json.loads((run / member["run"] / "metrics.json").read_text())
        total += float(mm.get("bench_wall_seconds", 0.0))
    return round(total / 60, 1)


def _epochs(value: Any) -> str:
    """An epoch count; an ensemble's, per member."""
    return "+".join(map(str, value)) if isinstance(value, list) else str(value)


def row(name: str, seed: int, m: dict[str, Any], tta: dict[str, Any],
        wall: float | None = None) -> dict[str, Any]:
    mal = m.get("malignant") or {}
    la = m.get("logit_adjustment") or {}
    mf = m.get("metadata_fusion") or {}
    return {"recipe": name, "seed": seed, "n_test": m["n"], "accuracy": m["accuracy"],
            "balanced_accuracy": m["balanced_accuracy"], "macro_f1": m["macro_f1"],
            "roc_auc_macro": m["roc_auc_macro"], "ece_after": m.get("ece_after"),
            "temperature": m.get("temperature"),
            "malignant_sensitivity": mal.get("sensitivity"),
            "malignant_specificity": mal.get("specificity"),
            "tta_balanced_accuracy": tta.get("balanced_accuracy"),
            "tta_accuracy": tta.get("accuracy"), "tta_roc_auc_macro": tta.get("roc_auc_macro"),
            "logit_adjusted_balanced_accuracy": la.get("balanced_accuracy"),
            "logit_adjustment_tau": la["tau"] + 0.0 if "tau" in la else None,  # no "-0.0"
            "metadata_balanced_accuracy": mf.get("balanced_accuracy"),
            "metadata_roc_auc_macro": mf.get("roc_auc_macro"),
            "metadata_accuracy": mf.get("accuracy"),
            "metadata_logit_adjusted_balanced_accuracy": mf.get("logit_adjusted_balanced_accuracy"),
            "metadata_weight": mf.get("weight"),
            "metadata_malignant_sensitivity": mf.get("malignant_sensitivity"),
            "metadata_malignant_specificity": mf.get("malignant_specificity"),
            "best_epoch": _epochs(m["best_epoch"]), "epochs_run": _epochs(m["epochs_run"]),
            "train_minutes": round(m["train_seconds_total"] / 60, 1), "wall_minutes": wall,
            "lesions_shared": m["split"]["group_overlap"]}


def finished_rows(work: Path) -> list[dict[str, Any]]:
    """A row for every finished run under ``work/<recipe>/s<seed>``."""
    out = []
    for recipe, run in finished_runs(work, RECIPES):
        m = json.loads((run / "metrics.json").read_text())
        out.append(row(recipe, int(run.name[1:]), m, tta_test(run), wall_minutes(run, m)))
    return out


def carried_rows(saved: dict[str, Any], rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows of the previous results file whose run is not under ``work`` (measured in an
    earlier session or on another machine: run directories are not committed), for recipes
    still known; a run measured again here replaces its old row."""
    here = {(r["recipe"], r["seed"]) for r in rows}
    return [{**r, "carried_from": r.get("carried_from") or saved.get("date")}
            for r in saved.get("rows", [])
            if r["recipe"] in RECIPES and (r["recipe"], r["seed"]) not in here]


def _pm_known(values: list[Any], nd: int = 3) -> str:
    """mean ± sd of the values present (runs analysed before a column existed lack it)."""
    known = [v for v in values if v is not None]
    return pm(known, nd) if known else "–"


def members_table(by: dict[str, list[dict[str, Any]]]) -> list[str]:
    """Each ensemble beside its own members (the one-model runs at seeds s and s + 1):
    the paired difference is what ensembling adds, free of which seeds were drawn."""
    single = {r["seed"]: r for r in by.get("one-model", [])}
    keys = [("logit-adjusted bal. acc", "logit_adjusted_balanced_accuracy"),
            ("+ metadata, logit-adjusted bal. acc", "metadata_logit_adjusted_balanced_accuracy"),
            ("AUC", "roc_auc_macro"), ("ECE (after T)", "ece_after")]
    pairs = [(r, [single[r["seed"]], single[r["seed"] + 1]]) for r in by.get("default", [])
             if r["seed"] in single and r["seed"] + 1 in single]
    if not pairs:
        return []
    md = ["", "### The ensembles beside their members", "",
          "Each default run is the ensemble of the one-model runs at seeds s and s + 1 "
          "(disjoint pairs); each cell: ensemble (the members' mean; the difference).", "",
          "| seed | members | " + " | ".join(k for k, _ in keys) + " |",
          "|" + " --- |" * (2 + len(keys))]
    gains: dict[str, list[float]] = {k: [] for _, k in keys}
    for ens, members in pairs:
        cells = []
        for _, k in keys:
            mean = sum(m[k] for m in members) / len(members)
            gains[k].append(ens[k] - mean)
            cells.append(f"{fmt(ens[k])} ({fmt(mean)}; {ens[k] - mean:+.3f})")
        md.append(f"| {ens['seed']} | {', '.join(str(m['seed']) for m in members)} | "
                  + " | ".join(cells) + " |")
    md.append("| **mean difference** | | " + " | ".join(f"{pm(gains[k])}" for _, k in keys)
              + " |")
    return md


def tables(rows: list[dict[str, Any]], previous: dict[str, Any] | None) -> list[str]:
    by: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        by.setdefault(r["recipe"], []).append(r)
    md = ["## The default recipe, lesion-grouped split, per seed", "",
          "The default's logit-adjusted loss leaves posterior logits in the model (the "
          "saved head bias carries tau log prior), so the plain argmax leans to the common "
          "classes by design: its balanced decision is the logit-adjusted argmax (tau fitted "
          "on validation), in bold, and the target is measured on it.", "",
          "| seed | bal. acc | acc | macro-F1 | AUC | ECE (after T) | malignant sens / spec | "
          "flip TTA bal. acc | logit-adjusted bal. acc (tau) | + metadata: bal. acc | "
          "+ metadata: AUC | + metadata, logit-adjusted bal. acc | + metadata: malignant sens "
          "/ spec | epochs (best) | train min | wall min |",
          "|" + " --- |" * 16]
    for r in by.get("default", []):
        md.append(f"| {r['seed']} | {fmt(r['balanced_accuracy'])} | {fmt(r['accuracy'])} | "
                  f"{fmt(r['macro_f1'])} | {fmt(r['roc_auc_macro'])} | {fmt(r['ece_after'])} | "
                  f"{fmt(r['malignant_sensitivity'], 2)} / {fmt(r['malignant_specificity'], 2)}"
                  f" | {fmt(r['tta_balanced_accuracy'])} | "
                  f"**{fmt(r['logit_adjusted_balanced_accuracy'])}** "
                  f"({fmt(r['logit_adjustment_tau'], 1)}) | "
                  f"{fmt(r['metadata_balanced_accuracy'])} | "
                  f"{fmt(r['metadata_roc_auc_macro'])} | "
                  f"**{fmt(r['metadata_logit_adjusted_balanced_accuracy'])}** | "
                  f"{fmt(r['metadata_malignant_sensitivity'], 2)} / "
                  f"{fmt(r['metadata_malignant_specificity'], 2)} | {r['epochs_run']} "
                  f"({r['best_epoch']}) | {r['train_minutes']} | "
                  f"{fmt(r.get('wall_minutes'), 1)} |")
    if len(by.get("default", [])) > 1:
        d = by["default"]
        md.append("| **mean ± sd** | " + pm([r["balanced_accuracy"] for r in d]) + " | "
                  + " | ".join(pm([r[k] for r in d]) for k in ("accuracy", "macro_f1",
                                                               "roc_auc_macro", "ece_after"))
                  + " | | " + pm([r["tta_balanced_accuracy"] for r in d])
                  + " | **" + _pm_known([r["logit_adjusted_balanced_accuracy"] for r in d])
                  + "** | " + _pm_known([r["metadata_balanced_accuracy"] for r in d]) + " | "
                  + _pm_known([r["metadata_roc_auc_macro"] for r in d]) + " | **"
                  + _pm_known([r["metadata_logit_adjusted_balanced_accuracy"] for r in d])
                  + "** | | | " + pm([r["train_minutes"] for r in d], 1) + " | "
                  + _pm_known([r.get("wall_minutes") for r in d], 1) + " |")
    md += members_table(by)
    md += ["", "## Recipes and levers", "",
           "Each row is the default recipe with the overrides given, scored on the "
           "lesion-grouped split (the image-level row on its own, leaky split). The levers "
           "before the backbone change were measured on EfficientNet-Lite0: compare them with "
           "the lite0-default row; those between the backbone change and the loss change on "
           "the MobileNetV2 default with the class-balanced focal loss: compare them with the "
           "cb-focal row. With the class-balanced focal loss the plain argmax is already "
           "partly balanced; with the default's logit-adjusted loss it is not, by design, "
           "so compare the logit-adjusted columns across the two. Differences smaller than "
           "the seed-to-seed spread are noise.", "",
           "| recipe | what changes | seeds | bal. acc | AUC | flip TTA bal. acc | "
           "logit-adjusted bal. acc | + metadata: bal. acc / AUC | + metadata, "
           "logit-adjusted bal. acc | epochs (best) | train min |",
           "|" + " --- |" * 11]
    for name, (what, sets) in RECIPES.items():
        rs = by.get(name)
        if not rs or name in SEPARATE:
            continue
        change = what + (f" (`{' '.join(sets)}`)" if sets else "")
        epochs = ", ".join(f"{r['epochs_run']} ({r['best_epoch']})" for r in rs)
        la = [r["logit_adjusted_balanced_accuracy"] for r in rs
              if r["logit_adjusted_balanced_accuracy"] is not None]
        md.append(f"| {name} | {change} | {', '.join(str(r['seed']) for r in rs)} | "
                  f"{pm([r['balanced_accuracy'] for r in rs])} | "
                  f"{pm([r['roc_auc_macro'] for r in rs])} | "
                  f"{pm([r['tta_balanced_accuracy'] for r in rs])} | "
                  f"{pm(la) if la else '–'} | "
                  f"{_pm_known([r['metadata_balanced_accuracy'] for r in rs])} / "
                  f"{_pm_known([r['metadata_roc_auc_macro'] for r in rs])} | "
                  f"{_pm_known([r['metadata_logit_adjusted_balanced_accuracy'] for r in rs])}"
                  f" | {epochs} | "
                  f"{pm([r['train_minutes'] for r in rs], 1)} |")
    published = [r for name in SEPARATE for r in by.get(name, [])]
    if published:
        md += ["", "## DermaMNIST-C (leak-corrected DermaMNIST split)", "",
               "The leak-corrected DermaMNIST-C split (Abhishek et al. 2025: 8,208 / 575 / 1,232 "
               f"images, no lesion in two parts). Test n = {published[0]['n_test']}, 77.2% naevi "
               "(always answering naevus scores ACC 0.772), so balanced accuracy is the "
               "informative column; the paper reports ACC and AUC only.", "",
               "| model | px | seeds | ACC | AUC | bal. acc | logit-adjusted bal. acc | "
               "macro-F1 | + metadata: bal. acc / AUC | + metadata, logit-adjusted bal. acc | "
               "train min |",
               "|" + " --- |" * 11]
        for name, label in SEPARATE.items():
            if rs := by.get(name):
                mla = _pm_known([r["metadata_logit_adjusted_balanced_accuracy"] for r in rs])
                md.append(f"| {label} | 128 | {', '.join(str(r['seed']) for r in rs)} | "
                          + " | ".join(pm([r[k] for r in rs]) for k in
                                       ("accuracy", "roc_auc_macro", "balanced_accuracy"))
                          + f" | {_pm_known([r['logit_adjusted_balanced_accuracy'] for r in rs])}"
                          f" | {pm([r['macro_f1'] for r in rs])}"
                          + f" | {_pm_known([r['metadata_balanced_accuracy'] for r in rs])} / "
                          f"{_pm_known([r['metadata_roc_auc_macro'] for r in rs])} | "
                          f"{mla} | {pm([r['train_minutes'] for r in rs], 1)} |")
        md += [f"| ResNet-18 (Abhishek et al. 2025) | {px} | – | {v['accuracy']:.3f} | "
               f"{v['roc_auc_macro']:.3f} | – | – | – | – | – | – |"
               for px, v in DERMAMNIST_C_PUBLISHED.items()]
    if previous:
        md += ["", f"Earlier record ({previous['date']}, the then default, one seed, older "
               "code): " + ", ".join(f"{r['name']}: balanced accuracy "
                                     f"{fmt(r['balanced_accuracy'])}, AUC "
                                     f"{fmt(r['roc_auc_macro'])}, {r['train_minutes']} min"
                                     for r in previous["rows"]) + "."]
    return md


def main() -> None:
    ap = recipe_parser(__doc__, RECIPES, WORK / "quality")
    ap.add_argument("--config", default=str(REPO / "configs" / "ham10000_default.yaml"))
    args = ap.parse_args()
    work = Path(args.work)
    if not args.table_only:
        for name in args.recipe:
            for seed in args.seeds:
                seed_members(work, args.config, name, seed)
        train_recipes(work, args.config, RECIPES, args.recipe, args.seeds, str(HAM))
    rows = finished_rows(work)
    old = RESULTS / "quality.json"
    previous = None
    carried: list[dict[str, Any]] = []
    if old.is_file():
        saved = json.loads(old.read_text())
        previous = saved.get("previous") or (saved if "recipes" not in saved else None)
        carried = carried_rows(saved, rows) if "recipes" in saved else []
    rows = sorted(rows + carried, key=lambda r: (r["recipe"], r["seed"]))
    report = {"date": time.strftime("%Y-%m-%d"), "machine": machine(),
              "config": repo_relative(args.config), "target": TARGET,
              "recipes": {k: {"what": w, "overrides": s} for k, (w, s) in RECIPES.items()},
              "rows": rows, "anchors": [{"what": w, **v} for w, v in ANCHORS],
              "previous": previous}
    grouped = {r["seed"]: r for r in rows if r["recipe"] == "one-model"}
    leaky = [(grouped[r["seed"]], r) for r in rows
             if r["recipe"] == "image-split" and r["seed"] in grouped]
    md = [f"# Quality on HAM10000 ({report['date']}, {report['machine']['cpus']} CPUs"
          f"{', GPU ' + report['machine']['cuda'] if report['machine']['cuda'] else ''})", "",
          f"Recipe `{Path(args.config).name}`. Target for the CPU budget: balanced accuracy "
          f">= {TARGET['balanced_accuracy']} and AUC >= {TARGET['roc_auc_macro']} as the mean "
          "of 3 seeds, each run <= 60 min on 2 CPUs. Test n = "
          + ", ".join(sorted({str(r["n_test"]) for r in rows})) + ".", "",
          *tables(rows, previous)]
    if carried:
        md += ["", "Carried over from earlier results (their run directories are not on this "
               "machine): " + "; ".join(
                   f"{r['recipe']} seed {r['seed']} ({r['carried_from']})" for r in carried)
               + "."]
    if leaky:
        g, i = leaky[0]
        report["leak_inflation"] = {k: i[k] - g[k] for k in
                                    ("accuracy", "balanced_accuracy", "macro_f1",
                                     "roc_auc_macro")}
        md += ["", f"Leak size (image-level minus lesion-grouped, seed {g['seed']}): "
               + ", ".join(f"{k} {v:+.3f}" for k, v in report["leak_inflation"].items())
               + f"; lesions shared by train and test: {i['lesions_shared']} vs "
               f"{g['lesions_shared']}."]
    md += ["", "Anchors (other splits, resolutions and budgets):", ""]
    md += [f"- {w}: " + ", ".join(f"{k} {v:.3f}" for k, v in vals.items()) for w, vals in ANCHORS]
    write_results("quality", report, md)


if __name__ == "__main__":
    main()
