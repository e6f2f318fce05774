"""data.input end to end on real HAM10000 images and masks: a classifier trained on lesion
crops (with a segmenter) predicts through the CLI, the ONNX export and the web service with
the same preprocessing as training; mask_channel and raw+masked train and predict too."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from dermalab.cli import main
from dermalab.core.errors import DermalabError
from tests.conftest import HAM_DIR, link_ham_subset

CLASSES = {"mel": 15, "nv": 15, "bkl": 15}


@pytest.fixture(scope="module")
def ham_masked(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if not (HAM_DIR / "masks").is_dir():
        pytest.skip(f"real HAM10000 images and masks not found at {HAM_DIR}")
    with open(HAM_DIR / "HAM10000_metadata.csv") as f:
        rows = sorted(csv.DictReader(f), key=lambda r: r["image_id"])
    want, keep = dict(CLASSES), []
    for r in rows:
        if want.get(r["dx"], 0) > 0:
            keep.append(r)
            want[r["dx"]] -= 1
    return link_ham_subset(tmp_path_factory.mktemp("lesion") / "ham", keep)


def _train(data: Path, run: Path, mode: str, *extra: str) -> None:
    from dermalab.core.config import load_config
    from dermalab.pipeline import train_run

    train_run(load_config(None, [
        f"data.source={data}", f"data.masks={HAM_DIR / 'masks'}", f"data.input={mode}",
        "data.image_size=64", "train.epochs=1", "train.batch_size=16", "train.patience=0",
        "tracking.enabled=false", "data.split_ratios=[0.6,0.2,0.2]", "eval.gallery=0",
        "eval.report=false", *extra]), run, progress=False)


@pytest.fixture(scope="module")
def crop_run(ham_masked: Path, seg_run: Path, tmp_path_factory: pytest.TempPathFactory
             ) -> Path:
    run = tmp_path_factory.mktemp("crop") / "run"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DERMALAB_CACHE", str(run.parent / "cache"))
        _train(ham_masked, run, "crop", f"data.segmenter={seg_run}")
    return run


def _test_images(run: Path, n: int = 3) -> list[Path]:
    with open(run / "splits.csv") as f:
        ids = [r["sample_id"] for r in csv.DictReader(f) if r["split"] == "test"][:n]
    return [HAM_DIR / "images" / f"{i}.jpg" for i in ids]


def test_crop_is_stored_and_predicts_like_training(crop_run: Path, monkeypatch: pytest.MonkeyPatch
                                                   ) -> None:
    from dermalab.core.config import load_config
    from dermalab.core.runs import load_run
    from dermalab.data.masks import read_mask
    from dermalab.data.prepare import prepare_data
    from dermalab.deploy.predictor import Predictor

    run = load_run(crop_run)
    assert (run.info.input_mode, run.info.crop_margin) == ("crop", 0.1)
    assert (crop_run / "segmenter" / "checkpoints" / "best.pt").is_file()
    monkeypatch.setenv("DERMALAB_CACHE", str(crop_run.parent / "cache"))
    cfg = load_config(crop_run / "config.yaml")
    data = prepare_data(cfg.data, 64, split_path=crop_run / "splits.csv", progress=False)
    pred = Predictor.load(crop_run, prefer_onnx=False)
    photo = _test_images(crop_run, 1)[0]
    gt = read_mask(HAM_DIR / "masks" / f"{photo.stem}_segmentation.png")
    trained_on = data.store.get(photo.stem)  # the crop cache training and testing read
    assert np.array_equal(pred.preprocess(photo, mask=gt), trained_on)
    raw = prepare_data(cfg.data.__class__(**{**cfg.data.__dict__, "input": "raw"}), 64,
                       split_path=crop_run / "splits.csv", progress=False)
    assert not np.array_equal(raw.store.get(photo.stem), trained_on)  # it is a crop
    # Without a mask the run's segmenter finds the lesion: a crop of the same photo.
    seg_input = pred.preprocess(photo)
    assert seg_input.shape == (64, 64, 3)
    assert not np.array_equal(seg_input, raw.store.get(photo.stem))


def test_crop_through_the_cli_the_export_and_the_web_service(
        crop_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from dermalab.deploy.predictor import Predictor
    from dermalab.serve.app import create_app
    from dermalab.serve.settings import ServeSettings

    photos = [str(p) for p in _test_images(crop_run)]
    assert main(["predict", str(crop_run), *photos, "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert [len(r["top"]) for r in out] == [3, 3, 3]
    lesion = out[0]["lesion"]
    assert lesion["mask"] == "segmenter" and "not a diagnosis" in lesion["note"]
    # the measurements are those of the segmenter's outline of this photo
    from dermalab.data.images import open_rgb
    from dermalab.segment.measure import measure_photo

    seg = Predictor.load(crop_run, prefer_onnx=False)
    photo = open_rgb(photos[0])
    outline = seg.segment(photo)
    assert lesion["measurements"] == json.loads(json.dumps(measure_photo(photo,
                                                                          outline).to_json()))
    assert outline.any() and lesion["measurements"]["area_share"] > 0
    assert main(["predict", str(crop_run), photos[0], "--json", "--masks",
                 str(HAM_DIR / "masks")]) == 0
    given = json.loads(capsys.readouterr().out)[0]["lesion"]
    assert given["mask"] == "given" and given["measurements"]["area_share"] > 0.01
    assert main(["export", str(crop_run), "--format", "onnx"]) == 0
    capsys.readouterr()
    assert (crop_run / "export" / "segmenter" / "checkpoints" / "best.pt").is_file()
    onnx = Predictor.load(crop_run / "export")
    torch_pred = Predictor.load(crop_run, prefer_onnx=False)
    images = np.stack([torch_pred.preprocess(p) for p in photos])
    assert np.array_equal(images, np.stack([onnx.preprocess(p) for p in photos]))
    assert np.abs(onnx.probabilities(images) - torch_pred.probabilities(images)).max() < 1e-4
    settings = ServeSettings(run_dir=str(crop_run), database_url=f"sqlite:///{tmp_path}/h.db",
                             image_store=str(tmp_path / "up"), open=True)
    with TestClient(create_app(settings)) as c:
        r = c.post("/v1/analyses", files={"file": ("p.jpg", Path(photos[0]).read_bytes())})
        assert r.status_code == 201, r.text
        body = r.json()
        svc = c.app.state.services.analysis  # type: ignore[attr-defined]
        from dermalab.data.images import open_rgb

        # The service prepares an upload exactly as predict does (crop by its segmenter).
        assert np.array_equal(svc.primary.predictor.prepare(open_rgb(photos[0])), images[0])
        if body["verdict"] != "not_skin":  # the outline and measurements come along
            lesion = body["lesion"]
            assert lesion["outline_png"].startswith("data:image/png;base64,")
            assert 0 < lesion["area_share"] <= 1 and lesion["diameter_px"] > 0
        else:
            assert body["lesion"] is None
        want = torch_pred.probabilities(images[:1])[0]
        if body["conditions"]:  # and so answers the same probabilities
            top = body["conditions"][0]
            assert top["probability"] == pytest.approx(float(want.max()), abs=1e-4)


@pytest.mark.slow
def test_mask_channel_and_raw_plus_masked(ham_masked: Path, tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    from dermalab.core.config import load_config
    from dermalab.core.runs import load_run
    from dermalab.data.masks import read_mask
    from dermalab.data.prepare import prepare_data
    from dermalab.deploy.export import export_onnx
    from dermalab.deploy.predictor import Predictor

    monkeypatch.setenv("DERMALAB_CACHE", str(tmp_path / "cache"))
    _train(ham_masked, tmp_path / "mc", "mask_channel", "eval.gallery=2")
    run = load_run(tmp_path / "mc")
    assert run.info.in_chans == 4
    # the Grad-CAM gallery draws the photo of a 4-channel input
    assert (tmp_path / "mc" / "plots" / "misclassified_gradcam.png").stat().st_size > 1000
    photo = _test_images(tmp_path / "mc", 1)[0]
    pred = Predictor.load(tmp_path / "mc", prefer_onnx=False)
    with pytest.raises(DermalabError, match="needs a lesion mask"):
        pred.preprocess(photo)  # no segmenter was given, and no mask
    gt = read_mask(HAM_DIR / "masks" / f"{photo.stem}_segmentation.png")
    x = pred.preprocess(photo, mask=gt)
    assert x.shape == (64, 64, 4)
    meta = export_onnx(tmp_path / "mc")
    assert meta["extra"]["parity"]["max_abs_diff"] < 1e-4
    onnx = Predictor.load(tmp_path / "mc" / "export")
    assert np.abs(onnx.probabilities(x[None]) - pred.probabilities(x[None])).max() < 1e-4

    _train(ham_masked, tmp_path / "rm", "raw+masked")
    cfg = load_config(tmp_path / "rm" / "config.yaml")
    data = prepare_data(cfg.data, 64, split_path=tmp_path / "rm" / "splits.csv",
                        progress=False)
    sid = data.samples("train")[0].sample_id
    assert data.train_extra is not None
    assert not np.array_equal(data.train_extra.get(sid), data.store.get(sid))  # masked copy
    history = (tmp_path / "rm" / "history.csv").read_text()
    assert history.count("\n") == 2  # one epoch trained on both copies
    raw_pred = Predictor.load(tmp_path / "rm", prefer_onnx=False)
    assert raw_pred.preprocess(photo).shape == (64, 64, 3)  # predicts on the raw photo


def test_the_report_shows_the_test_lesions_measurements(crop_run: Path) -> None:
    from dermalab.evaluate.report import build_report

    m = json.loads((crop_run / "metrics.json").read_text())
    lesions = m["lesion_measurements"]
    with open(crop_run / "splits.csv") as f:
        n_test = sum(r["split"] == "test" for r in csv.DictReader(f))
    assert lesions["test_images"] == n_test and 0 < lesions["measured"] <= n_test
    assert sum(g["n"] for c, g in lesions["per_class"].items() if c != "all") \
        == lesions["per_class"]["all"]["n"] == lesions["measured"]
    page = build_report(crop_run)
    assert "Lesion measurements (descriptive)" in page and "diagnose nothing" in page


def test_mask_channel_refuses_a_frozen_stem(ham_masked: Path, tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """The mask channel's stem weights start at zero and must learn: freezing the stem would
    leave the mask unseen, so the run stops before training with what to change."""
    from dermalab.core.errors import ConfigError

    monkeypatch.setenv("DERMALAB_CACHE", str(tmp_path / "cache"))
    with pytest.raises(ConfigError, match=r"set model\.freeze_stages=0"):
        _train(ham_masked, tmp_path / "mc", "mask_channel", "model.freeze_stages=1")
    assert not (tmp_path / "mc" / "checkpoints" / "last.pt").exists()
