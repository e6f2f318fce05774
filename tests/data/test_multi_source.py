"""Several datasets in one training set (``data.sources``): each mapped into one taxonomy,
each split on its own with its groups kept, and the skin-type subgroups of the trained model
equal a hand computation with scikit-learn."""

from __future__ import annotations

import csv
import dataclasses
import json
from pathlib import Path

import pytest

from dermalab.core.config import DataConfig, load_config
from dermalab.core.errors import DataError
from dermalab.data.prepare import prepare_data
from dermalab.data.sources import load_source
from tests.conftest import photo_image


def _two_sources(root: Path) -> list[dict[str, object]]:
    """A folder (classes 'acne', 'eczema') and a CSV manifest of another atlas whose labels
    ('acne vulgaris', 'atopic dermatitis') map onto the same two, with patients and skin
    types."""
    folder = root / "atlas_a"
    for ci, name in enumerate(["acne", "eczema"]):
        (folder / name).mkdir(parents=True)
        for i in range(16):
            photo_image(ci, seed=ci * 100 + i).save(folder / name / f"a{i}.jpg")
    b = root / "atlas_b"
    (b / "images").mkdir(parents=True)
    rows = []
    for i in range(24):
        ci = i % 2
        photo_image(ci, seed=5000 + i).save(b / "images" / f"b{i:02d}.jpg")
        rows.append({"file": f"b{i:02d}", "dx": ["acne vulgaris", "atopic dermatitis"][ci],
                     "patient": f"p{i // 4}", "fitz": str(1 + i % 6)})
    with open(b / "labels.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return [{"name": "a", "source": str(folder)},
            {"name": "b", "source": str(b / "labels.csv"), "format": "csv",
             "columns": {"image": "file", "label": "dx", "group": "patient",
                         "skin_type": "fitz"},
             "class_map": {"acne vulgaris": "acne", "atopic dermatitis": "eczema"}}]


def test_sources_merge_into_one_taxonomy_and_split_each_on_its_own(
        tmp_path: Path, cache_dir: Path) -> None:
    sources = _two_sources(tmp_path)
    data = load_source(DataConfig(sources=sources))
    assert data.classes == ["acne", "eczema"] and len(data.samples) == 56
    assert {s.meta["source"] for s in data.samples} == {"a", "b"}
    assert all(s.sample_id.startswith(s.meta["source"] + "/") for s in data.samples)
    prepared = prepare_data(DataConfig(sources=sources, split_ratios=[0.5, 0.25, 0.25]), 32,
                            progress=False)
    split = prepared.split.assignment
    by_patient: dict[str, set[str]] = {}
    for s in prepared.source.samples:
        if s.meta["source"] == "b":
            by_patient.setdefault(s.group, set()).add(split[s.sample_id])
    assert all(len(v) == 1 for v in by_patient.values())  # a patient stays in one split
    for sp in ("train", "val", "test"):  # each source reaches every split
        assert {s.meta["source"] for s in prepared.source.samples
                if split[s.sample_id] == sp} == {"a", "b"}


@pytest.mark.parametrize(("entry", "message"), [
    ({"format": "csv"}, "needs a 'source'"),
    ({"source": "x", "colour": "red"}, "unknown key(s) ['colour']"),
    ({"source": "x", "format": "folders"}, "data.sources[0].format must be one of ('auto', "),
])
def test_a_bad_source_entry_is_one_clear_line(entry: dict[str, str], message: str) -> None:
    with pytest.raises(DataError, match=message.replace("(", r"\(").replace(")", r"\)")
                       .replace("[", r"\[").replace("]", r"\]")):
        load_source(DataConfig(sources=[entry]))


def test_a_model_on_two_sources_reports_skin_types_as_scikit_learn_does(
        tmp_path: Path, cache_dir: Path) -> None:
    from sklearn.metrics import balanced_accuracy_score

    from dermalab.core.skin import skin_type_group
    from dermalab.pipeline import train_run

    sources = _two_sources(tmp_path)
    cfg = load_config(None, ["data.image_size=48", "train.epochs=1", "train.batch_size=8",
                             "tracking.enabled=false", "eval.gallery=0", "eval.report=false",
                             "eval.serving=false", "eval.bootstrap=20",
                             "eval.malignant_classes=[]", "data.split_ratios=[0.4,0.3,0.3]"])
    cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, sources=sources))
    run = tmp_path / "run"
    train_run(cfg, run, progress=False)
    m = json.loads((run / "metrics.json").read_text())
    fitz = {f"b/b{i:02d}": str(1 + i % 6) for i in range(24)}
    with open(run / "predictions_test.csv") as f:
        rows = [r for r in csv.DictReader(f) if r["sample_id"] in fitz]
    groups = m["subgroups"]["skin_type"]["groups"]
    for name, g in groups.items():
        if name == "unknown":  # atlas a has no skin types
            continue
        sel = [r for r in rows if skin_type_group(fitz[r["sample_id"]]) == name]
        assert g["support"] == len(sel)
        assert g["balanced_accuracy"] == pytest.approx(
            balanced_accuracy_score([r["label"] for r in sel], [r["pred"] for r in sel]))


@pytest.mark.realdata
def test_the_two_source_clinical_recipe_reads_both_atlases() -> None:
    from tests.conftest import REPO, SHARED_DATA

    if not (SHARED_DATA / "fitzpatrick17k_subset").is_dir() or \
            not (SHARED_DATA / "dermnetnz_subset").is_dir():
        pytest.skip(f"DermNet NZ or Fitzpatrick17k not found in {SHARED_DATA}")
    cfg = load_config(REPO / "configs" / "clinical_two_source.yaml")
    sources = [{**s, "source": str(SHARED_DATA / ("dermnetnz_subset"
                                                  if s["name"] == "dermnet" else
                                                  "fitzpatrick17k_subset/"
                                                  "fitzpatrick17k_subset.csv"))}
               for s in cfg.data.sources]
    data = load_source(dataclasses.replace(cfg.data, sources=sources))
    per_source: dict[str, int] = {}
    for s in data.samples:
        per_source[s.meta["source"]] = per_source.get(s.meta["source"], 0) + 1
    # Fitzpatrick17k: 2,860 photos less dermatomyositis (106) and prurigo nodularis (119)
    assert per_source["fitzpatrick17k"] == 2860 - 106 - 119
    assert per_source["dermnet"] > 2000
    assert {"keloid", "rare_skin_cancer", "melanoma", "eczema"} <= set(data.classes)
    fitz = [s for s in data.samples if s.meta["source"] == "fitzpatrick17k"]
    assert all("fitzpatrick" in s.meta for s in fitz)
