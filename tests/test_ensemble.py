"""Ensembles (``model.members``): a real 2-member training on a tiny HAM-style dataset, the
combined model against its members, every later stage (export, Grad-CAM, predict, serving)
on it, and resuming or refusing member folders."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from sklearn import metrics as skm

from dermalab import cli
from dermalab.core.config import load_config
from dermalab.core.errors import ConfigError, DermalabError
from dermalab.core.models import Ensemble, build_for_inference
from dermalab.core.runs import Predictions, RunPaths, load_run
from dermalab.data.prepare import prepare_data
from dermalab.deploy.export import export_onnx
from dermalab.deploy.predictor import Predictor
from dermalab.evaluate.ensemble import assemble_ensemble
from dermalab.evaluate.explain import cam_maps, closed_form_cam, has_linear_gap_head
from dermalab.pipeline import member_config, resume_run, train_run
from tests.conftest import write_ham_dataset

SETS = ["eval.bootstrap=100", "data.image_size=64", "train.epochs=2", "train.batch_size=8",
        "train.patience=0",
        "model.freeze_epochs=1", "optim.lr=0.003",
        "data.split_ratios=[0.5,0.25,0.25]", "eval.gallery=2", "train.seed=5",
        "eval.malignant_classes=[akiec,bcc]", "eval.metadata=[age,sex,localization]",
        "model.members=2"]


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_ham_dataset(tmp_path_factory.mktemp("ham"), lesions_per_class=8,
                             images_per_lesion=2, photos=True)


@pytest.fixture(scope="module")
def ens(source: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("runs") / "ens"
    train_run(load_config(None, [*SETS, f"data.source={source}"]), out, progress=False)
    return out


def _member_preds(ens: Path, split: str) -> tuple[list[Predictions], list[float]]:
    members = [ens / "members" / f"m{i}" for i in range(2)]
    temps = [float(json.loads((m / "decision.json").read_text())["decision"]["temperature"])
             for m in members]
    return [Predictions.load(m / f"predictions_{split}.npz") for m in members], temps


def test_members_are_runs_of_the_recipe_with_consecutive_seeds(ens: Path) -> None:
    for i in range(2):
        member = ens / "members" / f"m{i}"
        cfg = load_config(member / "config.yaml")
        assert cfg.train.seed == 5 + i and cfg.model.members == 1
        assert (member / "metrics.json").is_file()
        assert (member / "splits.csv").read_bytes() == (ens / "splits.csv").read_bytes()
    assert load_config(ens / "config.yaml").model.members == 2
    run = load_run(ens)
    assert isinstance(run.model, Ensemble) and run.info.members == 2


def test_members_and_ensemble_share_one_mlflow_store(ens: Path) -> None:
    import mlflow

    assert not (ens / "members" / "mlflow.db").exists()
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{ens.parent / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("dermalab").experiment_id])
    names = sorted(r.info.run_name for r in runs)
    assert len(names) == 3 and sum("(ens)" in n for n in names) == 1, names
    assert {r.info.status for r in runs} == {"FINISHED"}


@pytest.mark.parametrize("split", ["val", "test"])
def test_ensemble_logits_are_the_mean_of_temperature_scaled_member_logits(
        ens: Path, split: str) -> None:
    preds, temps = _member_preds(ens, split)
    mine = Predictions.load(ens / f"predictions_{split}.npz")
    assert mine.ids == preds[0].ids
    by_hand = (preds[0].logits / temps[0] + preds[1].logits / temps[1]) / 2
    assert np.abs(mine.logits - by_hand).max() < 1e-3
    assert temps[0] != pytest.approx(1.0) or temps[1] != pytest.approx(1.0)  # T is not moot


def test_ensemble_metrics_match_sklearn_and_its_own_calibration(ens: Path) -> None:
    m = json.loads((ens / "metrics.json").read_text())
    test = Predictions.load(ens / "predictions_test.npz")
    decision = load_run(ens).info.decision  # the ensemble's own, fitted on validation
    pred = decision.predict(test.logits)
    assert m["balanced_accuracy"] == pytest.approx(skm.balanced_accuracy_score(test.targets,
                                                                               pred))
    assert m["roc_auc_macro"] == pytest.approx(skm.roc_auc_score(
        test.targets, decision.probabilities(test.logits), multi_class="ovr",
        average="macro"))
    assert [r["seed"] for r in m["members"]] == [5, 6]
    assert m["train_seconds_total"] == pytest.approx(
        sum(r["train_seconds_total"] for r in m["members"]), abs=0.2)
    # The ensemble is calibrated, thresholded and given a metadata model of its own.
    stored = json.loads((ens / "decision.json").read_text())
    assert stored["decision"]["temperature"] == pytest.approx(m["temperature"])
    assert stored["metadata_model"] is not None
    assert stored["decision"]["malignant_threshold"] == pytest.approx(
        m["malignant"]["threshold"])
    # Its report shows each member's training curves (it has none of its own).
    report = (ens / "report.html").read_text()
    assert "member members/m0 (seed 5" in report and "member members/m1 (seed 6" in report
    for name in ("report.html", "serving/serving.json", "serving/ood.npz",
                 "plots/confusion_matrix.png", "plots/reliability.png"):
        assert (ens / name).is_file(), name
    assert "an ensemble of 2 runs" in (ens / "report.html").read_text()


def test_export_predict_and_heatmaps_work_on_the_ensemble(ens: Path, tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (3, 64, 64, 3), dtype=np.uint8)
    meta = export_onnx(ens, tmp_path / "export", check_images=images)
    assert meta["members"] == 2 and meta["extra"]["parity"]["max_abs_diff"] < 1e-4
    onnx_p = Predictor.load(tmp_path / "export")
    torch_p = Predictor.load(ens, prefer_onnx=False)
    assert np.abs(onnx_p.logits(images) - torch_p.logits(images)).max() < 1e-4
    run = load_run(ens)
    # The web service's closed-form heat-map is Grad-CAM at the stacked feature maps.
    assert has_linear_gap_head(run.model)
    classes = [0, 2, 1]
    slow, _ = cam_maps(run.model, run.info.backbone, images, run.info.mean, run.info.std,
                       classes)
    fast = closed_form_cam(run.model, images, run.info.mean, run.info.std, classes)
    assert np.abs(fast - slow).max() < 0.02


def test_the_web_service_serves_the_ensemble(ens: Path) -> None:
    from PIL import Image

    from dermalab.serve.models import ServedModel

    served = ServedModel(ens)
    img = Image.fromarray(np.random.default_rng(3).integers(0, 256, (80, 90, 3), np.uint8))
    row = {"age": 50, "sex": "male", "localization": "back"}
    a = served.assess(img, row)
    # The service's answer is the ensemble's stored decision applied to its own logits with
    # the person's metadata: the members' mean of scaled logits, fused, prior-shifted.
    from dermalab.core.metadata import MetadataModel

    logits = served.predictor.logits(a.arr[None])
    mm = MetadataModel.from_json(served.info.metadata or {})
    expected = served.info.decision.probabilities(logits, mm, [row])[0]
    np.testing.assert_allclose(a.probs, expected, atol=1e-6)
    # the metadata moved the served logits (the probabilities of this odd image saturate)
    d = served.info.decision
    assert np.abs(d.logits(logits, mm, [row]) - d.logits(logits)).max() > 1e-3
    assert a.fmap is not None and served.cam_weight is not None
    assert served.heatmap(a.arr, int(a.probs.argmax()), a.fmap).startswith("data:image/png")
    assert served.card()["members"] == 2


def test_resume_reuses_the_members_and_redoes_the_combination(ens: Path, tmp_path: Path
                                                              ) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(ens, copy)
    before = (copy / "predictions_test.npz").read_bytes()
    member_ckpt = copy / "members" / "m1" / "checkpoints" / "best.pt"
    stamp = member_ckpt.stat().st_mtime_ns
    (copy / "metrics.json").unlink()
    (copy / "checkpoints" / "best.pt").unlink()
    resume_run(copy, progress=False)
    assert member_ckpt.stat().st_mtime_ns == stamp  # reused, not retrained
    again = Predictions.load(copy / "predictions_test.npz")
    assert np.abs(again.logits - Predictions.load(ens / "predictions_test.npz").logits
                  ).max() < 1e-6
    assert (copy / "metrics.json").is_file() and before


def test_a_member_folder_of_another_config_is_refused(ens: Path, source: Path,
                                                      tmp_path: Path) -> None:
    out = tmp_path / "other"
    shutil.copytree(ens / "members" / "m0", out / "members" / "m0")
    cfg = load_config(None, [*SETS, f"data.source={source}", "optim.lr=0.001"])
    with pytest.raises(ConfigError, match=r"m0 holds a run of another config \(optim.lr"):
        train_run(cfg, out, progress=False)
    # The member config is exactly a single run of the recipe at the member's seed.
    assert member_config(cfg, 1).train.seed == 6 and member_config(cfg, 1).model.members == 1


def test_members_on_different_splits_are_refused(ens: Path, tmp_path: Path) -> None:
    m0, m1 = tmp_path / "m0", tmp_path / "m1"
    shutil.copytree(ens / "members" / "m0", m0)
    shutil.copytree(ens / "members" / "m1", m1)
    lines = (m1 / "splits.csv").read_text().splitlines()
    (m1 / "splits.csv").write_text("\n".join([lines[0], *reversed(lines[1:])]) + "\n")
    cfg = load_config(ens / "config.yaml")
    data = prepare_data(cfg.data, 64, split_path=m0 / "splits.csv", progress=False)
    with pytest.raises(DermalabError, match=r"splits\.csv differs"):
        assemble_ensemble(cfg, RunPaths(tmp_path / "e"), [m0, m1], data)
    # Without a validation split there is nothing to calibrate the members on: said, not a
    # traceback from a missing file.
    data.split.assignment.update({k: "train" for k in data.split.ids("val")})
    with pytest.raises(DermalabError, match="no val images; an ensemble needs validation"):
        assemble_ensemble(cfg, RunPaths(tmp_path / "e"), [m0, m0], data)


def test_cli_refuses_to_train_over_a_finished_ensemble(
        ens: Path, source: Path, capsys: pytest.CaptureFixture[str]) -> None:
    stamp = (ens / "metrics.json").stat().st_mtime_ns
    assert cli.main(["train", "--out", str(ens), "--no-progress", "--set",
                     *SETS, f"data.source={source}"]) != 0
    assert f"{ens} already holds a run; use --resume" in capsys.readouterr().err
    assert (ens / "metrics.json").stat().st_mtime_ns == stamp


def test_members_must_be_one_or_more_and_combine_checks_its_inputs() -> None:
    with pytest.raises(ConfigError, match=r"model\.members' must be >= 1"):
        load_config(None, ["model.members=0"])
    one = build_for_inference("mobilenetv2_100", 3)
    with pytest.raises(ValueError, match="at least 2"):
        Ensemble([one])
    with pytest.raises(ValueError, match="one temperature per member"):
        Ensemble.combine([one, build_for_inference("mobilenetv2_100", 3)], [1.0])
