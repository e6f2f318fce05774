"""Dataset sources: which reader a location needs (:func:`load_source`), the folder-per-class
reader, class maps and several sources in one set. The CSV-table readers (manifest,
HAM10000, ISIC 2019) are in :mod:`dermalab.data.tables`, the array ones (MedMNIST, hmnist)
in :mod:`dermalab.data.arrays`.

Every reader turns a location into :class:`~dermalab.data.samples.SourceData` with the same
sample records, so splitting, caching and training never care where images came from.
Unusable input raises :class:`~dermalab.core.errors.DataError` naming the file (and row) at fault,
unless the user asked to skip bad input, in which case it is listed in ``SourceData.bad``.
"""

from __future__ import annotations

import difflib
import fnmatch
import hashlib
import os
from collections.abc import Iterable, Mapping
from pathlib import Path

from dermalab.core.config import DataConfig, DataFormat
from dermalab.core.errors import DataError
from dermalab.data.arrays import read_hmnist, read_medmnist
from dermalab.data.images import is_image_name
from dermalab.data.samples import Sample, SourceData
from dermalab.data.storage import is_dataset_word, local_path
from dermalab.data.tables import (
    HAM_REQUIRED,
    ISIC2019_TRUTH,
    files_fingerprint,
    find_ham_csv,
    read_csv_manifest,
    read_ham10000,
    read_header,
    read_isic2019,
)

SPLIT_FOLDER_NAMES = {"train": "train", "training": "train", "val": "val", "valid": "val",
                      "validation": "val", "test": "test", "testing": "test"}

# ---------------------------------------------------------------------------------------------
# class map


def apply_class_map(label: str, class_map: Mapping[str, str | None]) -> str | None:
    """Map a raw class name through the config's class map.

    Keys are exact names or shell-style patterns (``"Tinea *"``); the first exact match wins,
    then the first matching pattern in file order. A ``null`` value drops the class.
    Unmapped names are kept.
    """
    if label in class_map:
        return class_map[label]
    for pattern, target in class_map.items():
        if any(ch in pattern for ch in "*?[") and fnmatch.fnmatchcase(label, pattern):
            return target
    return label


def unmatched_class_map_keys(labels: Iterable[str], class_map: Mapping[str, str | None]
                             ) -> list[str]:
    """One warning per class-map key that matches none of ``labels``, with the near misses:
    keys are case-sensitive, so ``"tinea *"`` does not match ``Tinea corporis``."""
    names = sorted(set(labels))
    out = []
    for key in class_map:
        is_pattern = any(ch in key for ch in "*?[")
        if (key in names) if not is_pattern else any(fnmatch.fnmatchcase(n, key) for n in names):
            continue
        folded = [n for n in names if fnmatch.fnmatchcase(n.lower(), key.lower())]
        hint = (f"; it would match {folded[:3]} if case were ignored (keys are case-sensitive)"
                if folded else "")
        if not hint:
            # Compare a pattern's literal start with the names' starts ("Tinae *" -> "Tinea *").
            cut = min((key.index(ch) for ch in "*?[" if ch in key), default=len(key))
            starts = sorted({n[:cut] for n in names})
            close = [m + key[cut:] for m in difflib.get_close_matches(key[:cut], starts, n=3,
                                                                      cutoff=0.6)]
            hint = f"; did you mean {close}?" if close else ""
        out.append(f"data.class_map key {key!r} matches no class of the dataset{hint}")
    return out


def _map_samples(samples: Iterable[Sample], class_map: Mapping[str, str | None]) -> list[Sample]:
    out = []
    for s in samples:
        new = apply_class_map(s.label, class_map)
        if new is None:
            continue
        out.append(s if new == s.label else Sample(s.sample_id, new, s.group, s.path, s.index,
                                                   s.meta))
    return out


# ---------------------------------------------------------------------------------------------
# format detection


def detect_format(path: Path) -> str:
    """Guess the source format from a path (a folder, a CSV or an ``.npz``)."""
    if path.is_dir():
        if find_ham_csv(path) is not None:
            return "ham10000"
        if (path / ISIC2019_TRUTH).is_file():
            return "isic2019"
        return "folder"
    suffix = path.suffix.lower()
    if suffix == ".npz":
        return "medmnist"
    if suffix == ".csv":
        header = read_header(path)
        if set(HAM_REQUIRED) <= set(header):
            return "ham10000"
        if header and header[-1] == "label" and "image" not in header:
            return "hmnist"
        if {"image", "label"} <= set(header):
            return "csv"
        raise DataError(
            f"{path}: cannot tell the CSV format from its header; expected HAM10000 metadata "
            f"columns {list(HAM_REQUIRED)}, hmnist pixel columns ending in 'label', or a "
            "manifest with 'image' and 'label' columns (or set data.format=csv and name "
            "yours with data.columns)"
        )
    raise DataError(f"{path}: not a folder, .csv or .npz dataset")


# ---------------------------------------------------------------------------------------------
# entry point


def load_source(cfg: DataConfig, source: str | None = None) -> SourceData:
    """Read the dataset named by ``source`` (or ``cfg.source``) in ``cfg.format``.

    Raises:
        DataError: missing path, unknown format or unusable content (names the file/row).
    """
    if cfg.sources and not source:
        return read_sources(cfg)
    location = source or cfg.source
    if not location:
        raise DataError("no dataset given: pass --data SOURCE or set data.source")
    path = local_path(location)
    if not path.exists():
        hint = (" (not a path, nor a named dataset: see dermalab data list)"
                if is_dataset_word(location) else "")
        raise DataError(f"dataset not found: {location}{hint}")
    fmt = cfg.format if cfg.format != "auto" else detect_format(path)
    readers = {
        "folder": read_folder,
        "ham10000": read_ham10000,
        "medmnist": read_medmnist,
        "hmnist": read_hmnist,
        "isic2019": read_isic2019,
        "csv": read_csv_manifest,
    }
    data = readers[fmt](path, cfg)
    data.warnings += unmatched_class_map_keys((s.label for s in data.samples), cfg.class_map)
    data.samples = _map_samples(data.samples, cfg.class_map)
    if not data.samples:
        raise DataError(f"{location}: no samples left (after the class map)")
    data.classes = sorted({s.label for s in data.samples})
    if data.given_split is not None:
        kept = {s.sample_id for s in data.samples}
        data.given_split = {k: v for k, v in data.given_split.items() if k in kept}
    data.display_names = {c: data.display_names.get(c, c) for c in data.classes}
    return data


# ---------------------------------------------------------------------------------------------
# folder per class


def read_folder(root: Path, cfg: DataConfig) -> SourceData:
    """``root/<class>/**/<image>`` (or ``root/{train,val,test}/<class>/**``).

    Hidden files/folders and non-image files are ignored and listed. An empty class folder is
    an error (or, with ``skip_bad``, a listed problem), since it usually means a failed copy.
    Byte-identical files share a group id, so a split never puts copies on both sides.
    """
    if not root.is_dir():
        raise DataError(f"{root}: not a folder")
    top = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not top:
        raise DataError(f"{root}: no class sub-folders found (expected <root>/<class>/<images>)")
    split_layout = all(p.name.lower() in SPLIT_FOLDER_NAMES for p in top)
    ignored: list[dict[str, str]] = []
    bad: list[dict[str, str]] = []
    samples: list[Sample] = []
    given: dict[str, str] = {}
    class_dirs: list[tuple[str | None, Path]] = []
    if split_layout:
        for split_dir in top:
            for cdir in sorted(p for p in split_dir.iterdir() if p.is_dir()):
                if cdir.name.startswith("."):
                    continue
                class_dirs.append((SPLIT_FOLDER_NAMES[split_dir.name.lower()], cdir))
    else:
        class_dirs = [(None, p) for p in top]
    for split, cdir in class_dirs:
        n_before = len(samples)
        for dirpath, dirnames, filenames in os.walk(cdir):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            for hidden in (d for d in os.listdir(dirpath) if d.startswith(".")):
                ignored.append({"path": os.path.join(dirpath, hidden), "reason": "hidden"})
            for fname in sorted(filenames):
                full = os.path.join(dirpath, fname)
                if fname.startswith("."):
                    continue  # already listed above
                if not is_image_name(fname):
                    ignored.append({"path": full, "reason": "not an image extension"})
                    continue
                rel = Path(full).relative_to(root).as_posix()
                samples.append(Sample(rel, cdir.name, rel, path=full))
                if split is not None:
                    given[rel] = split
        if len(samples) == n_before:
            dropped = apply_class_map(cdir.name, cfg.class_map) is None
            if dropped:
                continue
            msg = f"{cdir}: class folder '{cdir.name}' holds no images"
            if not cfg.skip_bad:
                raise DataError(msg + " (remove it, drop it in data.class_map, or set "
                                "data.skip_bad=true)")
            bad.append({"path": str(cdir), "error": "class folder holds no images"})
    samples = _group_identical_files(samples)
    return SourceData(
        kind="folder",
        location=str(root),
        samples=samples,
        classes=sorted({s.label for s in samples}),
        given_split=given or None,
        ignored=ignored,
        bad=bad,
        fingerprint=files_fingerprint(s.path for s in samples if s.path),
    )


def _group_identical_files(samples: list[Sample]) -> list[Sample]:
    """Give byte-identical files one group id (the first copy's sample_id).

    Only files with equal sizes are hashed, so a folder without duplicates costs one stat each.
    """
    by_size: dict[int, list[int]] = {}
    for i, s in enumerate(samples):
        assert s.path is not None
        by_size.setdefault(os.path.getsize(s.path), []).append(i)
    groups = [s.group for s in samples]
    for idxs in by_size.values():
        if len(idxs) < 2:
            continue
        first_by_hash: dict[str, int] = {}
        for i in idxs:
            path = samples[i].path
            assert path is not None
            digest = hashlib.sha256(Path(path).read_bytes()).hexdigest()
            if digest in first_by_hash:
                groups[i] = groups[first_by_hash[digest]]
            else:
                first_by_hash[digest] = i
    return [
        s if g == s.group else Sample(s.sample_id, s.label, g, s.path, s.index, s.meta)
        for s, g in zip(samples, groups, strict=True)
    ]


# ---------------------------------------------------------------------------------------------
# several sources in one set

SOURCE_KEYS = ("name", "source", "format", "columns", "class_map", "image_dirs")


def read_sources(cfg: DataConfig) -> SourceData:
    """``data.sources``: several datasets in one training set. Each entry names its
    ``source`` (and optionally ``format``, ``columns``, ``image_dirs`` and its own
    ``class_map`` into the shared taxonomy); its samples get ids and groups prefixed with its
    ``name`` (default ``s<i>``) and ``meta["source"]``, so no group spans two sources and the
    split deals each source on its own (:func:`dermalab.data.splits.make_split`).
    ``data.class_map`` then applies to the merged labels.

    Raises:
        DataError: an entry with unknown keys, no source, a repeated name, or an array source
            (MedMNIST, hmnist), which cannot be merged with files.
    """
    import dataclasses
    import typing

    parts: list[SourceData] = []
    names: list[str] = []
    for i, entry in enumerate(cfg.sources):
        if not isinstance(entry, Mapping) or not entry.get("source"):
            raise DataError(f"data.sources[{i}] needs a 'source' (a path or a named dataset)")
        unknown = sorted(set(entry) - set(SOURCE_KEYS))
        if unknown:
            raise DataError(f"data.sources[{i}]: unknown key(s) {unknown}; valid: "
                            f"{list(SOURCE_KEYS)}")
        name = str(entry.get("name") or f"s{i}")
        if name in names:
            raise DataError(f"data.sources: the name '{name}' is used twice")
        fmt = str(entry.get("format", "auto"))
        if fmt not in typing.get_args(DataFormat):
            raise DataError(f"data.sources[{i}].format must be one of "
                            f"{typing.get_args(DataFormat)}, got {fmt!r}")
        sub = dataclasses.replace(
            cfg, source=str(entry["source"]), format=typing.cast(DataFormat, fmt),
            columns=dict(entry.get("columns") or {}),
            class_map=dict(entry.get("class_map") or {}),
            image_dirs=list(entry.get("image_dirs") or []), sources=[], split_file=None)
        data = load_source(sub)
        if data.arrays is not None:
            raise DataError(f"data.sources[{i}] ({data.location}) is an array dataset "
                            f"({data.kind}); only file datasets can be combined")
        parts.append(data)
        names.append(name)
    return _merge(parts, names)


def _merge(parts: list[SourceData], names: list[str]) -> SourceData:
    samples: list[Sample] = []
    display: dict[str, str] = {}
    given: dict[str, str] = {}
    out = SourceData(kind="+".join(sorted({p.kind for p in parts})),
                     location=" + ".join(p.location for p in parts), samples=samples,
                     classes=[], display_names=display,
                     fingerprint=hashlib.sha256("|".join(p.fingerprint for p in parts)
                                                .encode()).hexdigest())
    for name, part in zip(names, parts, strict=True):
        for smp in part.samples:
            samples.append(Sample(f"{name}/{smp.sample_id}", smp.label, f"{name}/{smp.group}",
                                  path=smp.path, meta={**smp.meta, "source": name}))
        display.update(part.display_names)
        if part.given_split:
            given.update({f"{name}/{k}": v for k, v in part.given_split.items()})
        out.bad += [{**b, "path": f"{name}: {b['path']}"} for b in part.bad]
        out.ignored += part.ignored
        out.warnings += [f"{name}: {w}" for w in part.warnings]
    out.given_split = given if given and len(given) == len(samples) else None
    out.classes = sorted({smp.label for smp in samples})
    return out


