"""Near-duplicates (re-encoded, resized, lightly cropped copies) are grouped like identical
files: reported by ``data inspect``, kept in one split, and their label conflicts follow
``data.conflicts``."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dermalab.core.config import DataConfig
from dermalab.data.inspect import format_report, inspect_dataset
from dermalab.data.near_duplicates import find_near_duplicates
from dermalab.data.prepare import prepare_data
from tests.conftest import photo_image


def _resaved(img: Image.Image, quality: int, scale: float, crop: int) -> Image.Image:
    w, h = img.size
    out = img.crop((crop, crop, w - crop, h - crop))
    out = out.resize((round(out.width * scale), round(out.height * scale)))
    buf = io.BytesIO()
    out.save(buf, "JPEG", quality=quality)
    return Image.open(io.BytesIO(buf.getvalue())).convert("RGB")


def _dataset(root: Path) -> dict[str, tuple[str, str]]:
    """Three classes of distinct photo crops; three photos re-saved (smaller, another JPEG
    quality, a few pixels cropped) into *another* class's folder. Returns the copies:
    copy path -> (original path)."""
    copies = {}
    for ci, name in enumerate(["eczema", "psoriasis", "tinea"]):
        (root / name).mkdir(parents=True)
        for i in range(14):
            photo_image(ci, seed=ci * 100 + i, size=(160, 120)).save(
                root / name / f"{name}_{i}.jpg", quality=92)
    for k, (src, dst) in enumerate([("eczema", "psoriasis"), ("psoriasis", "tinea"),
                                    ("tinea", "eczema")]):
        original = root / src / f"{src}_{k}.jpg"
        copy = root / dst / f"copy_of_{src}_{k}.jpg"
        _resaved(Image.open(original).convert("RGB"), 70 + 5 * k, 0.7, 3).save(copy, quality=85)
        copies[f"{dst}/{copy.name}"] = f"{src}/{original.name}"
    return copies


def _cached(img: Image.Image) -> np.ndarray:
    """As the pipeline hashes an image: decoded and squashed to the model's input size."""
    from dermalab.data.images import resize_rgb

    return np.asarray(resize_rgb(img, 128, "squash"), np.uint8)


def test_copies_are_found_and_distinct_photos_are_not() -> None:
    rng = np.random.default_rng(0)
    originals = [photo_image(i % 5, seed=i, size=(160, 120)) for i in range(30)]
    images = {f"o{i}": _cached(im) for i, im in enumerate(originals)}
    for i in range(0, 30, 3):
        # re-encoded and resized: every such copy is found at the default distance (a crop of
        # a few percent is found half to two thirds of the time: bench/results/near_duplicates.md)
        q, scale = int(rng.integers(55, 90)), float(rng.uniform(0.45, 0.9))
        images[f"c{i}"] = _cached(_resaved(originals[i], q, scale, 0))
    near = find_near_duplicates(sorted(images), images.__getitem__)
    for i in range(0, 30, 3):
        assert near.group_of.get(f"c{i}") is not None, f"copy c{i} not found"
        assert near.group_of[f"c{i}"] == near.group_of[f"o{i}"]
    # no two distinct originals end up together
    groups = [set(g) for g in near.groups.values()]
    assert all(sum(k.startswith("o") for k in g) == 1 for g in groups), groups
    assert find_near_duplicates(sorted(images), images.__getitem__, -1).group_of == {}


def test_inspect_reports_near_duplicates_under_other_labels(tmp_path: Path) -> None:
    copies = _dataset(tmp_path / "photos")
    report = inspect_dataset(DataConfig(source=str(tmp_path / "photos")))
    near = report["near_duplicates"]
    assert near["groups"] == 3 and near["cross_class_pairs"] == 3
    pairs = {frozenset((c["a"], c["b"])) for c in near["cross_class"]}
    assert pairs == {frozenset(p) for p in copies.items()}
    # each picture under two labels is a conflict, left out under data.conflicts=drop
    assert report["duplicates"]["conflicting_labels"] == 3
    text = format_report(report)
    assert "3 group(s) of near-duplicate photos" in text
    assert "near-duplicates under two labels:" in text


def test_the_split_keeps_near_duplicates_together(tmp_path: Path, cache_dir: Path) -> None:
    copies = _dataset(tmp_path / "photos")
    data = prepare_data(DataConfig(source=str(tmp_path / "photos"), conflicts="keep",
                                   split_ratios=[0.4, 0.3, 0.3]), 64, progress=False)
    split = data.split.assignment
    for copy, original in copies.items():
        assert split[copy] == split[original]
        assert data.units([copy]) == data.units([original])
    assert data.leaks.near_duplicate_overlap == 0
    # with the default policy the conflicting copies and originals are left out
    dropped = prepare_data(DataConfig(source=str(tmp_path / "photos")), 64, progress=False)
    kept = {s.sample_id for s in dropped.source.samples}
    assert not any(c in kept or o in kept for c, o in copies.items())


def test_a_saved_split_that_separates_them_is_warned_about(tmp_path: Path,
                                                           cache_dir: Path) -> None:
    copies = _dataset(tmp_path / "photos")
    copy, original = next(iter(copies.items()))
    rows = ["sample_id,split"]
    for f in sorted((tmp_path / "photos").glob("*/*.jpg")):
        sid = f"{f.parent.name}/{f.name}"
        part = "test" if sid == copy else "val" if f.stem.endswith("_1") else "train"
        rows.append(f"{sid},{part}")
    (tmp_path / "split.csv").write_text("\n".join(rows) + "\n")
    data = prepare_data(DataConfig(source=str(tmp_path / "photos"), conflicts="keep",
                                   split_file=str(tmp_path / "split.csv")), 64, progress=False)
    assert data.split.assignment[original] != data.split.assignment[copy]
    assert data.leaks.near_duplicate_overlap >= 1
    assert any("near-duplicate photos cross splits" in w for w in data.warnings)


@pytest.mark.realdata
def test_dermnet_reencoded_copies_are_linked() -> None:
    """Real clinical photos: a DermNet photo re-saved at 60% of its size is found."""
    from tests.conftest import SHARED_DATA

    folder = SHARED_DATA / "dermnetnz_subset" / "Psoriasis"
    if not folder.is_dir():
        pytest.skip(f"DermNet photos not found at {folder}")
    from dermalab.data.images import load_resized, resize_rgb

    files = sorted(folder.glob("*.jpg"))[:20]
    images = {f.name: load_resized(str(f), 128, "squash") for f in files}
    copy = _resaved(Image.open(files[0]).convert("RGB"), 75, 0.6, 2)
    images["copy"] = np.asarray(resize_rgb(copy, 128, "squash"))
    near = find_near_duplicates(sorted(images), images.__getitem__)
    assert near.group_of.get("copy") == near.group_of.get(files[0].name) is not None
