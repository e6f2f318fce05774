"""Fold the frozen BatchNorms of the pretrained stem and early stages into their convolutions
for the length of a training run.

A BatchNorm in eval mode is an affine map per channel, so after a convolution it folds into
the convolution's weight and bias (Jacob et al., "Quantization and Training of Integer-Arithmetic
-Only Inference", CVPR 2018, sec. 3.2; ``torch.nn.utils.fusion.fuse_conv_bn_eval``)::

    s  = gamma / sqrt(running_var + eps)
    W' = W * s            (per output channel)
    b' = (b - running_mean) * s + beta

``model.freeze_stages`` keeps the stem and the first stages at their pretrained weights, and the
training loop keeps their BatchNorms in eval mode (:func:`dermalab.train.loop.frozen_bn_eval`),
so within a run these layers are constant and the fold is exact up to float rounding. It saves
a full pass over the largest activations of the network per frozen BatchNorm, at the highest
resolutions: ``bench/results/speed.md``.

The modules are changed in place by class, not replaced: their parameters and buffers, hence
``state_dict()``, checkpoints, the weight average and resuming, stay exactly as without the
fold; the folded weights are non-persistent buffers. :func:`unfold_batchnorms` restores the
plain classes at the end of training.
"""

from __future__ import annotations

from itertools import pairwise

import torch
from timm.layers import BatchNormAct2d, Conv2dSame
from torch import nn

from dermalab.train.same_pad import conv2d_tf_same


class _FoldedConv2d(nn.Conv2d):
    """A ``Conv2d`` computing with its folded weight and bias (the BatchNorm after it)."""

    folded_weight: torch.Tensor
    folded_bias: torch.Tensor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(x, self.folded_weight, self.folded_bias)


class _FoldedConv2dSame(Conv2dSame):
    """timm's TF-style "same"-padded convolution, with its folded weight and bias (and
    the padding inside the convolution: :mod:`dermalab.train.same_pad`)."""

    folded_weight: torch.Tensor
    folded_bias: torch.Tensor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return conv2d_tf_same(x, self.folded_weight, self.folded_bias, self.stride,
                              self.dilation, self.groups)


class _FoldedBatchNorm2d(nn.BatchNorm2d):
    """A BatchNorm folded into the convolution before it: the identity."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


class _FoldedBatchNormAct2d(BatchNormAct2d):
    """timm's BatchNorm + activation, the BatchNorm folded away: only the dropout and the
    activation remain."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.drop(x))


_FOLDED: dict[type[nn.Module], type[nn.Module]] = {
    nn.Conv2d: _FoldedConv2d, Conv2dSame: _FoldedConv2dSame,
    nn.BatchNorm2d: _FoldedBatchNorm2d, BatchNormAct2d: _FoldedBatchNormAct2d}
_PLAIN = {folded: plain for plain, folded in _FOLDED.items()}


def _frozen(module: nn.Module) -> bool:
    return not any(p.requires_grad for p in module.parameters(recurse=False))


def _foldable(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> bool:
    """An exact pair: a plain (or same-padded) conv, then an affine BatchNorm with running
    statistics of the conv's output channels, both frozen."""
    return (type(conv) in (nn.Conv2d, Conv2dSame) and type(bn) in (nn.BatchNorm2d, BatchNormAct2d)
            and conv.padding_mode == "zeros" and bn.affine and bn.running_mean is not None
            and bn.running_var is not None and bn.num_features == conv.out_channels
            and _frozen(conv) and _frozen(bn))


def _pairs(model: nn.Module) -> list[tuple[nn.Conv2d, nn.BatchNorm2d]]:
    """Frozen (conv, BatchNorm) pairs registered one after the other in a parent module; the
    order of registration is the order of computation in timm's CNNs, and
    :func:`fold_frozen_batchnorms` checks that on the model's output."""
    pairs = []
    for parent in model.modules():
        children = list(parent._modules.values())
        for conv, bn in pairwise(children):
            if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d) \
                    and _foldable(conv, bn):
                pairs.append((conv, bn))
    return pairs


@torch.no_grad()
def _fold(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> None:
    assert bn.running_var is not None and bn.running_mean is not None  # _foldable checked
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    bias = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
    # The product keeps the weight's memory format (channels_last in training).
    conv.register_buffer("folded_weight", conv.weight * scale.view(-1, 1, 1, 1),
                         persistent=False)
    conv.register_buffer("folded_bias", (bias - bn.running_mean) * scale + bn.bias,
                         persistent=False)
    # Swapping the class keeps the module's parameters, buffers and state_dict keys.
    conv.__class__ = _FOLDED[type(conv)]  # type: ignore[assignment]
    bn.__class__ = _FOLDED[type(bn)]  # type: ignore[assignment]


def unfold_batchnorms(model: nn.Module) -> None:
    """Undo :func:`fold_frozen_batchnorms`: the plain classes again, the folded buffers gone
    (the weights and statistics were never touched)."""
    for m in model.modules():
        plain = _PLAIN.get(type(m))
        if plain is None:
            continue
        for name in ("folded_weight", "folded_bias"):
            if name in m._buffers:
                del m._buffers[name]
        m.__class__ = plain


def fold_frozen_batchnorms(model: nn.Module, image_size: int, tolerance: float = 1e-3) -> int:
    """Fold every frozen BatchNorm that directly follows a frozen convolution into it, in
    place, and return how many were folded.

    Only frozen pairs (``requires_grad`` off on both, as ``model.freeze_stages`` leaves the stem
    and the first stages) are folded: a trained BatchNorm changes every step. The model's
    eval-mode output on a random batch of ``image_size`` images is compared before and after;
    if it moved by more than ``tolerance`` (relative to its scale: a pair that is not one after
    the other in the forward), the fold is undone and 0 returned, so the training is as
    without it.
    """
    pairs = _pairs(model)
    if not pairs:
        return 0
    first = next(model.parameters())
    in_chans = next(m for m in model.modules() if isinstance(m, nn.Conv2d)).in_channels
    x = torch.randn(2, in_chans, image_size, image_size, device=first.device,
                    dtype=first.dtype)
    modes = {m: m.training for m in model.modules()}
    model.eval()
    try:
        with torch.no_grad():
            before = model(x)
            for conv, bn in pairs:
                _fold(conv, bn)
            after = model(x)
    finally:
        for m, training in modes.items():
            m.train(training)
    if isinstance(before, tuple | list):
        before, after = before[0], after[0]
    error = float((after - before).abs().max() / before.abs().max().clamp_min(1e-6))
    if not (error <= tolerance):  # also NaN
        unfold_batchnorms(model)
        return 0
    return len(pairs)


def folded_count(model: nn.Module) -> int:
    """How many BatchNorms of ``model`` are folded now."""
    return sum(isinstance(m, _FoldedBatchNorm2d | _FoldedBatchNormAct2d)
               for m in model.modules())


__all__ = ["fold_frozen_batchnorms", "folded_count", "unfold_batchnorms"]
