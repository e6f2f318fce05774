"""Grouped, stratified, reproducible splits; split files validated; leaks fail loudly."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from dermalab.core.errors import DataError, LeakError
from dermalab.data.samples import Sample
from dermalab.data.splits import (
    Split,
    assert_no_leaks,
    check_leaks,
    make_split,
    read_split_file,
    write_split,
)


def _samples(n_groups: dict[str, int], per_group: int = 3) -> list[Sample]:
    out = []
    for label, n in n_groups.items():
        for g in range(n):
            for i in range(per_group):
                out.append(Sample(f"{label}_{g}_{i}", label, f"{label}_g{g}"))
    return out


def test_no_group_in_two_splits_and_stratified() -> None:
    samples = _samples({"nv": 200, "mel": 40, "df": 10})
    split = make_split(samples, (0.8, 0.1, 0.1), seed=1)
    assert check_leaks(samples, split).group_overlap == 0
    for label, n in {"nv": 600, "mel": 120, "df": 30}.items():
        c = Counter(split.assignment[s.sample_id] for s in samples if s.label == label)
        assert abs(c["train"] - 0.8 * n) <= 3 and abs(c["test"] - 0.1 * n) <= 3
    assert not split.warnings


def test_split_is_reproducible_and_seed_dependent() -> None:
    samples = _samples({"nv": 50, "mel": 20})
    a = make_split(samples, seed=7).assignment
    assert a == make_split(list(reversed(samples)), seed=7).assignment
    assert a != make_split(samples, seed=8).assignment


def test_small_class_reaches_every_split_or_warns() -> None:
    samples = _samples({"nv": 50, "df": 3}, per_group=1)
    split = make_split(samples, seed=0)
    assert {split.assignment[s.sample_id] for s in samples if s.label == "df"} == {
        "train", "val", "test"}
    tiny = _samples({"nv": 50, "vasc": 2}, per_group=1)
    warn = make_split(tiny, seed=0).warnings
    assert len(warn) == 1 and "'vasc' has only 2 group(s)" in warn[0]


def test_identical_files_are_kept_together() -> None:
    samples = _samples({"nv": 40}, per_group=1)
    hashes = {s.sample_id: s.sample_id for s in samples}
    hashes["nv_1_0"] = hashes["nv_0_0"]  # same bytes, different lesion ids
    for seed in range(10):
        split = make_split(samples, seed=seed, hashes=hashes)
        assert split.assignment["nv_1_0"] == split.assignment["nv_0_0"]
        assert check_leaks(samples, split, hashes).duplicate_overlap == 0


def test_leak_check_fails_loudly() -> None:
    samples = _samples({"nv": 4}, per_group=2)
    assignment = {s.sample_id: "train" for s in samples}
    assignment["nv_0_1"] = "test"
    report = check_leaks(samples, Split(assignment))
    assert report.group_overlap == 1 and report.pairs["train-test"] == 1
    with pytest.raises(LeakError, match="1 group"):
        assert_no_leaks(report)


def test_split_file_round_trip(tmp_path: Path) -> None:
    samples = _samples({"nv": 20, "mel": 10})
    split = make_split(samples, seed=3)
    path = tmp_path / "splits.csv"
    write_split(path, samples, split)
    header = path.read_text().splitlines()[0]
    assert header == "sample_id,label,group,split"
    assert read_split_file(path, samples).assignment == split.assignment


def test_external_split_validation(tmp_path: Path) -> None:
    samples = _samples({"nv": 3, "mel": 3}, per_group=1)
    p = tmp_path / "ext.csv"

    p.write_text("image_id,split\n" + "\n".join(f"{s.sample_id},train" for s in samples)
                 + "\nghost,test\n")
    with pytest.raises(DataError, match=r"1 id\(s\) not in the dataset, e.g. \['ghost"):
        read_split_file(p, samples)

    p.write_text("image_id,split\n" + "\n".join(f"{s.sample_id},train" for s in samples)
                 + f"\n{samples[0].sample_id},test\n")
    with pytest.raises(DataError, match="listed twice"):
        read_split_file(p, samples)

    p.write_text("image_id,split\n" + "\n".join(f"{s.sample_id},holdout" for s in samples))
    with pytest.raises(DataError, match="unknown split name"):
        read_split_file(p, samples)

    p.write_text("image_id,split\n" + "\n".join(f"{s.sample_id},train" for s in samples[1:]))
    with pytest.raises(DataError, match="have no split"):
        read_split_file(p, samples)

    p.write_text("image_id\n1\n")
    with pytest.raises(DataError, match="needs columns"):
        read_split_file(p, samples)


def test_external_split_missing_class_warns_and_leak_is_reported(tmp_path: Path) -> None:
    samples = _samples({"nv": 3, "mel": 2}, per_group=2)
    lines = []
    for s in samples:
        sp = "test" if s.sample_id == "nv_0_1" else ("val" if s.sample_id.startswith("nv_1")
                                                     else "train")
        lines.append(f"{s.sample_id},{sp}")
    p = tmp_path / "ext.csv"
    p.write_text("sample_id,split\n" + "\n".join(lines))
    split = read_split_file(p, samples)
    assert any("split 'val' has no images of class(es) ['mel']" in w for w in split.warnings)
    report = check_leaks(samples, split)
    assert report.group_overlap == 1 and report.pairs["train-test"] == 1


def test_by_image_split_ignores_groups_and_leaks() -> None:
    """The image-level split (kept to measure the leak) is stratified but splits lesions."""
    samples = _samples({"nv": 60, "mel": 20}, per_group=3)
    split = make_split(samples, (0.8, 0.1, 0.1), seed=1, by_image=True)
    assert split == make_split(samples, (0.8, 0.1, 0.1), seed=1, by_image=True)
    report = check_leaks(samples, split)
    assert report.group_overlap > 10
    for label, n in {"nv": 180, "mel": 60}.items():
        c = Counter(split.assignment[s.sample_id] for s in samples if s.label == label)
        assert abs(c["test"] - 0.1 * n) <= 1 and abs(c["train"] - 0.8 * n) <= 1
