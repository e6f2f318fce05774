"""Dataset sources: folder per class, HAM10000 metadata CSV, MedMNIST ``.npz``, hmnist CSV,
ISIC 2019, and any CSV manifest (``data.format: csv``).

Each reader turns a location into :class:`~dermalab.data.samples.SourceData` with the same
sample records, so splitting, caching and training never care where images came from.
Unusable input raises :class:`~dermalab.core.errors.DataError` naming the file (and row) at fault,
unless the user asked to skip bad input, in which case it is listed in ``SourceData.bad``.
"""

from __future__ import annotations

import csv
import difflib
import fnmatch
import hashlib
import math
import os
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np

from dermalab.core.config import DataConfig, DataFormat
from dermalab.core.errors import DataError
from dermalab.data.images import is_image_name
from dermalab.data.samples import Sample, SourceData
from dermalab.data.storage import is_dataset_word, local_path

HAM_REQUIRED = ("lesion_id", "image_id", "dx")
HAM_DX_NAMES = {
    "akiec": "Actinic keratosis / intraepithelial carcinoma (Bowen's disease)",
    "bcc": "Basal cell carcinoma",
    "bkl": "Benign keratosis-like lesion",
    "df": "Dermatofibroma",
    "mel": "Melanoma",
    "nv": "Melanocytic nevus",
    "vasc": "Vascular lesion",
}
# MedMNIST's DermaMNIST label order (medmnist INFO["dermamnist"]["label"]).
DERMAMNIST_CLASSES = ("akiec", "bcc", "bkl", "df", "mel", "nv", "vasc")
# Kaggle hmnist_*.csv label order (label 4 holds the 6,705 nevi, 6 the 1,113 melanomas).
HMNIST_CLASSES = ("akiec", "bcc", "bkl", "df", "nv", "vasc", "mel")
SPLIT_FOLDER_NAMES = {"train": "train", "training": "train", "val": "val", "valid": "val",
                      "validation": "val", "test": "test", "testing": "test"}
MEDMNIST_SPLITS = ("train", "val", "test")
ISIC2019_TRUTH = "ISIC_2019_Training_GroundTruth.csv"
ISIC2019_META = "ISIC_2019_Training_Metadata.csv"
# ISIC 2019 ground-truth columns, named with the HAM10000 codes where the class is the same.
ISIC2019_CLASSES = {"MEL": "mel", "NV": "nv", "BCC": "bcc", "AK": "akiec", "BKL": "bkl",
                    "DF": "df", "VASC": "vasc", "SCC": "scc", "UNK": "unk"}
ISIC2019_NAMES = {**HAM_DX_NAMES, "akiec": "Actinic keratosis",
                  "scc": "Squamous cell carcinoma", "unk": "None of the others"}


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
        if _find_ham_csv(path) is not None:
            return "ham10000"
        if (path / ISIC2019_TRUTH).is_file():
            return "isic2019"
        return "folder"
    suffix = path.suffix.lower()
    if suffix == ".npz":
        return "medmnist"
    if suffix == ".csv":
        header = _read_header(path)
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


def _read_header(path: Path) -> list[str]:
    with open(path, newline="", encoding="utf-8-sig") as f:
        row = next(csv.reader(f), [])
    return [c.strip() for c in row]


def _find_ham_csv(folder: Path) -> Path | None:
    for name in ("HAM10000_metadata.csv", "HAM10000_metadata", "metadata.csv"):
        p = folder / name
        if p.is_file() and set(HAM_REQUIRED) <= set(_read_header(p)):
            return p
    return None


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
        fingerprint=_files_fingerprint(s.path for s in samples if s.path),
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


def _files_fingerprint(paths: Iterable[str]) -> str:
    """Cheap change detector: path, size and mtime of every file."""
    h = hashlib.sha256()
    for p in sorted(paths):
        st = os.stat(p)
        h.update(f"{p}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


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


# ---------------------------------------------------------------------------------------------
# any CSV manifest

#: ``data.columns`` keys: what a manifest column may hold (the defaults are the column names).
MANIFEST_COLUMNS = ("image", "label", "group", "split", "skin_type", "age", "sex",
                    "localization")


def _manifest_columns(cfg: DataConfig, header: list[str], where: Path) -> dict[str, str]:
    unknown = sorted(set(cfg.columns) - set(MANIFEST_COLUMNS))
    if unknown:
        raise DataError(f"data.columns: unknown key(s) {unknown}; valid: {list(MANIFEST_COLUMNS)}")
    cols = {k: cfg.columns.get(k, k) for k in MANIFEST_COLUMNS}
    for key in ("image", "label"):
        if cols[key] not in header:
            raise DataError(f"{where}: no '{cols[key]}' column for the {key} (columns: {header}); "
                            f"name it with data.columns.{key}")
    named = [k for k in cfg.columns if k not in ("image", "label") and cfg.columns[k] not in header]
    if named:
        raise DataError(f"{where}: data.columns names column(s) the CSV does not have: "
                        f"{[cfg.columns[k] for k in named]} (columns: {header})")
    return {k: v for k, v in cols.items() if v in header}


def _manifest_meta(row: dict[str, str], cols: dict[str, str], where: str) -> dict[str, object]:
    meta: dict[str, object] = {}
    if "skin_type" in cols:
        meta["fitzpatrick"] = row[cols["skin_type"]] or None
    for key in ("sex", "localization"):
        if key in cols:
            meta[key] = row[cols[key]]
    if "age" in cols:
        raw = row[cols["age"]]
        meta["age_missing"] = raw in ("", "nan", "NaN")
        try:
            meta["age"] = None if meta["age_missing"] else float(raw)
        except ValueError:
            raise DataError(f"{where}: age '{raw}' is not a number") from None
    return meta


def read_csv_manifest(path: Path, cfg: DataConfig) -> SourceData:
    """Any CSV naming one image per row (the way most datasets arrive, e.g. Fitzpatrick17k):
    ``data.columns`` says which column holds the ``image`` (a path relative to the CSV's
    folder or to ``data.image_dirs``, or a file name or stem found there), the ``label``, and
    optionally the ``group`` (lesion/patient: kept in one split; without one, each image is
    its own group and near-duplicates are grouped), a given ``split`` (train/val/test), the
    Fitzpatrick ``skin_type`` (reported as a subgroup) and ``age``/``sex``/``localization``
    (patient metadata). Every column defaults to its own name.
    """
    path = _manifest_file(path)
    header, rows = _read_rows(path)
    if not rows:
        raise DataError(f"{path}: no rows")
    cols = _manifest_columns(cfg, header, path)
    dirs = _ham_image_dirs(path, cfg) if cfg.image_dirs else \
        [d for d in (path.parent / "images", path.parent) if d.is_dir()]
    index = _image_index(dirs)
    aliases = {"train": "train", "val": "val", "valid": "val", "validation": "val",
               "test": "test"}
    samples: list[Sample] = []
    bad: list[dict[str, str]] = []
    given: dict[str, str] = {}
    seen: set[str] = set()
    for line_no, row in enumerate(rows, start=2):
        where = f"{path}:{line_no}"
        image, label = row[cols["image"]], row[cols["label"]]
        found = _manifest_image(image, dirs, index)
        problem = None
        if not image:
            problem = "empty image"
        elif image in seen:
            problem = f"image {image} appears twice"
        elif not label:
            problem = "empty label"
        elif found is None:
            problem = f"image {image} not found in {[str(d) for d in dirs]}"
        elif "split" in cols and row[cols["split"]].lower() not in aliases:
            problem = f"unknown split '{row[cols['split']]}' (use train/val/test)"
        if _bad_row(where, problem, cfg, bad):
            continue
        assert found is not None
        seen.add(image)
        group = row[cols["group"]] if "group" in cols and row[cols["group"]] else image
        samples.append(Sample(image, label, group, path=found,
                              meta=_manifest_meta(row, cols, where)))
        if "split" in cols:
            given[image] = aliases[row[cols["split"]].lower()]
    samples.sort(key=lambda s: s.sample_id)
    return SourceData(kind="csv", location=str(path), samples=samples,
                      classes=sorted({s.label for s in samples}),
                      display_names={s.label: s.label for s in samples}, bad=bad,
                      given_split=given or None,
                      fingerprint=_files_fingerprint([str(path),
                                                      *(s.path for s in samples if s.path)]))


def _manifest_file(path: Path) -> Path:
    """The manifest itself: ``path``, or the one ``.csv`` in the folder ``path``."""
    if not path.is_dir():
        return path
    found = sorted(p for p in path.glob("*.csv") if p.is_file())
    if len(found) == 1:
        return found[0]
    which = "no .csv file" if not found else f"{len(found)} .csv files ({found[0].name}, ...)"
    raise DataError(f"{path}: a folder with {which}; pass the manifest CSV itself "
                    "(data.format=csv reads one CSV)")


def _manifest_image(image: str, dirs: list[Path], index: dict[str, str]) -> str | None:
    """The file of a manifest's image value: a relative path, a file name or a stem."""
    for d in dirs:
        candidate = d / image
        if candidate.is_file():
            return str(candidate)
    return index.get(Path(image).stem) if image else None


# ---------------------------------------------------------------------------------------------
# HAM10000 metadata CSV


def _image_index(dirs: Iterable[Path]) -> dict[str, str]:
    """image stem -> path over several folders (the original download has part_1 and part_2)."""
    index: dict[str, str] = {}
    for d in dirs:
        if not d.is_dir():
            continue
        for entry in os.scandir(d):
            if entry.is_file() and is_image_name(entry.name) and not entry.name.startswith("."):
                index.setdefault(Path(entry.name).stem, entry.path)
    return index


def _ham_image_dirs(csv_path: Path, cfg: DataConfig) -> list[Path]:
    base = csv_path.parent
    if cfg.image_dirs:
        return [Path(d) if Path(d).is_absolute() else base / d for d in cfg.image_dirs]
    names = ("images", "HAM10000_images_part_1", "HAM10000_images_part_2", "HAM10000_images",
             "ham10000_images_part_1", "ham10000_images_part_2")
    found = [base / n for n in names if (base / n).is_dir()]
    return found or [base]


def _read_rows(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    """A CSV's header and rows, keys and values stripped (BOM-tolerant)."""
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        rows = [{(k or "").strip(): (v or "").strip() for k, v in row.items()} for row in reader]
        return [h.strip() for h in (reader.fieldnames or [])], rows


def _bad_row(where: str, problem: str | None, cfg: DataConfig, bad: list[dict[str, str]]
             ) -> bool:
    """True for a bad row listed in ``bad`` (``data.skip_bad``); raises without skip_bad."""
    if problem is None:
        return False
    if not cfg.skip_bad:
        raise DataError(f"{where}: {problem}")
    bad.append({"path": where, "error": problem})
    return True


def read_ham10000(path: Path, cfg: DataConfig) -> SourceData:
    """HAM10000 metadata CSV (``lesion_id,image_id,dx[,dx_type,age,sex,localization]``).

    ``path`` is the CSV or a folder holding ``HAM10000_metadata.csv``. Images are looked up
    as ``<image_id>.<ext>`` in ``data.image_dirs`` (default: ``images/``, the two
    ``HAM10000_images_part_*`` folders, or the CSV's folder). ``lesion_id`` is the group.
    Missing ages are flagged (``age_missing``); :func:`dermalab.data.prepare.prepare_data`
    fills them with the training split's median unless ``data.age_impute=none``.
    """
    csv_path = path
    if path.is_dir():
        found = _find_ham_csv(path)
        if found is None:
            raise DataError(f"{path}: no HAM10000_metadata.csv with columns {list(HAM_REQUIRED)}")
        csv_path = found
    header, rows = _read_rows(csv_path)
    missing = [c for c in HAM_REQUIRED if c not in header]
    if missing:
        raise DataError(f"{csv_path}: missing required column(s) {missing}; found {header}")
    if not rows:
        raise DataError(f"{csv_path}: no rows")
    dirs = _ham_image_dirs(csv_path, cfg)
    index = _image_index(dirs)
    samples: list[Sample] = []
    bad: list[dict[str, str]] = []
    seen: set[str] = set()
    for line_no, row in enumerate(rows, start=2):
        image_id, dx, lesion = row["image_id"], row["dx"], row["lesion_id"]
        where = f"{csv_path}:{line_no}"
        problem = None
        if not image_id:
            problem = "empty image_id"
        elif image_id in seen:
            problem = f"image_id {image_id} appears twice"
        elif dx not in HAM_DX_NAMES and dx not in cfg.class_map:
            problem = f"unknown dx '{dx}' (known: {sorted(HAM_DX_NAMES)})"
        elif image_id not in index:
            problem = f"image {image_id} not found in {[str(d) for d in dirs]}"
        if _bad_row(where, problem, cfg, bad):
            continue
        seen.add(image_id)
        meta: dict[str, object] = {k: row.get(k, "") for k in ("dx_type", "sex", "localization")}
        raw_age = row.get("age", "")
        if raw_age in ("", "nan", "NaN"):
            meta["age_missing"] = True
            meta["age"] = None  # imputed from the training split only (data.prepare)
        else:
            try:
                meta["age"] = float(raw_age)
            except ValueError:
                raise DataError(f"{where}: age '{raw_age}' is not a number") from None
            meta["age_missing"] = False
        samples.append(Sample(image_id, dx, lesion or image_id, path=index[image_id], meta=meta))
    samples.sort(key=lambda s: s.sample_id)
    fp = _files_fingerprint([str(csv_path), *(s.path for s in samples if s.path)])
    return SourceData(
        kind="ham10000",
        location=str(csv_path),
        samples=samples,
        classes=sorted({s.label for s in samples}),
        display_names=dict(HAM_DX_NAMES),
        bad=bad,
        fingerprint=fp,
    )


# ---------------------------------------------------------------------------------------------
# ISIC 2019


def read_isic2019(path: Path, cfg: DataConfig) -> SourceData:
    """ISIC 2019 training data: ``ISIC_2019_Training_GroundTruth.csv`` (one-hot columns MEL,
    NV, BCC, AK, BKL, DF, VASC, SCC, UNK) and, when present, ``ISIC_2019_Training_Metadata.csv``
    (age_approx, anatom_site_general, lesion_id, sex). Images are ``<image>.jpg`` in
    ``images/`` (or ``data.image_dirs``). ``lesion_id`` is the group where the metadata has
    one (HAM10000 and MSK images); other images are their own group.
    """
    folder = path if path.is_dir() else path.parent
    truth = folder / ISIC2019_TRUTH if path.is_dir() else path
    if not truth.is_file():
        raise DataError(f"{folder}: no {ISIC2019_TRUTH}")
    _, rows = _read_rows(truth)
    columns = [c for c in ISIC2019_CLASSES if rows and c in rows[0]]
    if not rows or "image" not in rows[0] or not columns:
        raise DataError(f"{truth}: expected columns image and {list(ISIC2019_CLASSES)}")
    meta_path = folder / ISIC2019_META
    meta_rows = {r.get("image", ""): r for r in _read_rows(meta_path)[1]} \
        if meta_path.is_file() else {}
    dirs = ([Path(d) if Path(d).is_absolute() else folder / d for d in cfg.image_dirs]
            if cfg.image_dirs else [folder / "images", folder / "ISIC_2019_Training_Input"])
    index = _image_index(dirs)
    samples: list[Sample] = []
    bad: list[dict[str, str]] = []
    seen: set[str] = set()
    for line_no, row in enumerate(rows, start=2):
        image_id, where = row["image"], f"{truth}:{line_no}"
        hot = [c for c in columns if row.get(c) not in ("", "0", "0.0")]
        problem = None
        if len(hot) != 1:
            problem = f"{len(hot)} classes marked for {image_id} (expected exactly one)"
        elif image_id in seen:
            problem = f"image {image_id} appears twice"
        elif image_id not in index:
            problem = f"image {image_id} not found in {[str(d) for d in dirs]}"
        if _bad_row(where, problem, cfg, bad):
            continue
        seen.add(image_id)
        m = meta_rows.get(image_id, {})
        info: dict[str, object] = {"sex": m.get("sex", ""),
                                   "localization": m.get("anatom_site_general", "")}
        try:
            info["age"] = float(m["age_approx"]) if m.get("age_approx") else None
        except ValueError:
            info["age"] = None
        info["age_missing"] = info["age"] is None
        samples.append(Sample(image_id, ISIC2019_CLASSES[hot[0]], m.get("lesion_id") or image_id,
                              path=index[image_id], meta=info))
    samples.sort(key=lambda s: s.sample_id)
    fp = _files_fingerprint([str(truth), *(s.path for s in samples if s.path)])
    return SourceData(kind="isic2019", location=str(truth), samples=samples,
                      classes=sorted({s.label for s in samples}),
                      display_names=dict(ISIC2019_NAMES), bad=bad, fingerprint=fp)


# ---------------------------------------------------------------------------------------------
# array sources


def _as_rgb_stack(images: np.ndarray, where: str) -> np.ndarray:
    a = np.asarray(images)
    if a.ndim == 3:  # (N, H, W) grey
        a = np.repeat(a[..., None], 3, axis=3)
    if a.ndim != 4 or a.shape[3] not in (1, 3):
        raise DataError(f"{where}: images must be (N,H,W) or (N,H,W,3), got {a.shape}")
    if a.shape[3] == 1:
        a = np.repeat(a, 3, axis=3)
    if a.dtype != np.uint8:
        if a.size and (a.min() < 0 or a.max() > 255):
            raise DataError(f"{where}: pixel values outside 0..255")
        a = a.astype(np.uint8)
    return np.ascontiguousarray(a)


def _stat_fingerprint(path: Path) -> str:
    st = path.stat()
    return hashlib.sha256(f"{path.resolve()}\0{st.st_size}\0{st.st_mtime_ns}".encode()).hexdigest()


def _label_names(n: int, stem: str, known: tuple[str, ...], prefix: str) -> list[str]:
    if stem.lower().startswith(prefix) and n <= len(known):
        return list(known)
    return [str(i) for i in range(n)]


def read_medmnist(path: Path, cfg: DataConfig) -> SourceData:
    """MedMNIST ``.npz`` with ``{train,val,test}_{images,labels}``; the official split is kept
    as ``given_split`` (used when ``data.official_split`` is true). DermaMNIST labels are named
    by their HAM10000 codes; other files keep numeric class names (rename with the class map).
    """
    try:
        npz = np.load(path, allow_pickle=False)
    except Exception as exc:
        raise DataError(f"{path}: cannot read as .npz ({exc})") from None
    with npz:
        keys = set(npz.files)
        splits = [s for s in MEDMNIST_SPLITS if f"{s}_images" in keys]
        if not splits:
            raise DataError(f"{path}: no '<split>_images' arrays; found keys {sorted(keys)}")
        stacks, labels = [], []
        for s in splits:
            if f"{s}_labels" not in keys:
                raise DataError(f"{path}: '{s}_images' has no matching '{s}_labels'")
            imgs = _as_rgb_stack(npz[f"{s}_images"], f"{path}[{s}_images]")
            labs = np.asarray(npz[f"{s}_labels"]).reshape(len(imgs), -1)
            if labs.shape[1] != 1:
                raise DataError(f"{path}: '{s}_labels' is multi-label {labs.shape}; "
                                "only single-label classification is supported")
            stacks.append(imgs)
            labels.append(labs[:, 0].astype(np.int64))
    shapes = {a.shape[1:] for a in stacks}
    if len(shapes) != 1:
        raise DataError(f"{path}: splits have different image shapes {shapes}")
    arrays = np.concatenate(stacks)
    all_labels = np.concatenate(labels)
    if all_labels.min() < 0:
        raise DataError(f"{path}: negative label {all_labels.min()}")
    names = _label_names(int(all_labels.max()) + 1, path.stem, DERMAMNIST_CLASSES, "dermamnist")
    samples, given = [], {}
    offset = 0
    for s, labs in zip(splits, labels, strict=True):
        for i, lab in enumerate(labs):
            sid = f"{s}/{i}"
            samples.append(Sample(sid, names[int(lab)], sid, index=offset + i))
            given[sid] = s
        offset += len(labs)
    return SourceData(
        kind="medmnist",
        location=str(path),
        samples=samples,
        classes=sorted(set(names[int(v)] for v in np.unique(all_labels))),
        display_names=dict(HAM_DX_NAMES),
        arrays=arrays,
        given_split=given if cfg.official_split else None,
        fingerprint=_stat_fingerprint(path),
    )


def read_hmnist(path: Path, cfg: DataConfig) -> SourceData:
    """hmnist CSV (``hmnist_28_28_RGB.csv`` style): pixel columns, then ``label``.

    The pixel count decides the shape: 3*s*s columns are s x s RGB, s*s columns s x s grey.
    Kaggle's hmnist label order is used when the file name starts with ``hmnist``.
    """
    header = _read_header(path)
    if not header or header[-1] != "label":
        raise DataError(f"{path}: last column must be 'label' (hmnist layout); found "
                        f"{header[-3:] if header else 'no header'}")
    n_pix = len(header) - 1
    side_rgb = math.isqrt(n_pix // 3) if n_pix % 3 == 0 else 0
    if side_rgb and side_rgb * side_rgb * 3 == n_pix:
        shape: tuple[int, ...] = (side_rgb, side_rgb, 3)
    elif math.isqrt(n_pix) ** 2 == n_pix:
        shape = (math.isqrt(n_pix), math.isqrt(n_pix))
    else:
        raise DataError(f"{path}: {n_pix} pixel columns is not s*s or 3*s*s")
    try:
        table = np.loadtxt(path, delimiter=",", skiprows=1, dtype=np.int64, ndmin=2)
    except ValueError as exc:
        raise DataError(f"{path}: non-numeric or ragged rows ({exc})") from None
    if table.shape[0] == 0:
        raise DataError(f"{path}: no rows")
    if table.shape[1] != n_pix + 1:
        raise DataError(f"{path}: rows have {table.shape[1]} values, header has {n_pix + 1}")
    pixels, labs = table[:, :-1], table[:, -1]
    if pixels.min() < 0 or pixels.max() > 255:
        bad_row = int(np.argwhere((pixels < 0) | (pixels > 255))[0, 0]) + 2
        raise DataError(f"{path}:{bad_row}: pixel value outside 0..255")
    if labs.min() < 0:
        raise DataError(f"{path}:{int(np.argmin(labs)) + 2}: negative label {labs.min()}")
    arrays = _as_rgb_stack(pixels.reshape((-1, *shape)).astype(np.uint8), str(path))
    names = _label_names(int(labs.max()) + 1, path.stem, HMNIST_CLASSES, "hmnist")
    samples = [Sample(f"row/{i}", names[int(v)], f"row/{i}", index=i) for i, v in enumerate(labs)]
    return SourceData(
        kind="hmnist",
        location=str(path),
        samples=samples,
        classes=sorted({s.label for s in samples}),
        display_names=dict(HAM_DX_NAMES),
        arrays=arrays,
        fingerprint=_stat_fingerprint(path),
    )
