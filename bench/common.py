"""What the benchmark scripts share: the machine description, training a run as a separate
``dermalab train`` process (resumed when a previous attempt was cut off, reused when finished),
and writing results as JSON + markdown."""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("DERMALAB_SHARED_DATA", REPO.parent / "shared" / "data"))
HAM = SHARED / "ham10000_200x150"
RESULTS = REPO / "bench" / "results"
WORK = REPO / "bench" / "work"  # run directories (git-ignored); reruns reuse finished runs
#: What the tables read from a finished run, kept (committed) under ``KEPT/<path in WORK>``: the
#: run folders are not committed (their weights are large), and a fresh checkout starts without
#: them, so a multi-seed table whose seeds took several sessions would otherwise lose its seeds.
KEPT = RESULTS / "kept"
KEPT_FILES = ("metrics.json", "decision.json", "config.yaml", "splits.csv", "history.csv",
              "predictions_val.npz", "predictions_test.npz")
#: Overrides of configs/ham10000_default.yaml that give back one model: the default trains an
#: ensemble of 2 runs since 2026-12-01 (model.members). Every recipe measured before, and every
#: benchmark that times or inspects one training run, pins it.
ONE_MODEL = ["model.members=1"]
#: Overrides of configs/ham10000_default.yaml that give back its loss until 2026-11-30: the
#: class-balanced focal loss (its beta, gamma and variant are LossConfig's defaults) in place of
#: the logit-adjusted loss, as one model. Every recipe measured before the change pins it.
CB_FOCAL = [*ONE_MODEL, "loss.name=cb"]
#: Overrides of configs/ham10000_default.yaml that give back the EfficientNet-Lite0 default of
#: 2026-11-30, before the backbone became MobileNetV2.
LITE0 = [*CB_FOCAL, "model.backbone=tf_efficientnet_lite0"]
#: Overrides of configs/ham10000_default.yaml that give back its recipe before 2026-11-29.
PREVIOUS_DEFAULT = [*LITE0, "model.freeze_stages=0", "data.augment.batched=false",
                    "train.ema_decay=0", "train.epochs=12", "train.patience=4",
                    "model.fold_frozen_bn=false",
                    "model.static_same_pad=false", "optim.fused=false"]


def machine() -> dict[str, Any]:
    """CPU count, model name, platform, Python and torch versions, and whether a GPU was used."""
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import torch

    return {"cpus": os.cpu_count(), "cpu_model": model, "platform": platform.platform(),
            "python": platform.python_version(), "torch": torch.__version__,
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}


def dermalab_cmd() -> list[str]:
    """The CLI of this checkout, run with the current interpreter."""
    return [sys.executable, "-m", "dermalab"]


def train_run(run_dir: Path, config: str | None, sets: list[str], data: str | None = None,
              *, log: Path | None = None, command: tuple[str, ...] = ("train",)
              ) -> dict[str, Any]:
    """Train one run in its own process and return its ``metrics.json`` plus ``wall_seconds``
    (``command`` = ``("segment", "train")`` for a segmentation run).

    A finished run (``metrics.json`` present) is reused; one with a checkpoint but no metrics
    was cut off and is resumed with ``--resume``, so a long benchmark survives interruptions.
    """
    metrics = run_dir / "metrics.json"
    if metrics.is_file():
        keep_run(run_dir)
        return json.loads(metrics.read_text())
    if (run_dir / "checkpoints" / "last.pt").is_file():
        cmd = [*dermalab_cmd(), *command, "--resume", str(run_dir), "--no-progress"]
    else:
        cmd = [*dermalab_cmd(), *command, "--out", str(run_dir), "--no-progress"]
        if config:
            cmd += ["-c", config]
        if data:
            cmd += ["--data", data]
        if sets:
            cmd += ["--set", *sets]
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    print("$", " ".join(cmd), flush=True)
    with open(log or run_dir.parent / f"{run_dir.name}.log", "a") as out:
        subprocess.run(cmd, check=True, stdout=out, stderr=subprocess.STDOUT, cwd=REPO,
                       env={**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true"})
    res: dict[str, Any] = json.loads(metrics.read_text())
    res["bench_wall_seconds"] = round(time.perf_counter() - t0, 1)
    metrics.write_text(json.dumps(res, indent=2))
    keep_run(run_dir)
    return res


def keep_run(run_dir: Path) -> None:
    """Copy what the tables read from a finished run under ``WORK`` (:data:`KEPT_FILES`) to
    :data:`KEPT`; runs elsewhere are not kept."""
    if not run_dir.resolve().is_relative_to(WORK.resolve()):
        return
    dest = KEPT / run_dir.resolve().relative_to(WORK.resolve())
    dest.mkdir(parents=True, exist_ok=True)
    for name in KEPT_FILES:
        if (run_dir / name).is_file():
            shutil.copy2(run_dir / name, dest / name)


def recipe_parser(doc: str, recipes: dict[str, Any], work: Path) -> argparse.ArgumentParser:
    """The options every recipe benchmark shares: ``--recipe``, ``--seeds``, ``--table-only``,
    ``--work`` (run directories ``<work>/<recipe>/s<seed>``)."""
    ap = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    ap.add_argument("--recipe", nargs="+", default=[], choices=sorted(recipes))
    ap.add_argument("--seeds", nargs="+", type=int, default=[42])
    ap.add_argument("--table-only", action="store_true", help="only rebuild the tables")
    ap.add_argument("--train-only", action="store_true",
                    help="only train (and keep) the runs; the tables are left as they are")
    ap.add_argument("--work", default=str(work))
    return ap


def train_recipes(work: Path, config: str, recipes: dict[str, tuple[str, list[str]]],
                  names: list[str], seeds: list[int], data: str | None = None) -> None:
    """Train (or reuse/resume, see :func:`train_run`) every named recipe at every seed into
    ``work/<recipe>/s<seed>``; a recipe is ``(what changes, overrides of config)``."""
    for name in names:
        for seed in seeds:
            train_run(work / name / f"s{seed}", config,
                      [*recipes[name][1], f"train.seed={seed}"], data)


def finished_runs(work: Path, recipes: dict[str, Any]) -> list[tuple[str, Path]]:
    """``(recipe, run directory)`` of every finished run (``metrics.json`` present) under
    ``work/<recipe>/s<seed>`` whose recipe is still known; a run that is not there but was kept
    (:func:`keep_run`) is read from :data:`KEPT` (its tables' files only, no weights)."""
    found = {m.parent.relative_to(work): m.parent for m in work.glob("*/s*/metrics.json")}
    if work.resolve().is_relative_to(WORK.resolve()):
        kept = KEPT / work.resolve().relative_to(WORK.resolve())
        for m in kept.glob("*/s*/metrics.json"):
            found.setdefault(m.parent.relative_to(kept), m.parent)
    return [(rel.parent.name, found[rel]) for rel in sorted(found)
            if rel.parent.name in recipes]


def repo_relative(path: str) -> str:
    """A path inside the checkout as written from its root (results carry no home paths).
    Made absolute without following links, so a run folder reached through a link inside the
    checkout (``bench/work`` may be one) is still written from the root."""
    p = Path(os.path.abspath(path))
    return str(p.relative_to(REPO)) if p.is_relative_to(REPO) else path


def write_results(name: str, report: dict[str, Any], markdown: list[str],
                  out: Path = RESULTS) -> None:
    """``<out>/<name>.json`` and ``.md`` (``out``: ``bench/results`` unless a bench is told
    otherwise)."""
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / f"{name}.md").write_text("\n".join(markdown) + "\n")
    print((out / f"{name}.md").read_text())


def fmt(x: float | None, nd: int = 3) -> str:
    """A number for a markdown table; a dash when missing."""
    return "–" if x is None else f"{x:.{nd}f}"


def mean_sd(values: list[float]) -> tuple[float, float | None]:
    """Mean and sample standard deviation (None for a single value)."""
    mean = statistics.fmean(values)
    return mean, (statistics.stdev(values) if len(values) > 1 else None)


def pm(values: list[float], nd: int = 3) -> str:
    """``mean ± sd`` of several runs (the mean alone for one)."""
    mean, sd = mean_sd(values)
    return f"{mean:.{nd}f}" + (f" ± {sd:.{nd}f}" if sd is not None else "")
