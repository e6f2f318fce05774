"""TensorFlow-style "same" padding computed inside the convolution, for the length of a
training run.

timm's ``tf_*`` backbones (the default ``tf_efficientnet_lite0`` among them) reproduce
TensorFlow's "same" padding with :class:`timm.layers.Conv2dSame`: for a stride-2 layer on an
even input the padding is asymmetric (``before`` rows on top, ``before + 1`` at the bottom), so
it pads a copy of the input with ``F.pad`` and then convolves. On a CPU with channels_last
batches that copy, and the convolution on it, are slow: a depthwise 3x3 stride-2 layer on a
32x96x64x64 batch takes 20 ms that way against 1.5 ms for the same arithmetic done as below
(``bench/results/speed.md``).

The same output comes from one padded convolution. With ``p`` the top/left padding, a kernel
grown by one zero row (and/or column) in front and symmetric padding ``p + 1``, output ``j``
sees input rows ``j*s - p - 1 .. j*s - p + k - 1``, the first of which meets the zero row: the
rows ``j*s - p .. j*s - p + k - 1`` of TensorFlow's window, times the same weights; the count
``floor((H + 2p + 2 - k - 1) / s) + 1`` equals TensorFlow's ``ceil(H / s)`` for ``s >= 2``
because ``H + 2p + 1 - k`` is then a multiple of ``s``. Any other case (odd padding gaps,
dilation) falls back to timm's own path, so the layer computes the same function everywhere.

Only the class of each layer changes (its parameters and ``state_dict`` stay), and
:func:`restore_same_padding` puts timm's class back at the end of training: the export and
quantisation see the unchanged model.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from timm.layers import Conv2dSame
from timm.layers.conv2d_same import conv2d_same
from torch import nn


def _tf_pads(size: int, kernel: int, stride: int, dilation: int) -> tuple[int, int]:
    """TensorFlow's "same" padding (before, after) of one dimension."""
    total = max((math.ceil(size / stride) - 1) * stride + (kernel - 1) * dilation + 1 - size, 0)
    return total // 2, total - total // 2


def conv2d_tf_same(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                   stride: tuple[int, ...], dilation: tuple[int, ...],
                   groups: int) -> torch.Tensor:
    """``timm.layers.conv2d_same`` without the padded copy of ``x`` where the padding is
    one row/column longer after than before (see the module docstring)."""
    (kh, kw), (sh, sw), (dh, dw) = weight.shape[-2:], stride, dilation
    top, bottom = _tf_pads(x.shape[-2], kh, sh, dh)
    left, right = _tf_pads(x.shape[-1], kw, sw, dw)
    extra_h, extra_w = bottom - top, right - left
    if (dh, dw) != (1, 1) or extra_h not in (0, 1) or extra_w not in (0, 1) \
            or (extra_h and sh < 2) or (extra_w and sw < 2):
        return conv2d_same(x, weight, bias, stride, (0, 0), dilation,  # type: ignore[arg-type]
                           groups)
    if extra_h or extra_w:
        weight = F.pad(weight, (extra_w, 0, extra_h, 0))  # the zero row/column in front
    return F.conv2d(x, weight, bias, stride, (bottom, right), 1, groups)


class _StaticSameConv2d(Conv2dSame):
    """timm's ``Conv2dSame``, computed by :func:`conv2d_tf_same`."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return conv2d_tf_same(x, self.weight, self.bias, self.stride, self.dilation,
                              self.groups)


def same_padding_layers(model: nn.Module) -> list[nn.Module]:
    """The layers of ``model`` that pad at run time (timm's ``Conv2dSame``, exactly: the
    rewritten ones no longer count); empty for backbones that pad symmetrically."""
    return [m for m in model.modules() if type(m) is Conv2dSame]


def use_static_same_padding(model: nn.Module) -> int:
    """Compute every ``Conv2dSame`` of ``model`` by :func:`conv2d_tf_same`, in place; the
    number of layers changed."""
    layers = same_padding_layers(model)
    for m in layers:
        m.__class__ = _StaticSameConv2d  # keeps the parameters and state_dict keys
    return len(layers)


def restore_same_padding(model: nn.Module) -> None:
    """Undo :func:`use_static_same_padding`."""
    for m in model.modules():
        if type(m) is _StaticSameConv2d:
            m.__class__ = Conv2dSame  # type: ignore[assignment]
