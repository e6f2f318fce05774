"""Lesion-aware input (data.input): the lesion box, background fill, crop, the mask channel
through augmentation and normalisation, and the zero-initialised 4-channel stem."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from PIL import Image

from dermalab.core.config import AugmentConfig
from dermalab.core.models import expand_stem
from dermalab.data.dataset import ImageDataset
from dermalab.data.images import crop_fraction, normalize_batch
from dermalab.data.lesion import (
    FULL_BOX,
    LesionImages,
    LesionMasks,
    apply_input,
    fill_background,
    lesion_box,
    with_mask_channel,
)
from dermalab.data.transforms import eval_transform, train_transform


def _rect_mask(h: int = 100, w: int = 200) -> np.ndarray:
    m = np.zeros((h, w), bool)
    m[20:60, 50:100] = True  # x 50..99, y 20..59
    return m


def test_lesion_box_with_margin_as_fractions() -> None:
    assert lesion_box(_rect_mask(), 0.0) == pytest.approx((50 / 200, 20 / 100, 100 / 200,
                                                           60 / 100))
    # 10% of the 50x40 box on each side: 5 px and 4 px
    assert lesion_box(_rect_mask(), 0.1) == pytest.approx((45 / 200, 16 / 100, 105 / 200,
                                                           64 / 100))
    assert lesion_box(np.zeros((10, 10), bool)) == FULL_BOX  # no lesion: the whole photo
    edge = np.zeros((10, 10), bool)
    edge[0:5, 0:5] = True
    assert lesion_box(edge, 0.5) == pytest.approx((0.0, 0.0, 0.75, 0.75))  # clipped


def test_the_box_applies_at_any_resolution() -> None:
    big = Image.new("RGB", (400, 200))
    crop = crop_fraction(big, lesion_box(_rect_mask(), 0.0))  # box from a 200x100 mask
    assert crop.size == (100, 80)
    assert crop_fraction(big, (0.1, 0.1, 0.1, 0.1)).size == (1, 1)  # never empty


def test_masked_fills_the_background_with_the_image_mean_colour() -> None:
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (100, 200, 3), dtype=np.uint8)
    m = _rect_mask()
    out = fill_background(img, m)
    mean = np.round(img.reshape(-1, 3).mean(0)).astype(np.uint8)
    assert (out[~m] == mean).all()
    assert (out[m] == img[m]).all()
    assert (apply_input(img, None, "masked") == img).all()  # no mask: used whole


def test_mask_channel_and_its_normalisation() -> None:
    img = np.full((8, 8, 3), 128, np.uint8)
    m = np.zeros((8, 8), bool)
    m[2:5, 2:5] = True
    four = with_mask_channel(img, m)
    assert four.shape == (8, 8, 4) and set(np.unique(four[..., 3])) == {0, 255}
    x = normalize_batch(four[None], [0.5] * 3, [0.5] * 3)
    assert x.shape == (1, 4, 8, 8)
    assert (x[0, 3] == m.astype(np.float32)).all()  # 0/1, not normalised
    assert np.allclose(x[0, :3], (128 / 255 - 0.5) / 0.5, atol=1e-6)
    assert (apply_input(img, None, "mask_channel")[..., 3] == 255).all()


class _Store:
    def __init__(self, images: dict[str, np.ndarray]) -> None:
        self.images, self.size = images, next(iter(images.values())).shape[0]

    def get(self, sid: str) -> np.ndarray:
        return self.images[sid].copy()


def test_the_mask_channel_moves_with_the_image_through_augmentation() -> None:
    """The red channel is the mask painted into the photo: after flips and rotations (exact)
    it still coincides with the mask channel pixel for pixel; with random resized crops
    (bilinear image, nearest mask) everywhere but along the outline."""
    size = 64
    yy, xx = np.mgrid[:size, :size]
    mask = (xx - 20) ** 2 / 14 ** 2 + (yy - 34) ** 2 / 9 ** 2 <= 1  # an off-centre ellipse
    img = np.zeros((size, size, 3), np.uint8)
    img[..., 0] = mask * 255
    masks = LesionMasks(size)
    masks.add("a", mask, lesion_box(mask))
    store = LesionImages(_Store({"a": img}), masks, "mask_channel")
    mean, std = [0.0] * 3, [1.0] * 3
    exact = AugmentConfig(scale_min=1.0, hflip=True, vflip=True, rotation=90.0,
                          color_jitter=0.0, hue=0.0)
    cropping = AugmentConfig(scale_min=0.5, hflip=True, vflip=True, rotation=0.0,
                             color_jitter=0.3, hue=0.0)
    torch.manual_seed(0)
    for aug, min_agree in ((exact, 1.0), (cropping, 0.97)):
        ds = ImageDataset(store, ["a"], [0], train_transform(size, mean, std, aug))
        for _ in range(10):
            x, _ = ds[0]
            assert x.shape == (4, size, size)
            assert set(torch.unique(x[3]).tolist()) <= {0.0, 1.0}
            agree = ((x[0] > 0.5) == (x[3] > 0.5)).float().mean().item()
            assert agree >= min_agree, agree
    x, _ = ImageDataset(store, ["a"], [0], eval_transform(mean, std))[0]
    assert torch.equal(x[3].bool(), torch.from_numpy(mask))


@pytest.mark.parametrize("backbone", ["tf_efficientnet_lite0", "resnet18"])
def test_the_fourth_channel_starts_with_zero_weights(backbone: str) -> None:
    import timm

    model = timm.create_model(backbone, pretrained=False, num_classes=3).eval()
    four = expand_stem(copy.deepcopy(model), 4).eval()
    x = torch.randn(2, 3, 64, 64)
    extra = torch.randint(0, 2, (2, 1, 64, 64)).float()
    with torch.no_grad():
        assert torch.allclose(model(x), four(torch.cat([x, extra], 1)), atol=1e-6)
    first = four.get_submodule(str(four.pretrained_cfg["first_conv"]))
    assert first.in_channels == 4 and first.weight[:, 3].abs().sum() == 0
