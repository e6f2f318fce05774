"""The non-skin images: offline, deterministic, and the measurement set disjoint from fitting."""

from __future__ import annotations

import numpy as np
import pytest

from dermalab.data.negatives import PHOTOS, RENDERERS, SEEDS, negative_images


def test_fit_and_test_sets_share_no_source_and_no_image() -> None:
    fit, test = negative_images("fit", rendered_per_kind=3), negative_images(
        "test", rendered_per_kind=3)
    assert not {n for _, n in PHOTOS["fit"]} & {n for _, n in PHOTOS["test"]}
    # no bundled photo (nor a crop of one) and no rendered seed on both sides
    photo_names = {k: {n.name.split("#")[0] for n in s if n.kind == "photo"}
                   for k, s in (("fit", fit), ("test", test))}
    assert photo_names["fit"] and photo_names["test"]
    assert not photo_names["fit"] & photo_names["test"]
    rendered = {k: {n.name for n in s if n.kind != "photo"} for k, s in (("fit", fit),
                                                                         ("test", test))}
    assert not rendered["fit"] & rendered["test"]
    fit_bytes = {n.image.tobytes() for n in fit}
    assert not any(n.image.tobytes() in fit_bytes for n in test)
    assert abs(SEEDS["fit"] - SEEDS["test"]) > 100 * len(RENDERERS) + 100


def test_every_kind_is_there_as_rgb_and_the_sets_are_deterministic() -> None:
    a = negative_images("test", crops_per_photo=2, rendered_per_kind=2)
    b = negative_images("test", crops_per_photo=2, rendered_per_kind=2)
    assert [n.name for n in a] == [n.name for n in b]
    assert all(np.array_equal(x.image, y.image) for x, y in zip(a, b, strict=True))
    assert {n.kind for n in a} == {"photo", *RENDERERS}
    for n in a:
        assert n.image.dtype == np.uint8 and n.image.ndim == 3 and n.image.shape[2] == 3
        assert min(n.image.shape[:2]) >= 16
        assert n.image.std() > 1  # not a blank frame
    # portraits are left out: a face is what a photo of acne shows
    assert not {"astronaut", "grace_hopper.jpg"} & {n for _, n in PHOTOS["fit"] + PHOTOS["test"]}
    with pytest.raises(ValueError, match="fit"):
        negative_images("val")
