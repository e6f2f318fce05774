"""Is this photo good enough to analyse? Blur, exposure and glare, with a plain instruction.

The measures, on the photo scaled to :data:`SIDE` pixels on its long side (so a 12 MP phone
photo and a 600 px dermoscopy image are judged alike):

- **Sharpness**: the variance of the Laplacian of the grey image (Pech-Pacheco et al., "Diatom
  autofocusing in brightfield microscopy: a comparative study", ICPR 2000): focus spreads
  the second derivative, blur flattens it. ``laplacian_variance`` below
  :data:`BLUR_BELOW_CLINICAL` reads as blurred (:data:`BLUR_BELOW_DERMOSCOPIC` for dermoscopy).
- **Exposure**: the mean luminance (Rec. 601 luma, 0-1) below :data:`DARK_BELOW` reads as too
  dark, above :data:`BRIGHT_ABOVE` as washed out; so does a share of clipped pixels (a channel
  at its top) above :data:`CLIPPED_ABOVE`, which catches washed-out skin in front of a dark
  background that keeps the mean moderate.
- **Glare**: the share of near-white, unsaturated pixels (specular reflections of a flash on
  moist or oily skin) above :data:`GLARE_ABOVE`, when that is set (the benchmark found no line
  that catches flash highlights without flagging white backgrounds; it is None).

The thresholds are not guesses: ``bench/photo_quality.py`` chooses them on one half of real
photos (HAM10000 and DermNet NZ, sharp as taken, and the same photos blurred, darkened,
over-exposed and given a flash highlight) and reports how often each problem is caught and
how often a good photo is wrongly flagged on the other half
(``bench/results/photo_quality.md``). The checks advise; they never stop an analysis.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from PIL import Image
from scipy import ndimage

SIDE = 512
#: Chosen on the validation half of ``bench/photo_quality.py`` (see its result file), each
#: flagging at most 3% of the good photos of any Fitzpatrick skin-type group. Dermoscopy is
#: smooth magnified skin, so it has its own sharpness line. The glare check is measured but
#: not used (None): within that bound it caught too few flash highlights.
DARK_BELOW = 0.241
BRIGHT_ABOVE = 0.739
BLUR_BELOW_CLINICAL = 36.8
BLUR_BELOW_DERMOSCOPIC = 12.5
CLIPPED_ABOVE = 0.199
GLARE_ABOVE: float | None = None

@dataclass(frozen=True)
class PhotoQuality:
    """The measures of one photo and the problems they show (``blurred``, ``dark``,
    ``bright``, ``glare``), worst first."""

    laplacian_variance: float
    brightness: float
    glare_share: float
    clipped_share: float
    issues: list[str] = field(default_factory=list)


def measure(img: Image.Image) -> tuple[float, float, float, float]:
    """``(laplacian_variance, brightness, glare_share, clipped_share)`` of an RGB photo (see
    the module)."""
    rgb = img.convert("RGB")
    scale = SIDE / max(rgb.size)
    if scale < 1:
        rgb = rgb.resize((max(1, round(rgb.width * scale)), max(1, round(rgb.height * scale))),
                         Image.Resampling.BOX)
    arr = np.asarray(rgb, dtype=np.float32) / 255.0
    luma = arr @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    lap = ndimage.laplace(luma * 255.0, mode="reflect")
    hi, lo = arr.max(axis=2), arr.min(axis=2)
    saturation = np.where(hi > 0, (hi - lo) / np.maximum(hi, 1e-6), 0.0)
    glare = (hi > 0.95) & (saturation < 0.12)
    clipped = hi >= 0.99
    return float(lap.var()), float(luma.mean()), float(glare.mean()), float(clipped.mean())


def assess(img: Image.Image, image_type: str = "clinical") -> PhotoQuality:
    """The photo's measures and the problems found (empty: good enough); ``image_type``
    (clinical | dermoscopic) chooses the sharpness line."""
    lap, bright, glare, clipped = measure(img)
    blur_below = BLUR_BELOW_DERMOSCOPIC if image_type == "dermoscopic" else BLUR_BELOW_CLINICAL
    issues = []
    if bright < DARK_BELOW:
        issues.append("dark")
    elif bright > BRIGHT_ABOVE or clipped > CLIPPED_ABOVE:
        issues.append("bright")
    elif lap < blur_below:  # sharpness is judged on a usable exposure only: darkness and
        issues.append("blurred")  # washing-out flatten the Laplacian too
    if GLARE_ABOVE is not None and glare > GLARE_ABOVE:
        issues.append("glare")
    return PhotoQuality(lap, bright, glare, clipped, issues)
