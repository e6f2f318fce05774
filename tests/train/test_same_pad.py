"""TensorFlow "same" padding inside the convolution (dermalab.train.same_pad): the same
outputs and gradients as timm's padded copy, for every size, kernel, stride and dilation."""

from __future__ import annotations

import copy
import itertools

import pytest
import timm
import torch
from timm.layers import Conv2dSame
from timm.layers.conv2d_same import conv2d_same

from dermalab.train.same_pad import conv2d_tf_same, restore_same_padding, use_static_same_padding


@pytest.mark.parametrize(("kernel", "stride", "dilation", "groups"),
                         [(1, 2, 1, 1), (3, 1, 1, 1), (3, 2, 1, 1), (3, 2, 1, 4), (5, 2, 1, 4),
                          (5, 2, 2, 1), (3, 3, 1, 1), (4, 2, 1, 1), (2, 2, 1, 1)])
def test_same_function_and_gradients_as_timm(kernel: int, stride: int, dilation: int,
                                             groups: int) -> None:
    torch.manual_seed(0)
    w0 = torch.randn(8, 4 // groups, kernel, kernel, dtype=torch.float64)
    b = torch.randn(8, dtype=torch.float64)
    # Odd and even sizes, and a different height and width (padding differs per dimension).
    for h, w in itertools.product((7, 8, 16, 17), (8, 9)):
        x0 = torch.randn(2, 4, h, w, dtype=torch.float64)
        outs, grads = [], []
        for fn in ("ours", "timm"):
            x, wt = x0.clone().requires_grad_(), w0.clone().requires_grad_()
            y = (conv2d_tf_same(x, wt, b, (stride, stride), (dilation, dilation), groups)
                 if fn == "ours" else
                 conv2d_same(x, wt, b, (stride, stride), (0, 0), (dilation, dilation), groups))
            (y * torch.linspace(-1, 1, y.numel(), dtype=torch.float64).view_as(y)).sum().backward()
            outs.append(y.detach())
            grads.append((x.grad, wt.grad))
        assert outs[0].shape == outs[1].shape, (h, w)
        torch.testing.assert_close(outs[0], outs[1], rtol=1e-12, atol=1e-12)
        for ga, gb in zip(grads[0], grads[1], strict=True):
            torch.testing.assert_close(ga, gb, rtol=1e-12, atol=1e-12)


def test_a_tf_backbone_computes_the_same_and_keeps_its_state_dict() -> None:
    torch.manual_seed(0)
    plain = timm.create_model("tf_efficientnet_lite0", pretrained=False, num_classes=3).double()
    fast = copy.deepcopy(plain)
    n_same = sum(type(m) is Conv2dSame for m in plain.modules())
    assert use_static_same_padding(fast) == n_same > 0
    assert fast.state_dict().keys() == plain.state_dict().keys()
    x = torch.randn(2, 3, 96, 96, dtype=torch.float64).contiguous(
        memory_format=torch.channels_last)
    torch.testing.assert_close(fast.eval()(x), plain.eval()(x), rtol=1e-10, atol=1e-10)
    restore_same_padding(fast)
    assert sum(type(m) is Conv2dSame for m in fast.modules()) == n_same
