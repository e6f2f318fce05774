"""A small model trained on real HAM10000 images, with serving thresholds fitted."""

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
            "eval.report=false"]), run, progress=False)
    return run
