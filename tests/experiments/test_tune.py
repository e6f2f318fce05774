"""``dermalab tune`` and ``dermalab compare`` on tiny data: outputs, pruning, MLflow parent and
child runs, two workers on one PostgreSQL study, and a killed worker's trial carried on."""

from __future__ import annotations

import csv
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dermalab.cli import main
from dermalab.core.config import load_config
from dermalab.core.errors import ConfigError
from dermalab.experiments.tune import load_space
from tests import pgserver
from tests.conftest import write_photo_dataset

TRIAL = ["eval.bootstrap=50", "data.image_size=64", "train.batch_size=8", "train.patience=0",
         "model.freeze_epochs=1", "sched.name=step", "data.sampler=oversample"]


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_photo_dataset(tmp_path_factory.mktemp("tune") / "photos", per_class=20)


def _space(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_search_space_is_validated(tmp_path: Path) -> None:
    base = load_config(None, [])
    ok = load_space(_space(tmp_path / "ok.yaml", """
params:
  optim.lr: {type: loguniform, low: 1.0e-4, high: 1.0e-2}
  train.epochs: {type: int, low: 2, high: 5}
  optim.name: {type: categorical, choices: [adamw, sgd]}
enqueue:
  - {optim.lr: 0.001}
"""), base)
    assert [p.key for p in ok.params] == ["optim.lr", "train.epochs", "optim.name"]
    assert ok.params[0].log and ok.enqueue == [{"optim.lr": 0.001}]
    bad = {
        "optim.lrr: {type: uniform, low: 0, high: 1}": "unknown config key",
        "optim.lr: {type: gaussian, low: 0, high: 1}": "needs type one of",
        "optim.lr: {type: uniform, low: 1, high: 1}": "needs low < high",
        "optim.lr: {type: loguniform, low: 0, high: 1}": "low > 0",
        "optim.name: {type: categorical, choices: []}": "non-empty choices",
        "optim.name: {type: categorical, choices: [adamw, lion]}": "must be one of",
        "train.epochs: {type: int, low: a, high: 3}": "numeric low and high",
        "optim.lr: {type: uniform, low: 0.1, high: 1}\nenqueue: [{optim.wd: 1}]": "not searched",
    }
    for text, message in bad.items():
        with pytest.raises(ConfigError, match=message):
            load_space(_space(tmp_path / "bad.yaml", text), base)


def test_tiny_search_writes_results_prunes_a_hopeless_trial_and_nests_mlflow_runs(
        photos: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Two sound learning rates, then one too small to learn anything in 3 epochs: the median
    pruner must stop that one after epoch 2 (epoch 1 is never judged)."""
    space = _space(tmp_path / "space.yaml", """
params:
  optim.lr: {type: loguniform, low: 1.0e-9, high: 1.0e-2}
enqueue:
  - {optim.lr: 0.003}
  - {optim.lr: 0.002}
  - {optim.lr: 1.0e-9}
""")
    out = tmp_path / "study"
    code = main(["tune", "--data", str(photos), "--search", str(space), "--trials", "3",
                 "--out", str(out), "--seed", "0", "--no-progress", "--set", *TRIAL,
                 "train.epochs=3", "model.members=2"])
    assert code == 0
    printed = capsys.readouterr().out
    # Trials are single models; the recipe's ensemble size is kept for the final training.
    assert "each trial trains one model (model.members=2 is kept" in printed
    summary = json.loads((out / "summary.json").read_text())
    assert f"ready to train: dermalab train -c {out / 'best_config.yaml'}" in printed
    # One line per trial as it finishes, with its parameters and result.
    assert re.search(r"^trial 0: complete value [0-9.]+ \{\"optim\.lr\": 0\.003\}", printed,
                     re.M), printed
    assert re.search(r"^trial 2: pruned value [0-9.]+ \{\"optim\.lr\": 1e-09\}", printed,
                     re.M), printed
    assert "importances from 2 finished trial(s) mean little" in printed
    assert summary["states"] == {"COMPLETE": 2, "PRUNED": 1}
    with open(out / "trials.csv") as f:
        rows = {int(r["number"]): r for r in csv.DictReader(f)}
    assert rows[2]["state"] == "PRUNED" and float(rows[2]["optim.lr"]) == pytest.approx(1e-9)
    assert rows[2]["last_epoch"] == "2"
    with open(out / "trials" / "trial_0002" / "history.csv") as f:
        assert len(list(csv.DictReader(f))) == 2  # it really stopped training
    assert not (out / "trials" / "trial_0002" / "metrics.json").exists()
    best = load_config(out / "best_config.yaml")
    assert summary["best_trial"] in (0, 1)
    assert best.optim.lr == pytest.approx(summary["best_params"]["optim.lr"])
    assert best.eval.report  # the tuner's per-trial shortcuts stay out of the recipe
    assert best.model.members == 2
    assert best.data.split_file is None and best.data.source == str(photos)
    best_metrics = json.loads((out / "trials" / f"trial_{summary['best_trial']:04d}" /
                               "metrics.json").read_text())
    assert summary["best_value"] == pytest.approx(best_metrics["best_val_monitor"])
    for png in ("optimization_history.png", "param_importances.png"):
        assert (out / png).stat().st_size > 5000, png
    # Every trial used the one split written by the tuner.
    for n in range(3):
        cfg = load_config(out / "trials" / f"trial_{n:04d}" / "config.yaml")
        assert cfg.data.split_file == str((out / "splits.csv").resolve())
        assert cfg.model.members == 1

    import mlflow

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{out / 'mlflow.db'}")
    exp = client.get_experiment_by_name("dermalab")
    runs = client.search_runs([exp.experiment_id])
    parents = [r for r in runs if r.info.run_name.startswith("tune:")]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId")]
    assert len(parents) == 1 and len(children) == 3 and len(runs) == 4
    assert {r.data.tags["mlflow.parentRunId"] for r in children} == {parents[0].info.run_id}
    status = {r.data.tags["dermalab.trial"]: r.info.status for r in children}
    assert status == {"0": "FINISHED", "1": "FINISHED", "2": "KILLED"}
    assert parents[0].data.metrics["best_value"] == pytest.approx(summary["best_value"])
    assert parents[0].info.status == "FINISHED"


def _tune_cmd(photos: Path, space: Path, out: Path, trials: int, *extra: str) -> list[str]:
    return [sys.executable, "-m", "dermalab", "tune", "--data", str(photos), "--search",
            str(space), "--trials", str(trials), "--out", str(out), "--no-progress", *extra]


def _load_study(url: str, name: str):  # type: ignore[no-untyped-def]
    import optuna

    return optuna.load_study(study_name=name, storage=url)


def _wait_until_stale(url: str, name: str, grace_s: int, deadline_s: float = 60) -> None:
    """Poll the study until the killed worker's running trial is stale (its last heartbeat
    older than the grace period), so the rerun is certain to find it dead; no fixed sleep."""
    from optuna.storages import RDBStorage

    storage = RDBStorage(url, heartbeat_interval=1, grace_period=grace_s)
    study_id = storage.get_study_id_from_name(name)
    deadline = time.time() + deadline_s
    while not storage._get_stale_trial_ids(study_id):
        assert time.time() < deadline, "the killed trial never went stale"
        time.sleep(0.1)


@pytest.mark.slow
def test_two_workers_share_one_postgresql_study(photos: Path, tmp_path: Path) -> None:
    if not pgserver.available():
        pytest.skip("PostgreSQL server binaries not installed (Debian postgresql-15)")
    space = _space(tmp_path / "space.yaml", """
optim.lr: {type: loguniform, low: 1.0e-3, high: 1.0e-2}
""")
    out = tmp_path / "shared"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    with pgserver.postgres("optuna") as url:
        cmd = _tune_cmd(photos, space, out, 4, "--storage", url, "--study", "two",
                        "--set", *TRIAL, "train.epochs=1", "tracking.enabled=false")
        workers = [subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE,
                                    stderr=subprocess.STDOUT) for _ in range(2)]
        logs = [w.communicate(timeout=400)[0].decode() for w in workers]
        assert [w.returncode for w in workers] == [0, 0], logs
        trials = [t for t in _load_study(url, "two").trials if not t.user_attrs.get("surplus")]
    assert sorted(t.number for t in trials) == [0, 1, 2, 3]
    assert [t.state.name for t in trials] == ["COMPLETE"] * 4
    assert len({t.user_attrs["worker"] for t in trials}) == 2  # both workers ran trials
    dirs = [t.user_attrs["run_dir"] for t in trials]
    assert len(set(dirs)) == 4 and all((Path(d) / "metrics.json").is_file() for d in dirs)
    assert len({t.params["optim.lr"] for t in trials}) == 4
    assert sorted(p.name for p in (out / "trials").iterdir()) == [Path(d).name for d in dirs]


@pytest.mark.slow
def test_a_killed_worker_does_not_corrupt_the_study_and_a_rerun_carries_on(
        photos: Path, tmp_path: Path) -> None:
    space = _space(tmp_path / "space.yaml", "optim.lr: {type: uniform, low: 0.001, high: 0.01}\n")
    out = tmp_path / "killed"
    cmd = _tune_cmd(photos, space, out, 2, "--heartbeat", "1", "--set", *TRIAL,
                    "train.epochs=2", "tracking.enabled=false")
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    first = out / "trials" / "trial_0000"
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None and not (
            (first / "history.csv").is_file() and (first / "checkpoints" / "last.pt").is_file()):
        time.sleep(0.05)
    assert proc.poll() is None, proc.stdout.read().decode() if proc.stdout else ""
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    _wait_until_stale(f"sqlite:///{out / 'study.db'}", "run", grace_s=2)
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=400)
    assert res.returncode == 0, res.stdout + res.stderr
    trials = _load_study(f"sqlite:///{out / 'study.db'}", "run").trials
    states = [t.state.name for t in trials]
    assert states.count("COMPLETE") == 2 and states.count("FAIL") == 1
    killed = next(t for t in trials if t.state.name == "FAIL")
    retry = next(t for t in trials if t.system_attrs.get("failed_trial") == killed.number)
    assert retry.state.name == "COMPLETE" and retry.params == killed.params
    # The retry carried on the killed run: every epoch once, in one run directory.
    assert retry.user_attrs["run_dir"] == killed.user_attrs["run_dir"]
    with open(Path(retry.user_attrs["run_dir"]) / "history.csv") as f:
        assert [r["epoch"] for r in csv.DictReader(f)] == ["1", "2"]


def test_compare_trains_each_backbone_on_one_split(photos: Path, tmp_path: Path) -> None:
    out = tmp_path / "cmp"
    code = main(["compare", "--data", str(photos), "--backbones",
                 "tf_efficientnet_lite0,tf_efficientnet_lite0:scratch", "--out", str(out),
                 "--no-progress", "--set", *TRIAL, "train.epochs=2", "eval.report=false",
                 "eval.serving=false", "eval.gallery=0"])
    assert code == 0
    with open(out / "comparison.csv") as f:
        rows = list(csv.DictReader(f))
    assert [(r["backbone"], r["pretrained"]) for r in rows] == [
        ("tf_efficientnet_lite0", "True"), ("tf_efficientnet_lite0", "False")]
    for r in rows:
        m = json.loads((Path(r["run_dir"]) / "metrics.json").read_text())
        assert float(r["balanced_accuracy"]) == pytest.approx(m["balanced_accuracy"])
        # the columns to choose on are validation's
        assert float(r["val_balanced_accuracy"]) == pytest.approx(m["val"]["balanced_accuracy"])
        assert float(r["ms_per_image_b1"]) > 0 and float(r["parameters_m"]) == pytest.approx(
            m["parameters"] / 1e6, abs=0.01)
    splits = {(out / r["run_dir"].split("/")[-1] / "splits.csv").read_text() for r in rows}
    assert len(splits) == 1  # the same split for every backbone
    assert json.loads((out / "tf_efficientnet_lite0_scratch" / "metrics.json").read_text()
                      )["weights_origin"] == "random"
    assert "random init" in (out / "comparison.md").read_text()
    assert (out / "comparison.png").stat().st_size > 5000


def test_a_diverging_trial_is_recorded_as_failed_and_the_search_goes_on(
        photos: Path, tmp_path: Path) -> None:
    """A learning rate that blows the weights up must end that trial with a clear error
    (TrainingDivergedError, state FAIL) and leave the search to reach its trial count."""
    space = _space(tmp_path / "space.yaml", """
params:
  optim.lr: {type: loguniform, low: 1.0e-3, high: 1.0e+30}
enqueue:
  - {optim.lr: 1.0e+30}
  - {optim.lr: 0.003}
""")
    out = tmp_path / "diverge"
    assert main(["tune", "--data", str(photos), "--search", str(space), "--trials", "1",
                 "--out", str(out), "--no-progress", "--set", *TRIAL, "train.epochs=1",
                 "model.freeze_epochs=0", "optim.name=sgd", "tracking.enabled=false"]) == 0
    trials = _load_study(f"sqlite:///{out / 'study.db'}", "run").trials
    assert [(t.state.name, t.params["optim.lr"]) for t in trials] == [
        ("FAIL", 1e30), ("COMPLETE", 0.003)]
