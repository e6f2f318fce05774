"""Run the frozen prefix of the network without autograd for the length of a training run.

``model.freeze_stages`` keeps the stem and the first stages at their pretrained weights. Their
input (the image batch) needs no gradient and neither do their weights, so autograd records
nothing there; but each operation still goes through autograd's dispatch, and the outputs are
allocated as tensors that could be part of a graph. Running those modules under
``torch.no_grad`` skips that layer: exact (the same kernels compute the same values), and a few
per cent of a training step on a CPU, where the frozen stages work on the largest activations
(``bench/results/speed.md``).

The rule is checked on every call, not assumed: a module runs without autograd only while
none of its parameters and none of its tensor inputs requires a gradient. A frozen module
between trainable ones (its input carries a gradient that has to flow through it) is therefore
computed as usual, and so is a module that training later unfreezes.
"""

from __future__ import annotations

import weakref
from typing import Any

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

# model -> the hook handles on its frozen modules, so that they can be removed again.
_HANDLES: weakref.WeakKeyDictionary[nn.Module, list[RemovableHandle]] = \
    weakref.WeakKeyDictionary()


def _has_parameters(module: nn.Module) -> bool:
    return next(module.parameters(), None) is not None


def _all_frozen(module: nn.Module) -> bool:
    return not any(p.requires_grad for p in module.parameters())


def frozen_subtrees(model: nn.Module) -> list[nn.Module]:
    """The largest submodules of ``model`` whose parameters are all frozen (each holds at
    least one parameter; none lies inside another)."""
    found: list[nn.Module] = []

    def visit(module: nn.Module) -> None:
        for child in module.children():
            if _has_parameters(child) and _all_frozen(child):
                found.append(child)
            else:
                visit(child)

    visit(model)
    return found


def _needs_grad(args: tuple[Any, ...], kwargs: dict[str, Any]) -> bool:
    return any(isinstance(a, torch.Tensor) and a.requires_grad
               for a in (*args, *kwargs.values()))


def skip_autograd_in_frozen(model: nn.Module) -> int:
    """Hook every largest frozen submodule of ``model`` so that it runs under ``no_grad``
    while nothing it computes could need a gradient (see the module docstring); returns how
    many modules were hooked. Calling it again first removes the earlier hooks."""
    restore_autograd(model)
    handles: list[RemovableHandle] = []
    for module in frozen_subtrees(model):
        # A stack per module: the grad mode to restore after each call (calls may nest if a
        # module is reused inside itself; they do not in timm's CNNs).
        saved: list[bool] = []

        def before(mod: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any],
                   saved: list[bool] = saved) -> None:
            saved.append(torch.is_grad_enabled())
            if saved[-1] and _all_frozen(mod) and not _needs_grad(args, kwargs):
                torch.set_grad_enabled(False)

        def after(mod: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], output: Any,
                  saved: list[bool] = saved) -> None:
            if saved:
                torch.set_grad_enabled(saved.pop())

        handles.append(module.register_forward_pre_hook(before, with_kwargs=True))
        # always_call: grad mode is restored even when the forward raises.
        handles.append(module.register_forward_hook(after, with_kwargs=True, always_call=True))
    _HANDLES[model] = handles
    return len(handles) // 2


def restore_autograd(model: nn.Module) -> None:
    """Undo :func:`skip_autograd_in_frozen` (a no-op on a model without its hooks)."""
    for handle in _HANDLES.pop(model, []):
        handle.remove()


__all__ = ["frozen_subtrees", "restore_autograd", "skip_autograd_in_frozen"]
