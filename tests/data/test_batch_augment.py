"""Batch augmentation (data.augment.batched): each factor against its exact definition or
torchvision's own operation, the parameter distributions, the mask channel, and a real run."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import pytest
import torch
from torchvision.transforms.v2 import functional as TF

from dermalab.core.config import AugmentConfig
from dermalab.data.batch_augment import (
    LUMA,
    BatchAugment,
    apply_params,
    colour_matrices,
    identity_params,
    sample_params,
)
from dermalab.data.transforms import eval_transform

MEAN, STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
NO_NORM = ([0.0] * 3, [1.0] * 3)


def _batch(n: int = 4, size: int = 16, channels: int = 3, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, channels, size, size), dtype=torch.uint8, generator=g)


def _with(n: int, **changes: torch.Tensor) -> object:
    return dataclasses.replace(identity_params(n), **changes)


def test_identity_parameters_equal_the_evaluation_transform() -> None:
    x = _batch()
    out = apply_params(x, identity_params(4), MEAN, STD)
    expected = torch.stack([eval_transform(MEAN, STD)(img) for img in x])
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=0)


def test_flips_and_quarter_turns_are_exact() -> None:
    x = _batch()
    as_float = x.float() / 255
    minus = -torch.ones(4)
    torch.testing.assert_close(apply_params(x, _with(4, flip_x=minus), *NO_NORM),
                               as_float.flip(-1), atol=1e-6, rtol=0)
    torch.testing.assert_close(apply_params(x, _with(4, flip_y=minus), *NO_NORM),
                               as_float.flip(-2), atol=1e-6, rtol=0)
    turned = apply_params(x, _with(4, angle=torch.full((4,), math.pi / 2)), *NO_NORM)
    torch.testing.assert_close(turned, torch.rot90(as_float, 1, (-2, -1)), atol=1e-5, rtol=0)


def test_a_crop_reads_only_its_window() -> None:
    """A half-size crop in the top-left corner, magnified 2x: every output pixel comes from
    that quarter of the image (pixels elsewhere changed leave the output unchanged)."""
    x = _batch(size=32)
    p = _with(4, crop_w=torch.full((4,), 0.5), crop_h=torch.full((4,), 0.5),
              centre=torch.full((4, 2), -0.5))
    out = apply_params(x, p, *NO_NORM)
    changed = x.clone()
    changed[..., 17:, :] = 0
    changed[..., :, 17:] = 0
    torch.testing.assert_close(apply_params(changed, p, *NO_NORM), out)
    # and the window's own pixels reappear at twice the size
    torch.testing.assert_close(out[..., 1::2, 1::2][..., :15, :15],
                               (x.float() / 255)[..., :16, :16][..., :15, :15],
                               atol=0.5, rtol=0)  # bilinear between neighbours


def test_brightness_contrast_and_saturation_match_torchvision() -> None:
    """One factor at a time, torchvision's own adjust_* on the same images (which clamps the
    same way at the end when a single factor is applied)."""
    x = _batch()
    as_float = x.float() / 255
    f = torch.tensor([0.8, 0.9, 1.1, 1.2])
    for name, fn in (("brightness", TF.adjust_brightness), ("contrast", TF.adjust_contrast),
                     ("saturation", TF.adjust_saturation)):
        out = apply_params(x, _with(4, **{name: f}), *NO_NORM)
        expected = torch.stack([fn(img, float(k)) for img, k in zip(as_float, f, strict=True)])
        torch.testing.assert_close(out, expected, atol=2e-3, rtol=0, msg=name)


def test_hue_turns_about_the_grey_axis() -> None:
    """The hue matrix keeps greys and luma, a full turn is the identity, and a third of a turn
    turns red to green, the way torchvision's HSV hue shift turns it."""
    p = _with(3, hue=torch.tensor([0.25, 0.5, 1.0]))
    m = colour_matrices(p)
    grey = torch.ones(3)
    torch.testing.assert_close(m @ grey, grey.expand(3, 3), atol=1e-5, rtol=0)
    luma = torch.tensor(LUMA)
    torch.testing.assert_close(luma @ m, luma.expand(3, 3), atol=1e-5, rtol=0)
    torch.testing.assert_close(m[2], torch.eye(3), atol=1e-5, rtol=0)
    red = torch.tensor([[[[0.8]], [[0.2]], [[0.2]]]])
    ours = apply_params((red * 255).round().to(torch.uint8),
                        _with(1, hue=torch.tensor([0.33])), *NO_NORM)[0, :, 0, 0]
    theirs = TF.adjust_hue(red, 0.33)[0, :, 0, 0]
    assert int(ours.argmax()) == int(theirs.argmax()) == 1  # red turned green, both ways


def test_sampled_parameters_stay_in_their_ranges_and_are_reproducible() -> None:
    aug = AugmentConfig(scale_min=0.6, rotation=30, color_jitter=0.15, hue=0.02)
    p = sample_params(4096, aug, torch.Generator().manual_seed(1))
    area = p.crop_w * p.crop_h
    assert area.min() >= 0.6 * 0.86 and area.max() <= 1.0 + 1e-6  # ratio clamp trims a bit
    assert (p.crop_w <= 1).all() and (p.crop_h <= 1).all()
    assert (p.centre.abs() <= torch.stack([1 - p.crop_w, 1 - p.crop_h], 1) + 1e-6).all()
    assert set(p.flip_x.tolist()) == set(p.flip_y.tolist()) == {-1.0, 1.0}
    assert 0.45 < (p.flip_x < 0).float().mean() < 0.55
    assert p.angle.abs().max() <= math.radians(30) + 1e-6 and p.angle.abs().max() > 0.5
    for f in (p.brightness, p.contrast, p.saturation):
        assert f.min() >= 0.85 - 1e-6 and f.max() <= 1.15 + 1e-6
    assert p.hue.abs().max() <= 0.02 + 1e-6
    again = sample_params(4096, aug, torch.Generator().manual_seed(1))
    assert torch.equal(again.angle, p.angle)
    off = sample_params(8, AugmentConfig(scale_min=1.0, hflip=False, vflip=False, rotation=0,
                                         color_jitter=0, hue=0))
    assert all(torch.equal(getattr(off, f.name), getattr(identity_params(8), f.name))
               for f in dataclasses.fields(off))


def test_the_mask_channel_follows_the_geometry_and_stays_binary() -> None:
    x = _batch(channels=4)
    x[:, 3] = torch.where(x[:, 3] > 127, 255, 0).to(torch.uint8)
    p = _with(4, flip_x=-torch.ones(4), brightness=torch.full((4,), 1.3))
    out = apply_params(x, p, MEAN, STD)
    assert out.shape == (4, 4, 16, 16)
    torch.testing.assert_close(out[:, 3], (x[:, 3] > 127).float().flip(-1))
    aug = BatchAugment(AugmentConfig(), MEAN, STD)(x)
    assert set(aug[:, 3].unique().tolist()) <= {0.0, 1.0}


def test_bad_batches_are_refused() -> None:
    with pytest.raises(ValueError, match="uint8 batch"):
        apply_params(torch.zeros(2, 3, 8, 8), identity_params(2), MEAN, STD)
    with pytest.raises(ValueError, match="uint8 batch"):
        apply_params(torch.zeros(3, 8, 8, dtype=torch.uint8), identity_params(3), MEAN, STD)


def test_a_run_with_batch_augmentation_trains(tmp_path: Path) -> None:
    from dermalab.core.config import load_config
    from dermalab.pipeline import train_run
    from tests.conftest import write_photo_dataset

    data = write_photo_dataset(tmp_path / "photos", per_class=12)
    m = train_run(load_config(None, [
        f"data.source={data}", "data.image_size=48", "data.augment.batched=true",
        "train.epochs=2", "train.batch_size=8", "train.patience=0", "tracking.enabled=false",
        "eval.gallery=0", "eval.serving=false", "eval.report=false", "optim.lr=0.003"]),
        tmp_path / "run", progress=False)
    assert m["accuracy"] > 1 / 3  # three well-separated colour classes
