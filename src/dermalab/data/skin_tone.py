"""Skin tone estimated from a photo's healthy skin: the Individual Typology Angle (ITA).

Most skin datasets carry no skin type (HAM10000, DermNet NZ). The ITA of the skin around the
lesion (Chardon, Cretois & Hourseau, Int J Cosmet Sci 1991) is

    ITA = arctan((L* - 50) / b*) · 180 / pi      (CIE L*a*b*, D65)

and its classic bands map onto the Fitzpatrick types as in Kinyanjui et al. (MICCAI 2020),
who audited ISIC this way: > 55° very light (I), 41-55° light (II), 28-41° intermediate (III),
10-28° tan (IV), -30-10° brown (V), < -30° dark (VI).

Healthy-skin pixels: inside a YCbCr skin-colour box (Cb 77-127, Cr 133-173: Chai & Ngan,
IEEE TCSVT 1999), with reasonable lightness (not the dermatoscope's black vignette, not
glare), outside the lesion (its mask when there is one, else the central third of the photo,
where the lesion usually is). The ITA is the median over those pixels. An estimate from
lighting-dependent colour is rough: ``bench/skin_tone.py`` measures its agreement with the
Fitzpatrick labels of Fitzpatrick17k, and reports say "estimated".
"""

from __future__ import annotations

import numpy as np

#: ITA band lower edges (degrees) for Fitzpatrick types I..V; below the last is VI.
ITA_BANDS = ((55.0, 1), (41.0, 2), (28.0, 3), (10.0, 4), (-30.0, 5))
MIN_SKIN_PIXELS = 50


def rgb_to_lab(rgb: np.ndarray) -> np.ndarray:
    """sRGB uint8 ``(..., 3)`` to CIE L*a*b* (D65), float64."""
    from skimage.color import rgb2lab

    return np.asarray(rgb2lab(np.asarray(rgb, np.uint8)), np.float64)


def skin_pixels(image: np.ndarray, lesion: np.ndarray | None = None) -> np.ndarray:
    """Boolean mask of the likely healthy-skin pixels of an ``(H, W, 3)`` uint8 image."""
    x = np.asarray(image[..., :3], np.float64)
    r, g, b = x[..., 0], x[..., 1], x[..., 2]
    cb = 128 - 0.168736 * r - 0.331264 * g + 0.5 * b
    cr = 128 + 0.5 * r - 0.418688 * g - 0.081312 * b
    y = 0.299 * r + 0.587 * g + 0.114 * b
    skin = (cb >= 77) & (cb <= 127) & (cr >= 133) & (cr <= 173) & (y > 30) & (y < 245)
    if lesion is not None:
        skin &= ~np.asarray(lesion, bool)
    else:
        h, w = skin.shape
        skin[h // 3: 2 * h // 3, w // 3: 2 * w // 3] = False
    return np.asarray(skin)


def ita(image: np.ndarray, lesion: np.ndarray | None = None) -> float | None:
    """The median ITA (degrees) of the healthy skin of an image; None with too few skin
    pixels to say."""
    mask = skin_pixels(image, lesion)
    if int(mask.sum()) < MIN_SKIN_PIXELS:
        return None
    lab = rgb_to_lab(np.asarray(image[..., :3], np.uint8)[mask])
    angles = np.degrees(np.arctan2(lab[:, 0] - 50.0, lab[:, 2]))
    return float(np.median(angles))


def fitzpatrick_from_ita(angle: float | None) -> int | None:
    """The Fitzpatrick type (1-6) of an ITA band (Kinyanjui et al. 2020); None for None."""
    if angle is None:
        return None
    for edge, skin_type in ITA_BANDS:
        if angle > edge:
            return skin_type
    return 6
