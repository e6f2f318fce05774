"""The photo checks: blur, exposure and glare on real photos, and thresholds that are the
benchmark's, not guesses."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageEnhance, ImageFilter

from dermalab.data import photo_quality as pq
from tests.conftest import REPO, SHARED_DATA

DERMNET = SHARED_DATA / "dermnetnz_subset"


def _photos(n: int = 6) -> list[Image.Image]:
    files = sorted(DERMNET.rglob("*.jpg"))[::97][:n]
    if not files:
        pytest.skip(f"DermNet NZ photos not found at {DERMNET}")
    return [Image.open(f).convert("RGB") for f in files]


def test_good_photos_pass_and_each_fault_is_named() -> None:
    """DermNet photos as taken pass (the benchmark's false-alarm rate is a few percent, so
    one of six may not), and the degradations of the passing ones are named: blur and
    darkness every time; washing-out nearly always (a photo that is mostly dark background
    keeps a moderate mean luminance however bright its skin: the benchmark catches 85%)."""
    false_alarms, passing, bright_caught = 0, 0, 0
    for img in _photos():
        if pq.assess(img).issues:
            false_alarms += 1
            continue
        passing += 1
        blurred = img.filter(ImageFilter.GaussianBlur(4 * max(img.size) / pq.SIDE))
        assert pq.assess(blurred).issues == ["blurred"]
        assert pq.assess(ImageEnhance.Brightness(img).enhance(0.2)).issues == ["dark"]
        bright_caught += "bright" in pq.assess(ImageEnhance.Brightness(img).enhance(3)).issues
        glare = img.copy()
        w, h = img.size
        ImageDraw.Draw(glare).ellipse([w * 0.3, h * 0.3, w * 0.62, h * 0.62], fill=(255,) * 3)
        # the benchmark found no glare line within its false-alarm bound: not checked
        assert ("glare" in pq.assess(glare).issues) == (pq.GLARE_ABOVE is not None)
    assert false_alarms <= 1 and bright_caught >= passing - 1


def test_the_laplacian_variance_is_scipys() -> None:
    from scipy import ndimage

    img = _photos(1)[0]
    small = img.resize((pq.SIDE, round(img.height * pq.SIDE / img.width)), Image.Resampling.BOX)
    luma = np.asarray(small, dtype=np.float32) / 255 @ np.array([0.299, 0.587, 0.114],
                                                                 dtype=np.float32)
    lap, bright, _, _ = pq.measure(img)
    assert lap == pytest.approx(float(ndimage.laplace(luma * 255).var()), rel=1e-4)
    assert bright == pytest.approx(float(luma.mean()), rel=1e-5)


def test_the_thresholds_are_the_benchmarks() -> None:
    """The module's constants are the ones bench/photo_quality.py chose on its validation
    half (a change to either without the other fails here)."""
    result = json.loads((REPO / "bench" / "results" / "photo_quality.json").read_text())
    assert result["thresholds"]  # the benchmark chose them
    for name, value in result["thresholds"].items():
        assert getattr(pq, name) == value, name
