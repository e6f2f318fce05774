"""The frozen prefix without autograd (dermalab.train.frozen_prefix): the same outputs and
gradients, autograd really off inside the frozen stages, and never where a gradient has to
pass through."""

from __future__ import annotations

import copy

import pytest
import timm
import torch
from torch import nn

from dermalab.core.models import set_body_trainable
from dermalab.train.frozen_prefix import (
    frozen_subtrees,
    restore_autograd,
    skip_autograd_in_frozen,
)
from dermalab.train.loop import frozen_bn_eval


def _grad_mode_inside(modules: list[nn.Module]) -> tuple[list[bool], list[object]]:
    """Record ``torch.is_grad_enabled()`` inside each module's forward (a hook put in front of
    ours runs before the grad mode is restored)."""
    seen: list[bool] = []
    handles = [m.register_forward_hook(lambda *_: seen.append(torch.is_grad_enabled()),
                                       prepend=True)
               for m in modules]
    return seen, handles


def test_effnet_prefix_runs_without_autograd_and_trains_the_same() -> None:
    torch.manual_seed(0)
    plain = timm.create_model("tf_efficientnet_lite0", pretrained=False, num_classes=5)
    set_body_trainable(plain, True, 2)
    plain = plain.double()
    hooked = copy.deepcopy(plain)
    assert skip_autograd_in_frozen(hooked) == 4
    # The largest frozen parts: the stem's conv and BatchNorm and the first two stages.
    assert frozen_subtrees(hooked) == [hooked.conv_stem, hooked.bn1, hooked.blocks[0],
                                       hooked.blocks[1]]

    seen, handles = _grad_mode_inside([hooked.blocks[1], hooked.blocks[2]])
    x = torch.randn(3, 3, 64, 64, dtype=torch.float64)
    y = torch.tensor([0, 1, 4])
    for m in (plain, hooked):
        m.train()
        frozen_bn_eval(m)
        nn.functional.cross_entropy(m(x), y).backward()
    # Off in the frozen stage 2, on in the trainable stage 3, and on again afterwards.
    assert seen == [False, True] and torch.is_grad_enabled()
    for h in handles:
        h.remove()

    torch.testing.assert_close(hooked(x), plain(x), rtol=0, atol=0)
    grads = dict(plain.named_parameters())
    for k, p in hooked.named_parameters():
        assert (p.grad is None) == (grads[k].grad is None), k
        if p.grad is not None:
            torch.testing.assert_close(p.grad, grads[k].grad, rtol=0, atol=0)
    assert any(p.grad is not None for p in hooked.blocks[2].parameters())

    restore_autograd(hooked)
    seen, _ = _grad_mode_inside([hooked.blocks[1]])
    hooked(x)
    assert seen == [True]


def _sandwich() -> nn.Sequential:
    """trainable -> frozen -> trainable: the frozen layer's input carries a gradient."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))
    net[1].requires_grad_(False)
    return net


def test_a_frozen_layer_between_trainable_ones_keeps_the_gradient_flowing() -> None:
    plain, hooked = _sandwich(), _sandwich()
    assert skip_autograd_in_frozen(hooked) == 1
    x = torch.randn(5, 4)
    for m in (plain, hooked):
        m(x).sum().backward()
    assert hooked[0].weight.grad is not None
    torch.testing.assert_close(hooked[0].weight.grad, plain[0].weight.grad, rtol=0, atol=0)


def test_a_module_unfrozen_later_trains_again() -> None:
    net = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))
    net[0].requires_grad_(False)
    assert skip_autograd_in_frozen(net) == 1
    net[0].requires_grad_(True)  # e.g. the head warm-up's end unfreezing the body
    net(torch.randn(3, 4)).sum().backward()
    assert net[0].weight.grad is not None


def test_grad_mode_is_restored_when_the_frozen_forward_raises() -> None:
    net = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 2))
    net[0].requires_grad_(False)
    skip_autograd_in_frozen(net)
    with pytest.raises(RuntimeError):
        net(torch.randn(3, 5))  # wrong width: raises inside the frozen layer
    assert torch.is_grad_enabled()


def test_hooking_twice_keeps_one_set_of_hooks() -> None:
    net = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 2))
    net[0].requires_grad_(False)
    skip_autograd_in_frozen(net)
    skip_autograd_in_frozen(net)
    assert len(net[0]._forward_pre_hooks) == 1 and len(net[0]._forward_hooks) == 1
    restore_autograd(net)
    assert not net[0]._forward_pre_hooks and not net[0]._forward_hooks
