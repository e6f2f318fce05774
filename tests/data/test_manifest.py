"""The CSV manifest format (``data.format: csv``): any table naming one image per row, with
its label and optionally group, split, Fitzpatrick skin type and patient metadata."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from dermalab.core.config import DataConfig
from dermalab.core.errors import DataError
from dermalab.data.inspect import format_report, inspect_dataset
from dermalab.data.sources import detect_format, load_source
from tests.conftest import SHARED_DATA, photo_image


def _manifest(root: Path, rows: list[dict[str, str]], name: str = "labels.csv") -> Path:
    (root / "images").mkdir(parents=True, exist_ok=True)
    with open(root / name, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return root / name


def _rows(n: int = 12) -> list[dict[str, str]]:
    out = []
    for i in range(n):
        out.append({"md5": f"img{i:02d}", "diagnosis": ["eczema", "acne", "keloid"][i % 3],
                    "patient": f"p{i // 2}", "fitz": str([1, 3, 6, -1][i % 4]),
                    "age": "" if i == 5 else str(20 + i)})
    return out


def _write_images(root: Path, rows: list[dict[str, str]]) -> None:
    for i, r in enumerate(rows):
        photo_image(i % 5, seed=i, size=(64, 48)).save(root / "images" / f"{r['md5']}.jpg")


def test_columns_are_named_by_the_config(tmp_path: Path) -> None:
    rows = _rows()
    path = _manifest(tmp_path, rows)
    _write_images(tmp_path, rows)
    cfg = DataConfig(source=str(path), format="csv",
                     columns={"image": "md5", "label": "diagnosis", "group": "patient",
                              "skin_type": "fitz", "age": "age"})
    data = load_source(cfg)
    assert data.kind == "csv" and len(data.samples) == 12
    assert data.classes == ["acne", "eczema", "keloid"]
    by_id = {s.sample_id: s for s in data.samples}
    assert by_id["img03"].group == "p1" and by_id["img02"].meta["fitzpatrick"] == "6"
    assert by_id["img05"].meta["age_missing"] is True and by_id["img04"].meta["age"] == 24.0
    assert Path(by_id["img00"].path or "").name == "img00.jpg"  # the stem found in images/


def test_a_manifest_with_image_and_label_columns_is_detected(tmp_path: Path) -> None:
    rows = [{"image": f"images/x{i}.jpg", "label": "acne" if i % 2 else "eczema",
             "split": "train" if i < 6 else ("val" if i < 8 else "test")} for i in range(10)]
    path = _manifest(tmp_path, rows)
    for i in range(10):
        photo_image(i % 3, seed=i).save(tmp_path / "images" / f"x{i}.jpg")
    assert detect_format(path) == "csv"
    data = load_source(DataConfig(source=str(path)))
    assert data.given_split is not None and data.given_split["images/x7.jpg"] == "val"


@pytest.mark.parametrize(("columns", "message"), [
    ({"image": "nope"}, "no 'nope' column for the image"),
    ({"image": "md5", "label": "diagnosis", "group": "ward"}, "does not have: ['ward']"),
    ({"image": "md5", "label": "diagnosis", "colour": "x"}, "unknown key(s) ['colour']"),
])
def test_a_wrong_column_is_one_clear_line(tmp_path: Path, columns: dict[str, str],
                                          message: str) -> None:
    path = _manifest(tmp_path, _rows())
    with pytest.raises(DataError, match=message.replace("(", r"\(").replace(")", r"\)")
                       .replace("[", r"\[").replace("]", r"\]")):
        load_source(DataConfig(source=str(path), format="csv", columns=columns))


def test_a_missing_image_names_its_row(tmp_path: Path) -> None:
    rows = _rows()
    path = _manifest(tmp_path, rows)
    _write_images(tmp_path, rows)
    (tmp_path / "images" / "img07.jpg").unlink()
    cfg = {"image": "md5", "label": "diagnosis"}
    with pytest.raises(DataError, match=r"labels.csv:9: image img07 not found"):
        load_source(DataConfig(source=str(path), format="csv", columns=cfg))
    data = load_source(DataConfig(source=str(path), format="csv", columns=cfg, skip_bad=True))
    assert len(data.samples) == 11 and "img07" in data.bad[0]["error"]


def test_inspect_reports_skin_types(tmp_path: Path) -> None:
    rows = _rows()
    path = _manifest(tmp_path, rows)
    _write_images(tmp_path, rows)
    report = inspect_dataset(DataConfig(source=str(path), format="csv",
                                        columns={"image": "md5", "label": "diagnosis",
                                                 "group": "patient", "skin_type": "fitz"},
                                        split_ratios=[0.5, 0.25, 0.25]))
    st = report["skin_types"]
    assert st["groups"] == {"I-II": 3, "III-IV": 3, "V-VI": 3, "unknown": 3}
    assert sum(sum(c.values()) for c in st["per_split"].values()) == 12
    assert "Fitzpatrick type groups: I-II 3, III-IV 3, V-VI 3, unknown 3" in format_report(report)


def test_a_folder_given_for_a_manifest_uses_its_one_csv(tmp_path: Path) -> None:
    """``dermalab data inspect FOLDER --format csv`` (the Fitzpatrick17k folder as it comes)
    reads the folder's one CSV; with none or several, one clear line, no traceback."""
    rows = _rows()
    _manifest(tmp_path, rows)
    _write_images(tmp_path, rows)
    cfg = DataConfig(source=str(tmp_path), format="csv",
                     columns={"image": "md5", "label": "diagnosis"})
    data = load_source(cfg)
    assert len(data.samples) == 12 and data.location.endswith("labels.csv")
    _manifest(tmp_path, rows, "other.csv")
    with pytest.raises(DataError, match=r"2 \.csv files.*pass the manifest CSV itself"):
        load_source(cfg)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match=r"no \.csv file"):
        load_source(DataConfig(source=str(empty), format="csv"))


FITZ = SHARED_DATA / "fitzpatrick17k_subset"


@pytest.mark.realdata
def test_fitzpatrick17k_through_the_csv_format() -> None:
    """The real Fitzpatrick17k subset read as any CSV is: classes, skin types and
    near-duplicate groups reported, no special case in the code."""
    if not (FITZ / "fitzpatrick17k_subset.csv").is_file():
        pytest.skip(f"Fitzpatrick17k subset not found at {FITZ}")
    cfg = DataConfig(source=str(FITZ / "fitzpatrick17k_subset.csv"), format="csv",
                     columns={"image": "md5hash", "label": "label",
                              "skin_type": "fitzpatrick_scale"})
    data = load_source(cfg)
    assert len(data.samples) == 2860 and len(data.classes) == 21
    report = inspect_dataset(cfg)
    assert report["skin_types"]["types"]["6"] == 89  # SOURCES.md: type VI 89 photos
    assert report["skin_types"]["groups"]["V-VI"] == 216 + 89
    near = report["near_duplicates"]
    assert near is not None and near["groups"] > 10
    assert near["crossing_splits"] == 0  # the split keeps each group together
