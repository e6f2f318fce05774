"""CSV-table sources: any CSV manifest (``data.format: csv``), the HAM10000 metadata CSV and
ISIC 2019's ground truth, and what they share (image lookup by id, bad rows, fingerprints).

Each reader returns :class:`~dermalab.data.samples.SourceData`; a bad row raises
:class:`~dermalab.core.errors.DataError` naming the file and row, or with ``data.skip_bad``
is listed in ``SourceData.bad``.
"""

from __future__ import annotations

import csv
import hashlib
import os
from collections.abc import Iterable
from pathlib import Path

from dermalab.core.config import DataConfig
from dermalab.core.errors import DataError
from dermalab.data.images import is_image_name
from dermalab.data.samples import Sample, SourceData

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
ISIC2019_TRUTH = "ISIC_2019_Training_GroundTruth.csv"
ISIC2019_META = "ISIC_2019_Training_Metadata.csv"
# ISIC 2019 ground-truth columns, named with the HAM10000 codes where the class is the same.
ISIC2019_CLASSES = {"MEL": "mel", "NV": "nv", "BCC": "bcc", "AK": "akiec", "BKL": "bkl",
                    "DF": "df", "VASC": "vasc", "SCC": "scc", "UNK": "unk"}
ISIC2019_NAMES = {**HAM_DX_NAMES, "akiec": "Actinic keratosis",
                  "scc": "Squamous cell carcinoma", "unk": "None of the others"}


def read_header(path: Path) -> list[str]:
    with open(path, newline="", encoding="utf-8-sig") as f:
        row = next(csv.reader(f), [])
    return [c.strip() for c in row]


def find_ham_csv(folder: Path) -> Path | None:
    for name in ("HAM10000_metadata.csv", "HAM10000_metadata", "metadata.csv"):
        p = folder / name
        if p.is_file() and set(HAM_REQUIRED) <= set(read_header(p)):
            return p
    return None


def files_fingerprint(paths: Iterable[str]) -> str:
    """Cheap change detector: path, size and mtime of every file."""
    h = hashlib.sha256()
    for p in sorted(paths):
        st = os.stat(p)
        h.update(f"{p}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


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
                      fingerprint=files_fingerprint([str(path),
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
        found = find_ham_csv(path)
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
    fp = files_fingerprint([str(csv_path), *(s.path for s in samples if s.path)])
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
    fp = files_fingerprint([str(truth), *(s.path for s in samples if s.path)])
    return SourceData(kind="isic2019", location=str(truth), samples=samples,
                      classes=sorted({s.label for s in samples}),
                      display_names=dict(ISIC2019_NAMES), bad=bad, fingerprint=fp)


