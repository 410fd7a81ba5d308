"""Swin Transformer (torchvision's V1: swin_t, swin_s, swin_b): window attention and patch merging
with the transformer rules of `transformer.py`.

- Window attention takes the composite's self-attention rule. CP-LRP (every composite but
  `attnlrp`): within each window the softmax weights, relative position bias and shift mask
  included, are constants for relevance, and relevance follows LRP-0 through the value and output
  projections. AttnLRP (`attnlrp`): relevance also reaches queries and keys through the softmax
  (`transformer.attnlrp_grads`); the position bias and the shift mask keep their share.
- Padding to whole windows, the cyclic shift (torch.roll), the window partition and its reverse,
  and patch merging's pad, strided slices and concatenation only move values (or add zeros that
  get none): their gradient moves relevance with them, unchanged.

torchvision wraps both functions for torch.fx, so each is one node of the traced graph, owned by
its module (`features.1.0.attn`, ShiftedWindowAttention). The window attention node is retargeted
to `window_attention`, torchvision's forward in eval mode with the attention's rule in it. Swin V2
(cosine attention, a relative position bias computed by an MLP) is refused by path and type.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, fx
from torchvision.models import swin_transformer

from heatjob.attribution.lrp.handlers import (
    Handler,
    Rewrite,
    Snapshot,
    register_handler,
    unsupported,
)
from heatjob.attribution.lrp.rules import stabilize
from heatjob.attribution.lrp.transformer import EXACT_STABILIZER, _heads, _merge, attnlrp_grads

# torchvision's mask value between tokens of different regions of a shifted window
_SHIFT_MASK = -100.0


class _WindowAttentionFunction(torch.autograd.Function):
    """Attention within windows (n windows, tokens, channels) under the rules of
    `transformer._AttentionFunction` with Swin's packed projections: "cp", its softmax weights
    constant for relevance, or "attnlrp" (the position bias and shift mask keep their share)."""

    @staticmethod
    def forward(
        ctx, x, qkv_weight, qkv_bias, proj_weight, proj_bias, position_bias, mask, heads, rule
    ):
        width = x.shape[-1]
        qkv = F.linear(x, qkv_weight, qkv_bias).split(width, -1)
        q, k, v = (_heads(t, heads) for t in qkv)
        scale = (width // heads) ** -0.5
        logits = (q * scale) @ k.transpose(-2, -1) + position_bias
        if mask is not None:  # (windows, tokens, tokens), the same for every image
            by_image = logits.view(-1, mask.shape[0], *logits.shape[1:])
            logits = (by_image + mask.unsqueeze(1).unsqueeze(0)).view(logits.shape)
        weights = torch.softmax(logits, dim=-1)
        y = F.linear(_merge(weights @ v), proj_weight, proj_bias)
        ctx.x, ctx.weights, ctx.heads, ctx.rule = x, weights, heads, rule
        if rule == "attnlrp":
            ctx.qkv, ctx.scale, ctx.qkv_weight = (q, k, v), scale, qkv_weight
        ctx.proj_weight, ctx.value_weight = proj_weight, qkv_weight[2 * width :]
        ctx.denominator = stabilize(y, EXACT_STABILIZER)
        return y

    @staticmethod
    def backward(ctx, r: Tensor):
        grad = _heads((r / ctx.denominator) @ ctx.proj_weight, ctx.heads)
        if ctx.rule == "attnlrp":
            grads = attnlrp_grads(grad, *ctx.qkv, ctx.weights, ctx.scale)
            grad_x = torch.cat([_merge(g) for g in grads], -1) @ ctx.qkv_weight
            return ctx.x * grad_x, *([None] * 8)
        grad = _merge(ctx.weights.transpose(-2, -1) @ grad)
        return ctx.x * (grad @ ctx.value_weight), *([None] * 8)


def _shift_mask(height: int, width: int, window: list[int], shift: list[int], like: Tensor):
    """torchvision's mask of a shifted window: -100 between tokens from different regions."""
    regions = like.new_zeros((height, width))
    count = 0
    for h in ((0, -window[0]), (-window[0], -shift[0]), (-shift[0], None)):
        for w in ((0, -window[1]), (-window[1], -shift[1]), (-shift[1], None)):
            regions[h[0] : h[1], w[0] : w[1]] = count
            count += 1
    regions = regions.view(height // window[0], window[0], width // window[1], window[1])
    regions = regions.permute(0, 2, 1, 3).reshape(-1, window[0] * window[1])
    different = regions.unsqueeze(1) - regions.unsqueeze(2) != 0
    return torch.zeros_like(different, dtype=like.dtype).masked_fill_(different, _SHIFT_MASK)


def _windows(x: Tensor, window: list[int]) -> Tensor:
    n, height, width, channels = x.shape
    x = x.view(n, height // window[0], window[0], width // window[1], window[1], channels)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, window[0] * window[1], channels)


def _unwindows(y: Tensor, window: list[int], n: int, height: int, width: int) -> Tensor:
    y = y.view(n, height // window[0], width // window[1], window[0], window[1], y.shape[-1])
    return y.permute(0, 1, 3, 2, 4, 5).reshape(n, height, width, -1)


def window_attention(
    input: Tensor,
    qkv_weight: Tensor,
    proj_weight: Tensor,
    relative_position_bias: Tensor,
    window_size: list[int],
    num_heads: int,
    shift_size: list[int],
    attention_dropout: float = 0.0,
    dropout: float = 0.0,
    qkv_bias: Tensor | None = None,
    proj_bias: Tensor | None = None,
    logit_scale: Tensor | None = None,
    training: bool = False,
    rule: str = "cp",
) -> Tensor:
    """torchvision's shifted_window_attention (V1) in eval mode (no dropout), same signature,
    whose attention hands relevance back by `rule` (the composite's attention: "cp", CP-LRP, or
    "attnlrp")."""
    n, height, width, _ = input.shape
    pad_w = (window_size[1] - width % window_size[1]) % window_size[1]
    pad_h = (window_size[0] - height % window_size[0]) % window_size[0]
    x = F.pad(input, (0, 0, 0, pad_w, 0, pad_h))
    padded = (height + pad_h, width + pad_w)
    # no shift where one window covers the map (as torchvision)
    shift = [0 if w >= p else s for s, w, p in zip(shift_size, window_size, padded, strict=True)]
    shifted = sum(shift) > 0
    if shifted:
        x = torch.roll(x, shifts=(-shift[0], -shift[1]), dims=(1, 2))
    mask = _shift_mask(*padded, window_size, shift, x) if shifted else None
    y = _WindowAttentionFunction.apply(
        _windows(x, window_size),
        qkv_weight,
        qkv_bias,
        proj_weight,
        proj_bias,
        relative_position_bias,
        mask,
        num_heads,
        rule,
    )
    x = _unwindows(y, window_size, n, *padded)
    if shifted:
        x = torch.roll(x, shifts=(shift[0], shift[1]), dims=(1, 2))
    return x[:, :height, :width, :].contiguous()


def _argument(node: fx.Node, index: int, name: str) -> object:
    return node.args[index] if len(node.args) > index else node.kwargs.get(name)


def _check_window_attention(snapshot: Snapshot, node: fx.Node) -> None:
    if _argument(node, 11, "logit_scale") is not None:
        raise unsupported(snapshot, node, "only Swin V1 window attention has a rule")
    bias = _argument(node, 3, "relative_position_bias")
    if not (isinstance(bias, fx.Node) and bias in snapshot.static):
        raise unsupported(
            snapshot, node, "only a relative position bias made from parameters has a rule"
        )


def _rewrite_window_attention(context: Rewrite, node: fx.Node, decision: object) -> None:
    node.target = window_attention
    if context.composite.attention != "cp":
        node.kwargs = {**node.kwargs, "rule": context.composite.attention}


def _function(target: object):
    return lambda snapshot, node: node.op == "call_function" and node.target is target


register_handler(
    Handler(
        "window attention",
        _function(swin_transformer.shifted_window_attention),
        _check_window_attention,
        _rewrite_window_attention,
        label="Swin window attention",
    )
)
register_handler(
    Handler(
        "patch merging",  # pad, strided slices, concatenation: the gradient moves relevance
        _function(swin_transformer._patch_merging_pad),
        label="Swin patch merging",
    )
)
