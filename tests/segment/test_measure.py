"""Lesion measurements on synthetic shapes with known answers."""

from __future__ import annotations

import numpy as np
import pytest
from skimage.draw import disk, ellipse, polygon

from dermalab.segment.measure import DERMOSCOPIC_COLOURS, largest_region, measure_lesion

H = W = 201


def _disc(r: int = 60, centre: tuple[int, int] = (100, 100)) -> np.ndarray:
    m = np.zeros((H, W), bool)
    m[disk(centre, r, shape=m.shape)] = True
    return m


def test_a_disc_is_symmetric_compact_and_as_wide_as_its_diameter() -> None:
    m = measure_lesion(_disc(60))
    assert m.asymmetry_major < 0.02 and m.asymmetry_minor < 0.02
    assert m.compactness == pytest.approx(1.0, abs=0.03)
    assert m.diameter_px == pytest.approx(120, abs=2)
    assert m.area_share == pytest.approx(np.pi * 60**2 / (H * W), rel=0.02)
    assert m.colours == []  # no photo given


def test_an_ellipse_is_symmetric_but_less_compact() -> None:
    e = np.zeros((H, W), bool)
    e[ellipse(100, 100, 30, 90, shape=e.shape, rotation=np.deg2rad(30))] = True
    m = measure_lesion(e)
    assert m.asymmetry_major < 0.03 and m.asymmetry_minor < 0.03  # mirror-symmetric
    # Isoperimetric quotient of a 3:1 ellipse: 4*pi*A / P^2 with Ramanujan's perimeter.
    a, b = 90, 30
    perim = np.pi * (3 * (a + b) - np.sqrt((3 * a + b) * (a + 3 * b)))
    assert m.compactness == pytest.approx(4 * np.pi * np.pi * a * b / perim**2, abs=0.03)
    assert m.diameter_px == pytest.approx(180, abs=3)


def test_a_lopsided_shape_is_asymmetric() -> None:
    m = _disc(50)
    m[polygon([100, 60, 140], [100, 190, 190], shape=m.shape)] = True  # a wedge on one side
    got = measure_lesion(m)
    assert max(got.asymmetry_major, got.asymmetry_minor) > 0.1


def test_a_notched_border_is_less_compact() -> None:
    angles = np.linspace(0, 2 * np.pi, 16, endpoint=False)
    radii = np.where(np.arange(16) % 2 == 0, 80, 35)  # an 8-pointed star
    star = np.zeros((H, W), bool)
    star[polygon(100 + radii * np.sin(angles), 100 + radii * np.cos(angles),
                 shape=star.shape)] = True
    assert measure_lesion(star).compactness < 0.5


def test_only_the_largest_region_is_measured() -> None:
    m = _disc(40) | _disc(5, centre=(10, 10))
    assert largest_region(m).sum() == _disc(40).sum()
    assert measure_lesion(m).diameter_px == pytest.approx(80, abs=2)


@pytest.mark.parametrize(("paint", "want"), [
    ({"light_brown": 1.0}, ["light_brown"]),
    ({"dark_brown": 0.5, "blue_grey": 0.5}, ["dark_brown", "blue_grey"]),
    ({"black": 0.6, "red": 0.38, "white": 0.02}, ["red", "black"]),  # 2% white is too little
])
def test_dermoscopic_colours(paint: dict[str, float], want: list[str]) -> None:
    mask = _disc(60)
    image = np.full((H, W, 3), 210, np.uint8)  # the skin around is not counted
    ys, xs = np.nonzero(mask)
    start = 0
    for name, share in paint.items():
        n = round(share * len(ys))
        rgb = np.array(DERMOSCOPIC_COLOURS[name]) + np.random.default_rng(0).integers(
            -8, 9, (n, 3))
        image[ys[start:start + n], xs[start:start + n]] = np.clip(rgb, 0, 255)
        start += n
    assert sorted(measure_lesion(mask, image).colours) == sorted(want)


def test_empty_mask_and_size_mismatch() -> None:
    empty = measure_lesion(np.zeros((10, 10), bool))
    assert empty.area_share == 0 and empty.diameter_px == 0 and empty.colours == []
    with pytest.raises(ValueError, match="differ in size"):
        measure_lesion(_disc(), np.zeros((10, 10, 3), np.uint8))


def test_a_large_photo_is_measured_on_a_copy_with_its_diameter_in_photo_pixels() -> None:
    from PIL import Image

    from dermalab.segment.measure import measure_photo

    h, w = 1500, 2000  # 3 MP: measured at 512 x 384
    mask = np.zeros((h, w), bool)
    mask[disk((700, 900), 400)] = True
    photo = np.full((h, w, 3), 200, np.uint8)
    photo[mask] = DERMOSCOPIC_COLOURS["dark_brown"]
    m = measure_photo(Image.fromarray(photo), mask)
    assert m.diameter_px == pytest.approx(800, rel=0.02)
    assert m.area_share == pytest.approx(mask.mean(), rel=0.02)
    assert m.compactness > 0.95 and m.asymmetry_major < 0.05
    assert m.colours == ["dark_brown"]
    with pytest.raises(ValueError, match="differ in size"):
        measure_photo(Image.fromarray(photo), mask[:, :-1])
