"""The independent truth of the LRP-0 identity tests: the network whose plain gradient x input is
LRP-0 under the engine's shared rules, because each rule's constant is detached: LayerNorm's
standard deviation, an activation's ratio act(z) / z (pass-through), a gate's value, the
attention's softmax weights. Shared by the CNN, ViT, ConvNeXt and Swin tests."""

from __future__ import annotations

import copy
from collections.abc import Iterable, Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn


def bias_free(model: nn.Module, zero: Iterable[str] = ()) -> nn.Module:
    """A copy with every bias zero, and the parameters named in `zero` (a class token, a
    position embedding): nothing absorbs relevance."""
    model, zero = copy.deepcopy(model), set(zero)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("bias") or name in zero:
                param.zero_()
    return model


def constant_std_layer_norm(x, normalized_shape, weight=None, bias=None, eps=1e-5):
    """F.layer_norm over the last dimension with the standard deviation a constant."""
    mean = x.mean(-1, keepdim=True)
    std = (x.var(-1, unbiased=False, keepdim=True) + eps).sqrt()
    y = (x - mean) / std.detach()
    y = y if weight is None else y * weight
    return y if bias is None else y + bias


def detach_ratio(module, inputs, output):
    """Forward hook: act(z) as z * (act(z) / z) with the ratio constant (pass-through)."""
    z = inputs[0]
    nonzero = z != 0
    ratio = torch.where(nonzero, output / torch.where(nonzero, z, 1), 0)
    return z * ratio.detach()


def _constant_ratio_gelu(z, approximate="none"):
    return detach_ratio(None, (z,), _GELU(z, approximate=approximate))


def _constant_softmax(x, *args, **kwargs):
    return _SOFTMAX(x, *args, **kwargs).detach()


_LAYER_NORM, _GELU, _SOFTMAX = F.layer_norm, F.gelu, F.softmax


@contextmanager
def detached_rules(constant_softmax: bool = True) -> Iterator[None]:
    """Within: F.layer_norm with its std constant, F.gelu with gelu(z)/z constant, F.softmax
    constant (unless `constant_softmax` is False), for every module that calls them
    (torchvision's LayerNorm, LayerNorm2d, GELU, Swin's window attention). nn.MultiheadAttention
    calls no F.softmax: the ViT test detaches its queries and keys instead."""
    patches = {"layer_norm": constant_std_layer_norm, "gelu": _constant_ratio_gelu}
    if constant_softmax:
        patches["softmax"] = _constant_softmax
    try:
        for name, function in patches.items():
            setattr(F, name, function)
        yield
    finally:
        F.layer_norm, F.gelu, F.softmax = _LAYER_NORM, _GELU, _SOFTMAX


def gradient_x_input(model: nn.Module, x: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """(n, H, W): the target logits' gradient x input, summed over the colour channels."""
    x = x.clone().requires_grad_(True)
    logits = model(x)
    (grad,) = torch.autograd.grad(logits[torch.arange(len(x)), targets].sum(), x)
    return (grad * x).sum(1).detach()
