"""A newcomer's first hour, through the real entry point: every failure is one clear line with
exit code 2 and no traceback, and every silent data problem is said."""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from dermalab.cli import main
from dermalab.core.calibration import fit_temperature, temperature_warning
from dermalab.core.config import DataConfig, load_config
from dermalab.core.errors import DataError
from dermalab.core.plots import bar_counts
from dermalab.core.runs import Predictions
from dermalab.data.prepare import prepare_data
from dermalab.data.sources import load_source
from dermalab.data.splits import small_class_warnings
from dermalab.data.storage import local_path
from dermalab.evaluate.decision import fit_decision
from tests.conftest import HAM_DIR, REPO, photo_image

# Class names as users' folders have them: brackets, commas, quotes, ampersands, accents.
ODD = ["Dyshidrotic eczema (pompholyx)", "Benign keratosis, solar lentigo & 'SK'",
       "Café-au-lait macule"]
TINY = ["eval.bootstrap=50", "data.image_size=48", "train.epochs=2", "train.batch_size=8",
        "train.patience=0",
        "model.freeze_epochs=1", "optim.lr=0.003", "eval.gallery=0", "eval.serving=false",
        "data.split_ratios=[0.5,0.25,0.25]"]


def _odd_dataset(root: Path, per_class: int = 12) -> Path:
    for ci, name in enumerate(ODD):
        d = root / name
        d.mkdir(parents=True)
        for i in range(per_class):
            photo_image(ci, seed=100 * ci + i).save(d / f"img_{i:02d}.jpg", quality=92)
    return root


def _one_line_error(err: str) -> str:
    lines = [x for x in err.strip().splitlines() if x]
    assert len(lines) == 1, err
    assert "Traceback" not in err and lines[0].startswith("error: ")
    return lines[0]


@pytest.fixture(scope="module")
def odd_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, str]:
    """A finished run on the odd class names, with MLflow tracking on (the default)."""
    root = tmp_path_factory.mktemp("odd")
    data = _odd_dataset(root / "data")
    db = root / "mlflow.db"
    run = root / "runs" / "odd"
    out = subprocess.run(
        [sys.executable, "-m", "dermalab", "train", "--no-progress", "--data", str(data),
         "--out", str(run), "--set", *TINY, "tracking.enabled=true",
         f"tracking.uri=sqlite:///{db}"],
        capture_output=True, text=True, timeout=600, cwd=root,
        env={**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true"})
    assert out.returncode == 0, out.stdout + out.stderr
    return run, db, out.stdout


def test_odd_class_names_train_with_mlflow_tracking(odd_run: tuple[Path, Path, str]) -> None:
    import mlflow

    _, db, _ = odd_run
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{db}")
    exp = client.get_experiment_by_name("dermalab")
    (found,) = client.search_runs([exp.experiment_id])
    assert found.info.status == "FINISHED"
    assert found.data.params["model.backbone"] and found.data.params["n_classes"] == "3"
    assert "odd" in found.info.run_name  # runs are told apart by their folder
    table = json.loads(Path(client.download_artifacts(found.info.run_id, "class_counts.json"))
                       .read_text())
    assert [r["class"] for r in table["classes"]] == sorted(ODD)
    assert all(r["n_train"] + r["n_val"] + r["n_test"] == 12 for r in table["classes"])


def test_train_ends_with_where_the_run_went_and_what_next(
        odd_run: tuple[Path, Path, str]) -> None:
    run, _, stdout = odd_run
    tail = stdout[stdout.index("\nrun: "):]
    assert f"run: {run}" in tail and f"report: {run / 'report.html'}" in tail
    for cmd in ("evaluate", "export", "serve"):
        assert f"dermalab {cmd} {run}" in tail


def test_a_failed_run_ends_failed_in_mlflow(tmp_path: Path) -> None:
    import mlflow

    from dermalab.pipeline import train_run

    data = _odd_dataset(tmp_path / "data", per_class=8)
    db = tmp_path / "mlflow.db"
    cfg = load_config(None, [*TINY, f"data.source={data}", "tracking.enabled=true",
                             f"tracking.uri=sqlite:///{db}", "train.epochs=1"])

    def boom(epoch: int, value: float) -> None:
        raise RuntimeError("the disk filled up")

    with pytest.raises(RuntimeError, match="disk"):
        train_run(cfg, tmp_path / "run", progress=False, trial_callback=boom)
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{db}")
    (found,) = client.search_runs([client.get_experiment_by_name("dermalab").experiment_id])
    assert found.info.status == "FAILED" and found.data.params


def test_resume_of_a_finished_run_changes_nothing(odd_run: tuple[Path, Path, str],
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    run = odd_run[0]
    files = [run / "metrics.json", run / "checkpoints" / "best.pt", run / "report.html"]
    before = {p: p.stat().st_mtime_ns for p in files}
    assert main(["train", "--resume", str(run), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "is finished" in out and "--redo-final" in out
    assert {p: p.stat().st_mtime_ns for p in files} == before


@pytest.mark.parametrize("command", [["evaluate"], ["report"], ["export"], ["explain"],
                                     ["train", "--resume"], ["predict"], ["serve"]])
@pytest.mark.parametrize("kind", ["missing", "empty", "cut_before_first_epoch"])
def test_a_wrong_run_directory_is_one_line(command: list[str], kind: str, tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    run = tmp_path / "run"
    if kind != "missing":
        run.mkdir()
    if kind == "cut_before_first_epoch":
        (run / "plots").mkdir()
        (run / "config.yaml").write_text("name: x\n")
    args = [*command, str(run)] + (["some.jpg"] if command == ["predict"] else [])
    assert main(args) == 2
    line = _one_line_error(capsys.readouterr().err)
    assert str(run) in line
    if command == ["train", "--resume"] and kind == "cut_before_first_epoch":
        assert "nothing to resume" in line and f"--out {run}" in line
    elif command != ["predict"]:
        assert "dermalab train" in line  # says what to run


def test_serve_checks_the_run_before_announcing(tmp_path: Path) -> None:
    out = subprocess.run([sys.executable, "-m", "dermalab", "serve", str(tmp_path)],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 2
    assert "serving" not in out.stdout and "Traceback" not in out.stderr
    _one_line_error(out.stderr)


def test_predict_analyses_every_good_image_and_names_each_bad_one(
        odd_run: tuple[Path, Path, str], tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    good = tmp_path / "good.jpg"
    photo_image(0, seed=5).save(good)
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not a picture at all")
    missing = tmp_path / "missing.jpg"
    code = main(["predict", str(odd_run[0]), str(bad), str(good), str(missing), "--json"])
    captured = capsys.readouterr()
    assert code == 2
    results = json.loads(captured.out)
    assert [("error" in r) for r in results] == [True, False, True]
    assert results[1]["image"] == str(good) and len(results[1]["top"]) == 3
    assert "bad.jpg" in captured.err and "missing.jpg" in captured.err
    assert "Traceback" not in captured.err


def test_predict_prints_the_malignant_score_beside_its_operating_point(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    from dermalab.deploy.predictor import Predictor

    class Fixed(Predictor):
        def __init__(self) -> None:  # no model: only the printing is under test
            from dermalab.core.decision import Decision
            from dermalab.core.runs import ModelInfo

            self.info = ModelInfo(["bcc", "nv"], {}, [0.5] * 3, [0.5] * 3, 32, "squash", "x",
                                  decision=Decision(malignant_classes=["bcc"],
                                                    malignant_threshold=0.3))
            self.backend = "fixed"

        def predict_each(self, sources: list[str], top_k: int = 3, tta: bool = False,
                         masks_dir: str | None = None, metadata: dict | None = None
                         ) -> list[dict]:
            return [self.describe(s, np.array([p, 1 - p]), top_k)
                    for s, p in zip(sources, (0.2, 0.6), strict=True)]

    monkeypatch.setattr(Predictor, "load",
                        classmethod(lambda cls, path, prefer_onnx=True: Fixed()))
    assert main(["predict", "RUN", "low.jpg", "high.jpg"]) == 0
    lines = [x for x in capsys.readouterr().out.splitlines() if "possibly malignant" in x]
    assert lines == ["  possibly malignant: 20.0% (operating point 30.0%)",
                     "  possibly malignant: 60.0% (operating point 30.0%) -> at or above it: "
                     "see a dermatologist soon"]


def _conflicting_dataset(root: Path) -> Path:
    for ci, name in enumerate(["eczema", "psoriasis"]):
        (root / name).mkdir(parents=True)
        for i in range(10):
            photo_image(ci, seed=10 * ci + i).save(root / name / f"{name}_{i}.jpg")
    shutil.copy(root / "eczema" / "eczema_0.jpg", root / "psoriasis" / "copy.jpg")
    return root


@pytest.mark.parametrize("policy", ["drop", "keep", "error"])
def test_the_same_picture_under_two_labels_follows_the_policy(tmp_path: Path,
                                                               policy: str) -> None:
    root = _conflicting_dataset(tmp_path / "ds")
    cfg = DataConfig(source=str(root), conflicts=policy, split_ratios=[0.6, 0.2, 0.2])
    if policy == "error":
        with pytest.raises(DataError, match=r"eczema/eczema_0\.jpg \(eczema\) = "
                                            r"psoriasis/copy\.jpg \(psoriasis\)"):
            prepare_data(cfg, 32, progress=False)
        return
    data = prepare_data(cfg, 32, progress=False)
    ids = {s.sample_id for s in data.source.samples}
    both = {"eczema/eczema_0.jpg", "psoriasis/copy.jpg"}
    assert (both & ids) == (set() if policy == "drop" else both)
    assert len(data.source.conflicts) == 1
    (warning,) = [w for w in data.warnings if "under different labels" in w]
    assert ("left out" in warning) == (policy == "drop")


def test_class_map_keys_that_match_nothing_are_said(tmp_path: Path) -> None:
    root = tmp_path / "ds"
    for name in ("Tinea corporis", "Tinea pedis", "Psoriasis"):
        (root / name).mkdir(parents=True)
        for i in range(3):
            photo_image(len(name), seed=i).save(root / name / f"{i}.jpg")
    data = load_source(DataConfig(source=str(root), class_map={
        "Tinae *": "tinea", "tinea *": "tinea", "Psoriasis": "psoriasis"}))
    typo, case = data.warnings
    assert "'Tinae *' matches no class" in typo and "did you mean ['Tinea *']" in typo
    assert "'tinea *' matches no class" in case and "case-sensitive" in case
    assert "Tinea corporis" in case


def test_tiny_classes_are_named() -> None:
    warnings = small_class_warnings({"train": {"a": 40, "b": 4}, "val": {"a": 5, "b": 1},
                                     "test": {"a": 5, "b": 1}})
    assert len(warnings) == 1 and "'b' is tiny (4 train / 1 val / 1 test" in warnings[0]
    assert "class_map" in warnings[0]


def test_inspect_lists_conflicts_and_tiny_classes(tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    root = _conflicting_dataset(tmp_path / "ds")
    assert main(["data", "inspect", str(root)]) == 0
    out = capsys.readouterr().out
    assert "same picture, different labels: eczema/eczema_0.jpg (eczema), psoriasis/copy.jpg " \
           "(psoriasis)" in out
    assert "data.conflicts=drop: training leaves them out" in out
    assert re.search(r"warning  class '(eczema|psoriasis)' is tiny", out)


def test_class_chart_grows_with_the_classes() -> None:
    counts = {sp: {f"class {i:02d}": 10 + i for i in range(46)} for sp in ("train", "val")}
    w, h = bar_counts(counts).get_size_inches()
    assert h >= 0.25 * 46 and w <= 10  # one readable row per class, not a 7000 px strip


def test_temperature_on_its_bound_is_said() -> None:
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 5, (200, 3))
    targets = rng.integers(0, 3, 200)  # unrelated to the logits: no better than chance
    assert fit_temperature(logits, targets) == pytest.approx(20.0, rel=1e-3)
    preds = Predictions([str(i) for i in range(200)], targets, logits)
    _, out = fit_decision(preds, ["a", "b", "c"], np.array([70, 70, 60]),
                          load_config(None, []).eval)
    assert "upper bound" in out["temperature_warning"]
    assert temperature_warning(1.3) is None


def test_relative_paths_in_a_config_are_read_from_its_folder(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "recipes").mkdir()
    recipe = tmp_path / "recipes" / "r.yaml"
    recipe.write_text("data:\n  source: ../data/photos\n")
    monkeypatch.chdir(REPO)  # anywhere but the recipe's folder
    assert load_config(recipe).data.source == str(tmp_path / "data" / "photos")
    # Given on the command line, a path stays relative to the current directory.
    assert load_config(recipe, ["data.source=x"]).data.source == "x"
    assert main(["train", "-c", str(recipe)]) == 2
    line = _one_line_error(capsys.readouterr().err)
    assert str(tmp_path / "data" / "photos") in line and str(recipe) in line
    # The README's main job: the shipped recipe names the dataset, from any directory, and
    # finds a copy linked where it would be downloaded to (what scripts/setup.sh does with the
    # shared data) without any network.
    default = load_config(REPO / "configs" / "ham10000_default.yaml")
    assert default.data.source == "ham10000"
    if HAM_DIR.is_dir():
        (tmp_path / "datasets").mkdir()
        os.symlink(HAM_DIR, tmp_path / "datasets" / "ham10000")
        monkeypatch.setenv("DERMALAB_DATA", str(tmp_path / "datasets"))
        assert local_path(default.data.source) == tmp_path / "datasets" / "ham10000"


def test_splits_csv_has_unix_line_ends(tmp_path: Path,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    root = _conflicting_dataset(tmp_path / "ds")
    main(["data", "inspect", str(root), "--split-out", str(tmp_path / "out")])
    capsys.readouterr()
    raw = (tmp_path / "out" / "splits.csv").read_bytes()
    assert b"\r\n" not in raw and raw.count(b"\n") > 10


def _parsers(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()
             ) -> list[tuple[tuple[str, ...], argparse.ArgumentParser]]:
    out = [(path, parser)]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                out += _parsers(sub, (*path, name))
    return out


def test_every_argument_of_every_command_is_explained() -> None:
    from dermalab.cli import build_parser

    missing = [(" ".join(path), a.dest) for path, p in _parsers(build_parser())
               for a in p._actions
               if not a.help and not isinstance(a, argparse._SubParsersAction)]
    assert missing == []


def test_help_shows_defaults(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["serve", "--help"])
    text = capsys.readouterr().out
    assert "(default: 8000)" in text and "(default: 127.0.0.1)" in text
    assert "(default: None)" not in text


def test_serve_advice_for_a_run_without_serving_thresholds_works(
        odd_run: tuple[Path, Path, str], capsys: pytest.CaptureFixture[str]) -> None:
    from dermalab.core.runs import RunPaths
    from dermalab.serve.models import check_servable

    run = odd_run[0]  # trained with eval.serving=false
    assert main(["serve", str(run)]) == 2
    line = _one_line_error(capsys.readouterr().err)
    advice = line[line.index("`") + 1:line.rindex("`")].split()
    assert advice[:2] == ["dermalab", "report"]
    assert main(advice[1:]) == 0  # the advice, as given
    check_servable(RunPaths(run))  # now the run can be served


def test_report_reanalyses_with_other_eval_settings_and_keeps_them(
        odd_run: tuple[Path, Path, str], capsys: pytest.CaptureFixture[str]) -> None:
    """A recipe that named the wrong malignant classes is fixed without retraining; settings
    that would need retraining are refused in one line."""
    import json

    from dermalab.core.runs import load_run

    run = odd_run[0]
    classes = json.loads((run / "metrics.json").read_text())["classes"]
    target = classes[-1]
    assert main(["report", str(run), "--set", f"eval.malignant_classes=[{target!r}]"]) == 0
    capsys.readouterr()
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["malignant"]["classes"] == [target]
    loaded = load_run(run)
    assert loaded.config.eval.malignant_classes == [target]
    assert loaded.info.decision.malignant_classes == [target]
    assert target in (run / "config.yaml").read_text()
    before = (run / "checkpoints" / "best.pt").read_bytes()
    assert main(["report", str(run), "--set", "train.epochs=9"]) == 2
    line = _one_line_error(capsys.readouterr().err)
    assert "eval.* settings only" in line and "train.epochs=9" in line
    assert (run / "checkpoints" / "best.pt").read_bytes() == before
