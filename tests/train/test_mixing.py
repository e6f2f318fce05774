"""Mixup / CutMix: the mixed images, the weight of each label, the loss against its soft-target
form, and the wiring into the training epoch."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from accelerate import Accelerator
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from dermalab.core.config import AugmentConfig, load_config
from dermalab.core.errors import ConfigError
from dermalab.train.loop import train_one_epoch
from dermalab.train.losses import ClassBalancedLoss
from dermalab.train.mixing import BatchMixer, MixedBatch, cutmix, mixed_correct, mixed_loss, mixup


def _batch(n: int = 4, k: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return torch.randn(n, 3, 16, 20, generator=g), torch.arange(n) % k


def test_mixup_blends_each_image_with_the_reversed_batch() -> None:
    x, _ = _batch()
    out = mixup(x, 0.3)
    for i in range(4):
        assert torch.allclose(out[i], 0.3 * x[i] + 0.7 * x[3 - i])


def test_cutmix_pastes_a_box_and_weights_the_visible_share() -> None:
    # Image i is the constant i, so every pixel tells whose it is.
    x = torch.arange(4, dtype=torch.float32)[:, None, None, None].expand(4, 3, 16, 20).clone()
    torch.manual_seed(3)
    for lam in (0.2, 0.5, 0.9):
        out, kept = cutmix(x, lam)
        for i in range(4):
            own = (out[i] == i).float().mean().item()
            partner = (out[i] == 3 - i).float().mean().item()
            assert own == pytest.approx(kept) and partner == pytest.approx(1 - kept)
        assert 0.0 < kept <= 1.0
        # the box is one rectangle, the same in every channel
        assert torch.equal(out[0, 0] == 3, out[0, 2] == 3)


def test_mixed_loss_is_cross_entropy_against_the_mixed_one_hot_target() -> None:
    logits = torch.randn(4, 3, generator=torch.Generator().manual_seed(1))
    y = torch.tensor([0, 1, 2, 1])
    batch = MixedBatch(torch.zeros(4), y, y.flip(0), 0.35)
    soft = 0.35 * F.one_hot(y, 3).float() + 0.65 * F.one_hot(y.flip(0), 3).float()
    expected = F.cross_entropy(logits, soft)  # probability targets
    assert torch.allclose(mixed_loss(nn.CrossEntropyLoss(), logits, batch), expected)


def test_mixed_class_balanced_loss_weights_each_label_by_its_class() -> None:
    """-mean_i sum_c (lam [c = y_i] w_{y_i} + (1 - lam) [c = y'_i] w_{y'_i}) log p_ic."""
    counts = [50, 10, 3]
    loss = ClassBalancedLoss(counts, beta=0.99, loss_type="softmax")
    logits = torch.randn(4, 3, generator=torch.Generator().manual_seed(2))
    y = torch.tensor([0, 1, 2, 0])
    batch = MixedBatch(torch.zeros(4), y, y.flip(0), 0.6)
    w = loss.weight
    target = (0.6 * F.one_hot(y, 3).float() * w[y][:, None]
              + 0.4 * F.one_hot(y.flip(0), 3).float() * w[y.flip(0)][:, None])
    expected = -(target * F.log_softmax(logits, 1)).sum(1).mean()
    assert torch.allclose(mixed_loss(loss, logits, batch), expected)


def test_unmixed_batches_are_the_plain_loss_and_accuracy() -> None:
    logits = torch.randn(4, 3, generator=torch.Generator().manual_seed(4))
    y = torch.tensor([0, 1, 2, 0])
    batch = MixedBatch(torch.zeros(4), y, y.flip(0), 1.0)
    assert torch.equal(mixed_loss(nn.CrossEntropyLoss(), logits, batch),
                       F.cross_entropy(logits, y))
    pred = torch.tensor([0, 1, 1, 2])
    assert mixed_correct(pred, batch).item() == 2
    half = MixedBatch(torch.zeros(4), y, y.flip(0), 0.25)  # partner labels: 0, 2, 1, 0
    pred = torch.tensor([0, 2, 0, 1])  # own label right once, partner's twice
    assert mixed_correct(pred, half).item() == pytest.approx(0.25 * 1 + 0.75 * 2)


def test_the_mixer_mixes_the_configured_share_with_the_configured_kind() -> None:
    x, y = _batch(8)
    off = BatchMixer(AugmentConfig())
    assert not off.enabled and off(x, y).lam == 1.0 and off(x, y).images is x
    never = BatchMixer(AugmentConfig(mixup=0.4, mix_prob=0.0))
    assert not never.enabled
    only_mixup = BatchMixer(AugmentConfig(mixup=0.4))
    torch.manual_seed(0)
    b = only_mixup(x, y)
    assert 0.0 < b.lam < 1.0
    assert torch.allclose(b.images, mixup(x, b.lam))
    assert torch.equal(b.partner_targets, y.flip(0))
    torch.manual_seed(0)
    assert only_mixup(x, y).lam == b.lam  # the global generator decides: resumable
    half = BatchMixer(AugmentConfig(cutmix=1.0, mix_prob=0.5))
    torch.manual_seed(1)
    lams = np.array([half(x, y).lam for _ in range(400)])
    assert 0.4 < np.mean(lams == 1.0) < 0.6
    assert BatchMixer(AugmentConfig(cutmix=1.0))(x[:1], y[:1]).lam == 1.0  # nothing to mix with


@pytest.mark.parametrize("override, key", [("mixup=-0.1", "data.augment.mixup"),
                                           ("cutmix=-1", "data.augment.cutmix"),
                                           ("mix_prob=1.5", "data.augment.mix_prob")])
def test_bad_mixing_settings_name_the_key(override: str, key: str) -> None:
    name, value = override.split("=")
    with pytest.raises(ConfigError, match=key):
        BatchMixer(AugmentConfig(**{name: float(value)}))


def test_the_epoch_trains_on_the_mixed_batch_and_its_labels() -> None:
    """With a zero learning rate the epoch's loss must equal the mixed loss of the same
    draws, computed by hand, and differ from the unmixed loss."""
    torch.manual_seed(0)
    x = torch.randn(16, 3, 4, 4)
    y = torch.arange(16) % 3
    model = nn.Sequential(nn.Flatten(), nn.Linear(48, 3))
    loader = DataLoader(TensorDataset(x, y), batch_size=8)
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    acc = Accelerator(cpu=True)
    mixer = BatchMixer(AugmentConfig(mixup=0.5, cutmix=1.0))
    loss_fn = nn.CrossEntropyLoss()
    torch.manual_seed(5)
    stats = train_one_epoch(model, loader, loss_fn, opt, acc, mixer=mixer, progress=False)
    torch.manual_seed(5)
    with torch.no_grad():
        expected = np.mean([mixed_loss(loss_fn, model(b.images), b).item()
                            for b in (mixer(xb, yb) for xb, yb in loader)])
        plain = np.mean([loss_fn(model(xb), yb).item() for xb, yb in loader])
    assert stats.loss == pytest.approx(expected, rel=1e-5)
    assert abs(stats.loss - plain) > 1e-3


def test_a_run_trains_with_mixup_and_cutmix(tmp_path: Path) -> None:
    from dermalab.pipeline import train_run
    from tests.conftest import write_photo_dataset

    data = write_photo_dataset(tmp_path / "photos", per_class=10)
    cfg = load_config(None, ["data.image_size=64", "train.epochs=1", "train.batch_size=8",
                             "tracking.enabled=false", "data.augment.batched=true",
                             "data.augment.mixup=0.4", "data.augment.cutmix=1.0",
                             "eval.gallery=0", "eval.serving=false", "eval.report=false",
                             f"data.source={data}"])
    train_run(cfg, tmp_path / "run", progress=False)
    assert (tmp_path / "run" / "metrics.json").exists()
    assert load_config(tmp_path / "run" / "config.yaml").data.augment.cutmix == 1.0
