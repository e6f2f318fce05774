"""From a data config to what training needs: samples, a leak-checked split and an image store."""

from __future__ import annotations

import statistics
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from dermalab.core.config import DataConfig
from dermalab.core.errors import DataError
from dermalab.data.cache import (
    CachedImages,
    DecodingImages,
    ImageStore,
    build_cache,
    default_cache_dir,
    sample_hashes,
)
from dermalab.data.lesion import LesionImages, LesionMasks, read_masks
from dermalab.data.near_duplicates import (
    NearDuplicates,
    find_near_duplicates,
    max_distance_for,
)
from dermalab.data.samples import Sample, SourceData
from dermalab.data.sources import load_source
from dermalab.data.splits import (
    SPLITS,
    LeakReport,
    Split,
    assert_no_leaks,
    check_leaks,
    resolve_split,
    small_class_warnings,
    split_units,
    write_split,
)


@dataclass
class PreparedData:
    """A dataset ready for training and evaluation."""

    source: SourceData
    split: Split
    store: ImageStore
    hashes: dict[str, str]
    leaks: LeakReport
    image_size: int
    input_mode: str = "raw"  # data.input (dermalab.data.lesion)
    lesion: LesionMasks | None = None  # the masks behind a lesion-aware input
    train_extra: ImageStore | None = None  # raw+masked: the masked copy of every train image
    near: NearDuplicates = field(default_factory=NearDuplicates)  # data.near_duplicates

    @property
    def classes(self) -> list[str]:
        """Class names; their order defines the model's output indices."""
        return self.source.classes

    @cached_property
    def _by_id(self) -> dict[str, Sample]:
        return {s.sample_id: s for s in self.source.samples}

    def samples(self, split: str) -> list[Sample]:
        """Samples of one split, sorted by id."""
        return [self._by_id[i] for i in self.split.ids(split) if i in self._by_id]

    def samples_of(self, ids: list[str]) -> list[Sample]:
        """The samples of ``ids`` that this dataset holds, in the order of ``ids``."""
        return [self._by_id[i] for i in ids if i in self._by_id]

    def meta_rows(self, ids: list[str]) -> list[dict[str, Any]]:
        """Each id's metadata (age, sex, localization ... as the source has them) as a fresh
        dict; ``{}`` for an id this dataset does not hold."""
        return [dict(self._by_id[i].meta) if i in self._by_id else {} for i in ids]

    @cached_property
    def _units(self) -> dict[str, str]:
        return split_units(self.source.samples, {**self.hashes, **self.near.group_of})

    def units(self, ids: list[str]) -> list[str]:
        """Each id's resampling unit: its group merged with every group holding an identical
        file or a near-duplicate (what the split keeps together; the bootstrap resamples
        these)."""
        return [self._units.get(i, "i:" + i) for i in ids]

    def targets(self, split: str) -> list[int]:
        """Class indices of one split, aligned with :meth:`samples`."""
        idx = {c: i for i, c in enumerate(self.classes)}
        return [idx[s.label] for s in self.samples(split)]

    @property
    def warnings(self) -> list[str]:
        """Data problems to say before training: the source's (class-map keys that match
        nothing), the split's (classes missing from a part) and tiny classes."""
        out = [*self.source.warnings, *self.split.warnings, *small_class_warnings(self.counts())]
        if self.lesion is not None and self.lesion.without:
            n = len(self.lesion.without)
            out.append(f"{n} image(s) have no lesion mask (e.g. {self.lesion.without[0]}): "
                       f"data.input={self.input_mode} uses them whole")
        return out

    def counts(self) -> dict[str, dict[str, int]]:
        """split -> class -> images."""
        out = {}
        for sp in SPLITS:
            c = Counter(s.label for s in self.samples(sp))
            out[sp] = {k: c.get(k, 0) for k in self.classes}
        return out


def prepare_data(
    cfg: DataConfig,
    image_size: int,
    *,
    split_path: Path | None = None,
    source: str | None = None,
    progress: bool = True,
    write: bool = True,
) -> PreparedData:
    """Load the source, decode/cache every image, resolve the split and check it for leaks.

    Args:
        cfg: data config.
        image_size: side of the square images fed to the model.
        split_path: ``splits.csv`` to reuse when it exists, and to write otherwise.
        source: dataset location overriding ``cfg.source``.
        progress: show a progress bar while building the cache.
        write: write ``split_path`` when it does not exist (only one process of a distributed
            run may).

    Raises:
        DataError: unusable dataset or split; ImageError: a bad image (unless ``skip_bad``);
        LeakError: a split with shared groups or identical files (unless ``allow_leaks``).
    """
    data = load_source(cfg, source)
    lesion = read_masks(data, cfg, image_size) if cfg.input != "raw" else None
    boxes = lesion.boxes if lesion is not None and cfg.input == "crop" else None
    store: ImageStore
    if cfg.cache:
        cache_dir = Path(cfg.cache_dir) if cfg.cache_dir else default_cache_dir()
        cached = build_cache(data, image_size, cfg.resize_mode, cache_dir,
                             skip_bad=cfg.skip_bad, progress=progress, boxes=boxes)
        if cached.bad:
            keep = set(cached.ids)
            data.samples = [s for s in data.samples if s.sample_id in keep]
            data.bad = data.bad + cached.bad
            data.classes = sorted({s.label for s in data.samples})
        store = cached
        hashes = cached.hashes
    else:
        store = DecodingImages(data, image_size, cfg.resize_mode, boxes=boxes)
        hashes = sample_hashes(data, data.samples)
    near_at = max_distance_for(cfg.near_duplicates, data.kind)
    near = (find_near_duplicates([smp.sample_id for smp in data.samples], store.get,
                                 near_at)
             if near_at >= 0 and cfg.split_by != "image" else NearDuplicates())
    # Identical files and near-duplicates are one unit: same split, and one picture under two
    # labels is a conflict either way.
    copies = {**hashes, **near.group_of}
    apply_conflict_policy(data, copies, cfg.conflicts)
    split = resolve_split(
        data.samples,
        ratios=cfg.split_ratios,
        seed=cfg.split_seed,
        saved=split_path,
        external=cfg.split_file,
        given=data.given_split,
        hashes=lambda: copies,
        by_image=cfg.split_by == "image",
    )
    leaks = check_leaks(data.samples, split, hashes, near.group_of)
    if leaks.near_duplicate_overlap:
        split.warnings.append(
            f"{leaks.near_duplicate_overlap} group(s) of near-duplicate photos cross splits "
            f"(e.g. {leaks.near_examples[0]}): this split was made before they were grouped "
            "or given from a file; a new split keeps them together")
    if not cfg.allow_leaks:
        assert_no_leaks(leaks, f"split ({split.origin})")
    if write and split_path is not None and not split_path.is_file():
        write_split(split_path, data.samples, split)
    if cfg.age_impute == "median":
        impute_ages(data.samples, split)
    extra = None
    if lesion is not None and cfg.input in ("masked", "mask_channel"):
        store = LesionImages(store, lesion, cfg.input)
    elif lesion is not None and cfg.input == "raw+masked":
        extra = LesionImages(store, lesion, "masked")
    return PreparedData(data, split, store, hashes, leaks, image_size, cfg.input, lesion, extra,
                        near)


def impute_ages(samples: list[Sample], split: Split) -> None:
    """Fill the missing ages (``age_missing``) with the median age of the training split, so
    no statistic of validation or test images reaches the model (the flag stays set, and the
    metadata model and subgroups treat the age as missing)."""
    train = set(split.ids("train"))
    ages = [float(s.meta["age"]) for s in samples if s.sample_id in train
            and not s.meta.get("age_missing") and s.meta.get("age") is not None]
    if not ages:
        return
    median = float(statistics.median(ages))
    for s in samples:
        if s.meta.get("age_missing"):
            s.meta["age"] = median


def label_conflicts(samples: list[Sample], hashes: dict[str, str]) -> list[list[Sample]]:
    """Groups of byte-identical images that carry more than one label."""
    by_hash: dict[str, list[Sample]] = defaultdict(list)
    for s in samples:
        by_hash[hashes[s.sample_id]].append(s)
    return [g for g in by_hash.values() if len({s.label for s in g}) > 1]


def apply_conflict_policy(data: SourceData, hashes: dict[str, str], policy: str) -> None:
    """The same picture under two labels teaches the model a contradiction and counts against
    it in evaluation. ``drop`` leaves every copy out, ``keep`` keeps them; both say so.

    Raises:
        DataError: with ``policy="error"``, naming the first groups.
    """
    groups = label_conflicts(data.samples, hashes)
    if not groups:
        return
    data.conflicts = [[{"sample_id": s.sample_id, "label": s.label} for s in g] for g in groups]
    n_files = sum(len(g) for g in groups)
    shown = "; ".join(" = ".join(f"{s.sample_id} ({s.label})" for s in g) for g in groups[:3])
    more = f"; and {len(groups) - 3} more group(s)" if len(groups) > 3 else ""
    what = (f"{len(groups)} picture(s) appear under different labels ({n_files} files: {shown}"
            f"{more})")
    if policy == "error":
        raise DataError(f"{what}; fix the labels, or set data.conflicts=drop (leave them out) "
                        "or data.conflicts=keep")
    if policy == "drop":
        bad = {s.sample_id for g in groups for s in g}
        data.samples = [s for s in data.samples if s.sample_id not in bad]
        data.classes = sorted({s.label for s in data.samples})
        data.conflicts_dropped = True
        data.warnings.append(f"{what}: all {n_files} left out (data.conflicts=drop; "
                             "data.conflicts=keep trains on them, =error stops)")
    else:
        data.warnings.append(f"{what}: kept (data.conflicts=keep), so the model is trained on "
                             "contradictory labels")


def is_cached(store: ImageStore) -> bool:
    """True when the store is a decoded-image cache."""
    return isinstance(store, CachedImages)
