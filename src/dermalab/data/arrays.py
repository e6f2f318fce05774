"""Array sources: MedMNIST ``.npz`` (DermaMNIST) and Kaggle's hmnist CSV of pixel rows."""

from __future__ import annotations

import hashlib
import math
from pathlib import Path

import numpy as np

from dermalab.core.config import DataConfig
from dermalab.core.errors import DataError
from dermalab.data.samples import Sample, SourceData
from dermalab.data.tables import HAM_DX_NAMES, read_header

# MedMNIST's DermaMNIST label order (medmnist INFO["dermamnist"]["label"]).
DERMAMNIST_CLASSES = ("akiec", "bcc", "bkl", "df", "mel", "nv", "vasc")
# Kaggle hmnist_*.csv label order (label 4 holds the 6,705 nevi, 6 the 1,113 melanomas).
HMNIST_CLASSES = ("akiec", "bcc", "bkl", "df", "nv", "vasc", "mel")
MEDMNIST_SPLITS = ("train", "val", "test")


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
    header = read_header(path)
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
