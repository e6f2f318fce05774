"""Lesion-aware classifier input (``data.input``), built from lesion masks.

- ``raw``: the photo as it is.
- ``masked``: the background (outside the lesion mask) replaced by the image's own mean colour.
  Not zeros: black is far outside the colours of skin, so a black background would draw a hard
  artificial edge along the mask's outline that the network could learn instead of the lesion
  (the mask's shape becoming the signal), and it shifts the image statistics that the
  batch-norm layers saw in pretraining and see in raw images (``raw+masked`` mixes both). The
  mean colour keeps the overall brightness and hue and carries no texture.
- ``crop``: the lesion's bounding box plus a margin (``data.crop_margin`` of the box's size on
  each side), cropped from the full-resolution image and then resized: more lesion pixels per
  input. Computed once, into the decoded cache.
- ``raw+masked``: each training image twice, raw and masked (the mixed experiment);
  evaluation and inference use the raw photo.
- ``mask_channel``: the mask as a 4th input channel (0/1); the pretrained stem convolution
  gets a zero-initialised filter slice for it (:func:`dermalab.core.models.expand_stem`), so
  the ImageNet features are exactly kept at the start.

An image without a mask is used whole (``crop``: the full frame; ``masked``: unchanged;
``mask_channel``: an all-ones mask) and counted in a warning, never dropped silently.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from dermalab.core.config import DataConfig
from dermalab.core.errors import DataError
from dermalab.data.cache import ImageStore
from dermalab.data.masks import load_mask, resize_mask
from dermalab.data.samples import Sample, SourceData

EXIF_ROTATED = (5, 6, 7, 8)  # orientations that swap width and height

INPUTS = ("raw", "masked", "crop", "raw+masked", "mask_channel")
NEEDS_MASK = ("masked", "crop", "mask_channel")  # at inference too (raw+masked infers on raw)
FULL_BOX = (0.0, 0.0, 1.0, 1.0)

Box = tuple[float, float, float, float]


def lesion_box(mask: np.ndarray, margin: float = 0.1) -> Box:
    """The mask's bounding box widened by ``margin`` x its width/height on each side, as
    fractions ``(x0, y0, x1, y1)`` of the image's width and height (so it applies to the
    same image at any resolution), clipped to the image; the full frame for an empty mask."""
    m = np.asarray(mask, bool)
    if not m.any():
        return FULL_BOX
    h, w = m.shape
    ys, xs = np.nonzero(m)
    x0, x1, y0, y1 = xs.min(), xs.max() + 1, ys.min(), ys.max() + 1
    dx, dy = margin * (x1 - x0), margin * (y1 - y0)
    return (max(0.0, (x0 - dx) / w), max(0.0, (y0 - dy) / h),
            min(1.0, (x1 + dx) / w), min(1.0, (y1 + dy) / h))


def fill_background(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """``image`` (S, S, 3) uint8 with every pixel outside ``mask`` set to the image's mean
    colour (see the module docstring for why not zeros)."""
    out = np.array(image[..., :3], dtype=np.uint8, copy=True)
    m = np.asarray(mask, bool)
    fill = np.round(out.reshape(-1, 3).mean(axis=0)).astype(np.uint8)
    out[~m] = fill
    return out


def with_mask_channel(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """``(S, S, 4)`` uint8: the RGB image and the mask as 0/255."""
    m = np.asarray(mask, bool).astype(np.uint8) * 255
    return np.concatenate([np.asarray(image[..., :3], np.uint8), m[..., None]], axis=2)


def apply_input(image: np.ndarray, mask: np.ndarray | None, mode: str) -> np.ndarray:
    """The classifier's input for ``mode`` from an image already resized (and, for ``crop``,
    already cropped) and its mask at the same size (``None``: no mask, see above)."""
    if mode == "masked":
        return fill_background(image, mask) if mask is not None else np.asarray(image)
    if mode == "mask_channel":
        return with_mask_channel(image, mask if mask is not None
                                 else np.ones(image.shape[:2], bool))
    return np.asarray(image)


@dataclass
class LesionMasks:
    """Masks of a dataset's samples at the model's input size (bit-packed: 10,015 masks at
    128 px take 20 MB) and each one's lesion box at full resolution."""

    size: int
    packed: dict[str, np.ndarray] = field(default_factory=dict)
    boxes: dict[str, Box] = field(default_factory=dict)
    without: list[str] = field(default_factory=list)

    def add(self, sample_id: str, mask: np.ndarray, box: Box) -> None:
        """Store one sample's resized mask and its box."""
        self.packed[sample_id] = np.packbits(np.asarray(mask, bool))
        self.boxes[sample_id] = box

    def get(self, sample_id: str) -> np.ndarray | None:
        """The ``(size, size)`` bool mask, or None when the sample has none."""
        p = self.packed.get(sample_id)
        if p is None:
            return None
        return np.unpackbits(p, count=self.size * self.size).reshape(self.size,
                                                                     self.size).astype(bool)


class LesionImages:
    """An image store whose images are the lesion-aware input ``mode`` (``masked`` or
    ``mask_channel``) of another store's images: what training, validation, the test metrics,
    the serving thresholds and the galleries all read, so they see what the model sees."""

    def __init__(self, base: ImageStore, masks: LesionMasks, mode: str) -> None:
        self.base, self.masks, self.mode = base, masks, mode
        self.size = base.size

    def get(self, sample_id: str) -> np.ndarray:
        """The sample's input image (``(S, S, 3)``, or ``(S, S, 4)`` for ``mask_channel``)."""
        return apply_input(self.base.get(sample_id), self.masks.get(sample_id), self.mode)


def image_size_of(sample: Sample, source: SourceData) -> tuple[int, int]:
    """``(width, height)`` of the sample's image as decoded (EXIF orientation applied)."""
    if sample.path is None:
        assert source.arrays is not None and sample.index is not None
        arr = source.arrays[sample.index]
        return int(arr.shape[1]), int(arr.shape[0])
    with Image.open(sample.path) as img:
        w, h = img.size
        rotated = img.getexif().get(274) in EXIF_ROTATED
    return (h, w) if rotated else (w, h)


def read_masks(source: SourceData, cfg: DataConfig, size: int) -> LesionMasks:
    """Every sample's mask (``data.masks``), checked against its image, resized to ``size``
    exactly as the image is, with its lesion box (``data.crop_margin``) at full resolution.

    Raises:
        DataError: no ``data.masks`` configured, or no sample has a mask.
        MaskError: an unusable mask (unless ``data.skip_bad``, which leaves it out: the image
            is then used whole, as one without a mask).
    """
    if not cfg.masks:
        raise DataError("lesion masks are needed (segmentation, or data.input other than raw): "
                        "set data.masks to a folder of masks or to 'labelme'")
    out = LesionMasks(size)
    for s in source.samples:
        try:
            m = load_mask(s, cfg, image_size_of(s, source))
        except DataError:
            if not cfg.skip_bad:
                raise
            m = None
        if m is None:
            out.without.append(s.sample_id)
        else:
            out.add(s.sample_id, resize_mask(m, size, cfg.resize_mode),
                    lesion_box(m, cfg.crop_margin))
    if not out.packed:
        raise DataError(f"no image of {source.location} has a mask in {cfg.masks}")
    return out
