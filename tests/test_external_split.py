"""Training and inspecting on an externally given split (``--split-file``), including the real
published DermaMNIST splits when the shared data is present."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from dermalab.cli import main
from tests.conftest import SHARED_DATA, write_ham_dataset

SPLITS_DIR = SHARED_DATA / "dermamnist_splits"
TINY = ["eval.bootstrap=50", "data.image_size=64", "train.epochs=1", "train.batch_size=8",
        "tracking.enabled=false",
        "eval.gallery=0", "eval.report=false", "eval.serving=false"]


def test_train_on_a_split_file_refuses_a_leak_then_uses_it_as_given(
        tmp_path: Path, cache_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    csv_path = write_ham_dataset(tmp_path / "ham", lesions_per_class=6, photos=True)
    with open(csv_path) as f:
        rows = list(csv.DictReader(f))
    # Lesion-wise alternate: images 0 and 1 of a lesion go to different splits (a leak).
    by_lesion: dict[str, list[str]] = {}
    for r in rows:
        by_lesion.setdefault(r["lesion_id"], []).append(r["image_id"])
    given = {}
    for k, (_, images) in enumerate(sorted(by_lesion.items())):
        for j, image_id in enumerate(images):
            given[image_id] = "val" if k % 4 == 0 else ["train", "test"][j % 2]
    ext = tmp_path / "given.csv"
    ext.write_text("image_id,split\n" + "\n".join(f"{i},{s}" for i, s in given.items()))
    leaky_lesions = sum(1 for k, imgs in enumerate(sorted(by_lesion.values()))
                        if k % 4 and len(imgs) > 1)

    run = tmp_path / "run"
    code = main(["train", "--data", str(csv_path), "--split-file", str(ext), "--out", str(run),
                 "--no-progress", "--set", *TINY])
    err = capsys.readouterr().err
    assert code == 2 and "leaks" in err and f"{leaky_lesions} group(s)" in err
    assert not (run / "checkpoints").exists()

    code = main(["train", "--data", str(csv_path), "--split-file", str(ext), "--out", str(run),
                 "--no-progress", "--set", *TINY, "data.allow_leaks=true"])
    assert code == 0
    with open(run / "splits.csv") as f:
        used = {r["sample_id"]: r["split"] for r in csv.DictReader(f)}
    assert used == given
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["split"]["group_overlap"] == leaky_lesions
    assert metrics["split"]["origin"] == f"file:{ext}"
    assert metrics["n"] == sum(1 for s in given.values() if s == "test")


@pytest.mark.realdata
@pytest.mark.parametrize(("name", "sizes", "leaked"), [
    ("dermamnist_split_info.csv", (7007, 1003, 2005), 1006),
    ("combined_metadata_corrected.csv", (8208, 575, 1232), 0),
])
def test_real_dermamnist_splits_are_read_and_their_leaks_reported(
        ham_real: Path, name: str, sizes: tuple[int, int, int], leaked: int,
        capsys: pytest.CaptureFixture[str]) -> None:
    """The official MedMNIST split shares lesions between splits; the corrected one does not."""
    path = SPLITS_DIR / name
    if not path.is_file():
        pytest.skip(f"{path} not present")
    code = main(["data", "inspect", str(ham_real), "--split-file", str(path), "--json"])
    out = capsys.readouterr()
    rep = json.loads(out.out)
    assert tuple(sum(rep["splits"][s].values()) for s in ("train", "val", "test")) == sizes
    assert rep["group_overlap"] == leaked
    assert code == (1 if leaked else 0)
    if leaked:
        assert f"{leaked} group(s)" in out.err
