"""Stratified, group-aware splits that never leak, saved as ``splits.csv`` and reused.

HAM10000 has several images of one lesion; a split by image puts near-identical pictures in
train and test and inflates accuracy (DermaMNIST's official split shares 641 lesions between
train and test). Here the unit of assignment is the *group* (``lesion_id``), further merged with
any group holding a byte-identical file, and units are dealt to splits class by class so that
each split keeps the class proportions.
"""

from __future__ import annotations

import csv
import random
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from dermalab.core.atomic import atomic_path
from dermalab.core.errors import DataError, LeakError
from dermalab.data.samples import Sample

SPLITS = ("train", "val", "test")
SPLIT_COLUMNS = ("sample_id", "label", "group", "split")


@dataclass
class Split:
    """sample_id -> split, plus warnings produced while making or reading it."""

    assignment: dict[str, str]
    warnings: list[str] = field(default_factory=list)
    origin: str = "generated"  # generated | file:<path> | dataset

    def ids(self, split: str) -> list[str]:
        """Sample ids in one split, in a stable order."""
        return sorted(k for k, v in self.assignment.items() if v == split)


class _UnionFind:
    def __init__(self) -> None:
        self.parent: dict[str, str] = {}

    def find(self, x: str) -> str:
        self.parent.setdefault(x, x)
        while self.parent[x] != x:
            self.parent[x] = self.parent[self.parent[x]]
            x = self.parent[x]
        return x

    def union(self, a: str, b: str) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)


def split_units(samples: Sequence[Sample], hashes: dict[str, str] | None = None) -> dict[str, str]:
    """sample_id -> unit id: samples linked by a shared group or identical bytes form one unit."""
    uf = _UnionFind()
    first_by_hash: dict[str, str] = {}
    for s in samples:
        uf.find("g:" + s.group)
        if hashes and s.sample_id in hashes:
            digest = hashes[s.sample_id]
            if digest in first_by_hash:
                uf.union("g:" + s.group, "g:" + first_by_hash[digest])
            else:
                first_by_hash[digest] = s.group
    return {s.sample_id: uf.find("g:" + s.group) for s in samples}


def make_split(
    samples: Sequence[Sample],
    ratios: Sequence[float] = (0.8, 0.1, 0.1),
    seed: int = 42,
    hashes: dict[str, str] | None = None,
    *,
    by_image: bool = False,
) -> Split:
    """Deal groups to train/val/test, stratified by class.

    Each unit (see :func:`split_units`) is filed under its majority class (ties go to the rarer
    class). Within a class, units are shuffled with ``seed``, ordered largest first, and each is
    given to the split whose quota of that class's images is least filled (relative deficit
    ``(target - have) / target``). Small classes therefore still reach every split when they
    have at least as many units as there are splits; when they do not, a warning says so.

    Args:
        samples: labelled samples with group ids.
        ratios: train/val/test fractions (normalised; a zero drops that split).
        seed: makes the split reproducible.
        hashes: optional sample_id -> content hash, to keep identical files together.
        by_image: deal single images, ignoring groups and identical files: the random
            image-level split that leaks lesions, kept only to measure how much such a leak
            inflates results.
    """
    if len(ratios) != 3 or any(r < 0 for r in ratios) or sum(ratios) <= 0:
        raise DataError(f"split ratios must be three non-negative numbers, got {list(ratios)}")
    by_source: dict[str, list[Sample]] = defaultdict(list)
    for smp in samples:
        by_source[str(smp.meta.get("source", ""))].append(smp)
    if len(by_source) > 1:
        # Several datasets (data.sources): each is dealt on its own, so every split holds
        # each source in the same proportions (and a source's groups never leave it).
        merged = Split({})
        for name, part in sorted(by_source.items()):
            sub = make_split(part, ratios, seed, hashes, by_image=by_image)
            merged.assignment.update(sub.assignment)
            merged.warnings += [f"{name}: {w}" for w in sub.warnings]
        merged.origin = sub.origin
        return merged
    total = float(sum(ratios))
    frac = [r / total for r in ratios]
    active = [i for i, f in enumerate(frac) if f > 0]
    unit_of = ({s.sample_id: "i:" + s.sample_id for s in samples} if by_image
               else split_units(samples, hashes))
    members: dict[str, list[Sample]] = defaultdict(list)
    for s in samples:
        members[unit_of[s.sample_id]].append(s)
    class_size = Counter(s.label for s in samples)

    def unit_class(unit: str) -> str:
        counts = Counter(s.label for s in members[unit])
        best = max(counts.values())
        return min((c for c, n in counts.items() if n == best), key=lambda c: (class_size[c], c))

    by_class: dict[str, list[str]] = defaultdict(list)
    for unit in sorted(members):
        by_class[unit_class(unit)].append(unit)
    rng = random.Random(seed)
    assignment: dict[str, str] = {}
    warnings: list[str] = []
    for cls in sorted(by_class):
        units = by_class[cls]
        rng.shuffle(units)
        units.sort(key=lambda u: -len(members[u]))  # stable: ties keep the shuffled order
        n_images = sum(len(members[u]) for u in units)
        target = [f * n_images for f in frac]
        have = [0] * 3
        for unit in units:
            k = max(active, key=lambda i: ((target[i] - have[i]) / target[i], frac[i]))
            have[k] += len(members[unit])
            for s in members[unit]:
                assignment[s.sample_id] = SPLITS[k]
        if len(units) < len(active):
            warnings.append(
                f"class '{cls}' has only {len(units)} group(s) ({n_images} images): it cannot "
                f"appear in all of {[SPLITS[i] for i in active]}"
            )
        else:
            empty = [SPLITS[i] for i in active if have[i] == 0]
            if empty:
                warnings.append(f"class '{cls}' has no images in {empty}")
    return Split(assignment, warnings, origin="generated")


#: Below these counts a class's metrics are noise (one image moves recall by a third).
MIN_TRAIN_IMAGES, MIN_EVAL_IMAGES = 10, 3


def small_class_warnings(counts: Mapping[str, Mapping[str, int]]) -> list[str]:
    """One warning per class with fewer than 10 training or 3 validation/test images.

    Args:
        counts: split -> class -> images.
    """
    classes = sorted({c for per in counts.values() for c in per})
    out = []
    for c in classes:
        n = {sp: int(counts.get(sp, {}).get(c, 0)) for sp in SPLITS}
        if n["train"] < MIN_TRAIN_IMAGES or min(n["val"], n["test"]) < MIN_EVAL_IMAGES:
            out.append(f"class {c!r} is tiny ({n['train']} train / {n['val']} val / "
                       f"{n['test']} test images; want at least {MIN_TRAIN_IMAGES} / "
                       f"{MIN_EVAL_IMAGES} / {MIN_EVAL_IMAGES}): its results will be noise; "
                       "merge it into a related class with data.class_map, or drop it")
    return out


def write_split(path: str | Path, samples: Iterable[Sample], split: Split) -> None:
    """Write ``splits.csv`` (sample_id,label,group,split), atomically."""
    with atomic_path(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f, lineterminator="\n")  # not the csv module's CRLF
        w.writerow(SPLIT_COLUMNS)
        for s in sorted(samples, key=lambda s: s.sample_id):
            if s.sample_id in split.assignment:
                w.writerow([s.sample_id, s.label, s.group, split.assignment[s.sample_id]])


def read_split_file(path: str | Path, samples: Sequence[Sample]) -> Split:
    """Read and validate an external or saved split (columns ``sample_id`` or ``image_id``, and
    ``split``; values train/val/test, ``valid``/``validation`` accepted as val).

    Raises:
        DataError: unknown id, an id listed twice, an unknown split name, dataset samples missing
            from the file, or (for a saved ``splits.csv``) labels that no longer match.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"split file not found: {path}")
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        cols = [c.strip() for c in (reader.fieldnames or [])]
        id_col = "sample_id" if "sample_id" in cols else "image_id" if "image_id" in cols else None
        if id_col is None or "split" not in cols:
            raise DataError(f"{path}: needs columns 'sample_id' (or 'image_id') and 'split'; "
                            f"found {cols}")
        rows = [{(k or "").strip(): (v or "").strip() for k, v in r.items()} for r in reader]
    aliases = {"train": "train", "val": "val", "valid": "val", "validation": "val",
               "test": "test"}
    by_id = {s.sample_id: s for s in samples}
    assignment: dict[str, str] = {}
    unknown, dupes, bad_split, relabelled = [], [], [], []
    for line_no, row in enumerate(rows, start=2):
        sid, sp = row[id_col], row["split"].lower()
        if sid not in by_id:
            unknown.append(f"{sid} (line {line_no})")
            continue
        if sid in assignment:
            dupes.append(f"{sid} (line {line_no})")
            continue
        if sp not in aliases:
            bad_split.append(f"'{row['split']}' (line {line_no})")
            continue
        if "label" in row and row["label"] and row["label"] != by_id[sid].label:
            relabelled.append(f"{sid}: file says {row['label']}, data says {by_id[sid].label}")
        assignment[sid] = aliases[sp]
    problems = []
    if unknown:
        problems.append(f"{len(unknown)} id(s) not in the dataset, e.g. {unknown[:3]}")
    if dupes:
        problems.append(f"{len(dupes)} id(s) listed twice, e.g. {dupes[:3]}")
    if bad_split:
        problems.append(f"unknown split name(s) {bad_split[:3]} (use train/val/test)")
    if relabelled:
        problems.append(f"{len(relabelled)} label(s) differ, e.g. {relabelled[:2]}")
    missing = [sid for sid in by_id if sid not in assignment]
    if missing:
        problems.append(f"{len(missing)} dataset sample(s) have no split, e.g. {missing[:3]}")
    if problems:
        raise DataError(f"split file {path}: " + "; ".join(problems))
    warnings = []
    for sp in SPLITS:
        present = {by_id[sid].label for sid, v in assignment.items() if v == sp}
        absent = sorted({s.label for s in samples} - present)
        if absent and any(v == sp for v in assignment.values()):
            warnings.append(f"split '{sp}' has no images of class(es) {absent}")
    return Split(assignment, warnings, origin=f"file:{path}")


@dataclass
class LeakReport:
    """Groups and byte-identical files found in more than one split; near-duplicate groups
    across splits are counted too (``near_duplicate_overlap``), warned about rather than
    refused: a split made before near-duplicates were grouped stays usable."""

    group_overlap: int
    duplicate_overlap: int
    pairs: dict[str, int]  # "train-test" -> shared groups
    examples: list[str]
    near_duplicate_overlap: int = 0
    near_examples: list[str] = field(default_factory=list)

    @property
    def leaky(self) -> bool:
        """True when any group or identical file crosses splits."""
        return self.group_overlap > 0 or self.duplicate_overlap > 0


def check_leaks(
    samples: Sequence[Sample], split: Split, hashes: dict[str, str] | None = None,
    near: Mapping[str, str] | None = None,
) -> LeakReport:
    """Count groups and identical-content files that appear in more than one split, and
    near-duplicate groups (``near``: sample id -> group) that do."""
    group_splits: dict[str, set[str]] = defaultdict(set)
    hash_splits: dict[str, set[str]] = defaultdict(set)
    for s in samples:
        sp = split.assignment.get(s.sample_id)
        if sp is None:
            continue
        group_splits[s.group].add(sp)
        if hashes and s.sample_id in hashes:
            hash_splits[hashes[s.sample_id]].add(sp)
    crossing = {g: sps for g, sps in group_splits.items() if len(sps) > 1}
    pairs: dict[str, int] = {}
    for i, a in enumerate(SPLITS):
        for b in SPLITS[i + 1:]:
            pairs[f"{a}-{b}"] = sum(1 for sps in crossing.values() if {a, b} <= sps)
    dup_cross = [h for h, sps in hash_splits.items() if len(sps) > 1]
    examples = [f"group {g} in {sorted(sps)}" for g, sps in sorted(crossing.items())[:5]]
    near_splits: dict[str, dict[str, str]] = defaultdict(dict)
    for sid, g in (near or {}).items():
        if sid in split.assignment:
            near_splits[g][sid] = split.assignment[sid]
    near_cross = {g: m for g, m in sorted(near_splits.items()) if len(set(m.values())) > 1}
    near_examples = [" ~ ".join(f"{sid} ({sp})" for sid, sp in sorted(m.items())[:3])
                     for m in list(near_cross.values())[:5]]
    return LeakReport(len(crossing), len(dup_cross), pairs, examples, len(near_cross),
                      near_examples)


def assert_no_leaks(report: LeakReport, what: str = "split") -> None:
    """Raise :class:`LeakError` describing the overlap when the report shows any."""
    if report.leaky:
        raise LeakError(
            f"{what} leaks: {report.group_overlap} group(s) in more than one split "
            f"({report.pairs}), {report.duplicate_overlap} byte-identical file(s) across splits; "
            f"e.g. {report.examples[:3]}. Use a grouped split, or set data.allow_leaks=true to "
            "reproduce a published leaky split knowingly."
        )


def resolve_split(
    samples: Sequence[Sample],
    *,
    ratios: Sequence[float],
    seed: int,
    saved: Path | None,
    external: str | None,
    given: dict[str, str] | None,
    hashes: Callable[[], dict[str, str]],
    by_image: bool = False,
) -> Split:
    """The split a run uses, in order of precedence: an external split file, a ``splits.csv``
    saved by an earlier run in the same directory, the dataset's own split, or a new one
    (grouped, or by image when ``by_image``; see :func:`make_split`)."""
    if external:
        return read_split_file(external, samples)
    if saved is not None and saved.is_file():
        sp = read_split_file(saved, samples)
        sp.origin = f"saved:{saved}"
        return sp
    if given is not None:
        missing = [s.sample_id for s in samples if s.sample_id not in given]
        if missing:
            raise DataError(f"dataset split covers only some samples, e.g. {missing[:3]}")
        if "val" in given.values():
            return Split(dict(given), [], origin="dataset")
        # The dataset defines train/test only: carve a grouped validation split out of train.
        train = [s for s in samples if given[s.sample_id] == "train"]
        val_frac = ratios[1] / max(ratios[0] + ratios[1], 1e-9)
        inner = make_split(train, (1 - val_frac, val_frac, 0.0), seed, hashes(),
                           by_image=by_image)
        assignment = {**given, **inner.assignment}
        return Split(assignment, inner.warnings, origin="dataset+val")
    split = make_split(samples, ratios, seed, hashes(), by_image=by_image)
    if by_image:
        split.origin = "generated:by-image"
    return split
