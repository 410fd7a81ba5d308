"""LRP for transformer layers: LayerNorm, self-attention, GELU (the CP-LRP rules, Ali et al. 2022,
and AttnLRP's attention).
ConvNeXt's LayerNorm2d takes the LayerNorm rule; Swin's window attention, the attention rule
(`swin.py`).

Shared by every composite, as pass-through for ReLU is:

- LayerNorm with its standard deviation held constant: y = (x - mean x) / std * w + b is then
  linear in x, and relevance follows LRP-0 through that map (the bias keeps its share).
- Self-attention by the composite's `attention` rule. "cp" (CP-LRP, every composite but
  `attnlrp`): queries and keys held constant, the softmax weights A are constants, the layer is
  out_proj(A · value_proj(x)), linear in x, and relevance follows LRP-0 through the value and
  output projections. "attnlrp" (AttnLRP, Achtibat et al. 2024): relevance also flows through the
  softmax (its Taylor rule) and both matmuls (epsilon, half to each operand) to the queries and
  keys (`attnlrp_grads`). Either way the attention projections take no composite rule (LRP-0).
- GELU passes relevance through; residual sums split it in proportion to their operands; the
  class token and the position embedding are parameters: what reaches them stays there.

LRP-0 through a map y = M x + c is x ⊙ Mᵀ (R / y). The denominators here are shifted by only
`EXACT_STABILIZER`, far below float32's resolution of any y that carries relevance, so that these
layers equal the gradient × input formulation (LXT's) to float32 round-off. In a model with
transformer layers the residual sums take the same denominator (in a CNN they keep zennit's 1e-6,
whose heatmaps the CNN composites reproduce): with 1e-6, ViT-B/16's heatmaps drift from LXT's by
about 1e-3 of their maximum.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, fx, nn
from torchvision.models.convnext import LayerNorm2d

from heatjob.attribution.lrp.canonizers import ADD_FUNCTIONS
from heatjob.attribution.lrp.composites import ATTENTION_RULES
from heatjob.attribution.lrp.engine import (
    PROPORTIONAL_MODULES,
    PassLayer,
    ProportionalLayer,
    check_sum,
    residual_sum,
)
from heatjob.attribution.lrp.handlers import (
    Handler,
    Rewrite,
    Snapshot,
    register_handler,
    unsupported,
)
from heatjob.attribution.lrp.rules import stabilize

# Keeps an exact zero out of a denominator (whose relevance is then zero too) and nothing else.
EXACT_STABILIZER = 1e-30


class _LayerNormFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, norm: nn.LayerNorm) -> Tensor:
        mean = x.mean(dim=-1, keepdim=True)
        std = ((x - mean) ** 2).mean(dim=-1, keepdim=True).add(norm.eps).sqrt()
        y = (x - mean) / std
        if norm.weight is not None:
            y = y * norm.weight
        if norm.bias is not None:
            y = y + norm.bias
        ctx.x, ctx.std, ctx.norm = x, std, norm
        ctx.denominator = stabilize(y, EXACT_STABILIZER)
        return y

    @staticmethod
    def backward(ctx, r: Tensor) -> tuple[Tensor, None]:
        grad = r / ctx.denominator
        if ctx.norm.weight is not None:
            grad = grad * ctx.norm.weight
        grad = grad / ctx.std
        # the transpose of centring x - mean(x) is centring
        grad = grad - grad.mean(dim=-1, keepdim=True)
        return ctx.x * grad, None


class LayerNormLayer(nn.Module):
    """LayerNorm over the last dimension, its standard deviation constant for relevance."""

    def __init__(self, norm: nn.LayerNorm) -> None:
        super().__init__()
        self.norm = norm

    def forward(self, x: Tensor) -> Tensor:
        return _LayerNormFunction.apply(x, self.norm)


class ChannelLayerNormLayer(LayerNormLayer):
    """ConvNeXt's LayerNorm2d: the same rule over the channels of an (n, c, h, w) tensor (the
    permutations around it move relevance unchanged)."""

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


def _heads(t: Tensor, heads: int) -> Tensor:
    n, tokens, width = t.shape
    return t.view(n, tokens, heads, width // heads).transpose(1, 2)


def _merge(t: Tensor) -> Tensor:
    n, heads, tokens, width = t.shape
    return t.transpose(1, 2).reshape(n, tokens, heads * width)


class _AttentionFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, attention: nn.MultiheadAttention, rule: str = "cp") -> Tensor:
        width, heads = attention.embed_dim, attention.num_heads
        q, k, v = F.linear(x, attention.in_proj_weight, attention.in_proj_bias).split(width, -1)
        q, k, v = (_heads(t, heads) for t in (q, k, v))
        root = math.sqrt(width // heads)
        weights = torch.softmax(q @ k.transpose(-2, -1) / root, dim=-1)
        out_proj = attention.out_proj
        y = F.linear(_merge(weights @ v), out_proj.weight, out_proj.bias)
        ctx.x, ctx.weights, ctx.attention, ctx.rule = x, weights, attention, rule
        if rule == "attnlrp":
            ctx.qkv, ctx.scale = (q, k, v), 1 / root
        ctx.denominator = stabilize(y, EXACT_STABILIZER)
        return y

    @staticmethod
    def backward(ctx, r: Tensor) -> tuple[Tensor, None, None]:
        attention = ctx.attention
        width, heads = attention.embed_dim, attention.num_heads
        grad = _heads((r / ctx.denominator) @ attention.out_proj.weight, heads)
        if ctx.rule == "attnlrp":
            grads = attnlrp_grads(grad, *ctx.qkv, ctx.weights, ctx.scale)
            grad_x = torch.cat([_merge(g) for g in grads], -1) @ attention.in_proj_weight
            return ctx.x * grad_x, None, None
        grad = _merge(ctx.weights.transpose(-2, -1) @ grad)
        value_weight = attention.in_proj_weight[2 * width :]
        return ctx.x * (grad @ value_weight), None, None


def attnlrp_grads(
    grad: Tensor, q: Tensor, k: Tensor, v: Tensor, weights: Tensor, scale: float
) -> tuple[Tensor, Tensor, Tensor]:
    """AttnLRP (Achtibat et al. 2024) from the heads' outputs O = softmax(s) V, s = scale q kᵀ
    (+ constants), back to q, k and v, as relevance / input (what x ⊙ · turns into relevance).

    Each matmul of two variable operands takes the epsilon rule split evenly between them (the
    uniform rule): R_a = a ⊙ ((R / 2z) bᵀ), so with R = z ⊙ g, half the gradient reaches each
    operand. The softmax takes the Taylor rule at its input, R_s = s ⊙ (R_A - A ⊙ Σ R_A), which
    with R_A = A ⊙ g is s ⊙ (the softmax's own gradient of g): no denominator there at all. A
    constant added to s (Swin's position bias and shift mask) keeps its share s_c ⊙ g_s.
    """
    grad_weights = 0.5 * (grad @ v.transpose(-2, -1))
    grad_v = 0.5 * (weights.transpose(-2, -1) @ grad)
    grad_logits = weights * (grad_weights - (weights * grad_weights).sum(-1, keepdim=True))
    grad_q = (0.5 * scale) * (grad_logits @ k)
    grad_k = (0.5 * scale) * (grad_logits.transpose(-2, -1) @ q)
    return grad_q, grad_k, grad_v


class AttentionLayer(nn.Module):
    """Self-attention (MultiheadAttention, batch first) under an attention rule: "cp" (CP-LRP,
    queries and keys constant for relevance) or "attnlrp" (relevance through the softmax and both
    matmuls to queries, keys and values); returns (output, None) as the module does with
    need_weights=False."""

    def __init__(self, attention: nn.MultiheadAttention, rule: str = "cp") -> None:
        super().__init__()
        if rule not in ATTENTION_RULES:
            raise ValueError(f"attention rule {rule!r}; known: {', '.join(ATTENTION_RULES)}")
        self.attention, self.rule = attention, rule

    def forward(self, query: Tensor, key: Tensor, value: Tensor, **kwargs: object):
        return _AttentionFunction.apply(query, self.attention, self.rule), None

    def extra_repr(self) -> str:
        return f"rule={self.rule}"


def _module_of(kind: type[nn.Module]):
    # The exact type: a subclass may normalise or attend over other dimensions (ConvNeXt's
    # LayerNorm2d is a LayerNorm over channels of a channels-first tensor: an entry of its own).
    return lambda snapshot, node: type(snapshot.module(node)) is kind


def _check_norm(snapshot: Snapshot, node: fx.Node) -> nn.LayerNorm:
    norm = snapshot.module(node)
    if len(norm.normalized_shape) != 1:
        raise unsupported(snapshot, node, "only a LayerNorm over the last dimension has a rule")
    return norm


_ATTENTION_KWARGS = {"need_weights": False, "attn_mask": None, "key_padding_mask": None}


def _check_attention(snapshot: Snapshot, node: fx.Node) -> nn.MultiheadAttention:
    attention = snapshot.module(node)
    inputs = list(node.args) + [node.kwargs.get(k) for k in ("query", "key", "value")]
    inputs = [a for a in inputs if a is not None]
    problems = [
        (len(inputs) != 3 or len(set(inputs)) != 1, "only self-attention (query = key = value)"),
        (not attention.batch_first, "only batch_first attention"),
        (not attention._qkv_same_embed_dim, "only one packed in-projection"),
        (attention.bias_k is not None or attention.add_zero_attn, "no bias_k/bias_v/zero attn"),
        (
            any(
                k not in ("query", "key", "value") and _ATTENTION_KWARGS.get(k, ...) != v
                for k, v in node.kwargs.items()
            ),
            "only need_weights=False without masks",
        ),
    ]
    for failed, why in problems:
        if failed:
            raise unsupported(snapshot, node, f"{why} has a rule")
    return attention


def _the_module(snapshot: Snapshot, node: fx.Node) -> nn.Module:
    return snapshot.module(node)


def _rewrite_attention(context: Rewrite, node: fx.Node, attention: nn.MultiheadAttention) -> None:
    context.swap(str(node.target), AttentionLayer(attention, context.composite.attention))


def _swap(wrap):
    def rewrite(context: Rewrite, node: fx.Node, module: nn.Module) -> None:
        context.swap(str(node.target), wrap(module))

    return rewrite


# One entry per module kind: (handler name, exact module type, check, the module with its rule,
# what a refusal lists as supported).
_MODULE_RULES = (
    ("layer norm", nn.LayerNorm, _check_norm, LayerNormLayer, "LayerNorm"),
    ("channel layer norm", LayerNorm2d, _check_norm, ChannelLayerNormLayer, "LayerNorm2d"),
    (
        "self-attention",
        nn.MultiheadAttention,
        _check_attention,
        None,  # the composite's attention rule (_rewrite_attention)
        "MultiheadAttention (self-attention)",
    ),
    ("gelu", nn.GELU, _the_module, PassLayer, "GELU"),
)
for _name, _kind, _check, _wrap, _label in _MODULE_RULES:
    _rewrite = _rewrite_attention if _wrap is None else _swap(_wrap)
    register_handler(Handler(_name, _module_of(_kind), _check, _rewrite, label=_label))

TRANSFORMER_LAYERS = (nn.LayerNorm, nn.MultiheadAttention)


def _in_transformer(snapshot: Snapshot) -> bool:
    return any(isinstance(m, TRANSFORMER_LAYERS) for m in snapshot.modules.values())


def _token_sum(snapshot: Snapshot, node: fx.Node) -> bool:
    if node.op != "call_function" or node.target not in ADD_FUNCTIONS or node in snapshot.static:
        return False
    return _in_transformer(snapshot)


def _rewrite_token_sum(context: Rewrite, node: fx.Node, decision: object) -> None:
    node.target = residual_sum
    node.kwargs = {"stabilizer": EXACT_STABILIZER}


def _token_pool(snapshot: Snapshot, node: fx.Node) -> bool:
    return isinstance(snapshot.module(node), PROPORTIONAL_MODULES) and _in_transformer(snapshot)


# In a model with transformer layers the residual sums and average pooling (Swin's and ConvNeXt's
# head) take the exact denominator too: pooling's 1e-6 alone moves ConvNeXt-T's LRP-0 heatmaps by
# about 1e-4 of their maximum away from the gradient x input formulation.
register_handler(
    Handler(
        "transformer residual sum",
        _token_sum,
        check_sum,
        _rewrite_token_sum,
        label="residual sums of two tensors",
    ),
    first=True,
)
register_handler(
    Handler(
        "transformer average pooling",
        _token_pool,
        _the_module,
        _swap(lambda module: ProportionalLayer(module, EXACT_STABILIZER)),
        label="AvgPool2d, AdaptiveAvgPool2d",
    ),
    first=True,
)
