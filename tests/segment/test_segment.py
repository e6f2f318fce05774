"""Lesion segmentation: the loss in its limits, metrics against scikit-learn, post-processing,
and a tiny run on real HAM10000 images and masks through the real CLI (train, predict with
measurements, ONNX export parity, resume of a finished run)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.metrics import f1_score, jaccard_score

from dermalab.cli import main
from dermalab.segment.metrics import dice_jaccard, segmentation_metrics, thresholded_jaccard
from dermalab.segment.model import DiceBCELoss
from dermalab.segment.postprocess import clean_mask
from tests.conftest import HAM_DIR


def test_dice_bce_reduces_to_its_parts() -> None:
    torch.manual_seed(0)
    logits = torch.randn(4, 1, 16, 16)
    y = (torch.rand(4, 1, 16, 16) > 0.6).float()
    bce = torch.nn.functional.binary_cross_entropy_with_logits(logits, y)
    assert DiceBCELoss(0.0)(logits, y) == pytest.approx(float(bce), abs=1e-6)
    p = torch.sigmoid(logits).flatten(1)
    dice = (2 * (p * y.flatten(1)).sum(1) + 1) / (p.sum(1) + y.flatten(1).sum(1) + 1)
    assert DiceBCELoss(1.0)(logits, y) == pytest.approx(float(1 - dice.mean()), abs=1e-6)
    perfect = torch.where(y > 0, 20.0, -20.0)
    assert float(DiceBCELoss(0.5)(perfect, y)) < 1e-3
    with pytest.raises(ValueError):
        DiceBCELoss(1.5)


def test_metrics_match_scikit_learn_and_the_isic_threshold() -> None:
    rng = np.random.default_rng(0)
    preds = [rng.random((20, 20)) > 0.5 for _ in range(5)]
    truths = [rng.random((20, 20)) > 0.4 for _ in range(5)]
    for p, t in zip(preds, truths, strict=True):
        d, j = dice_jaccard(p, t)
        assert d == pytest.approx(f1_score(t.ravel(), p.ravel()))
        assert j == pytest.approx(jaccard_score(t.ravel(), p.ravel()))
    m = segmentation_metrics(preds, truths)
    assert m["n"] == 5 and m["jaccard"] == pytest.approx(np.mean(
        [jaccard_score(t.ravel(), p.ravel()) for p, t in zip(preds, truths, strict=True)]))
    assert thresholded_jaccard(0.64) == 0.0 and thresholded_jaccard(0.65) == 0.65
    assert dice_jaccard(np.zeros((3, 3)), np.zeros((3, 3))) == (1.0, 1.0)


def test_clean_mask_keeps_one_region_with_its_holes_filled() -> None:
    m = np.zeros((30, 30), bool)
    m[5:25, 5:25] = True
    m[12:16, 12:16] = False  # a hole
    m[0:2, 28:30] = True  # a speck elsewhere
    out = clean_mask(m)
    assert out[12:16, 12:16].all() and not out[0:2, 28:30].any() and out.sum() == 400


def test_training_writes_a_finished_run(seg_run: Path) -> None:
    m = json.loads((seg_run / "metrics.json").read_text())
    assert m["kind"] == "segmentation" and m["n"] == 8 and m["epochs_run"] == 2
    # The recorded test Dice is the saved model's: segmenting the test photos again (at the
    # photos' own size here, at the model's in training) gives it back.
    from PIL import Image

    from dermalab.data.masks import read_mask
    from dermalab.segment.metrics import dice_jaccard
    from dermalab.segment.predict import Segmenter
    from tests.conftest import HAM_DIR

    with open(seg_run / "splits.csv") as f:
        test_ids = [r["sample_id"] for r in csv.DictReader(f) if r["split"] == "test"]
    photos = [Image.open(HAM_DIR / "images" / f"{i}.jpg").convert("RGB") for i in test_ids]
    truths = [read_mask(HAM_DIR / "masks" / f"{i}_segmentation.png") for i in test_ids]
    masks = Segmenter.load(seg_run).photo_masks(photos)
    dice = np.mean([dice_jaccard(p, t)[0] for p, t in zip(masks, truths, strict=True)])
    assert dice == pytest.approx(m["dice"], abs=0.05)
    assert (seg_run / "plots" / "worst_masks.png").stat().st_size > 1000
    with open(seg_run / "splits.csv") as f:  # lesion-grouped, like the classifier's
        by_lesion: dict[str, set[str]] = {}
        for r in csv.DictReader(f):
            by_lesion.setdefault(r["group"], set()).add(r["split"])
    assert all(len(v) == 1 for v in by_lesion.values())


def test_predict_writes_masks_and_measurements_and_names_bad_files(
        seg_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with open(seg_run / "splits.csv") as f:
        test_id = next(r["sample_id"] for r in csv.DictReader(f) if r["split"] == "test")
    good = HAM_DIR / "images" / f"{test_id}.jpg"
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"nope")
    code = main(["segment", "predict", str(seg_run), str(good), str(bad), "--out",
                 str(tmp_path / "out"), "--json"])
    captured = capsys.readouterr()
    assert code == 2 and "bad.jpg" in captured.err and "Traceback" not in captured.err
    (r,) = json.loads(captured.out)
    assert set(r) >= {"area_share", "asymmetry_major", "compactness", "colours", "diameter_px"}
    assert (tmp_path / "out" / f"{test_id}_mask.png").is_file()


def test_predict_on_folders_writes_photo_size_masks_that_training_reads(
        seg_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Masks for a folder-per-class dataset: at each photo's size (not the segmenter's
    square input), mirroring the class folders, so ``data.masks`` takes them as they are."""
    from PIL import Image

    from dermalab.core.config import DataConfig
    from dermalab.data.masks import load_mask, mask_path
    from dermalab.data.samples import Sample
    from dermalab.segment.predict import Segmenter

    with open(seg_run / "splits.csv") as f:
        ids = [r["sample_id"] for r in csv.DictReader(f) if r["split"] == "test"][:3]
    data = tmp_path / "photos"
    for i, sid in enumerate(ids):
        (data / f"class{i % 2}").mkdir(parents=True, exist_ok=True)
        (data / f"class{i % 2}" / f"{sid}.jpg").symlink_to(HAM_DIR / "images" / f"{sid}.jpg")
    (data / "notes.txt").write_text("not an image")
    out = tmp_path / "masks"
    assert main(["segment", "predict", str(seg_run), str(data), "--out", str(out)]) == 0
    assert "lesion measurements" in capsys.readouterr().out
    seg = Segmenter.load(seg_run)
    cfg = DataConfig(masks=str(out))
    for i, sid in enumerate(ids):
        photo = data / f"class{i % 2}" / f"{sid}.jpg"
        written = out / f"class{i % 2}" / f"{sid}_mask.png"
        with Image.open(photo) as img:
            size = img.size
            want = seg.photo_masks([img.convert("RGB")])[0]
        sample = Sample(f"class{i % 2}/{sid}.jpg", f"class{i % 2}", sid, path=str(photo))
        assert mask_path(sample, cfg) == written
        got = load_mask(sample, cfg, size)
        assert got is not None and got.shape == (size[1], size[0])
        assert np.array_equal(got, want)
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["segment", "predict", str(seg_run), str(empty)]) == 2
    assert "no images" in capsys.readouterr().err


def test_onnx_export_matches_pytorch(seg_run: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["segment", "export", str(seg_run)]) == 0
    meta = json.loads((seg_run / "export" / "model.json").read_text())
    assert meta["parity"]["max_abs_diff"] < 1e-4 and meta["parity"]["mask_agreement"] > 0.999
    assert "mask agreement" in capsys.readouterr().out


def test_resume_of_a_finished_run_and_a_classifier_given_to_segment(
        seg_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    before = (seg_run / "metrics.json").stat().st_mtime_ns
    assert main(["segment", "train", "--resume", str(seg_run), "--no-progress"]) == 0
    assert (seg_run / "metrics.json").stat().st_mtime_ns == before
    capsys.readouterr()
    assert main(["segment", "predict", str(tmp_path), "x.jpg"]) == 2
    assert "not a dermalab run" in capsys.readouterr().err
