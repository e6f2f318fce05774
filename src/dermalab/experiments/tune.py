"""Bayesian hyperparameter search: Optuna's TPE sampler over any config keys, with pruning.

Each trial is an ordinary training run (``pipeline.train_run``, as ``dermalab train``) in
``OUT/trials/trial_NNNN``, reporting its monitored validation value after every epoch so that
the pruner can stop hopeless trials (median rule, or Hyperband: Li et al. 2018). The objective
is the best validation value of ``train.monitor`` (balanced accuracy by default); the test
split is never looked at. All trials share one split, written once to ``OUT/splits.csv``.

Several workers, on one machine or many, share a study through its storage (SQLite by default;
a PostgreSQL URL for several machines). Every worker runs trials until the study holds the
requested number of live (finished, pruned or running) trials. Workers send heartbeats; the
trial of a killed worker is marked failed once its heartbeat stops and is retried once with
the same parameters, resuming the killed run's last checkpoint, by whichever worker comes next
(or by re-running the command).

Tracking: one MLflow parent run per study (its id kept in the study; elected when workers
start together), each trial a child run (``mlflow.parentRunId`` tag). Outputs in ``OUT``:
``best_config.yaml`` (the base recipe with the best parameters, ready for ``dermalab train
-c``), ``trials.csv``/``trials.md``, ``optimization_history.png`` and ``param_importances.png``
(fANOVA), also logged to the parent run.
"""

from __future__ import annotations

import csv
import json
import math
import os
import random
import socket
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import sqlalchemy.exc
import yaml

from dermalab.core.atomic import atomic_write_text
from dermalab.core.config import ExperimentConfig, load_config, save_config, with_values
from dermalab.core.errors import ConfigError, DermalabError, StopTraining, TrainingDivergedError
from dermalab.core.runs import RunPaths
from dermalab.core.tracking import child_tracking, elect_parent_run, store_uri

KINDS = ("loguniform", "uniform", "int", "categorical")
# Per-trial outputs nobody looks at during a search; `--set` may turn them back on.
TRIAL_DEFAULTS = ["eval.report=false", "eval.serving=false", "eval.gallery=0"]
# A trial is one model: an ensemble's members are runs of one recipe, so the search finds the
# recipe and best_config.yaml keeps the base config's model.members for the final training.
TRIAL_MEMBERS = "model.members=1"
LIVE_STATES = ("COMPLETE", "PRUNED", "RUNNING", "WAITING")


class _Surplus(Exception):  # noqa: N818
    """The study already had its trials when this one started."""


@dataclass(frozen=True)
class Param:
    """One searched config key and its distribution."""

    key: str
    kind: str
    low: float | None = None
    high: float | None = None
    step: float | None = None
    log: bool = False
    choices: tuple[Any, ...] = ()


@dataclass(frozen=True)
class SearchSpace:
    """The searched keys, plus trials to run first (known-good settings)."""

    params: list[Param]
    enqueue: list[dict[str, Any]] = field(default_factory=list)


@dataclass(frozen=True)
class TuneOptions:
    """What ``dermalab tune`` was asked to do."""

    config: str | None
    search: str
    trials: int
    out: str
    sets: list[str] = field(default_factory=list)
    storage: str | None = None  # default sqlite:///OUT/study.db
    study: str | None = None  # default: the config's name
    pruner: str = "median"  # median | hyperband | none
    seed: int | None = None  # sampler seed; leave unset when several workers share a study
    heartbeat: int = 30  # seconds; a trial silent for 2x this is taken as dead
    progress: bool = False


def load_space(path: str | Path, base: ExperimentConfig) -> SearchSpace:
    """Read a search-space YAML: ``key: {type: loguniform|uniform|int|categorical, low, high,
    [step, log] | choices}`` per config key (under ``params:`` or at the top level), and an
    optional ``enqueue:`` list of ``{key: value}`` trials to run first.

    Raises:
        ConfigError: unreadable file, unknown config key, unknown type, bad bounds or choices,
            or a value the config rejects.
    """
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"search space file not found: {p}")
    try:
        doc = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"search space {p} is not valid YAML: {exc}") from exc
    if not isinstance(doc, dict):
        raise ConfigError(f"search space {p} must be a mapping of config keys")
    enqueue = doc.get("enqueue") or []
    raw = doc["params"] if "params" in doc else {k: v for k, v in doc.items() if k != "enqueue"}
    if not raw:
        raise ConfigError(f"search space {p} names no parameters")
    params = []
    for key, spec in raw.items():
        if not isinstance(spec, dict) or spec.get("type") not in KINDS:
            raise ConfigError(f"search space {p}: '{key}' needs type one of {KINDS}, got {spec!r}")
        kind = spec["type"]
        if kind == "categorical":
            choices = spec.get("choices")
            if not isinstance(choices, list) or not choices:
                raise ConfigError(f"search space {p}: '{key}' needs a non-empty choices list")
            param = Param(key, kind, choices=tuple(choices))
            probes = list(choices)
        else:
            try:
                low, high = float(spec["low"]), float(spec["high"])
            except (KeyError, TypeError, ValueError):
                raise ConfigError(f"search space {p}: '{key}' needs numeric low and high"
                                  ) from None
            if not low < high or (kind == "loguniform" and low <= 0):
                raise ConfigError(f"search space {p}: '{key}' needs low < high"
                                  + (" and low > 0" if kind == "loguniform" else ""))
            step = spec.get("step")
            param = Param(key, kind, low, high, None if step is None else float(step),
                          log=kind == "loguniform" or bool(spec.get("log", False)))
            probes = [int(low), int(high)] if kind == "int" else [low, high]
        for value in probes:  # every key and value must make a valid config
            try:
                with_values(base, {key: value})
            except ConfigError as exc:
                raise ConfigError(f"search space {p}: '{key}': {exc}") from None
        params.append(param)
    if not isinstance(enqueue, list) or not all(isinstance(e, dict) for e in enqueue):
        raise ConfigError(f"search space {p}: enqueue must be a list of mappings")
    names = {q.key for q in params}
    for e in enqueue:
        unknown = sorted(set(e) - names)
        if unknown:
            raise ConfigError(f"search space {p}: enqueued keys {unknown} are not searched")
    return SearchSpace(params, [dict(e) for e in enqueue])


def suggest(trial: Any, p: Param) -> Any:
    """The trial's value for one parameter."""
    if p.kind == "categorical":
        return trial.suggest_categorical(p.key, list(p.choices))
    assert p.low is not None and p.high is not None
    if p.kind == "int":
        return trial.suggest_int(p.key, int(p.low), int(p.high), step=int(p.step or 1),
                                 log=p.log)
    return trial.suggest_float(p.key, p.low, p.high, step=p.step, log=p.log)


def _pruner(name: str, epochs: int) -> Any:
    import optuna

    if name == "median":
        # Two finished trials before judging; epoch 1 (often a frozen-body warm-up) is not judged.
        return optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=2)
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=max(epochs, 2))
    if name == "none":
        return optuna.pruners.NopPruner()
    raise ConfigError(f"pruner must be median, hyperband or none, got {name!r}")


def _count(study: Any, states: tuple[str, ...]) -> int:
    import optuna

    wanted = tuple(getattr(optuna.trial.TrialState, s) for s in states)
    return len(study.get_trials(deepcopy=False, states=wanted))


def open_study(opts: TuneOptions, base: ExperimentConfig) -> Any:
    """Create or load the study (same name, same storage: the same study)."""
    import optuna
    from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback

    url = opts.storage or f"sqlite:///{(Path(opts.out) / 'study.db').resolve()}"
    direction: Literal["minimize", "maximize"] = (
        "minimize" if base.train.monitor == "loss" else "maximize")
    for attempt in range(5):
        try:
            storage = RDBStorage(url, heartbeat_interval=opts.heartbeat,
                                 grace_period=2 * opts.heartbeat,
                                 heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(
                                     max_retry=1))
            sampler = optuna.samplers.TPESampler(
                seed=opts.seed, multivariate=True,
                n_startup_trials=max(2, min(10, opts.trials // 3)))
            study = optuna.create_study(
                study_name=opts.study or base.name, storage=storage, sampler=sampler,
                pruner=_pruner(opts.pruner, base.train.epochs), direction=direction,
                load_if_exists=True)
            break
        except sqlalchemy.exc.SQLAlchemyError:
            # Workers started together on a fresh database race to create Optuna's tables;
            # the loser fails on a duplicate object and finds them made on the next try.
            if attempt == 4:
                raise
            time.sleep(1 + random.random() * 2)
    if study.direction.name.lower() != direction:
        raise ConfigError(f"study '{study.study_name}' was created to {study.direction.name} "
                          f"but train.monitor={base.train.monitor} needs {direction}")
    return study


def _parent_run(base: ExperimentConfig, study: Any, out: Path) -> tuple[str | None, str | None]:
    """The study's MLflow parent run (created by the first worker); returns (uri, run id)."""
    if not base.tracking.enabled:
        return None, None
    uri = store_uri(base.tracking, out)
    run_id = study.user_attrs.get("mlflow_parent_run_id")
    if run_id is None:
        # Workers started together all find no parent yet: they elect one.
        run_id = elect_parent_run(base.tracking, uri, f"tune:{study.study_name}",
                                  {"dermalab.study": study.study_name},
                                  key=f"tune:{study.study_name}")
        study.set_user_attr("mlflow_parent_run_id", run_id)
    return uri, run_id


def run_trial(trial: Any, space: SearchSpace, base: ExperimentConfig, out: Path,
              mlflow: tuple[str | None, str | None], progress: bool) -> float:
    """One trial: suggest, train with pruning, return the best validation value."""
    import optuna
    from optuna.storages import RetryHeartbeatStaleTrialCallback

    from dermalab.pipeline import resume_run, train_run

    values = {p.key: suggest(trial, p) for p in space.params}
    cfg = with_values(base, values)
    uri, parent = mlflow
    if parent is not None:
        assert uri is not None
        cfg = with_values(cfg, child_tracking(cfg.tracking, uri, parent, {
            "dermalab.study": trial.study.study_name, "dermalab.trial": str(trial.number)}))
    trial.set_user_attr("worker", f"{socket.gethostname()}:{os.getpid()}")
    frozen = next(t for t in trial.study.get_trials(deepcopy=False) if t.number == trial.number)
    retried = RetryHeartbeatStaleTrialCallback.retried_trial_number(frozen)
    run_dir = out / "trials" / f"trial_{trial.number:04d}"
    resume = False
    if retried is not None:
        old = out / "trials" / f"trial_{retried:04d}"
        if RunPaths(old).last.is_file():
            # Carry on the killed trial's run rather than repeat its finished epochs.
            run_dir, resume = old, True
            with open(RunPaths(old).history) as f:
                for row in csv.DictReader(f):
                    trial.report(_row_value(row, cfg.train.monitor), int(row["epoch"]))
    trial.set_user_attr("run_dir", str(run_dir))

    def report(epoch: int, value: float) -> None:
        trial.report(value, epoch)
        if trial.should_prune():
            raise StopTraining(f"pruned after epoch {epoch}")

    try:
        res = (resume_run(run_dir, progress=progress, trial_callback=report) if resume
               else train_run(cfg, run_dir, progress=progress, trial_callback=report))
    except StopTraining:
        raise optuna.TrialPruned() from None
    trial.set_user_attr("epochs_run", res["epochs_run"])
    value = float(res["best_val_monitor"])
    if not math.isfinite(value):
        raise DermalabError(f"trial {trial.number} ended with a non-finite validation value")
    return value


def _row_value(row: dict[str, str], monitor: str) -> float:
    return float(row["val_loss"] if monitor == "loss" else row[f"val_{monitor}"])


def tune(opts: TuneOptions) -> dict[str, Any]:
    """Run trials (as one worker of the study) until it has ``opts.trials`` live trials, then
    write the study's results; returns a summary."""
    import optuna
    from optuna.storages import fail_stale_trials

    from dermalab.data.inspect import shared_split

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    # Heartbeats and stale-trial retries are marked experimental; they are what we rely on.
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    if opts.trials < 1:
        raise ConfigError("--trials must be at least 1")
    out = Path(opts.out)
    out.mkdir(parents=True, exist_ok=True)
    user = load_config(opts.config, opts.sets)
    space = load_space(opts.search, user)
    base = shared_split(load_config(opts.config, [*TRIAL_DEFAULTS, *opts.sets,
                                                  TRIAL_MEMBERS]), out)
    if user.model.members > 1:
        print(f"tune: each trial trains one model (model.members={user.model.members} is "
              "kept in best_config.yaml for the final training)", flush=True)
    study = open_study(opts, base)
    if space.enqueue and not study.user_attrs.get("enqueued"):
        study.set_user_attr("enqueued", True)
        for params in space.enqueue:
            study.enqueue_trial(params, skip_if_exists=True)
    mlflow = _parent_run(base, study, out)
    ran = diverged = 0

    def objective(trial: Any) -> float:
        live_before = sum(1 for t in study.get_trials(deepcopy=False)
                          if t.number < trial.number and t.state.name in LIVE_STATES)
        if live_before >= opts.trials:
            # Another worker took the last slot between our count and this trial: give it back.
            trial.set_user_attr("surplus", True)
            raise _Surplus
        return run_trial(trial, space, base, out, mlflow, opts.progress)

    while True:
        fail_stale_trials(study)  # a killed worker's trial: FAIL, and queued again once
        waiting = _count(study, ("WAITING",))
        if _count(study, LIVE_STATES) - waiting >= opts.trials and not waiting:
            break
        failed = _count(study, ("FAIL",))
        try:
            # optimize() keeps the trial's heartbeat and records PRUNED/FAIL states; a diverged
            # trial is a finding about its parameters (FAIL), not a reason to stop the search.
            study.optimize(objective, n_trials=1, catch=(TrainingDivergedError,),
                           callbacks=[_announce_trial])
        except _Surplus:
            break
        ran += 1
        if _count(study, ("FAIL",)) > failed:
            diverged += 1
            if diverged >= max(3, opts.trials):
                raise DermalabError(f"{diverged} trials diverged in this worker; narrow the "
                                    "search space (learning rate, loss parameters)")
    summary = write_results(study, space, user, out, mlflow)
    summary["ran_here"] = ran
    return summary


def _announce_trial(study: Any, trial: Any) -> None:
    """One line per finished trial: number, state, value, parameters, time, best so far."""
    if trial.user_attrs.get("surplus"):
        return
    value = "" if trial.value is None else f" value {trial.value:.4f}"
    seconds = ((trial.datetime_complete - trial.datetime_start).total_seconds()
               if trial.datetime_complete and trial.datetime_start else 0.0)
    try:
        best = f"; best so far {study.best_value:.4f} (trial {study.best_trial.number})"
    except ValueError:  # no trial completed yet
        best = ""
    print(f"trial {trial.number}: {trial.state.name.lower()}{value} "
          f"{json.dumps(trial.params)} ({seconds:.0f}s){best}", flush=True)


#: Fewer finished trials than this and fANOVA importances are mostly noise.
MIN_TRIALS_FOR_IMPORTANCE = 10


def trial_rows(study: Any) -> list[dict[str, Any]]:
    """One row per trial (surplus placeholders left out)."""
    rows = []
    for t in study.get_trials(deepcopy=False):
        if t.user_attrs.get("surplus"):
            continue
        seconds = ((t.datetime_complete - t.datetime_start).total_seconds()
                   if t.datetime_complete and t.datetime_start else None)
        rows.append({"number": t.number, "state": t.state.name, "value": t.value,
                     "last_epoch": max(t.intermediate_values, default=None),
                     "epochs_run": t.user_attrs.get("epochs_run"),
                     "seconds": None if seconds is None else round(seconds, 1),
                     "worker": t.user_attrs.get("worker"), **t.params})
    return rows


def write_results(study: Any, space: SearchSpace, user: ExperimentConfig, out: Path,
                  mlflow: tuple[str | None, str | None]) -> dict[str, Any]:
    """``best_config.yaml``, ``trials.csv``/``.md``, plots; logged to the MLflow parent."""
    import optuna

    rows = trial_rows(study)
    keys = [p.key for p in space.params]
    cols = ["number", "state", "value", "last_epoch", "epochs_run", "seconds", "worker", *keys]
    atomic_write_text(out / "trials.csv", _csv(rows, cols))
    done = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    summary: dict[str, Any] = {
        "study": study.study_name, "direction": study.direction.name.lower(),
        "trials": len(rows), "states": {s: sum(1 for r in rows if r["state"] == s)
                                        for s in sorted({r["state"] for r in rows})},
    }
    md = [f"# Study `{study.study_name}`", "",
          f"Objective: best validation `{user.train.monitor}` ({summary['direction']}); "
          f"trials: {summary['states']}.", "",
          "| " + " | ".join(cols) + " |", "|" + " --- |" * len(cols)]
    md += ["| " + " | ".join(_cell(r.get(c)) for c in cols) + " |" for r in rows]
    if done:
        best = study.best_trial
        best_cfg = with_values(user, best.params)
        save_config(best_cfg, out / "best_config.yaml")
        summary.update({"best_trial": best.number, "best_value": best.value,
                        "best_params": best.params,
                        "best_run_dir": best.user_attrs.get("run_dir")})
        md[2:2] = [f"Best: trial {best.number}, value {best.value:.4f}, "
                   f"params `{json.dumps(best.params)}`; ready to train: "
                   f"`dermalab train -c {out / 'best_config.yaml'}`.", ""]
        _plots(study, out)
        if len(done) < MIN_TRIALS_FOR_IMPORTANCE and (out / "param_importances.png").is_file():
            summary["importance_warning"] = (
                f"parameter importances from {len(done)} finished trial(s) mean little (fewer "
                f"than {MIN_TRIALS_FOR_IMPORTANCE}); run more trials before trusting them")
            md[2:2] = [f"Note: {summary['importance_warning']}.", ""]
    atomic_write_text(out / "trials.md", "\n".join(md) + "\n")
    atomic_write_text(out / "summary.json", json.dumps(summary, indent=2, default=str))
    uri, parent = mlflow
    if parent is not None:
        import mlflow as mlf

        client = mlf.MlflowClient(tracking_uri=uri)
        if done:
            client.log_metric(parent, "best_value", float(study.best_value))
            for k, v in study.best_params.items():
                client.set_tag(parent, f"best.{k}", str(v))
        for name in ("trials.csv", "trials.md", "best_config.yaml",
                     "optimization_history.png", "param_importances.png"):
            if (out / name).is_file():
                client.log_artifact(parent, str(out / name))
        if _count(study, ("RUNNING", "WAITING")) == 0:
            client.set_terminated(parent, "FINISHED")
    return summary


def _plots(study: Any, out: Path) -> None:
    import warnings

    import matplotlib

    matplotlib.use("Agg")
    import optuna.visualization.matplotlib as ovm

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Optuna marks its matplotlib plots experimental
        ax = ovm.plot_optimization_history(study)
        _save(ax, out / "optimization_history.png")
        complete = [t for t in study.trials if t.state.name == "COMPLETE"]
        varied = {k for k in study.best_params
                  if len({json.dumps(t.params.get(k)) for t in complete}) > 1}
        if len(complete) >= 2 and varied:
            ax = ovm.plot_param_importances(study, params=sorted(varied))
            _save(ax, out / "param_importances.png")


def _save(ax: Any, path: Path) -> None:
    import matplotlib.pyplot as plt

    fig = ax.get_figure(root=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


def _cell(v: Any) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def _csv(rows: list[dict[str, Any]], cols: list[str]) -> str:
    import io

    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=cols, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    return buf.getvalue()
