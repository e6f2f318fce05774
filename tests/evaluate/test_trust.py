"""Report, Grad-CAM, ONNX parity and predict on a small trained run (and real images)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from dermalab.core.config import ModelConfig, load_config
from dermalab.core.models import REGISTRY, create_model
from dermalab.deploy.export import export_onnx
from dermalab.deploy.predictor import Predictor
from dermalab.evaluate.explain import cam_maps
from dermalab.pipeline import train_run
from tests.conftest import HAM_DIR, write_ham_dataset

RUN_SETS = ["eval.bootstrap=200", "data.image_size=64", "train.epochs=2", "train.batch_size=8",
            "train.patience=0",
            "tracking.enabled=false", "model.freeze_epochs=1", "optim.lr=0.003",
            "data.split_ratios=[0.5,0.25,0.25]", "eval.tta=true", "eval.gallery=4",
            "eval.malignant_classes=[akiec,bcc]", "eval.metadata=[age,sex,localization]"]


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("ham")
    csv_path = write_ham_dataset(root, lesions_per_class=8, images_per_lesion=2, photos=True)
    out = tmp_path_factory.mktemp("runs") / "trust"
    train_run(load_config(None, [*RUN_SETS, f"data.source={csv_path}"]), out, progress=False)
    return out


def test_metrics_are_the_served_answer_with_intervals(run: Path) -> None:
    from sklearn.metrics import balanced_accuracy_score

    from dermalab.core.calibration import fit_temperature
    from dermalab.core.runs import Predictions, load_run

    m = json.loads((run / "metrics.json").read_text())
    for key in ("ece_before", "ece_after", "nll_before", "nll_after", "temperature",
                "malignant", "subgroups", "rules", "decision", "served", "intervals", "val"):
        assert key in m, key
    val = Predictions.load(run / "predictions_val.npz")
    test = Predictions.load(run / "predictions_test.npz")
    # The temperature is the one that minimises NLL on the validation predictions (not test).
    assert m["temperature"] == pytest.approx(fit_temperature(val.logits, val.targets))
    assert val.tta_logits is not None and val.tta_logits.shape == val.logits.shape
    # The headline is the stored decision applied to the saved test logits, by scikit-learn.
    loaded = load_run(run)
    pred = loaded.info.decision.predict(test.logits)
    assert m["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(test.targets, pred))
    for key in ("accuracy", "balanced_accuracy", "macro_f1", "roc_auc_macro"):
        lo, hi = m["intervals"][key]
        assert lo <= m[key] <= hi, key
    assert set(m["rules"]) >= {"posterior", "uniform", "metadata", "tta"}
    assert m["rules"]["posterior"]["tau"] == 0.0 and m["rules"]["uniform"]["tau"] == 1.0
    # The decision lives in decision.json; training's best.pt is never rewritten.
    from dermalab.core.runs import load_checkpoint

    stored = json.loads((run / "decision.json").read_text())["decision"]
    assert stored["temperature"] == pytest.approx(m["temperature"])
    assert stored["malignant_threshold"] == pytest.approx(m["malignant"]["threshold"])
    assert "temperature" not in load_checkpoint(run / "checkpoints" / "best.pt")
    assert "sex" in m["subgroups"]


def test_nothing_fitted_depends_on_test_labels(run: Path, tmp_path: Path) -> None:
    """Temperature, prior shift, thresholds and the metadata weight come from validation:
    a copy of the run with its test labels shuffled gets a byte-identical decision.json."""
    import shutil

    from dermalab.core.runs import Predictions
    from dermalab.pipeline import finalize_run

    copy = tmp_path / "shuffled"
    shutil.copytree(run, copy)
    test = Predictions.load(copy / "predictions_test.npz")
    rng = np.random.default_rng(0)
    shuffled = rng.permutation(test.targets)
    assert (shuffled != test.targets).any()
    Predictions(test.ids, shuffled, test.logits, test.tta_logits).save(
        copy / "predictions_test.npz")
    finalize_run(copy, serving=False)
    assert (copy / "decision.json").read_bytes() == (run / "decision.json").read_bytes()
    a = json.loads((copy / "metrics.json").read_text())
    b = json.loads((run / "metrics.json").read_text())
    assert a["val"] == b["val"] and a["decision"] == b["decision"]
    assert a["metadata_fusion"]["weight"] == b["metadata_fusion"]["weight"]


def test_report_has_every_section(run: Path) -> None:
    html = (run / "report.html").read_text()
    for sid in ("summary", "data", "curves", "metrics", "per-class", "confusion", "roc",
                "decision", "calibration", "malignant", "subgroups", "gallery", "config"):
        assert f'id="{sid}"' in html, sid
    assert "data:image/png;base64," in html and "not a diagnosis" in html
    assert "src=\"http" not in html  # self-contained
    m = json.loads((run / "metrics.json").read_text())
    lo, hi = m["intervals"]["balanced_accuracy"]
    assert f"{m['balanced_accuracy']:.3f} [{lo:.3f}, {hi:.3f}]" in html
    assert "the served rule with each image&#x27;s own age, sex, localization" in html or \
        "the served rule with each image's own age, sex, localization" in html


def test_metadata_model_is_fitted_stored_and_measured(run: Path) -> None:
    m = json.loads((run / "metrics.json").read_text())
    stored = json.loads((run / "decision.json").read_text())["metadata_model"]
    assert stored["fields"] == ["age", "sex", "localization"]
    assert stored["weight"] == pytest.approx(m["metadata_fusion"]["weight"])
    # The synthetic data: sex alternates, every site is "back" (one category), ages vary.
    assert stored["sexes"] == ["female", "male"] and stored["sites"] == ["back"]
    # The weight is the one that minimises validation NLL of the fused logits.
    from dermalab.core.metadata import MetadataModel
    from dermalab.core.runs import Predictions, load_run
    from dermalab.data.prepare import prepare_data
    from dermalab.evaluate.metadata_fusion import fit_weight

    loaded = load_run(run)
    data = prepare_data(loaded.config.data, 64, split_path=run / "splits.csv", progress=False)
    val = Predictions.load(run / "predictions_val.npz")
    mm = MetadataModel.from_json(stored)
    scaled = val.logits / m["temperature"]
    assert stored["weight"] == pytest.approx(
        fit_weight(scaled, mm.log_ratio(data.meta_rows(val.ids)), val.targets))
    assert m["metadata_fusion"]["val_nll"] <= m["metadata_fusion"]["val_nll_without"] + 1e-9
    # The rule with metadata is measured on test beside the served one.
    assert m["rules"]["metadata"]["balanced_accuracy"] is not None
    # Switching it off on report removes it again, from the decision and the metrics.
    from dermalab.pipeline import finalize_run

    finalize_run(run, serving=False, eval_overrides=["eval.metadata=[]"])
    assert "metadata_fusion" not in json.loads((run / "metrics.json").read_text())
    assert json.loads((run / "decision.json").read_text())["metadata_model"] is None
    finalize_run(run, serving=False, eval_overrides=["eval.metadata=[age,sex,localization]"])
    again = json.loads((run / "metrics.json").read_text())["metadata_fusion"]
    assert again["weight"] == pytest.approx(m["metadata_fusion"]["weight"], abs=1e-6)


def test_onnx_matches_pytorch_on_images(run: Path) -> None:
    from dermalab.data.images import load_resized

    srcs = sorted(Path(p) for p in _dataset_images(run))[:6]
    arr = np.stack([load_resized(str(p), 64, "squash") for p in srcs])
    meta = export_onnx(run, check_images=arr)
    assert (run / "export" / "model.onnx").is_file() and (run / "export" / "model.json").is_file()
    par = meta["extra"]["parity"]
    assert par["max_abs_diff"] < 1e-3 and par["argmax_agreement"] == 1.0
    onnx_p = Predictor.load(run / "export")
    torch_p = Predictor.load(run, prefer_onnx=False)
    assert onnx_p.backend == "onnxruntime" and torch_p.backend == "torch"
    a, b = onnx_p.probabilities(arr), torch_p.probabilities(arr)
    assert np.abs(a - b).max() < 1e-4 and (a.argmax(1) == b.argmax(1)).all()
    assert onnx_p.info.decision == torch_p.info.decision  # model.json carries the decision
    # The metadata model travels in model.json and fuses the same way on both backends.
    assert onnx_p.info.metadata == torch_p.info.metadata and onnx_p.metadata_model is not None
    rows = [{"age": 70.0, "sex": "male", "localization": "back"}] * len(arr)
    a, b = onnx_p.probabilities(arr, metadata=rows), torch_p.probabilities(arr, metadata=rows)
    assert np.abs(a - b).max() < 1e-4


def test_predict_cli_weighs_the_patients_metadata(run: Path, capsys: pytest.CaptureFixture[str]
                                                  ) -> None:
    from dermalab.cli import main

    img = _dataset_images(run)[0]

    def predict(*extra: str) -> tuple[int, str, str]:
        code = main(["predict", str(run), img, "--top-k", "4", *extra])
        out, err = capsys.readouterr()
        return code, out, err

    code, out, _ = predict("--json", "--age", "70", "--sex", "male", "--site", "back")
    assert code == 0
    res = json.loads(out)[0]
    assert res["metadata_used"] == ["age", "sex", "localization"]
    p = Predictor.load(run)
    expected = p.calibrated(p.logits(p.preprocess(img)[None]),
                            [{"age": 70.0, "sex": "male", "localization": "back"}])[0]
    assert res["top"][0]["probability"] == pytest.approx(expected.max(), abs=1e-6)
    assert "weighing the patient's age beside each image" in predict("--age", "70")[1]
    code, _, err = predict("--site", "elbow")
    assert code == 2
    assert err == "error: body site 'elbow' is not one this model knows: ['back']\n"


def _dataset_images(run: Path) -> list[str]:
    cfg = load_config(run / "config.yaml")
    assert cfg.data.source
    return [str(p) for p in Path(cfg.data.source).parent.glob("HAM10000_images_part_*/*.jpg")]


def test_predict_cli_json_and_bad_image(run: Path, tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    # In-process (the smoke tests run the real executable): an escaping exception would fail
    # here just as a traceback would there.
    from dermalab.cli import main

    img = _dataset_images(run)[0]
    assert main(["predict", str(run), img, "--json", "--top-k", "3"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out[0]["image"] == img and len(out[0]["top"]) == 3
    probs = [t["probability"] for t in out[0]["top"]]
    assert probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1.0 + 1e-9
    bad = tmp_path / "fake.jpg"
    bad.write_text("not a photo")
    assert main(["predict", str(run), str(bad)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {bad}: not an image") and "Traceback" not in err


def test_explain_command_writes_overlays(run: Path, tmp_path: Path) -> None:
    from dermalab.evaluate.explain_run import explain_command

    imgs = _dataset_images(run)[:2]
    out = explain_command(run, images=imgs, method="gradcam++", target_class="nv",
                          out_dir=tmp_path / "ex")
    report = json.loads((out / "explain.json").read_text())
    assert [e["explained_class"] for e in report["images"]] == ["nv", "nv"]
    assert (out / "gallery.png").stat().st_size > 1000
    assert all((out / e["file"]).is_file() for e in report["images"])


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_gradcam_for_every_backbone(name: str) -> None:
    import torch

    torch.manual_seed(0)
    model, cfg, _ = create_model(ModelConfig(backbone=name, pretrained=False), 3)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (2, 64, 64, 3), dtype=np.uint8)
    for method in ("gradcam", "gradcam++"):
        maps, logits = cam_maps(model, name, images, cfg["mean"], cfg["std"], [0, 2], method)
        assert maps.shape == (2, 64, 64) and logits.shape == (2, 3)
        assert np.isfinite(maps).all() and maps.min() >= 0 and maps.max() <= 1


@pytest.mark.realdata
def test_onnx_parity_on_real_ham_images(run: Path) -> None:
    if not HAM_DIR.is_dir():
        pytest.skip("real HAM10000 data not present")
    from dermalab.data.images import load_resized

    paths = sorted((HAM_DIR / "images").glob("*.jpg"))[:8]
    arr = np.stack([load_resized(str(p), 64, "squash") for p in paths])
    par = export_onnx(run, run / "export_real", check_images=arr)["extra"]["parity"]
    assert par["max_abs_diff"] < 1e-3 and par["argmax_agreement"] == 1.0


def test_report_renders_in_a_real_browser(run: Path) -> None:
    from tests.browser import ARGS, CHROMIUM, playwright_api

    playwright = playwright_api()
    shot = run / "report_screenshot.png"
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), headless=True,
                                    args=ARGS)
        page = browser.new_page(viewport={"width": 1200, "height": 900})
        page.goto((run / "report.html").resolve().as_uri())
        titles = page.locator("section h2").all_inner_texts()
        for want in ("Summary", "Data", "Training curves", "Test metrics", "Per-class report",
                     "Confusion matrix", "ROC curves", "The served decision and other rules",
                     "Calibration",
                     "Malignant operating point", "Subgroups",
                     "Misclassified test images (Grad-CAM)", "Configuration"):
            assert want in titles
        widths = page.eval_on_selector_all("img", "els => els.map(e => e.naturalWidth)")
        assert len(widths) >= 10 and all(w > 0 for w in widths)  # every embedded PNG decoded
        assert page.locator("#calibration table").count() >= 1
        page.screenshot(path=str(shot), full_page=True)
        browser.close()
    assert shot.stat().st_size > 50_000


def test_closed_form_cam_equals_gradcam_at_the_final_feature_map() -> None:
    """The web service's fast heat-map is Grad-CAM itself at the last feature map."""
    import torch
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    from dermalab.evaluate.explain import closed_form_cam, has_linear_gap_head, to_input

    torch.manual_seed(0)
    model, cfg, _ = create_model(ModelConfig(backbone="tf_efficientnet_lite0"), 4)
    model.eval()
    assert has_linear_gap_head(model)
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (3, 96, 96, 3), dtype=np.uint8)
    classes = [0, 3, 1]
    fast = closed_form_cam(model, images, cfg["mean"], cfg["std"], classes)
    with GradCAM(model=model, target_layers=[model.bn2]) as cam:  # bn2 = BN + act, last layer
        ref = cam(input_tensor=to_input(images, cfg["mean"], cfg["std"]),
                  targets=[ClassifierOutputTarget(k) for k in classes])
    assert fast.shape == ref.shape == (3, 96, 96)
    assert np.abs(fast - ref).max() < 0.02  # same map; only the resize kernels differ


def test_vgg_head_is_not_linear_gap() -> None:
    from dermalab.evaluate.explain import has_linear_gap_head

    model, _, _ = create_model(ModelConfig(backbone="vgg16", pretrained=False), 3)
    assert not has_linear_gap_head(model)
