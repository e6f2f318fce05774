"""Lesion masks as data: found beside any dataset format, read as binary arrays, checked.

``data.masks`` names where they are:

- a folder of PNGs named ``<id>_segmentation.png`` (the HAM10000 / ISIC convention), ``<id>.png``
  or ``<stem>_mask.png``, where ``<id>`` is the sample's id without folders or extension (the
  HAM10000 ``image_id``) and ``<stem>`` its image file's name without extension; for a folder
  dataset the mask folder may mirror the class folders (``masks/<class>/<stem>_mask.png``,
  looked up first, since file names often repeat across classes) or be flat;
- ``labelme``: a Labelme JSON file beside each image (``photo.jpg`` -> ``photo.json``); its
  polygon, rectangle and circle shapes are filled with Pillow, keeping the labels listed in
  ``data.mask_labels`` (all shapes when empty).

Grey mask edges (masks that were downscaled with smoothing) are thresholded at 128. A mask whose
size differs from its image is refused, naming both files: it belongs to another image or was
resized without its image.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from dermalab.core.config import DataConfig
from dermalab.core.errors import DataError
from dermalab.data.images import resize_rgb
from dermalab.data.samples import Sample

LABELME = "labelme"
THRESHOLD = 128


class MaskError(DataError):
    """A mask file that cannot be used; the message names it (and its image)."""


def _ids(sample: Sample) -> tuple[str, str]:
    """(id without folders or extension, image file stem)."""
    base = Path(sample.sample_id).name
    stem = Path(sample.path).stem if sample.path else Path(base).stem
    return Path(base).stem, stem


def mask_path(sample: Sample, cfg: DataConfig) -> Path | None:
    """Where the sample's mask is, or ``None`` when it has none."""
    if not cfg.masks:
        return None
    if cfg.masks == LABELME:
        if sample.path is None:
            return None
        p = Path(sample.path).with_suffix(".json")
        return p if p.is_file() else None
    sid, stem = _ids(sample)
    sub = Path(sample.sample_id).parent
    for folder in dict.fromkeys((Path(cfg.masks) / sub, Path(cfg.masks))):
        for name in (f"{sid}_segmentation.png", f"{sid}.png", f"{stem}_mask.png"):
            if (folder / name).is_file():
                return folder / name
    return None


def labelme_mask(path: str | Path, labels: Sequence[str] = ()) -> np.ndarray:
    """Fill a Labelme file's shapes (``polygon``, ``rectangle``, ``circle``) into a
    ``(imageHeight, imageWidth)`` boolean mask; only ``labels`` when given.

    Raises:
        MaskError: not a Labelme file (no size or shapes), or a shape without enough points.
    """
    path = Path(path)
    try:
        doc: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
        width, height = int(doc["imageWidth"]), int(doc["imageHeight"])
        shapes = list(doc["shapes"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise MaskError(f"{path}: not a Labelme file ({exc.__class__.__name__}: {exc})") from None
    canvas = Image.new("L", (width, height), 0)
    draw = ImageDraw.Draw(canvas)
    for shape in shapes:
        if labels and shape.get("label") not in labels:
            continue
        kind = shape.get("shape_type") or "polygon"
        pts = [(float(x), float(y)) for x, y in shape.get("points", [])]
        if kind == "polygon" and len(pts) >= 3:
            draw.polygon(pts, fill=255)
        elif kind == "rectangle" and len(pts) == 2:
            (x0, y0), (x1, y1) = pts
            draw.rectangle([min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1)], fill=255)
        elif kind == "circle" and len(pts) == 2:
            (cx, cy), (px, py) = pts
            r = math.hypot(px - cx, py - cy)
            draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=255)
        elif kind in ("polygon", "rectangle", "circle"):
            raise MaskError(f"{path}: a {kind} shape labelled {shape.get('label')!r} has "
                            f"{len(pts)} point(s)")
    out: np.ndarray = np.asarray(canvas) >= THRESHOLD
    return out


def read_mask(path: str | Path, labels: Sequence[str] = ()) -> np.ndarray:
    """A mask file as a boolean ``(H, W)`` array (PNG thresholded at 128, or Labelme JSON)."""
    path = Path(path)
    if path.suffix.lower() == ".json":
        return labelme_mask(path, labels)
    try:
        with Image.open(path) as img:
            out: np.ndarray = np.asarray(img.convert("L")) >= THRESHOLD
    except (OSError, ValueError) as exc:
        raise MaskError(f"{path}: cannot read the mask ({exc})") from None
    return out


def load_mask(sample: Sample, cfg: DataConfig, image_size: tuple[int, int]) -> np.ndarray | None:
    """The sample's mask, checked against its image's ``(width, height)``; ``None`` if none.

    Raises:
        MaskError: unreadable, or a size other than the image's (naming both files).
    """
    path = mask_path(sample, cfg)
    if path is None:
        return None
    mask = read_mask(path, cfg.mask_labels)
    if (mask.shape[1], mask.shape[0]) != tuple(image_size):
        raise MaskError(f"mask {path} is {mask.shape[1]}x{mask.shape[0]} but its image "
                        f"{sample.path or sample.sample_id} is {image_size[0]}x{image_size[1]}")
    return mask


def resize_mask(mask: np.ndarray, size: int, mode: str = "squash") -> np.ndarray:
    """A boolean mask resized exactly as its image is by ``resize_rgb`` (same geometry for
    ``squash``/``pad``/``crop``), with nearest-neighbour sampling so it stays binary."""
    img = Image.fromarray(np.asarray(mask, bool).astype(np.uint8) * 255, "L")
    out: np.ndarray = np.asarray(resize_rgb(img, size, mode, Image.Resampling.NEAREST)) >= THRESHOLD
    return out


def mask_coverage(samples: Sequence[Sample], sizes: Sequence[tuple[int, int]],
                  cfg: DataConfig) -> dict[str, Any]:
    """How many images have a usable mask: with/without, empty ones, size mismatches (or other
    unusable masks, listed with the problem), and the lesion's share of the image."""
    missing, empty, bad = [], [], []
    shares: list[float] = []
    for sample, size in zip(samples, sizes, strict=True):
        try:
            mask = load_mask(sample, cfg, size)
        except MaskError as exc:
            bad.append({"sample_id": sample.sample_id, "error": str(exc)})
            continue
        if mask is None:
            missing.append(sample.sample_id)
        elif not mask.any():
            empty.append(sample.sample_id)
        else:
            shares.append(float(mask.mean()))
    share_stats = ({"min": round(min(shares), 4), "median": round(float(np.median(shares)), 4),
                    "max": round(max(shares), 4)} if shares else {})
    return {"source": cfg.masks, "with_mask": len(samples) - len(missing) - len(bad),
            "without_mask": len(missing), "empty": len(empty), "bad": bad,
            "foreground_share": share_stats, "examples_without": missing[:5],
            "examples_empty": empty[:5]}
