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

RUN_SETS = ["data.image_size=64", "train.epochs=2", "train.batch_size=8", "train.patience=0",
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


def test_metrics_gain_calibration_and_operating_point(run: Path) -> None:
    m = json.loads((run / "metrics.json").read_text())
    for key in ("ece_before", "ece_after", "nll_before", "nll_after", "temperature",
                "malignant", "subgroups", "tta"):
        assert key in m, key
    assert set(m["malignant"]) >= {"threshold", "sensitivity", "specificity"}
    # The temperature is the one that minimises NLL on the validation predictions (not test).
    from dermalab.core.calibration import fit_temperature
    from dermalab.core.runs import Predictions

    val = Predictions.load(run / "predictions_val.npz")
    assert m["temperature"] == pytest.approx(fit_temperature(val.logits, val.targets))
    assert val.tta_logits is not None and val.tta_logits.shape == val.logits.shape
    assert "sex" in m["subgroups"]
    from dermalab.core.runs import load_checkpoint

    best = load_checkpoint(run / "checkpoints" / "best.pt")
    assert best["temperature"] == pytest.approx(m["temperature"])
    assert best["malignant"]["threshold"] == pytest.approx(m["malignant"]["threshold"])


def test_report_has_every_section(run: Path) -> None:
    html = (run / "report.html").read_text()
    for sid in ("summary", "data", "curves", "metrics", "per-class", "confusion", "roc",
                "calibration", "malignant", "subgroups", "gallery", "config"):
        assert f'id="{sid}"' in html, sid
    assert "data:image/png;base64," in html and "not a diagnosis" in html
    assert "src=\"http" not in html  # self-contained
    assert "Patient metadata (age, sex, localization) weighed beside the image" in html
    assert "malignant sensitivity (same threshold)" in html


def test_metadata_model_is_fitted_stored_and_measured(run: Path) -> None:
    from dermalab.core.runs import load_checkpoint

    m = json.loads((run / "metrics.json").read_text())["metadata_fusion"]
    ckpt = load_checkpoint(run / "checkpoints" / "best.pt")["metadata_model"]
    assert ckpt["fields"] == ["age", "sex", "localization"]
    assert ckpt["weight"] == pytest.approx(m["weight"]) and 0 <= m["weight"] <= 3
    # The synthetic data: sex alternates, every site is "back" (one category), ages vary.
    assert ckpt["sexes"] == ["female", "male"] and ckpt["sites"] == ["back"]
    assert m["nll"] > 0 and m["nll_without"] > 0 and m["test_images_with_metadata"] > 0
    # Switching it off on report removes it again, from the checkpoint and the metrics.
    from dermalab.pipeline import finalize_run

    finalize_run(run, serving=False, eval_overrides=["eval.metadata=[]"])
    assert "metadata_fusion" not in json.loads((run / "metrics.json").read_text())
    assert load_checkpoint(run / "checkpoints" / "best.pt")["metadata_model"] is None
    finalize_run(run, serving=False, eval_overrides=["eval.metadata=[age,sex,localization]"])
    again = json.loads((run / "metrics.json").read_text())["metadata_fusion"]
    assert again["weight"] == pytest.approx(m["weight"], abs=1e-6)


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
    assert onnx_p.info.temperature == pytest.approx(torch_p.info.temperature)
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


CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync"]


def test_report_renders_in_a_real_browser(run: Path) -> None:
    playwright = pytest.importorskip("playwright.sync_api")
    if not CHROMIUM.exists():
        pytest.skip("Debian chromium not installed (.ci/run installs it)")
    shot = run / "report_screenshot.png"
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), headless=True,
                                    args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1200, "height": 900})
        page.goto((run / "report.html").resolve().as_uri())
        titles = page.locator("section h2").all_inner_texts()
        for want in ("Summary", "Data", "Training curves", "Test metrics", "Per-class report",
                     "Confusion matrix", "ROC curves", "Calibration",
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
