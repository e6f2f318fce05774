"""Descriptive lesion measurements from a binary mask (and the photo, for colour).

They follow the ABCD rule of dermoscopy (Stolz W. et al., "ABCD rule of dermatoscopy: a new
practical method for early recognition of malignant melanoma", Eur J Dermatol 4:521-527, 1994;
Nachbar F. et al., J Am Acad Dermatol 30:551-559, 1994): **A**symmetry, **B**order, **C**olour,
**D**iameter, computed on the largest connected region of the mask with scikit-image's
``regionprops``. They describe the outline; they do not diagnose, and are shown as such.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from PIL import Image
from skimage import color, measure

#: The six dermoscopic colours of the ABCD rule as sRGB prototypes (0-255); a lesion pixel
#: takes the colour whose prototype is nearest in CIELAB (perceptual distance).
DERMOSCOPIC_COLOURS: dict[str, tuple[int, int, int]] = {
    "white": (235, 230, 225),
    "red": (190, 40, 45),
    "light_brown": (185, 125, 80),
    "dark_brown": (95, 55, 35),
    "blue_grey": (95, 115, 140),
    "black": (25, 20, 20),
}
#: Photos are measured on a copy no larger than this (a phone photo is 12 MP; the shape and
#: colour measurements do not need more, and the diameter is scaled back).
MEASURE_SIDE = 512
#: A colour counts when it covers at least this share of the lesion (Stolz counts colours that
#: are clearly present, not single pixels).
MIN_COLOUR_SHARE = 0.05


@dataclass(frozen=True)
class LesionMeasurements:
    """What :func:`measure_lesion` returns (all plain numbers)."""

    area_share: float  # lesion pixels / image pixels
    asymmetry_major: float  # 0 = mirror-symmetric about the major axis
    asymmetry_minor: float  # 0 = mirror-symmetric about the minor axis
    compactness: float  # 1 = a disc; lower = more irregular border
    colours: list[str]  # dermoscopic colours covering >= 5% of the lesion
    diameter_px: float  # largest distance between two border points

    def to_json(self) -> dict[str, Any]:
        """Plain dict (for ``predict --json``, the API and the report)."""
        return asdict(self)


def largest_region(mask: np.ndarray) -> np.ndarray:
    """The largest 8-connected region of a binary mask (empty stays empty)."""
    labels = measure.label(np.asarray(mask, bool), connectivity=2)
    if labels.max() == 0:
        return np.zeros(mask.shape, bool)
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    out: np.ndarray = labels == int(sizes.argmax())
    return out


def mirror_asymmetry(mask: np.ndarray) -> tuple[float, float]:
    """Asymmetry about the region's two principal axes through its centroid.

    For each axis the region is reflected across it; asymmetry is the share of the region not
    covered by its reflection, ``1 - |M ∩ R(M)| / |M|`` (0 for a shape symmetric about that
    axis, up to pixel rounding). The axes are the eigenvectors of the pixel coordinates'
    covariance (``regionprops`` orientation).
    """
    ys, xs = np.nonzero(mask)
    if len(ys) < 3:
        return 0.0, 0.0
    pts = np.stack([ys, xs], 1).astype(np.float64)
    centre = pts.mean(0)
    cov = np.cov((pts - centre).T)
    _, vecs = np.linalg.eigh(cov)
    major, minor = vecs[:, 1], vecs[:, 0]
    shape = np.array(mask.shape)
    occupied = np.asarray(mask, bool)
    out = []
    for axis in (major, minor):
        d = pts - centre
        # Reflect across the line through the centre along ``axis``: d' = 2 (d.a) a - d.
        refl = 2 * (d @ axis)[:, None] * axis[None, :] - d + centre
        r = np.rint(refl).astype(int)
        inside = np.all((r >= 0) & (r < shape), axis=1)
        hit = np.zeros(len(pts), bool)
        hit[inside] = occupied[r[inside, 0], r[inside, 1]]
        out.append(float(1.0 - hit.mean()))
    return out[0], out[1]


def dermoscopic_colours(image: np.ndarray, mask: np.ndarray,
                        min_share: float = MIN_COLOUR_SHARE) -> list[str]:
    """The dermoscopic colours covering at least ``min_share`` of the lesion's pixels."""
    pixels = np.asarray(image)[np.asarray(mask, bool)]
    if len(pixels) == 0:
        return []
    names = list(DERMOSCOPIC_COLOURS)
    protos = np.array([DERMOSCOPIC_COLOURS[n] for n in names], np.float64)[None] / 255.0
    lab_protos = color.rgb2lab(protos)[0]
    lab = color.rgb2lab(pixels[None].astype(np.float64) / 255.0)[0]
    nearest = ((lab[:, None, :] - lab_protos[None]) ** 2).sum(-1).argmin(1)
    share = np.bincount(nearest, minlength=len(names)) / len(pixels)
    return [n for n, s in zip(names, share, strict=True) if s >= min_share]


def measure_lesion(mask: np.ndarray, image: np.ndarray | None = None) -> LesionMeasurements:
    """ABCD-style measurements of the largest region of ``mask`` (``(H, W)``, nonzero =
    lesion), with colours from ``image`` (``(H, W, 3)`` uint8) when given.

    - ``compactness`` = 4π·area / perimeter² (the isoperimetric quotient; 1 for a disc, lower
      for an irregular, notched border), with the Crofton perimeter, which is nearly unbiased
      for digitised round shapes.
    - ``diameter_px`` = the maximum Feret diameter.

    Raises:
        ValueError: ``image`` and ``mask`` differ in size.
    """
    m = np.asarray(mask) > 0
    if image is not None and np.asarray(image).shape[:2] != m.shape:
        raise ValueError(f"image {np.asarray(image).shape[:2]} and mask {m.shape} differ in size")
    region = largest_region(m)
    area = int(region.sum())
    if area == 0:
        return LesionMeasurements(0.0, 0.0, 0.0, 0.0, [], 0.0)
    props = measure.regionprops(region.astype(np.uint8))[0]
    perimeter = float(props.perimeter_crofton) or 1.0
    a_major, a_minor = mirror_asymmetry(region)
    return LesionMeasurements(
        area_share=area / region.size,
        asymmetry_major=round(a_major, 4),
        asymmetry_minor=round(a_minor, 4),
        compactness=round(min(1.0, 4 * np.pi * area / perimeter**2), 4),
        colours=dermoscopic_colours(image, region) if image is not None else [],
        diameter_px=round(float(props.feret_diameter_max), 2),
    )


def measure_photo(img: Image.Image, mask: np.ndarray, max_side: int = MEASURE_SIDE
                  ) -> LesionMeasurements:
    """:func:`measure_lesion` of a photo and its mask (``(H, W)`` bool at the photo's own
    size), on a copy whose longer side is at most ``max_side`` (bilinear photo, nearest
    mask), with ``diameter_px`` given back in the photo's own pixels. The photo keeps its
    aspect ratio, so asymmetry and compactness describe the lesion as photographed, not as
    squashed to a model's square input.

    Raises:
        ValueError: the mask's size differs from the photo's.
    """
    m = np.asarray(mask, bool)
    if m.shape != (img.height, img.width):
        raise ValueError(f"photo {img.width}x{img.height} and mask {m.shape[1]}x{m.shape[0]} "
                         "differ in size")
    scale = min(1.0, max_side / max(img.size))
    size = (max(1, round(img.width * scale)), max(1, round(img.height * scale)))
    small = np.asarray(img.convert("RGB").resize(size, Image.Resampling.BILINEAR), np.uint8)
    ms = np.asarray(Image.fromarray(m.astype(np.uint8) * 255).resize(
        size, Image.Resampling.NEAREST)) >= 128
    out = measure_lesion(ms, small)
    return LesionMeasurements(**{**asdict(out),
                                 "diameter_px": round(out.diameter_px / scale, 1)})
