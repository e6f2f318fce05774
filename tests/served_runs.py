"""The served runs the serving, deployment and CLI tests share (a pytest plugin of the root
``conftest.py``, so every test folder sees them; each is trained once per session): a small
dermoscopic model on real HAM10000 images (``skin_run``), a small clinical one on DermNet
photos (``clinical_run``) and the image-type router between them (``router_dir``), with their
serving thresholds fitted."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from tests.conftest import HAM_DIR, link_ham_subset

CLASSES = {"mel": 30, "nv": 30, "bkl": 30, "bcc": 30}


def write_ham_subset(root: Path) -> Path:
    """Symlinked subset of the real HAM10000 (first N lesions of a few classes)."""
    with open(HAM_DIR / "HAM10000_metadata.csv") as f:
        rows = list(csv.DictReader(f))
    want = dict(CLASSES)
    keep = []
    for r in sorted(rows, key=lambda r: r["image_id"]):
        if want.get(r["dx"], 0) > 0:
            keep.append(r)
            want[r["dx"]] -= 1
    return link_ham_subset(root, keep)


@pytest.fixture(scope="session")
def skin_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if not (HAM_DIR / "HAM10000_metadata.csv").is_file():
        pytest.skip(f"real HAM10000 data not found at {HAM_DIR}")
    from dermalab.core.config import load_config
    from dermalab.pipeline import train_run

    data = write_ham_subset(tmp_path_factory.mktemp("hamsub") / "ham")
    run = tmp_path_factory.mktemp("serve_runs") / "skin"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DERMALAB_CACHE", str(tmp_path_factory.mktemp("cache")))
        train_run(load_config(None, [
            f"data.source={data}", "data.image_size=96", "train.epochs=3", "train.batch_size=16",
            "train.patience=0", "tracking.enabled=false", "model.freeze_epochs=1",
            "optim.lr=0.003", "data.split_ratios=[0.6,0.2,0.2]", "eval.gallery=0",
            "eval.report=false", "eval.metadata=[age,sex,localization]",
            "eval.bootstrap=200"]), run, progress=False)
    return run


DERMNET_DIR = HAM_DIR.parent / "dermnetnz_subset"
CLINICAL_CLASSES = ("Acne vulgaris", "Psoriasis", "Vitiligo")


def dermnet_photos(folder: str) -> list[Path]:
    """A DermNet folder's photos, sorted."""
    return sorted((DERMNET_DIR / folder).glob("*.jpg"))


@pytest.fixture(scope="session")
def clinical_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small clinical-photo model: 24 real DermNet photos of each of three conditions."""
    if not DERMNET_DIR.is_dir():
        pytest.skip(f"DermNet photos not found at {DERMNET_DIR}")
    from dermalab.core.config import load_config
    from dermalab.pipeline import train_run

    root = tmp_path_factory.mktemp("dermnet") / "photos"
    for folder in CLINICAL_CLASSES:
        (root / folder).mkdir(parents=True)
        for p in dermnet_photos(folder)[:24]:
            (root / folder / p.name).symlink_to(p)
    run = tmp_path_factory.mktemp("serve_runs") / "clinical"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DERMALAB_CACHE", str(tmp_path_factory.mktemp("cache")))
        train_run(load_config(None, [
            f"data.source={root}", "data.image_type=clinical", "data.image_size=96",
            "train.epochs=3", "train.batch_size=16", "train.patience=0",
            "tracking.enabled=false", "model.freeze_epochs=1", "optim.lr=0.003",
            "data.split_ratios=[0.6,0.2,0.2]", "eval.gallery=0", "eval.report=false",
            "eval.malignant_classes=[]", "eval.bootstrap=100"]), run, progress=False)
    return run


@pytest.fixture(scope="session")
def router_dir(skin_run: Path, clinical_run: Path,
               tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An image-type router for the two small models, fitted by the CLI."""
    from dermalab.cli import main

    out = tmp_path_factory.mktemp("router") / "router"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DERMALAB_CACHE", str(tmp_path_factory.mktemp("cache")))
        assert main(["router", "fit", str(skin_run), str(clinical_run), "--out", str(out),
                     "--no-progress"]) == 0
    return out
