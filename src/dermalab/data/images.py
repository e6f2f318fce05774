"""Decode one image to upright 8-bit RGB, or fail with an error that names the file and the problem.

Medical evaluation must never substitute another sample for a bad one (timm's dataset does), so
every failure mode is mapped to an :class:`~dermalab.core.errors.ImageError`: missing file, empty
file, a non-image, truncated/corrupt data, a decompression-bomb-sized image. Odd modes are
converted correctly (16-bit grey is rescaled, not clipped; transparency is composited on white;
CMYK goes through Pillow's colour conversion) and EXIF orientation is applied.
"""

from __future__ import annotations

import io
import os
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from dermalab.core.errors import ImageError

try:  # HEIC/HEIF, the iPhone camera's format: Pillow reads it through libheif
    from pillow_heif import register_heif_opener

    register_heif_opener()
except ImportError:  # an install without it still reads every other format
    pass

IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".gif", ".jfif", ".heic", ".heif"}
)
# 64 megapixels covers full-resolution phone and DSLR photos; anything bigger is far more likely
# a decompression bomb than a skin photo, and would cost gigabytes to decode.
DEFAULT_MAX_PIXELS = 64_000_000
RESIZE_MODES = ("squash", "pad", "crop")


def is_image_name(name: str) -> bool:
    """True for a file name with a common image extension (case-insensitive)."""
    return Path(name).suffix.lower() in IMAGE_EXTENSIONS


def _to_rgb(img: Image.Image) -> Image.Image:
    """Convert any Pillow mode to RGB without losing the picture.

    - ``I;16*``/``I`` (16/32-bit grey): scaled by 1/257 when values exceed 8 bits, because
      ``convert("RGB")`` would clip everything above 255 to white.
    - ``F`` (float grey): [0, 1] data scaled to [0, 255], else clipped.
    - alpha (``RGBA``, ``LA``, ``PA``, ``P`` with transparency): composited on white, the
      background of a photo print; dropping alpha would expose arbitrary hidden colours.
    """
    mode = img.mode
    if mode == "RGB":
        return img
    if mode.startswith("I") or mode == "F":
        arr = np.asarray(img, dtype=np.float64)
        if mode == "F":
            arr = arr * 255.0 if arr.size and np.nanmax(arr) <= 1.0 else arr
        elif arr.size and arr.max() > 255:
            arr = arr / 257.0
        grey = np.clip(np.nan_to_num(arr), 0, 255).round().astype(np.uint8)
        return Image.fromarray(grey, mode="L").convert("RGB")
    if mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
        mode = "RGBA"
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")


def open_rgb(
    source: str | os.PathLike[str] | bytes,
    *,
    name: str | None = None,
    draft_size: int | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> Image.Image:
    """Open, fully decode, rotate upright (EXIF) and convert an image to RGB.

    Args:
        source: a file path or the file's bytes.
        name: how to name the image in errors (defaults to the path).
        draft_size: for JPEGs, let libjpeg decode at a reduced scale that still covers this
            many pixels on each side (``Image.draft``: about 2x faster for small targets).
        max_pixels: refuse images with more pixels than this (decompression bombs).

    Raises:
        ImageError: naming the file and the problem.
    """
    label = name or (str(source) if not isinstance(source, bytes) else "<upload>")
    if isinstance(source, bytes):
        if not source:
            raise ImageError(label, "empty file (0 bytes)", "not_image")
        fp = io.BytesIO(source)
    else:
        path = os.fspath(source)
        if not os.path.exists(path):
            raise ImageError(label, "file not found", "unreadable")
        if os.path.isdir(path):
            raise ImageError(label, "is a directory, not an image file", "unreadable")
        try:
            data = Path(path).read_bytes()
        except OSError as exc:
            raise ImageError(label, f"cannot read file: {exc.strerror or exc}",
                             "unreadable") from None
        if not data:
            raise ImageError(label, "empty file (0 bytes)", "not_image")
        # Reading the bytes first leaves no file handle open behind a lazily decoded image.
        fp = io.BytesIO(data)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(fp)
    except UnidentifiedImageError:
        raise ImageError(label, "not an image (unrecognised file format)",
                         "not_image") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageError(label, f"too large to decode safely (decompression bomb): {exc}",
                         "too_large") from None
    except OSError as exc:
        raise ImageError(label, f"cannot open image: {exc}") from None
    width, height = img.size
    if width * height > max_pixels:
        raise ImageError(
            label,
            f"image is {width}x{height} = {width * height:,} pixels, above the limit of "
            f"{max_pixels:,} (possible decompression bomb)",
            "too_large",
        )
    if width < 1 or height < 1:
        raise ImageError(label, f"image has no pixels ({width}x{height})")
    if draft_size and img.format == "JPEG":
        img.draft("RGB", (draft_size, draft_size))
    try:
        img.load()
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageError(label, f"truncated or corrupt image data ({exc})") from None
    try:
        upright: Image.Image = ImageOps.exif_transpose(img)
    except Exception as exc:  # a malformed EXIF block must not hide behind a generic error
        raise ImageError(label, f"corrupt EXIF orientation data ({exc})") from None
    return _to_rgb(upright)


def resize_rgb(img: Image.Image, size: int, mode: str = "squash",
               resample: Image.Resampling = Image.Resampling.BICUBIC) -> Image.Image:
    """Resize an RGB image (or a mask, with ``resample=NEAREST``) to ``size`` x ``size``.

    Args:
        img: RGB image (or ``L`` mask).
        size: output side in pixels.
        mode: ``squash`` (ignore aspect ratio; what most HAM10000 work does), ``pad`` (fit the
            long side, pad with black; keeps shape) or ``crop`` (fill the short side, centre-crop).
        resample: the filter (nearest for masks, so they stay binary).
    """
    if mode not in RESIZE_MODES:
        raise ValueError(f"resize mode must be one of {RESIZE_MODES}, got {mode!r}")
    w, h = img.size
    if mode == "squash" or w == h:
        return img.resize((size, size), resample, reducing_gap=3.0)
    if mode == "pad":
        scale = size / max(w, h)
        nw, nh = max(1, round(w * scale)), max(1, round(h * scale))
        inner = img.resize((nw, nh), resample, reducing_gap=3.0)
        canvas = Image.new(img.mode, (size, size), 0)
        canvas.paste(inner, ((size - nw) // 2, (size - nh) // 2))
        return canvas
    scale = size / min(w, h)
    nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
    inner = img.resize((nw, nh), resample, reducing_gap=3.0)
    left, top = (nw - size) // 2, (nh - size) // 2
    return inner.crop((left, top, left + size, top + size))


def load_resized(
    source: str | os.PathLike[str] | bytes,
    size: int,
    mode: str = "squash",
    *,
    name: str | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    box: tuple[float, float, float, float] | None = None,
) -> np.ndarray:
    """Decode (with JPEG draft), convert and resize: a ``(size, size, 3)`` uint8 array.

    ``box`` = ``(x0, y0, x1, y1)`` as fractions of the width and height: crop to it first
    (a lesion's bounding box; see :func:`dermalab.data.lesion.lesion_box`). The crop is taken
    from the full decoded image, so the crop gets every source pixel there is.
    """
    img = open_rgb(source, name=name, draft_size=None if box else size, max_pixels=max_pixels)
    if box is not None:
        img = crop_fraction(img, box)
    return np.asarray(resize_rgb(img, size, mode), dtype=np.uint8)


def crop_fraction(img: Image.Image, box: tuple[float, float, float, float]) -> Image.Image:
    """Crop to ``(x0, y0, x1, y1)`` given as fractions of the width and height (rounded out
    to whole pixels, at least one pixel)."""
    w, h = img.size
    x0, y0 = max(0, int(np.floor(box[0] * w))), max(0, int(np.floor(box[1] * h)))
    x1, y1 = min(w, int(np.ceil(box[2] * w))), min(h, int(np.ceil(box[3] * h)))
    return img.crop((x0, y0, max(x1, x0 + 1), max(y1, y0 + 1)))


def normalize_batch(images: np.ndarray, mean: Sequence[float], std: Sequence[float]
                    ) -> np.ndarray:
    """``(N, S, S, 3)`` uint8 -> ``(N, 3, S, S)`` float32 ``(x / 255 - mean) / std``, the one
    normalisation shared by evaluation, Grad-CAM, ONNX export and the predictor. A 4th
    channel (the lesion mask, 0 or 255) becomes 0 or 1."""
    x = np.asarray(images, dtype=np.float32).transpose(0, 3, 1, 2) / 255.0
    m = np.asarray(mean, np.float32).reshape(1, 3, 1, 1)
    s = np.asarray(std, np.float32).reshape(1, 3, 1, 1)
    if x.shape[1] == 4:  # a lesion-mask channel (data.input=mask_channel): kept as 0/1
        return np.ascontiguousarray(np.concatenate([(x[:, :3] - m) / s, x[:, 3:]], axis=1))
    return np.ascontiguousarray((x - m) / s)


def array_to_rgb(arr: np.ndarray) -> Image.Image:
    """An image array from an ``.npz``/CSV source (HxW grey or HxWx3/4) as an RGB image."""
    a = np.asarray(arr)
    if a.dtype != np.uint8:
        a = np.clip(a, 0, 255).astype(np.uint8)
    if a.ndim == 2:
        return Image.fromarray(a, mode="L").convert("RGB")
    if a.ndim == 3 and a.shape[2] == 1:
        return Image.fromarray(a[:, :, 0], mode="L").convert("RGB")
    if a.ndim == 3 and a.shape[2] == 4:
        return _to_rgb(Image.fromarray(a, mode="RGBA"))
    if a.ndim == 3 and a.shape[2] == 3:
        return Image.fromarray(a, mode="RGB")
    raise ValueError(f"cannot interpret an array of shape {a.shape} as an image")
