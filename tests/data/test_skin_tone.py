"""The Individual Typology Angle from healthy skin (data.skin_tone), on colours of known
L*a*b* and on the bands of Chardon et al. / Kinyanjui et al."""

from __future__ import annotations

import numpy as np
import pytest
from skimage.color import lab2rgb

from dermalab.data.skin_tone import fitzpatrick_from_ita, ita, skin_pixels


def _skin(lab: tuple[float, float, float], size: int = 64) -> np.ndarray:
    rgb = lab2rgb(np.array([[lab]], np.float64))[0, 0]
    return np.tile((rgb * 255).round().astype(np.uint8), (size, size, 1))


@pytest.mark.parametrize(("lab", "skin_type"), [
    ((80.0, 8.0, 14.0), 1),   # ITA = atan(30 / 14) = 65 deg: very light
    ((64.0, 12.0, 17.0), 3),  # atan(14 / 17) = 39.5 deg: intermediate
    ((55.0, 14.0, 20.0), 4),  # atan(5 / 20) = 14 deg: tan
    ((45.0, 14.0, 20.0), 5),  # atan(-5 / 20) = -14 deg: brown
    ((30.0, 12.0, 14.0), 6),  # atan(-20 / 14) = -55 deg: dark
])
def test_ita_of_a_uniform_skin_colour(lab: tuple[float, float, float], skin_type: int) -> None:
    img = _skin(lab)
    angle = ita(img)
    assert angle == pytest.approx(np.degrees(np.arctan((lab[0] - 50) / lab[2])), abs=1.0)
    assert fitzpatrick_from_ita(angle) == skin_type


def test_the_lesion_and_the_vignette_are_left_out() -> None:
    img = _skin((75.0, 10.0, 15.0))
    img[16:48, 16:48] = (60, 30, 20)  # a dark lesion in the middle
    img[:6] = 0  # the dermatoscope's black rim
    mask = skin_pixels(img)
    assert not mask[:6].any() and not mask[30, 30]
    assert fitzpatrick_from_ita(ita(img)) == 1  # the skin around it, not the lesion
    lesion = np.zeros(img.shape[:2], bool)
    lesion[16:48, 16:48] = True
    assert ita(img, lesion) == pytest.approx(ita(img), abs=0.5)


def test_no_skin_no_estimate() -> None:
    assert ita(np.zeros((64, 64, 3), np.uint8)) is None
    assert fitzpatrick_from_ita(None) is None
