"""Folding the frozen BatchNorms into their convolutions (dermalab.train.fold): the same
function, the same gradients and the same state_dict, on the backbones whose stages freeze."""

from __future__ import annotations

import copy

import pytest
import timm
import torch
from torch import nn

from dermalab.core.models import set_body_trainable
from dermalab.train.fold import fold_frozen_batchnorms, folded_count, unfold_batchnorms
from dermalab.train.loop import frozen_bn_eval


def _model(name: str, stages: int) -> nn.Module:
    torch.manual_seed(0)
    m = timm.create_model(name, pretrained=False, num_classes=5)
    with torch.no_grad():  # pretrained-like statistics, so that the fold is not the identity
        for mod in m.modules():
            if isinstance(mod, nn.BatchNorm2d):
                mod.running_mean.uniform_(-0.5, 0.5)
                mod.running_var.uniform_(0.5, 2.0)
                mod.weight.uniform_(0.5, 1.5)
                mod.bias.uniform_(-0.2, 0.2)
    set_body_trainable(m, True, stages)
    # float64, so that the comparison below tests the algebra, not float32 rounding (which a
    # training-mode BatchNorm of a 4-image batch amplifies).
    return m.double().to(memory_format=torch.channels_last)


def _frozen_bns(m: nn.Module) -> int:
    return sum(isinstance(x, nn.BatchNorm2d) and not x.weight.requires_grad for x in m.modules())


@pytest.mark.parametrize(("name", "stages"), [("tf_efficientnet_lite0", 2), ("resnet18", 1)])
def test_fold_keeps_outputs_gradients_and_state_dict(name: str, stages: int) -> None:
    plain = _model(name, stages)
    folded = copy.deepcopy(plain)
    state = {k: v.clone() for k, v in plain.state_dict().items()}
    n = fold_frozen_batchnorms(folded, 64)
    # Every frozen BatchNorm of these backbones follows a frozen conv: all are folded.
    assert n == folded_count(folded) == _frozen_bns(plain) > 0
    # Nothing persistent changed: checkpoints, the weight average and resuming are as before.
    after = folded.state_dict()
    assert after.keys() == state.keys()
    assert all(torch.equal(after[k], v) for k, v in state.items())

    x = torch.randn(4, 3, 64, 64, dtype=torch.float64).contiguous(memory_format=torch.channels_last)
    y = torch.tensor([0, 1, 2, 3])
    for m in (plain, folded):  # training mode, frozen BatchNorms in eval as the loop does
        m.train()
        frozen_bn_eval(m)
        nn.functional.cross_entropy(m(x), y).backward()
    torch.testing.assert_close(folded(x), plain(x), rtol=1e-9, atol=1e-9)
    grads = {k: p.grad for k, p in plain.named_parameters() if p.grad is not None}
    for k, p in folded.named_parameters():
        assert (p.grad is None) == (k not in grads), k
        if p.grad is not None:
            torch.testing.assert_close(p.grad, grads[k], rtol=1e-7, atol=1e-9)
    # The trainable BatchNorms still learn their statistics in training mode.
    assert any(isinstance(x, nn.BatchNorm2d) and x.training for x in folded.modules())

    unfold_batchnorms(folded)
    assert folded_count(folded) == 0
    assert all(type(a) is type(b) for a, b in zip(folded.modules(), plain.modules(), strict=True))
    assert not any(k.startswith("folded") for m in folded.modules() for k in m._buffers)


def test_nothing_frozen_nothing_folded() -> None:
    m = _model("tf_efficientnet_lite0", 0)
    assert fold_frozen_batchnorms(m, 64) == 0 and folded_count(m) == 0


class _NormFirst(nn.Module):
    """A conv and a BatchNorm registered in that order but computed the other way round
    (pre-activation style): folding them would change the function."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(3)
        self.head = nn.Linear(3, 2)
        with torch.no_grad():
            self.bn.running_mean.fill_(0.7)
            self.bn.running_var.fill_(3.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.conv(self.bn(x)).mean((2, 3)))


def test_a_pair_out_of_computation_order_is_left_alone() -> None:
    m = _NormFirst()
    m.conv.requires_grad_(False)
    m.bn.requires_grad_(False)
    x = torch.randn(2, 3, 16, 16)
    before = m.eval()(x)
    assert fold_frozen_batchnorms(m, 16) == 0
    assert folded_count(m) == 0 and type(m.conv) is nn.Conv2d and type(m.bn) is nn.BatchNorm2d
    torch.testing.assert_close(m(x), before)
    m.train()
    fold_frozen_batchnorms(m, 16)
    assert m.training and m.bn.training  # the check's eval() is undone
