"""A copy of a model with each batch norm that follows a convolution folded into it, for the passes that only read it.

In eval mode a batch norm is an affine map per channel, so a convolution and the norm right after it are one
convolution with rescaled weights and a bias (``torch.nn.utils.fusion``). Rendering icons runs the model up to the
layer thousands of times with channels-last inputs, where the norms' own passes cost as much as the convolutions':
on EfficientNet-Lite0 at 80 px (one thread, forward and backward to the input) folding took a step from 0.32 s to
0.20 s per 64 views.

A pair is folded only where that is certain to change nothing but speed, read from one traced forward:

- the convolution and the norm each ran once, and the norm's input is the convolution's output;
- nothing else uses that output (it appears once among the inputs of the autograd graph's nodes);
- the norm is one whose remaining work is known: ``nn.BatchNorm2d`` itself (none left) or timm's
  ``BatchNormAct2d`` (its dropout and activation), using running statistics.

The copy's output is then compared with the model's; if they differ the model itself is used, unfolded.
"""

from __future__ import annotations

import copy
from collections import Counter
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_weights

from atlas.models.capture import eval_mode
from atlas.models.view import ModelView

RELATIVE_TOLERANCE = 1e-3  # of the output's largest magnitude: folding in float32 moves outputs by about 1e-6 of it


class FoldedNorm(nn.Module):
    """What is left of a norm once its affine map lives in the convolution before it: timm's dropout and activation."""

    def __init__(self, drop: nn.Module | None = None, act: nn.Module | None = None) -> None:
        super().__init__()
        self.drop = drop if drop is not None else nn.Identity()
        self.act = act if act is not None else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.drop(x))


def _remainder(norm: nn.Module) -> FoldedNorm | None:
    """The module that replaces ``norm`` once folded; None where its forward is not known to be norm-then-that."""
    if not isinstance(norm, nn.BatchNorm2d) or norm.running_mean is None or norm.running_var is None:
        return None
    if type(norm) is nn.BatchNorm2d:
        return FoldedNorm()
    try:
        from timm.layers import BatchNormAct2d
    except ImportError:  # timm absent: only torch's own norm is known
        return None
    if type(norm) is BatchNormAct2d:
        return FoldedNorm(norm.drop, norm.act)
    return None


def _leaves(output: Any) -> Iterator[torch.Tensor]:
    if isinstance(output, torch.Tensor):
        yield output
    elif isinstance(output, dict):
        for value in output.values():
            yield from _leaves(value)
    elif isinstance(output, list | tuple):
        for value in output:
            yield from _leaves(value)


def _uses(outputs: list[torch.Tensor]) -> Counter[Any]:
    """How many times each autograd node is an input of another node, over the graph behind ``outputs``."""
    uses: Counter[Any] = Counter()
    seen: set[Any] = set()
    stack = [t.grad_fn for t in outputs if t.grad_fn is not None]
    seen.update(stack)
    while stack:
        node = stack.pop()
        for parent, _ in node.next_functions:
            if parent is None:
                continue
            uses[parent] += 1
            if parent not in seen:
                seen.add(parent)
                stack.append(parent)
    return uses


def foldable_pairs(module: nn.Module, example: torch.Tensor) -> list[tuple[str, str]]:
    """(convolution, norm) names that fold with certainty, read from one forward of ``example`` in eval mode."""
    names = {m: name for name, m in module.named_modules()}
    calls: Counter[str] = Counter()
    produced: dict[Any, str] = {}  # a convolution output's autograd node -> the convolution
    fed: dict[str, Any] = {}  # a norm -> its input's autograd node
    hooks = []

    def on_conv(conv: nn.Module, inputs: tuple[Any, ...], output: Any) -> None:
        calls[names[conv]] += 1
        if isinstance(output, torch.Tensor) and output.grad_fn is not None:
            produced[output.grad_fn] = names[conv]

    def on_norm(norm: nn.Module, inputs: tuple[Any, ...]) -> None:
        calls[names[norm]] += 1
        if inputs and isinstance(inputs[0], torch.Tensor):
            fed[names[norm]] = inputs[0].grad_fn

    for m in names:
        if isinstance(m, nn.Conv2d):
            hooks.append(m.register_forward_hook(on_conv))
        elif _remainder(m) is not None:
            hooks.append(m.register_forward_pre_hook(on_norm))
    try:
        with eval_mode(module), torch.enable_grad():
            outputs = list(_leaves(module(example.detach().requires_grad_(True))))
    finally:
        for hook in hooks:
            hook.remove()
    uses = _uses(outputs)
    pairs = []
    for norm, node in fed.items():
        conv = produced.get(node)
        if conv is not None and calls[conv] == 1 and calls[norm] == 1 and uses[node] == 1:
            pairs.append((conv, norm))
    return pairs


def _fold(module: nn.Module, pairs: list[tuple[str, str]]) -> nn.Module:
    folded = copy.deepcopy(module).eval()
    for conv_name, norm_name in pairs:
        conv, norm = folded.get_submodule(conv_name), folded.get_submodule(norm_name)
        assert isinstance(conv, nn.Conv2d) and isinstance(norm, nn.BatchNorm2d)
        remainder = _remainder(norm)
        assert remainder is not None and norm.running_mean is not None and norm.running_var is not None
        with torch.no_grad():
            weight, bias = fuse_conv_bn_weights(
                conv.weight, conv.bias, norm.running_mean, norm.running_var, norm.eps, norm.weight, norm.bias
            )
        conv.weight, conv.bias = weight, bias
        parent_name, _, leaf = norm_name.rpartition(".")
        setattr(folded.get_submodule(parent_name), leaf, remainder)
    return folded


def _agree(a: Any, b: Any) -> bool:
    ours, theirs = list(_leaves(a)), list(_leaves(b))
    if len(ours) != len(theirs):
        return False
    for x, y in zip(ours, theirs, strict=True):
        scale = float(y.detach().abs().max()) if y.numel() else 0.0
        if x.shape != y.shape or not torch.allclose(x.float(), y.float(), rtol=0.0, atol=RELATIVE_TOLERANCE * scale + 1e-6):
            return False
    return True


def _agree_in_eval(folded: nn.Module, module: nn.Module, example: torch.Tensor) -> bool:
    with eval_mode(module), torch.no_grad():
        return _agree(folded(example), module(example))


def fold_batch_norms(view: ModelView, example: torch.Tensor | None = None) -> ModelView:
    """The view on a copy of its model with every certain (convolution, norm) pair folded; the view itself when
    no pair folds or the folded copy's output differs from the model's.

    ``example``: one input batch for the traced forward (default: two random images at the model's input size).
    The copy has the view's layer name, layout and preprocessing; the model itself is left untouched. A model that
    cannot be traced or copied is used as it is (its own forward will say what is wrong where it matters).
    """
    if not any(_remainder(m) is not None for m in view.module.modules()):
        return view
    if example is None:
        size = view.preprocessing.input_size
        example = torch.rand(2, view.preprocessing.channels, size, size, generator=torch.Generator().manual_seed(0))
    example = example.to(device=view.device, dtype=view.dtype)
    try:
        pairs = foldable_pairs(view.module, example)
        if not pairs:
            return view
        folded = _fold(view.module, pairs)
        agree = _agree_in_eval(folded, view.module, example)
    except Exception:  # folding only saves time: a model it cannot trace or copy runs as it is
        return view
    if not agree:
        return view
    model = replace(view.model, module=folded)
    return ModelView(model, view.layer_name, folded.get_submodule(view.layer_name), view.layout)


__all__ = ["FoldedNorm", "fold_batch_norms", "foldable_pairs"]
