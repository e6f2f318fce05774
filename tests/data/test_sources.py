"""Each source yields the same sample records; bad input fails naming file and row."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dermalab.core.config import DataConfig
from dermalab.core.errors import DataError
from dermalab.data.sources import detect_format, load_source
from tests.conftest import coloured_image, write_folder_dataset, write_ham_dataset


def test_folder_source_counts_and_ignores(folder_dataset: Path) -> None:
    (folder_dataset / "nv" / ".DS_Store").write_bytes(b"junk")
    (folder_dataset / "nv" / "readme.txt").write_text("notes")
    nested = folder_dataset / "bcc" / "more" / "deeper"
    nested.mkdir(parents=True)
    coloured_image((0, 255, 0), 1).save(nested / "x.PNG")
    data = load_source(DataConfig(source=str(folder_dataset)))
    assert data.kind == "folder"
    assert data.class_counts() == {"akiec": 12, "bcc": 13, "nv": 12}
    assert {i["reason"] for i in data.ignored} == {"hidden", "not an image extension"}
    assert len(data.ignored) == 2
    s = next(s for s in data.samples if s.path and s.path.endswith("x.PNG"))
    assert s.sample_id == "bcc/more/deeper/x.PNG" and s.label == "bcc"


def test_folder_class_map_merge_rename_drop(tmp_path: Path) -> None:
    root = write_folder_dataset(tmp_path / "d", per_class=3, classes={
        "Tinea pedis": (10, 10, 10), "Tinea capitis": (20, 20, 20), "Acne vulgaris": (30, 30, 30),
        "Urticaria": (40, 40, 40)})
    cfg = DataConfig(source=str(root), class_map={"Tinea *": "tinea", "Acne vulgaris": "acne",
                                                  "Urticaria": None})
    data = load_source(cfg)
    assert data.class_counts() == {"acne": 3, "tinea": 6}


def test_folder_empty_class_is_an_error_or_listed(folder_dataset: Path) -> None:
    (folder_dataset / "vasc").mkdir()
    with pytest.raises(DataError, match="'vasc' holds no images"):
        load_source(DataConfig(source=str(folder_dataset)))
    data = load_source(DataConfig(source=str(folder_dataset), skip_bad=True))
    assert data.bad == [{"path": str(folder_dataset / "vasc"),
                         "error": "class folder holds no images"}]
    assert "vasc" not in data.classes
    # Dropping the class in the map is not an error.
    load_source(DataConfig(source=str(folder_dataset), class_map={"vasc": None}))


def test_folder_split_layout_is_kept(tmp_path: Path) -> None:
    write_folder_dataset(tmp_path / "ds" / "train", per_class=4)
    write_folder_dataset(tmp_path / "ds" / "test", per_class=2)
    data = load_source(DataConfig(source=str(tmp_path / "ds")))
    assert data.given_split is not None
    assert sum(v == "test" for v in data.given_split.values()) == 6
    assert data.classes == ["akiec", "bcc", "nv"]


def test_folder_identical_files_share_a_group(folder_dataset: Path) -> None:
    src = folder_dataset / "nv" / "img_000.jpg"
    (folder_dataset / "akiec" / "copy.jpg").write_bytes(src.read_bytes())
    data = load_source(DataConfig(source=str(folder_dataset)))
    groups = {s.sample_id: s.group for s in data.samples}
    assert groups["akiec/copy.jpg"] == groups["nv/img_000.jpg"]


def test_ham10000_two_part_folders_and_age(ham_dataset: Path) -> None:
    data = load_source(DataConfig(source=str(ham_dataset)))
    assert data.kind == "ham10000"
    assert len(data.samples) == 48
    assert len({s.group for s in data.samples}) == 24
    assert data.display_names["nv"] == "Melanocytic nevus"
    paths = {Path(s.path).parent.name for s in data.samples if s.path}
    assert paths == {"HAM10000_images_part_1", "HAM10000_images_part_2"}
    missing = [s for s in data.samples if s.meta["age_missing"]]
    assert missing and all(s.meta["age"] is None for s in missing)  # imputed after the split


def test_missing_ages_take_the_training_splits_median(ham_dataset: Path, cache_dir: Path
                                                      ) -> None:
    """No statistic of validation or test images reaches the model: the median comes from
    the training split alone (changing a test image's age does not move it)."""
    from dermalab.data.prepare import prepare_data

    cfg = DataConfig(source=str(ham_dataset), split_ratios=[0.5, 0.25, 0.25])
    data = prepare_data(cfg, 32, progress=False)
    train = set(data.split.ids("train"))
    known = [s.meta["age"] for s in data.source.samples
             if s.sample_id in train and not s.meta["age_missing"]]
    missing = [s for s in data.source.samples if s.meta["age_missing"]]
    assert missing and {s.meta["age"] for s in missing} == {float(np.median(known))}
    everyone = [s.meta["age"] for s in data.source.samples if not s.meta["age_missing"]]
    assert float(np.median(known)) != float(np.median(everyone))  # the data tells them apart
    none = prepare_data(DataConfig(source=str(ham_dataset), split_ratios=[0.5, 0.25, 0.25],
                                   age_impute="none"), 32, progress=False)
    assert all(s.meta["age"] is None for s in none.source.samples if s.meta["age_missing"])


def test_ham10000_folder_with_csv_is_detected(ham_dataset: Path) -> None:
    assert detect_format(ham_dataset.parent) == "ham10000"
    assert detect_format(ham_dataset) == "ham10000"


def test_ham10000_missing_image_names_row(ham_dataset: Path) -> None:
    victim = next(ham_dataset.parent.glob("HAM10000_images_part_1/*.jpg"))
    victim.unlink()
    with pytest.raises(DataError, match=rf"HAM10000_metadata.csv:\d+: image {victim.stem} not "):
        load_source(DataConfig(source=str(ham_dataset)))
    data = load_source(DataConfig(source=str(ham_dataset), skip_bad=True))
    assert len(data.samples) == 47 and len(data.bad) == 1 and victim.stem in data.bad[0]["error"]


def test_ham10000_unknown_label_and_missing_column(tmp_path: Path) -> None:
    csv_path = write_ham_dataset(tmp_path / "h", lesions_per_class=2)
    text = csv_path.read_text().replace(",nv,", ",nevus?,", 1)
    csv_path.write_text(text)
    with pytest.raises(DataError, match=r":\d+: unknown dx 'nevus\?'"):
        load_source(DataConfig(source=str(csv_path)))
    bad = tmp_path / "bad.csv"
    bad.write_text("lesion_id,image_id,age\nHAM_1,ISIC_1,40\n")
    with pytest.raises(DataError, match=r"missing required column\(s\) \['dx'\]"):
        load_source(DataConfig(source=str(bad), format="ham10000"))


def test_ham10000_class_map_renames_codes(ham_dataset: Path) -> None:
    data = load_source(DataConfig(source=str(ham_dataset), class_map={"akiec": "malignant",
                                                                      "bcc": "malignant"}))
    assert data.class_counts() == {"malignant": 32, "nv": 16}


def _write_npz(path: Path, grey: bool = False) -> None:
    rng = np.random.default_rng(0)
    shape = (28, 28) if grey else (28, 28, 3)
    arrays = {}
    for split, n in (("train", 14), ("val", 4), ("test", 5)):
        arrays[f"{split}_images"] = rng.integers(0, 255, (n, *shape), dtype=np.uint8)
        arrays[f"{split}_labels"] = (np.arange(n) % 7).reshape(n, 1)
    np.savez(path, **arrays)


@pytest.mark.parametrize("grey", [False, True])
def test_medmnist_npz_official_split(tmp_path: Path, grey: bool) -> None:
    p = tmp_path / "dermamnist.npz"
    _write_npz(p, grey)
    data = load_source(DataConfig(source=str(p)))
    assert data.kind == "medmnist" and len(data.samples) == 23
    assert data.classes == sorted(["akiec", "bcc", "bkl", "df", "mel", "nv", "vasc"])
    assert data.arrays is not None and data.arrays.shape == (23, 28, 28, 3)
    assert data.given_split is not None and data.given_split["val/3"] == "val"
    s = next(s for s in data.samples if s.sample_id == "test/4")
    assert s.label == "mel"  # DermaMNIST label 4
    assert load_source(DataConfig(source=str(p), official_split=False)).given_split is None


def test_medmnist_missing_labels(tmp_path: Path) -> None:
    p = tmp_path / "x.npz"
    np.savez(p, train_images=np.zeros((2, 28, 28, 3), np.uint8))
    with pytest.raises(DataError, match="'train_images' has no matching 'train_labels'"):
        load_source(DataConfig(source=str(p)))


@pytest.mark.parametrize("channels", [3, 1])
def test_hmnist_csv(tmp_path: Path, channels: int) -> None:
    side = 4
    n_pix = side * side * channels
    rng = np.random.default_rng(1)
    rows = np.concatenate([rng.integers(0, 256, (9, n_pix)), (np.arange(9) % 7)[:, None]], axis=1)
    p = tmp_path / "hmnist_4_4_RGB.csv"
    header = ",".join([f"pixel{i:04d}" for i in range(n_pix)] + ["label"])
    np.savetxt(p, rows, fmt="%d", delimiter=",", header=header, comments="")
    data = load_source(DataConfig(source=str(p)))
    assert data.kind == "hmnist" and len(data.samples) == 9
    assert data.arrays is not None and data.arrays.shape == (9, side, side, 3)
    assert data.samples[4].label == "nv"  # Kaggle hmnist label 4 = nevus
    if channels == 3:
        assert data.arrays[0].reshape(-1).tolist() == rows[0, :-1].tolist()


def test_hmnist_bad_pixel_count(tmp_path: Path) -> None:
    p = tmp_path / "weird.csv"
    p.write_text("a,b,label\n1,2,0\n")
    with pytest.raises(DataError, match="2 pixel columns"):
        load_source(DataConfig(source=str(p), format="hmnist"))


def test_missing_dataset_and_remote(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="dataset not found"):
        load_source(DataConfig(source=str(tmp_path / "nothing")))
    with pytest.raises(DataError, match="only local paths and s3:// URIs are supported"):
        load_source(DataConfig(source="gs://bucket/prefix"))


def test_unknown_csv_layout(tmp_path: Path) -> None:
    p = tmp_path / "other.csv"
    p.write_text("x,y\n1,2\n")
    with pytest.raises(DataError, match="cannot tell the CSV format"):
        load_source(DataConfig(source=str(p)))


def test_image_with_unusual_mode_in_folder(tmp_path: Path) -> None:
    d = tmp_path / "f" / "nv"
    d.mkdir(parents=True)
    Image.new("RGB", (10, 10)).convert("CMYK").save(d / "cmyk.jpg")
    assert load_source(DataConfig(source=str(tmp_path / "f"))).class_counts() == {"nv": 1}
