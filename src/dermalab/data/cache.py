"""Decoded, resized uint8 image cache, built once per (dataset, resolution, resize mode).

Decoding a JPEG costs far more than a training step's augmentation on a small image, so every
image is decoded once (with ``Image.draft``), resized, and stored in one memory-mapped
``(N, S, S, 3)`` uint8 array. The key hashes the source fingerprint (path, size and mtime of
every file), so a changed or added file builds a new cache. A cache is written to a temporary
folder and renamed when complete: a killed build never leaves a half-cache that looks valid.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
from tqdm import tqdm

from dermalab.core.errors import ImageError
from dermalab.core.settings import settings
from dermalab.data.images import array_to_rgb, crop_fraction, load_resized, resize_rgb
from dermalab.data.samples import Sample, SourceData

CACHE_VERSION = 1

Box = tuple[float, float, float, float]


class ImageStore(Protocol):
    """Random access to images, already resized to ``size`` x ``size`` uint8 RGB."""

    size: int

    def get(self, sample_id: str) -> np.ndarray:
        """The ``(size, size, 3)`` uint8 image of a sample."""
        ...


def default_cache_dir() -> Path:
    """``$DERMALAB_CACHE`` or ``~/.cache/dermalab``."""
    return settings().cache_dir


@dataclass
class DecodeResult:
    """An image decoded for the cache (or the error that stopped it) and its content hash."""

    image: np.ndarray | None
    digest: str
    error: ImageError | None = None


def decode_sample(data: SourceData, sample: Sample, size: int, mode: str,
                  box: Box | None = None) -> DecodeResult:
    """Decode one sample to a resized array (cropped to ``box`` first, a fraction of the
    image: see :func:`~dermalab.data.images.crop_fraction`), hashing the bytes it read (for
    duplicate checks)."""
    if sample.path is not None:
        try:
            raw = Path(sample.path).read_bytes()
        except FileNotFoundError:
            return DecodeResult(None, "", ImageError(sample.path, "file not found", "unreadable"))
        except OSError as exc:
            return DecodeResult(None, "", ImageError(sample.path, f"cannot read file: {exc}",
                                                     "unreadable"))
        digest = hashlib.sha256(raw).hexdigest()
        try:
            return DecodeResult(load_resized(raw, size, mode, name=sample.path, box=box), digest)
        except ImageError as exc:
            return DecodeResult(None, digest, exc)
    assert data.arrays is not None and sample.index is not None
    arr = data.arrays[sample.index]
    digest = hashlib.sha256(np.ascontiguousarray(arr).tobytes()).hexdigest()
    img = array_to_rgb(arr)
    if box is not None:
        img = crop_fraction(img, box)
    out = np.asarray(img if img.size == (size, size) else resize_rgb(img, size, mode))
    return DecodeResult(out.astype(np.uint8), digest)


class CachedImages:
    """A memory-mapped cache plus the content hashes computed while building it."""

    def __init__(self, folder: Path) -> None:
        index = json.loads((folder / "index.json").read_text())
        self.folder = folder
        self.size: int = index["size"]
        self.ids: list[str] = index["ids"]
        self.hashes: dict[str, str] = index["hashes"]
        self.bad: list[dict[str, str]] = index["bad"]
        self.position = {sid: i for i, sid in enumerate(self.ids)}
        n = len(self.ids)
        self.array = np.memmap(folder / "images.u8", dtype=np.uint8, mode="r",
                               shape=(max(n, 1), self.size, self.size, 3))

    def get(self, sample_id: str) -> np.ndarray:
        """The cached image (a copy, so callers may write to it)."""
        return np.array(self.array[self.position[sample_id]])


class DecodingImages:
    """No cache: decode every image on every access (for huge datasets or debugging)."""

    def __init__(self, data: SourceData, size: int, mode: str,
                 boxes: dict[str, Box] | None = None) -> None:
        self.data, self.size, self.mode, self.boxes = data, size, mode, boxes or {}
        self.by_id = {s.sample_id: s for s in data.samples}

    def get(self, sample_id: str) -> np.ndarray:
        """Decode and resize one image; raises :class:`ImageError` naming the file."""
        s = self.by_id[sample_id]
        box = self.boxes.get(sample_id)
        if s.path is not None:
            return load_resized(s.path, self.size, self.mode, box=box)
        res = decode_sample(self.data, s, self.size, self.mode, box)
        assert res.image is not None
        return res.image


def cache_key(data: SourceData, size: int, mode: str, boxes: dict[str, Box] | None = None
              ) -> str:
    """Changes with the source files, the sample list, the size, the resize mode and the
    lesion crop boxes (``data.input=crop``)."""
    h = hashlib.sha256()
    h.update(f"v{CACHE_VERSION}\0{data.kind}\0{data.fingerprint}\0{size}\0{mode}\n".encode())
    for s in data.samples:
        h.update(f"{s.sample_id}\0{s.path}\0{s.index}\n".encode())
        if boxes is not None:
            h.update(repr(boxes.get(s.sample_id)).encode())
    return h.hexdigest()[:24]


def build_cache(
    data: SourceData,
    size: int,
    mode: str,
    cache_dir: Path,
    *,
    skip_bad: bool = False,
    workers: int | None = None,
    progress: bool = True,
    boxes: dict[str, Box] | None = None,
) -> CachedImages:
    """Open the cache for this source/size/mode, building it first when missing.

    Bad images raise :class:`ImageError` (naming the file) unless ``skip_bad``; then they are
    recorded in the cache's ``bad`` list and left out of ``ids``.
    """
    key = cache_key(data, size, mode, boxes)
    folder = cache_dir / key
    if (folder / "index.json").is_file():
        cached = CachedImages(folder)
        if cached.bad and not skip_bad:
            first = cached.bad[0]
            raise ImageError(first["path"], first["error"])
        return cached
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = cache_dir / f"{key}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        _write_cache(data, size, mode, tmp, skip_bad, workers, progress, boxes or {})
        try:
            tmp.rename(folder)
        except OSError:
            # Another process finished the same cache first; its copy is equally valid.
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return CachedImages(folder)


def _write_cache(
    data: SourceData,
    size: int,
    mode: str,
    folder: Path,
    skip_bad: bool,
    workers: int | None,
    progress: bool,
    boxes: dict[str, Box],
) -> None:
    samples = data.samples
    n = len(samples)
    shape = (max(n, 1), size, size, 3)
    mm = np.memmap(folder / "images.u8", dtype=np.uint8, mode="w+", shape=shape)
    ids: list[str] = []
    hashes: dict[str, str] = {}
    bad: list[dict[str, str]] = []
    fn: Callable[[Sample], DecodeResult] = lambda s: decode_sample(  # noqa: E731
        data, s, size, mode, boxes.get(s.sample_id))
    slot = 0
    with ThreadPoolExecutor(max_workers=workers or min(8, os.cpu_count() or 1)) as pool:
        results = pool.map(fn, samples)
        bar = tqdm(results, total=n, desc=f"caching {size}px", unit="img", disable=not progress,
                   leave=False)
        for sample, res in zip(samples, bar, strict=True):
            if res.error is not None:
                if not skip_bad:
                    raise res.error
                bad.append({"path": res.error.path, "error": res.error.reason})
                continue
            assert res.image is not None
            mm[slot] = res.image
            ids.append(sample.sample_id)
            hashes[sample.sample_id] = res.digest
            slot += 1
    mm.flush()
    del mm
    if slot < n:
        # Compact: rewrite without the holes left by skipped images.
        src = np.memmap(folder / "images.u8", dtype=np.uint8, mode="r", shape=(max(n, 1), size,
                                                                               size, 3))
        dst = np.memmap(folder / "images.tmp", dtype=np.uint8, mode="w+",
                        shape=(max(slot, 1), size, size, 3))
        dst[:slot] = src[:slot]
        dst.flush()
        del src, dst
        os.replace(folder / "images.tmp", folder / "images.u8")
    index = {"version": CACHE_VERSION, "size": size, "mode": mode, "ids": ids, "hashes": hashes,
             "bad": bad, "source": data.location}
    (folder / "index.json").write_text(json.dumps(index))


def sample_hashes(data: SourceData, samples: Sequence[Sample]) -> dict[str, str]:
    """Content hashes without a cache (reads every file once)."""
    return {s.sample_id: data.content_hash(s) for s in samples}
