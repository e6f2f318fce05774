"""End-to-end training on tiny generated data: outputs, honesty, determinism, resume."""

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

import numpy as np
import pytest
import torch
from sklearn import metrics as skm

from dermalab.core.config import load_config
from dermalab.core.runs import load_checkpoint
from dermalab.evaluate.evaluate import evaluate_run
from dermalab.pipeline import run_or_reuse, train_run
from tests.conftest import write_photo_dataset

TINY = ["eval.bootstrap=100", "data.image_size=64", "train.epochs=3", "train.batch_size=8",
        "train.patience=0",
        "tracking.enabled=false", "data.sampler=oversample", "loss.name=cb", "optim.lr=0.003",
        "sched.name=step", "model.freeze_epochs=1"]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_photo_dataset(tmp_path_factory.mktemp("ds") / "photos", per_class=20)


@pytest.fixture(scope="module")
def reference_run(dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("runs") / "ref"
    train_run(load_config(None, [*TINY, f"data.source={dataset}"]), out, progress=False)
    return out


def _history(run: Path) -> list[dict[str, str]]:
    with open(run / "history.csv") as f:
        return list(csv.DictReader(f))


def test_run_directory_contents(reference_run: Path) -> None:
    for name in ("config.yaml", "splits.csv", "history.csv", "metrics.json",
                 "checkpoints/best.pt", "checkpoints/last.pt", "predictions_test.csv",
                 "predictions_val.csv"):
        assert (reference_run / name).is_file(), name
    for plot in ("loss", "accuracy", "balanced_accuracy", "macro_f1", "precision", "recall", "lr",
                 "confusion_matrix", "confusion_matrix_normalized"):
        assert (reference_run / "plots" / f"{plot}.png").stat().st_size > 1000
    hist = _history(reference_run)
    assert [int(r["epoch"]) for r in hist] == [1, 2, 3]
    assert hist[0]["frozen_body"] == "True" and hist[1]["frozen_body"] == "False"
    # Step decay x0.1 at int(50%) and int(75%) of 3 epochs: 0-based epochs 1 and 2.
    assert [float(r["lr"]) for r in hist] == pytest.approx([0.003, 0.0003, 0.00003])
    m = json.loads((reference_run / "metrics.json").read_text())
    for key in ("accuracy", "balanced_accuracy", "macro_f1", "roc_auc_macro", "per_class",
                "confusion_matrix"):
        assert key in m
    assert m["weights_origin"].startswith("package:")


def test_learns_the_photo_classes(reference_run: Path) -> None:
    m = json.loads((reference_run / "metrics.json").read_text())
    assert m["val"]["balanced_accuracy"] >= 0.9, m["val"]


def test_test_metrics_match_sklearn_on_saved_predictions(reference_run: Path) -> None:
    with open(reference_run / "predictions_test.csv") as f:
        rows = list(csv.DictReader(f))
    classes = [k[2:] for k in rows[0] if k.startswith("p_")]
    y = np.array([classes.index(r["label"]) for r in rows])
    p = np.array([[float(r[f"p_{c}"]) for c in classes] for r in rows])
    m = json.loads((reference_run / "metrics.json").read_text())
    assert m["n"] == len(rows)
    assert m["balanced_accuracy"] == pytest.approx(skm.balanced_accuracy_score(y, p.argmax(1)))
    assert m["confusion_matrix"] == skm.confusion_matrix(y, p.argmax(1), labels=range(3)).tolist()
    # Test images are exactly the split file's test rows.
    with open(reference_run / "splits.csv") as f:
        test_ids = {r["sample_id"] for r in csv.DictReader(f) if r["split"] == "test"}
    assert {r["sample_id"] for r in rows} == test_ids


def test_best_checkpoint_is_used_and_evaluate_reproduces_it(reference_run: Path) -> None:
    m = json.loads((reference_run / "metrics.json").read_text())
    best = load_checkpoint(reference_run / "checkpoints" / "best.pt")
    assert best["epoch"] == m["best_epoch"]
    assert best["classes"] == ["akiec", "bcc", "nv"] and best["image_size"] == 64
    assert set(best["normalization"]) == {"mean", "std"}
    again = evaluate_run(reference_run, split="test")
    assert again["balanced_accuracy"] == pytest.approx(m["balanced_accuracy"], abs=1e-9)
    assert again["confusion_matrix"] == m["confusion_matrix"]


def test_checkpoint_loads_with_weights_only(reference_run: Path) -> None:
    obj = torch.load(reference_run / "checkpoints" / "last.pt", weights_only=True)
    assert obj["epoch"] == 3 and obj["backbone"] == "tf_efficientnet_lite0"


def test_same_config_and_seed_give_the_same_metrics(reference_run: Path, dataset: Path,
                                                    tmp_path: Path) -> None:
    train_run(load_config(None, [*TINY, f"data.source={dataset}", "eval.gallery=0"]),
        tmp_path / "again", progress=False)
    a, b = _history(reference_run), _history(tmp_path / "again")
    for ra, rb in zip(a, b, strict=True):
        for key in ("train_loss", "val_loss", "val_balanced_accuracy"):
            assert float(ra[key]) == pytest.approx(float(rb[key]), abs=1e-6), key
    assert (reference_run / "splits.csv").read_text() == (tmp_path / "again" / "splits.csv"
                                                          ).read_text()


def test_early_stopping_stops(dataset: Path, tmp_path: Path) -> None:
    cfg = load_config(None, [*TINY, f"data.source={dataset}", "train.epochs=8",
                             "train.patience=1", "train.monitor=loss", "train.min_delta=10",
                             "eval.gallery=0", "eval.report=false"])
    res = train_run(cfg, tmp_path / "es", progress=False)
    # min_delta=10 makes every epoch after the first "no improvement".
    assert res["stopped_early"] and res["epochs_run"] == 2 and res["best_epoch"] == 1


def test_run_or_reuse_returns_a_finished_run_without_training(reference_run: Path,
                                                                dataset: Path) -> None:
    before = {p: p.stat().st_mtime_ns for p in (reference_run / "history.csv",
                                                 reference_run / "checkpoints" / "last.pt")}
    res = run_or_reuse(load_config(None, [*TINY, f"data.source={dataset}"]), reference_run,
                       progress=False)
    assert res == json.loads((reference_run / "metrics.json").read_text())
    assert {p: p.stat().st_mtime_ns for p in before} == before


@pytest.mark.parametrize("monitor", ["accuracy", "roc_auc_macro"])
def test_monitor_picks_the_epoch_with_the_best_validation_value(
        dataset: Path, tmp_path: Path, monitor: str, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = load_config(None, [*TINY, f"data.source={dataset}", f"train.monitor={monitor}",
                             "eval.gallery=0", "eval.report=false"])
    res = train_run(cfg, tmp_path / monitor, progress=False)
    values = [float(r[f"val_{monitor}"]) for r in _history(tmp_path / monitor)]
    # The first epoch reaching the maximum is kept (later ties are not improvements).
    assert res["best_epoch"] == values.index(max(values)) + 1
    assert res["best_val_monitor"] == pytest.approx(max(values))
    # The epoch lines show the monitored value when it is not one they always show.
    assert len(re.findall(rf"macro-F1 [0-9.]+ {monitor} [0-9.]+", capsys.readouterr().out)) == 3


@pytest.mark.slow
def test_kill_minus_9_then_resume_matches_uninterrupted(reference_run: Path, dataset: Path,
                                                        tmp_path: Path) -> None:
    run = tmp_path / "killed"
    db = tmp_path / "mlflow.db"
    sets = [*TINY, f"data.source={dataset}", "tracking.enabled=true",
            f"tracking.uri=sqlite:///{db}", "data.num_workers=0"]
    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true"}
    proc = subprocess.Popen([sys.executable, "-m", "dermalab", "train", "--no-progress",
                             "--out", str(run), "--set", *sets],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        if (run / "checkpoints" / "last.pt").exists() and (run / "history.csv").exists():
            break
        time.sleep(0.02)
    assert proc.poll() is None, proc.stdout.read().decode() if proc.stdout else ""
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    done = len(_history(run))
    assert done < 3, "the run finished before it could be killed"
    # The kill left a readable last.pt: the epoch of the history, or the one before when the
    # kill fell between the history and the checkpoint (written in that order).
    assert load_checkpoint(run / "checkpoints" / "last.pt")["epoch"] in (done, done - 1)
    res = subprocess.run([sys.executable, "-m", "dermalab", "train", "--no-progress",
                          "--resume", str(run)], env=env, capture_output=True, text=True,
                         timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
    a, b = _history(reference_run), _history(run)
    assert [r["epoch"] for r in b] == ["1", "2", "3"]
    for ra, rb in zip(a, b, strict=True):
        for key in ("train_loss", "val_loss", "val_balanced_accuracy", "lr"):
            assert float(ra[key]) == pytest.approx(float(rb[key]), abs=1e-6), (key, ra, rb)
    ma = json.loads((reference_run / "metrics.json").read_text())
    mb = json.loads((run / "metrics.json").read_text())
    assert ma["confusion_matrix"] == mb["confusion_matrix"]
    # One MLflow run, continued, with every epoch logged once.
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{db}")
    exp = client.get_experiment_by_name("dermalab")
    runs = client.search_runs([exp.experiment_id])
    assert len(runs) == 1 and runs[0].info.run_id == mb["mlflow_run_id"]
    steps = sorted(m.step for m in client.get_metric_history(runs[0].info.run_id, "val_loss"))
    assert steps[-1] == 3 and set(steps) == {1, 2, 3}
    assert runs[0].data.metrics["test_balanced_accuracy"] == pytest.approx(mb["balanced_accuracy"])


def test_evaluate_on_another_dataset_with_tta(reference_run: Path, tmp_path: Path) -> None:
    other = write_photo_dataset(tmp_path / "other", per_class=4)
    res = evaluate_run(reference_run, data=str(other), split="all", tta=True, bootstrap=20)
    assert res["n"] == 12 and res["tta"] is True
    assert res["n_by_class"] == {"akiec": 4, "bcc": 4, "nv": 4}
    # The numbers are those of the answers `dermalab predict --tta` gives for these photos.
    from sklearn.metrics import accuracy_score, log_loss

    from dermalab.core.calibration import expected_calibration_error, prior_weights
    from dermalab.deploy.predictor import Predictor

    pred = Predictor.load(reference_run, prefer_onnx=False)
    files = sorted(other.glob("*/*.jpg"))
    y = np.array([pred.info.classes.index(f.parent.name) for f in files])
    probs = pred.probabilities(np.stack([pred.preprocess(str(f)) for f in files]), tta=True)
    assert res["accuracy"] == pytest.approx(accuracy_score(y, probs.argmax(1)))
    assert res["nll"] == pytest.approx(log_loss(y, probs, labels=[0, 1, 2]), rel=1e-4)
    prior = pred.info.decision.deployment_prior()
    weights = prior_weights(y, prior) if prior is not None else None
    assert res["ece"] == pytest.approx(expected_calibration_error(probs, y, 15, weights),
                                       abs=1e-6)


def test_skipped_inputs_are_listed_in_the_run(dataset: Path, tmp_path: Path) -> None:
    import shutil

    ds = tmp_path / "ds"
    shutil.copytree(dataset, ds)
    (ds / "nv" / "broken.jpg").write_bytes(b"\xff\xd8\xff garbage")
    cfg = load_config(None, [*TINY, f"data.source={ds}", "train.epochs=1", "eval.gallery=0",
                             "eval.report=false"])
    from dermalab.core.errors import ImageError

    with pytest.raises(ImageError, match=r"broken\.jpg"):
        train_run(cfg, tmp_path / "strict", progress=False)
    train_run(load_config(None, [*TINY, f"data.source={ds}", "train.epochs=1", "data.skip_bad=true",
                           "eval.gallery=0", "eval.report=false"]), tmp_path / "lenient",
        progress=False)
    listed = json.loads((tmp_path / "lenient" / "skipped_inputs.json").read_text())
    assert [Path(b["path"]).name for b in listed["bad"]] == ["broken.jpg"]


def test_evaluate_a_ham_run_on_a_folder_dataset(tmp_path: Path, cache_dir: Path) -> None:
    """The run's data.format must not be forced onto another dataset."""
    from tests.conftest import write_ham_dataset

    csv_path = write_ham_dataset(tmp_path / "ham", lesions_per_class=6, photos=True)
    run = tmp_path / "hamrun"
    train_run(load_config(None, [*TINY, f"data.source={csv_path}", "data.format=ham10000",
                           "train.epochs=1", "eval.gallery=0", "eval.report=false",
                           "eval.serving=false"]), run, progress=False)
    folder = write_photo_dataset(tmp_path / "folder", per_class=3)
    res = evaluate_run(run, data=str(folder), split="all")
    assert res["n"] == 9 and res["data"] == str(folder)


def test_freeze_stages_keeps_the_early_stages_pretrained(dataset: Path, tmp_path: Path) -> None:
    """model.freeze_stages: the stem and the first stages end the run with their pretrained
    weights and BatchNorm statistics; the later stages and the head learn."""
    from dermalab.core.models import create_model

    cfg = load_config(None, [*TINY, "train.epochs=2", "model.freeze_stages=2",
                             "eval.gallery=0", "eval.serving=false", "eval.report=false",
                             f"data.source={dataset}"])
    train_run(cfg, tmp_path / "run", progress=False)
    trained = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")["model"]
    start = create_model(cfg.model, 3)[0].state_dict()
    early = ("conv_stem.", "bn1.", "blocks.0.", "blocks.1.")
    for name, value in start.items():
        if name.startswith("classifier"):
            continue
        same = torch.equal(trained[name], value)
        assert same == name.startswith(early) or name.endswith("num_batches_tracked"), name
    assert not torch.equal(trained["blocks.2.0.conv_pw.weight"], start["blocks.2.0.conv_pw.weight"])
    # Their BatchNorms were folded into the convolutions (model.fold_frozen_bn), the "same"
    # padding computed inside them (model.static_same_pad) and AdamW ran fused (optim.fused),
    # all defaults: the same training as without any, up to float rounding.
    plain = load_config(None, [*TINY, "train.epochs=2", "model.freeze_stages=2",
                               "model.fold_frozen_bn=false", "model.static_same_pad=false",
                               "optim.fused=false",
                               "eval.gallery=0",
                               "eval.serving=false", "eval.report=false",
                               f"data.source={dataset}"])
    train_run(plain, tmp_path / "plain", progress=False)
    for ra, rb in zip(_history(tmp_path / "run"), _history(tmp_path / "plain"), strict=True):
        for key in ("train_loss", "val_loss"):
            # abs: a validation loss near 0 (0.0026 here) magnifies rounding as a ratio.
            assert float(ra[key]) == pytest.approx(float(rb[key]), rel=1e-3, abs=1e-5), \
                (key, ra, rb)


def test_ema_weights_are_validated_kept_as_best_and_resumed(dataset: Path,
                                                            tmp_path: Path) -> None:
    """train.ema_decay: best.pt holds the averaged weights (the ones validated), last.pt the
    live ones plus the average and the step count, and a resume restores the average."""
    from dermalab.core.runs import RunPaths
    from dermalab.train.fit import setup_training

    cfg = load_config(None, [*TINY, "train.epochs=1", "train.ema_decay=0.99",
                             "model.freeze_epochs=0", "model.freeze_stages=1",
                             "eval.gallery=0", "eval.serving=false",
                             "eval.report=false", f"data.source={dataset}"])
    train_run(cfg, tmp_path / "run", progress=False)
    best = load_checkpoint(tmp_path / "run" / "checkpoints" / "best.pt")
    last = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")
    assert "ema" not in best
    with open(tmp_path / "run" / "splits.csv") as f:
        n_train = sum(r["split"] == "train" for r in csv.DictReader(f))
    assert last["steps"] == n_train // 8  # one update per optimiser step (drop_last batches)
    name = "blocks.3.0.conv_pw.weight"
    assert torch.equal(best["model"][name], last["ema"][name])
    assert not torch.equal(best["model"][name], last["model"][name])
    t = setup_training(None, RunPaths(tmp_path / "run"), resume=last, progress=False)
    assert t.ema is not None and t.state.steps == last["steps"]
    assert torch.equal(t.ema.module.state_dict()[name], last["ema"][name])
    # The resumed model's frozen BatchNorms are folded from the checkpoint's weights (the model
    # is built without pretrained weights on resume): it computes what the checkpoint does.
    from dermalab.core.models import create_model
    from dermalab.train.fold import folded_count

    assert folded_count(t.model) > 0
    ref = create_model(t.cfg.model, 3)[0]
    ref.load_state_dict(last["model"])
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(t.model.eval()(x), ref.eval()(x), rtol=1e-4, atol=1e-4)
    # The end of training (no epochs are left here) hands back timm's plain model.
    from timm.layers import Conv2dSame

    from dermalab.train.fit import fit

    fit(t, progress=False)
    assert folded_count(t.model) == 0
    same = [m for m in t.model.modules() if isinstance(m, Conv2dSame)]
    assert same and all(type(m) is Conv2dSame for m in same)  # the padding rewrite undone


def test_logit_adjusted_loss_offset_is_in_best_pt_only(tmp_path: Path) -> None:
    """loss.name=la: training and validation use the plain weights (last.pt's average), and
    best.pt's head bias carries tau log(n_c / N) on top, so everything after training sees
    posterior logits; the final predictions come from best.pt."""
    ds = write_photo_dataset(tmp_path / "photos", per_class=20)
    first = sorted(p for p in ds.iterdir() if p.is_dir())[0]
    for p in sorted(first.glob("*.jpg"))[:12]:  # an imbalanced set: 8 / 20 / 20 images
        p.unlink()
    cfg = load_config(None, [*TINY, "train.epochs=1", "train.ema_decay=0.99", "loss.name=la",
                             "loss.tau=0.5", "data.sampler=sqrt", "model.freeze_epochs=0",
                             "eval.gallery=0", "eval.report=false", f"data.source={ds}"])
    train_run(cfg, tmp_path / "run", progress=False)
    best = load_checkpoint(tmp_path / "run" / "checkpoints" / "best.pt")
    last = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")
    with open(tmp_path / "run" / "splits.csv") as f:
        labels = [r["label"] for r in csv.DictReader(f) if r["split"] == "train"]
    counts = np.array([labels.count(c) for c in best["classes"]], dtype=float)
    assert len(set(counts)) > 1, counts
    key = "classifier.bias"
    torch.testing.assert_close(best["model"][key] - last["ema"][key],
                               torch.as_tensor(0.5 * np.log(counts / counts.sum()),
                                               dtype=torch.float32))
    assert all(torch.equal(v, last["ema"][k]) for k, v in best["model"].items() if k != key)
    m = evaluate_run(tmp_path / "run", split="test")
    saved = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert m["balanced_accuracy"] == pytest.approx(saved["balanced_accuracy"])
