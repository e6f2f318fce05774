"""The decoded-image cache is built once, reused, invalidated by changes, and never half-valid."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import dermalab.data.cache as cache_mod
from dermalab.core.config import DataConfig
from dermalab.core.errors import ImageError, LeakError
from dermalab.data.cache import build_cache
from dermalab.data.images import load_resized
from dermalab.data.prepare import prepare_data
from dermalab.data.sources import load_source
from tests.conftest import coloured_image


def test_cache_matches_direct_decoding_and_is_reused(
    folder_dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = load_source(DataConfig(source=str(folder_dataset)))
    cached = build_cache(data, 24, "squash", tmp_path / "c", progress=False)
    s = data.samples[5]
    assert s.path is not None
    assert np.array_equal(cached.get(s.sample_id), load_resized(s.path, 24, "squash"))
    assert len(cached.ids) == len(data.samples) and len(cached.hashes) == len(data.samples)

    calls = []
    monkeypatch.setattr(cache_mod, "decode_sample", lambda *a: calls.append(a))
    again = build_cache(load_source(DataConfig(source=str(folder_dataset))), 24, "squash",
                        tmp_path / "c", progress=False)
    assert calls == [] and again.folder == cached.folder  # no decoding the second time


def test_cache_invalidated_when_a_file_changes(folder_dataset: Path, tmp_path: Path) -> None:
    data = load_source(DataConfig(source=str(folder_dataset)))
    first = build_cache(data, 16, "squash", tmp_path / "c", progress=False)
    target = folder_dataset / "nv" / "img_000.jpg"
    coloured_image((255, 255, 0), seed=99).save(target)
    data2 = load_source(DataConfig(source=str(folder_dataset)))
    second = build_cache(data2, 16, "squash", tmp_path / "c", progress=False)
    assert second.folder != first.folder
    assert not np.array_equal(second.get("nv/img_000.jpg"), first.get("nv/img_000.jpg"))
    # Size and resize mode are part of the key too.
    assert build_cache(data2, 16, "pad", tmp_path / "c", progress=False).folder != second.folder


def test_bad_file_fails_build_and_leaves_no_cache(folder_dataset: Path, tmp_path: Path) -> None:
    bad = folder_dataset / "bcc" / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    data = load_source(DataConfig(source=str(folder_dataset)))
    with pytest.raises(ImageError) as info:
        build_cache(data, 16, "squash", tmp_path / "c", progress=False)
    assert info.value.path == str(bad)
    assert list((tmp_path / "c").iterdir()) == []  # the temporary build was removed


def test_skip_bad_lists_the_file_and_keeps_the_rest(folder_dataset: Path, cache_dir: Path
                                                    ) -> None:
    bad = folder_dataset / "bcc" / "empty.jpg"
    bad.write_bytes(b"")
    cfg = DataConfig(source=str(folder_dataset), skip_bad=True)
    prepared = prepare_data(cfg, 16, progress=False)
    assert prepared.source.bad == [{"path": str(bad), "error": "empty file (0 bytes)"}]
    assert "bcc/empty.jpg" not in {s.sample_id for s in prepared.source.samples}
    assert len(prepared.source.samples) == 36
    with pytest.raises(ImageError, match="empty file"):
        prepare_data(DataConfig(source=str(folder_dataset)), 16, progress=False)


def test_prepare_writes_and_reuses_split(ham_dataset: Path, cache_dir: Path, tmp_path: Path
                                         ) -> None:
    split_path = tmp_path / "run" / "splits.csv"
    cfg = DataConfig(source=str(ham_dataset), split_ratios=[0.5, 0.25, 0.25])
    first = prepare_data(cfg, 16, split_path=split_path, progress=False)
    assert split_path.is_file() and first.leaks.group_overlap == 0
    # A different seed does not matter once the split file exists: the run keeps its split.
    cfg2 = DataConfig(source=str(ham_dataset), split_ratios=[0.5, 0.25, 0.25], split_seed=999)
    again = prepare_data(cfg2, 16, split_path=split_path, progress=False)
    assert again.split.assignment == first.split.assignment
    assert again.split.origin.startswith("saved:")


def test_prepare_refuses_leaky_external_split(ham_dataset: Path, cache_dir: Path,
                                              tmp_path: Path) -> None:
    data = load_source(DataConfig(source=str(ham_dataset)))
    lines = ["image_id,split"]
    for i, s in enumerate(data.samples):  # by image: the two images of a lesion get split up
        lines.append(f"{s.sample_id},{['train', 'val', 'test', 'train'][i % 4]}")
    ext = tmp_path / "leaky.csv"
    ext.write_text("\n".join(lines))
    with pytest.raises(LeakError, match="group"):
        prepare_data(DataConfig(source=str(ham_dataset), split_file=str(ext)), 16,
                     progress=False)
    ok = prepare_data(DataConfig(source=str(ham_dataset), split_file=str(ext), allow_leaks=True),
                      16, progress=False)
    assert ok.leaks.group_overlap > 0
