"""A training run from start to finish, the stages in order:

    fit (train) -> evaluate the best checkpoint (evaluate) -> calibrate, analyse, explain
    (evaluate) -> serving detectors (deploy) -> report -> tracking -> upload

An ensemble (``model.members`` = K > 1) is K such runs in ``RUN_DIR/members/m<i>`` (seeds
``train.seed + i``), then their combination (``evaluate.ensemble``) through the same stages
from "calibrate" on. Members already finished are reused and a cut-off one is resumed, so
``--resume`` continues an ensemble where it stopped.

``dermalab train``, ``--resume``, ``dermalab report``, the tuner and ``compare`` all come here,
so each runs exactly the same stages.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from dermalab.core.config import (
    ExperimentConfig,
    flatten,
    load_config,
    replace,
    save_config,
    to_dict,
    with_values,
)
from dermalab.core.errors import ConfigError, RunNotFoundError, StopTraining
from dermalab.core.intervals import with_interval
from dermalab.core.metrics import metric_names
from dermalab.core.models import count_parameters
from dermalab.core.runs import (
    LoadedRun,
    RunPaths,
    load_checkpoint,
    load_run,
    read_metrics,
    save_checkpoint,
    write_metrics,
)
from dermalab.core.tracking import Tracker, store_uri
from dermalab.data.prepare import PreparedData, prepare_data
from dermalab.deploy.serving import fit_serving
from dermalab.evaluate.ensemble import assemble_ensemble
from dermalab.evaluate.evaluate import evaluate_training
from dermalab.evaluate.finalize import (
    calibrate_and_analyse,
    measure_without_validation,
    saved_predictions,
    write_run_plots,
)
from dermalab.evaluate.report import write_report
from dermalab.train.accel import make_accelerator
from dermalab.train.fit import Training, announce, fit, setup_training

TEST_KEYS = (*metric_names(), "ece_before", "ece_after", "nll_before", "nll_after",
             "temperature")
#: The keys of ``metrics.json`` the final stage (re)computes; dropped before it runs again.
FINAL_KEYS = ("metadata_fusion", "rules", "subgroups", "malignant", "serving", "gallery",
              "lesion_measurements", "decision", "served", "intervals", "val", "tta",
              "logit_adjustment")


def train_run(cfg: ExperimentConfig, run_dir: str | Path, *, progress: bool = True,
              trial_callback: Callable[[int, float], None] | None = None) -> dict[str, Any]:
    """Train a new run of ``cfg`` in ``run_dir`` and finish it; returns ``metrics.json``."""
    if cfg.model.members > 1:
        return _ensemble(cfg, RunPaths(Path(run_dir)), progress)
    return _run(cfg, RunPaths(Path(run_dir)), None, progress, trial_callback)


def resume_run(run_dir: str | Path, *, progress: bool = True, redo_final: bool = False,
               trial_callback: Callable[[int, float], None] | None = None) -> dict[str, Any]:
    """Continue a cut-off run from ``last.pt`` (with its saved config) and finish it.

    A finished run is left as it is (its metrics are returned) unless ``redo_final``, which
    re-runs the final evaluation, calibration and report from ``last.pt``.

    Raises:
        RunNotFoundError: nothing to resume in ``run_dir`` (the message says what to run).
    """
    paths = RunPaths(Path(run_dir))
    saved = load_config(paths.config) if paths.config.is_file() else None
    if saved is not None and saved.model.members > 1:
        if paths.is_finished and not redo_final:
            return _finished(paths)
        return _ensemble(saved, paths, progress, redo_final=redo_final)
    if not paths.last.is_file():
        if paths.config.is_file():
            raise RunNotFoundError(
                f"{paths.root}: nothing to resume (the run stopped before its first epoch "
                f"ended); start it again with `dermalab train -c {paths.config} --out "
                f"{paths.root}`")
        paths.require_model("--resume")  # says whether the folder exists and what to run
    if paths.is_finished and not redo_final:
        return _finished(paths)
    return _run(None, paths, load_checkpoint(paths.last), progress, trial_callback)


def _finished(paths: RunPaths) -> dict[str, Any]:
    metrics = read_metrics(paths)
    print(f"{paths.root} is finished (test balanced accuracy "
          f"{metrics.get('balanced_accuracy', float('nan')):.4f}); nothing to resume. "
          "--redo-final re-runs its final evaluation and report.", flush=True)
    return metrics


def run_or_reuse(cfg: ExperimentConfig, run_dir: str | Path, *, progress: bool = True
                 ) -> dict[str, Any]:
    """A finished run's metrics, a cut-off run resumed, or a new run of ``cfg``: what a batch of
    runs (a comparison, a benchmark) re-run after an interruption should do."""
    paths = RunPaths(Path(run_dir))
    if paths.is_finished:
        return read_metrics(paths)
    if paths.last.is_file() or paths.members.is_dir():
        return resume_run(paths.root, progress=progress)
    return train_run(cfg, paths.root, progress=progress)


def member_config(cfg: ExperimentConfig, index: int) -> ExperimentConfig:
    """Member ``index`` of an ensemble: the recipe as one model, seed ``train.seed + index``
    (exactly what ``dermalab train --set train.seed=...`` with that seed trains)."""
    return replace(cfg, ["model.members=1", f"train.seed={cfg.train.seed + index}"])


def _trained_part(cfg: ExperimentConfig) -> dict[str, Any]:
    """The config without ``tracking`` (where results are logged, not what is trained)."""
    out = to_dict(cfg)
    out.pop("tracking", None)
    return out


def _check_member(cfg: ExperimentConfig, paths: RunPaths) -> None:
    """A member folder that holds a run must hold a run of the member's own config."""
    if not paths.config.is_file():
        return
    saved, want = flatten(_trained_part(load_config(paths.config))), flatten(_trained_part(cfg))
    if saved != want:
        diff = sorted(k for k, v in want.items() if saved.get(k) != v)
        raise ConfigError(f"{paths.root} holds a run of another config ({', '.join(diff[:5])} "
                          "differ); move it away or train the ensemble into another --out")


def _combine(cfg: ExperimentConfig, paths: RunPaths, member_dirs: list[Path], progress: bool,
             started: float) -> None:
    tracker = Tracker(cfg.tracking, paths.root)
    tracker.start(f"{cfg.name} ({paths.root.resolve().name})")
    status = "FAILED"
    try:
        print(f"combining the {len(member_dirs)} members into {paths.root}", flush=True)
        first = RunPaths(member_dirs[0])
        data = prepare_data(cfg.data, int(read_metrics(first)["image_size"]),
                            split_path=first.splits, progress=progress)
        results = assemble_ensemble(cfg, paths, member_dirs, data)
        results["wall_seconds_this_session"] = round(time.perf_counter() - started, 1)
        tracker.log_params({**flatten(to_dict(cfg)), "n_classes": len(data.classes)})
        results = finalize_run(paths.root, data=data, results=results)
        _track_results(tracker, results, paths)
        print(summary(results, results["classes"]), flush=True)
        if cfg.tracking.upload_to:
            upload(paths, cfg.tracking.upload_to, progress)
        status = "FINISHED"
    finally:
        tracker.end(status)


def _ensemble(cfg: ExperimentConfig, paths: RunPaths, progress: bool,
              redo_final: bool = False) -> dict[str, Any]:
    """Train (or reuse, or resume) the members, combine them, and finish the combination as
    any run is finished."""
    paths.root.mkdir(parents=True, exist_ok=True)
    save_config(cfg, paths.config)
    k = cfg.model.members
    started = time.perf_counter()
    member_dirs = []
    for i in range(k):
        mcfg, mpaths = member_config(cfg, i), RunPaths(paths.member(i))
        if cfg.tracking.enabled and not cfg.tracking.uri:
            # The members log beside the ensemble, in its store, not in one of their own.
            mcfg = with_values(mcfg, {"tracking.uri": store_uri(cfg.tracking,
                                                                paths.root.resolve().parent)})
        _check_member(mcfg, mpaths)
        print(f"ensemble member {i + 1} of {k} (train.seed={mcfg.train.seed}): {mpaths.root}",
              flush=True)
        run_or_reuse(mcfg, mpaths.root, progress=progress)
        member_dirs.append(mpaths.root)
    # Under DDP every process trained the members; one combines them.
    accelerator = make_accelerator(cfg.train)
    if accelerator.is_main_process and (redo_final or not paths.is_finished):
        _combine(cfg, paths, member_dirs, progress, started)
    accelerator.wait_for_everyone()
    return read_metrics(paths)


def set_eval(run: LoadedRun, overrides: list[str]) -> None:
    """Apply ``eval.*`` overrides to a finished run (its best checkpoint's config and
    ``config.yaml``): they change the final analysis (operating point, calibration bins,
    serving detectors...), never the trained weights, so other keys are refused."""
    wrong = [o for o in overrides if not o.strip().startswith("eval.")]
    if wrong:
        raise ConfigError(f"report --set takes eval.* settings only (the model is already "
                          f"trained): {', '.join(wrong)}")
    run.config = replace(run.config, overrides)
    ckpt = load_checkpoint(run.paths.best)
    ckpt.pop("format", None)
    ckpt["config"] = to_dict(run.config)
    save_checkpoint(ckpt, run.paths.best)
    save_config(run.config, run.paths.config)


def finalize_run(run_dir: str | Path, *, data: PreparedData | None = None,
                 progress: bool = False, serving: bool | None = None,
                 eval_overrides: list[str] | None = None,
                 results: dict[str, Any] | None = None) -> dict[str, Any]:
    """The served decision, its measurement with intervals, subgroups, plots, gallery, serving
    detectors and report for a run whose best checkpoint has been evaluated, and then, last,
    ``metrics.json`` (so "finished" means finished). Idempotent: ``dermalab report``.

    ``results`` is what training and evaluation recorded (default: the run's
    ``metrics.json``, for a finished run); ``serving`` overrides the run's ``eval.serving``
    (fit the web service's detectors or not); ``eval_overrides`` (``eval.key=value``) change
    its evaluation settings first (:func:`set_eval`).

    Returns the ``metrics.json`` content.
    """
    run = load_run(run_dir, command="report")
    if eval_overrides:
        set_eval(run, eval_overrides)
    paths, cfg = run.paths, run.config
    metrics = dict(results) if results is not None else read_metrics(paths)
    if data is None:
        data = prepare_data(cfg.data, run.info.image_size, split_path=paths.splits,
                            progress=progress)
    for stale in FINAL_KEYS:  # what this stage owns, e.g. eval.metadata may be off now
        metrics.pop(stale, None)
    if data.split.ids("val") and data.split.ids("test"):
        val = saved_predictions(run, data, "val")
        test = saved_predictions(run, data, "test")
        metrics.update(calibrate_and_analyse(run, data, val, test))
        if cfg.eval.serving if serving is None else serving:
            metrics["serving"] = fit_serving(run, data, val)
    elif data.split.ids("test"):
        metrics.update(measure_without_validation(run, data, saved_predictions(run, data,
                                                                               "test")))
    write_run_plots(_history_rows(paths), metrics, run.info.classes, paths)
    write_metrics(paths, metrics)
    if cfg.eval.report:
        write_report(paths.root)
    if metrics.get("temperature_warning"):
        print(f"warning: {metrics['temperature_warning']}", flush=True)
    return metrics


def _history_rows(paths: RunPaths) -> list[dict[str, Any]]:
    """The run's ``history.csv`` rows (none for an ensemble, whose members have them)."""
    import csv

    if not paths.history.is_file():
        return []
    with open(paths.history, newline="", encoding="utf-8") as f:
        return [{k: (v if v != "" else None) for k, v in row.items()}
                for row in csv.DictReader(f)]


def _log_setup(tracker: Tracker, t: Training) -> None:
    """Parameters, and the class table as an artifact: class names come from users' folders
    and may hold any character, which MLflow refuses in parameter keys."""
    tracker.log_params({**flatten(to_dict(t.cfg)), "n_classes": len(t.info.classes),
                        "image_size": t.info.image_size, "weights_origin": t.weights_origin})
    counts = t.data.counts()  # split -> class -> images
    tracker.log_dict({"classes": [{"index": i, "class": c,
                                   **{f"n_{sp}": n[c] for sp, n in counts.items()}}
                                  for i, c in enumerate(t.info.classes)]},
                     "class_counts.json")
    tracker.backfill(t.state.history)


def _run(cfg: ExperimentConfig | None, paths: RunPaths, resume: dict[str, Any] | None,
         progress: bool, trial_callback: Callable[[int, float], None] | None
         ) -> dict[str, Any]:
    t = setup_training(cfg, paths, resume=resume, progress=progress)
    announce(t)
    tracker = Tracker(t.cfg.tracking, paths.root, active=t.is_main)
    # The run folder's name tells runs of one recipe apart in the MLflow UI.
    t.state.mlflow_run_id = tracker.start(f"{t.cfg.name} ({paths.root.resolve().name})",
                                          resume_id=t.state.mlflow_run_id)
    status = "FAILED"  # whatever fails from here on ends the MLflow run as FAILED
    try:
        _log_setup(tracker, t)
        state = fit(t, progress=progress, trial_callback=trial_callback,
                    on_epoch=lambda row: tracker.log_metrics(
                        {k: v for k, v in row.items() if k not in ("epoch", "frozen_body")},
                        step=row["epoch"]))
        results = evaluate_training(t)
        results.update({
            "best_epoch": state.best_epoch, "epochs_run": len(state.history),
            "stopped_early": state.stopped_early, "monitor": t.cfg.train.monitor,
            "best_val_monitor": state.best_value, "image_size": t.info.image_size,
            "backbone": t.info.backbone, "weights_origin": t.weights_origin,
            "parameters": count_parameters(t.accelerator.unwrap_model(t.model)),
            "wall_seconds_this_session": round(time.perf_counter() - t.started, 1),
            "train_seconds_total": round(sum(float(r["epoch_seconds"])
                                             for r in state.history), 1),
            "mlflow_run_id": state.mlflow_run_id, "processes": t.accelerator.num_processes,
        })
        if t.is_main:
            results = finalize_run(paths.root, data=t.data, results=results)
            _track_results(tracker, results, paths)
            print(summary(results, t.info.classes), flush=True)
            if t.cfg.tracking.upload_to:
                upload(paths, t.cfg.tracking.upload_to, progress)
        status = "FINISHED"
        return results
    except StopTraining:
        status = "KILLED"
        raise
    finally:
        tracker.end(status)


def _track_results(tracker: Tracker, results: dict[str, Any], paths: RunPaths) -> None:
    tracker.log_metrics({f"test_{k}": results.get(k) for k in TEST_KEYS})
    if results.get("malignant"):
        tracker.log_metrics({f"test_malignant_{k}": results["malignant"][k]
                             for k in ("sensitivity", "specificity", "threshold")})
    for p in [paths.metrics, paths.history, paths.config, paths.splits, paths.report,
              *sorted(paths.plots.glob("*.png"))]:
        tracker.log_artifact(p)


def upload(paths: RunPaths, upload_to: str, progress: bool) -> None:
    """Push the run directory to ``upload_to/<run folder name>`` (verified)."""
    from dermalab.data.s3 import push

    dest = f"{upload_to.rstrip('/')}/{paths.root.resolve().name}"
    res = push(paths.root, dest, progress=progress)
    print(f"uploaded the run to {dest} ({res.transferred} files sent, {res.skipped} unchanged, "
          "all verified)", flush=True)


def next_steps(paths: RunPaths) -> str:
    """Where the run went and what to run next."""
    root = paths.root
    lines = ["", f"run: {root}"]
    if paths.report.is_file():
        lines.append(f"report: {paths.report}")
    lines += ["next:",
              f"  dermalab evaluate {root}   # metrics again, on another split or --data",
              f"  dermalab export {root}     # ONNX model for fast CPU inference",
              f"  dermalab serve {root}      # the web page and API"]
    return "\n".join(lines)


def _malignant_line(results: dict[str, Any]) -> list[str]:
    mal = results.get("malignant")
    if not mal or mal.get("sensitivity") is None:
        return []
    iv = mal.get("intervals") or {}

    def part(key: str) -> str:
        return with_interval(mal.get(key), iv.get(key), digits=3, missing="-")

    return [f"  possibly malignant ({'+'.join(mal['classes'])} >= {mal['threshold']:.3f}): "
            f"sensitivity {part('sensitivity')}   specificity {part('specificity')}"]


def summary(results: dict[str, Any], classes: list[str]) -> str:
    """One screen: the served answer's test metrics with their intervals, and the per-class
    table."""
    if "balanced_accuracy" not in results:
        return "\nno test split: nothing was measured (set data.split_ratios with a test part)"
    auc = results.get("roc_auc_macro")
    ci = results.get("intervals") or {}

    def with_ci(key: str) -> str:
        return with_interval(results.get(key), ci.get(key))

    members = results.get("members")
    chosen = (f"an ensemble of {len(members)} runs, best epochs "
              + ", ".join(f"{m['best_epoch']} of {m['epochs_run']}" for m in members)
              if members else f"best epoch {results['best_epoch']} of {results['epochs_run']}")
    lines = [
        "",
        f"test ({results['n']} images, {chosen}); the served answer for a photo alone"
        + (f", 95% intervals over {results['served']['bootstrap']} lesion-grouped resamples"
           if ci and results.get("served") else "") + ":",
        f"  balanced accuracy {with_ci('balanced_accuracy')}   accuracy {with_ci('accuracy')}",
        f"  macro-F1 {with_ci('macro_f1')}   ROC-AUC (macro OvR) "
        + (with_ci("roc_auc_macro") if auc is not None
           else "undefined (a class is missing from test)"),
        *_malignant_line(results),
        "",
        f"  {'class':<10}{'precision':>10}{'recall':>10}{'f1':>10}{'auc':>10}{'support':>10}",
    ]
    for c in classes:
        r = results["per_class"][c]
        a = f"{r['roc_auc']:.3f}" if r["roc_auc"] is not None else "-"
        lines.append(f"  {c:<10}{r['precision']:>10.3f}{r['recall']:>10.3f}{r['f1']:>10.3f}"
                     f"{a:>10}{r['support']:>10}")
    return "\n".join(lines)
