"""Losses reduce to cross-entropy in their limits; weights follow Cui et al.'s formula."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from dermalab.core.config import LossConfig
from dermalab.data.dataset import sampled_class_prior
from dermalab.train.losses import (
    ClassBalancedLoss,
    FocalLoss,
    LogitAdjustedLoss,
    build_loss,
    effective_number_weights,
    inverse_frequency_weights,
    posterior_offset,
)

torch.manual_seed(0)
LOGITS = torch.randn(64, 5) * 2
TARGET = torch.randint(0, 5, (64,))
COUNTS = [500, 120, 40, 10, 3]


def test_focal_gamma_zero_is_cross_entropy() -> None:
    assert torch.allclose(FocalLoss(0.0)(LOGITS, TARGET), F.cross_entropy(LOGITS, TARGET),
                          atol=1e-6)


def test_focal_gamma_zero_with_weights_and_smoothing_is_ce() -> None:
    w = torch.tensor([0.5, 1.0, 2.0, 3.0, 4.0])
    got = FocalLoss(0.0, weight=w, label_smoothing=0.1)(LOGITS, TARGET)
    want = F.cross_entropy(LOGITS, TARGET, weight=w, label_smoothing=0.1)
    # torch weights the smoothed terms per class; without smoothing they agree exactly.
    assert torch.allclose(FocalLoss(0.0, weight=w)(LOGITS, TARGET),
                          F.cross_entropy(LOGITS, TARGET, weight=w), atol=1e-6)
    assert got.item() == pytest.approx(want.item(), rel=0.1)


def test_focal_down_weights_easy_examples() -> None:
    easy = torch.tensor([[10.0, 0.0]])
    t = torch.tensor([0])
    assert FocalLoss(2.0)(easy, t) < 1e-3 * F.cross_entropy(easy, t)


def test_focal_hand_value() -> None:
    logits = torch.tensor([[0.0, 0.0]])  # p_y = 0.5
    # FL = -(1 - 0.5)^2 * log(0.5) = 0.25 * ln 2
    assert FocalLoss(2.0)(logits, torch.tensor([1])).item() == pytest.approx(0.25 * np.log(2))


@pytest.mark.parametrize("loss_type", ["softmax", "focal"])
def test_class_balanced_beta_zero_is_cross_entropy(loss_type: str) -> None:
    cb = ClassBalancedLoss(COUNTS, beta=0.0, loss_type=loss_type, gamma=0.0)
    assert torch.allclose(cb(LOGITS, TARGET), F.cross_entropy(LOGITS, TARGET), atol=1e-6)


def test_class_balanced_sigmoid_beta_zero_is_bce() -> None:
    cb = ClassBalancedLoss(COUNTS, beta=0.0, loss_type="sigmoid", gamma=0.0)
    onehot = F.one_hot(TARGET, 5).float()
    want = F.binary_cross_entropy_with_logits(LOGITS, onehot, reduction="none").sum(1).mean()
    assert torch.allclose(cb(LOGITS, TARGET), want, atol=1e-6)


def test_effective_number_weights_hand_example() -> None:
    # counts (1, 2), beta 0.5: E_1 = (1-0.5)/(0.5) = 1, E_2 = (1-0.25)/0.5 = 1.5.
    # w ∝ (1, 2/3); normalised to sum K=2: (1.2, 0.8).
    assert effective_number_weights([1, 2], 0.5) == pytest.approx([1.2, 0.8])
    assert effective_number_weights([10, 1000], 0.0) == pytest.approx([1.0, 1.0])
    w = effective_number_weights([10, 1000], 0.999999)  # -> inverse frequency
    assert w[0] / w[1] == pytest.approx(100, rel=0.01)


def test_inverse_frequency_matches_sklearn() -> None:
    from sklearn.utils.class_weight import compute_class_weight

    y = np.repeat(np.arange(5), COUNTS)
    want = compute_class_weight("balanced", classes=np.arange(5), y=y)
    assert inverse_frequency_weights(COUNTS) == pytest.approx(want)


def test_build_loss_weights_use_original_counts() -> None:
    loss = build_loss(LossConfig(name="cb", beta=0.99, cb_type="softmax"), COUNTS)
    assert torch.allclose(loss.weight, torch.tensor(effective_number_weights(COUNTS, 0.99),
                                                    dtype=torch.float32))
    wce = build_loss(LossConfig(name="weighted_ce"), COUNTS)
    assert torch.allclose(wce(LOGITS, TARGET), F.cross_entropy(
        LOGITS, TARGET, weight=torch.tensor(inverse_frequency_weights(COUNTS)).float()))
    smooth = build_loss(LossConfig(name="ce", label_smoothing=0.1), COUNTS)
    assert torch.allclose(smooth(LOGITS, TARGET),
                          F.cross_entropy(LOGITS, TARGET, label_smoothing=0.1))


@pytest.mark.parametrize("make", [
    lambda g: FocalLoss(gamma=g),
    lambda g: ClassBalancedLoss(np.array([10, 20, 30]), 0.999, "focal", g),
    lambda g: ClassBalancedLoss(np.array([10, 20, 30]), 0.999, "sigmoid", g),
])
def test_focal_gradients_stay_finite_for_small_gamma_on_saturated_logits(make) -> None:  # type: ignore[no-untyped-def]
    """0 < gamma < 1 has an infinite derivative at p = 1: a certain prediction must not turn
    the gradient into NaN."""
    for gamma in (0.09, 0.5, 2.0):
        logits = torch.tensor([[60.0, 0.0, 0.0], [0.0, 2.0, 1.0]], requires_grad=True)
        loss = make(gamma)(logits, torch.tensor([0, 1]))
        loss.backward()
        assert torch.isfinite(loss) and torch.isfinite(logits.grad).all(), gamma


def test_logit_adjusted_tau_zero_and_uniform_prior_are_cross_entropy() -> None:
    prior = np.asarray(COUNTS) / sum(COUNTS)
    ce = F.cross_entropy(LOGITS, TARGET)
    assert torch.allclose(LogitAdjustedLoss(prior, tau=0.0)(LOGITS, TARGET), ce, atol=1e-6)
    # A constant offset cancels in the softmax.
    assert torch.allclose(LogitAdjustedLoss(np.full(5, 0.2), tau=2.0)(LOGITS, TARGET), ce,
                          atol=1e-6)


def test_logit_adjusted_is_cross_entropy_of_offset_logits() -> None:
    prior = np.asarray(COUNTS) / sum(COUNTS)
    shifted = LOGITS + 0.7 * torch.log(torch.as_tensor(prior, dtype=torch.float32))
    got = LogitAdjustedLoss(prior, tau=0.7, label_smoothing=0.1)(LOGITS, TARGET)
    assert torch.allclose(got, F.cross_entropy(shifted, TARGET, label_smoothing=0.1), atol=1e-6)
    with pytest.raises(ValueError, match="tau"):
        LogitAdjustedLoss(prior, tau=-1.0)


def test_sampled_class_prior_follows_the_sampler() -> None:
    n = np.asarray(COUNTS, dtype=float)
    np.testing.assert_allclose(sampled_class_prior(COUNTS, "none"), n / n.sum())
    np.testing.assert_allclose(sampled_class_prior(COUNTS, "sqrt"), np.sqrt(n) / np.sqrt(n).sum())
    np.testing.assert_allclose(sampled_class_prior(COUNTS, "oversample"), np.full(5, 0.2))
    np.testing.assert_allclose(sampled_class_prior([4, 0, 4], "oversample"), [0.5, 0, 0.5])


def test_build_loss_la_offsets_follow_the_sampler() -> None:
    for sampler in ("none", "sqrt", "oversample"):
        loss = build_loss(LossConfig(name="la", tau=1.0), COUNTS, sampler=sampler)
        expected = np.log(sampled_class_prior(COUNTS, sampler))
        np.testing.assert_allclose(loss.offset.numpy(), expected, rtol=1e-6)  # type: ignore[operator]
    # With oversampling every batch is already balanced: the offsets are equal, so plain CE.
    over = build_loss(LossConfig(name="la"), COUNTS, sampler="oversample")
    assert torch.allclose(over(LOGITS, TARGET), F.cross_entropy(LOGITS, TARGET), atol=1e-6)


def test_logit_adjusted_optimum_is_balanced_and_the_offset_restores_the_prior() -> None:
    """The limiting case of Menon et al.: with no information in x (a bias-only model), the
    plain-CE optimum is log pi (argmax: the largest class), the logit-adjusted optimum is
    flat (tau = 1: every class equally likely, the balanced rule), and adding
    :func:`posterior_offset` gives back log pi."""
    counts = np.array([600, 250, 100, 40, 10])
    target = torch.as_tensor(np.repeat(np.arange(5), counts))
    loss = build_loss(LossConfig(name="la", tau=1.0), counts, sampler="none")
    bias = torch.zeros(5, requires_grad=True)
    opt = torch.optim.LBFGS([bias], max_iter=200, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        value = loss(bias.expand(len(target), 5), target)
        value.backward()
        return value

    opt.step(closure)
    b = bias.detach().numpy()
    np.testing.assert_allclose(b - b.mean(), 0.0, atol=1e-4)
    offset = posterior_offset(LossConfig(name="la", tau=1.0), counts)
    assert offset is not None
    post = torch.log_softmax(torch.as_tensor(b + offset), 0).numpy()
    np.testing.assert_allclose(post, np.log(counts / counts.sum()), atol=1e-4)
    assert posterior_offset(LossConfig(name="cb"), counts) is None
    np.testing.assert_allclose(posterior_offset(LossConfig(name="la", tau=0.5), counts),
                               0.5 * np.log(counts / counts.sum()))
