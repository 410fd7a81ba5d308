"""LRP rules: how one layer hands the relevance of its outputs to its inputs.

A rule for a Conv2d or Linear layer is a `Rule`; `Rule.bind(layer)` computes the rule's modified
weights once and returns a `BoundRule` whose `relevance(x, z, r)` maps the relevance `r` on the
layer's output `z = layer(x)` to relevance on `x`. Every rule works on one layer alone, so each is
tested in isolation; the engine chains them through autograd.

Notation as in docs/mission.md: z_ij = x_i w_ij, z_j = sum_i z_ij + b_j. Denominators are shifted
away from zero by `stabilize` exactly as zennit 0.5.1 does (zero counts as positive), because the
heatmaps must equal zennit's to float32 round-off.

The two rules that act on parameter-free operations live here too: `norm_relevance` (average
pooling and residual sums: in proportion to the inputs) and pass-through (activations), which
needs no code beyond returning the incoming relevance.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# zennit's default for every rule but epsilon; only keeps denominators away from zero.
STABILIZER = 1e-6


def number(value: float) -> str:
    """Compact text for a rule parameter: 1e-6, 0.25, 2."""
    mantissa, _, exponent = f"{value:g}".partition("e")
    return f"{mantissa}e{int(exponent)}" if exponent else mantissa


def stabilize(z: Tensor, epsilon: float) -> Tensor:
    """z + epsilon * sign(z), with sign(0) = +1 so that no denominator is zero."""
    sign = (z >= 0).to(z.dtype) * 2 - 1
    return z + sign * epsilon


def conv_padding(layer: nn.Conv2d) -> tuple[int, int] | None:
    """The conv's zero padding as two ints, or None where it is asymmetric ('same', even kernel)."""
    if isinstance(layer.padding, str):
        if layer.padding == "valid":
            return (0, 0)
        total = [d * (k - 1) for d, k in zip(layer.dilation, layer.kernel_size, strict=True)]
        if any(t % 2 for t in total):
            return None
        return (total[0] // 2, total[1] // 2)
    return (int(layer.padding[0]), int(layer.padding[1]))


class Affine:
    """The affine map of one Conv2d or Linear layer with swappable weights.

    `forward(x, w, b)` is the layer's map with weights w and bias b; `backward(g, w, shape)` is the
    input gradient of the bias-free map at cotangent g, i.e. sum_j w_ij g_j (a transposed conv for
    Conv2d), computed without building an autograd graph.
    """

    def __init__(self, layer: nn.Module) -> None:
        self.weight = layer.weight.detach()
        self.bias = None if layer.bias is None else layer.bias.detach()
        if isinstance(layer, nn.Conv2d):
            padding = conv_padding(layer)
            if padding is None or layer.padding_mode != "zeros":
                raise ValueError(f"unsupported padding {layer.padding!r} / {layer.padding_mode}")
            self._conv = (tuple(layer.stride), padding, tuple(layer.dilation), layer.groups)
        elif isinstance(layer, nn.Linear):
            self._conv = None
        else:
            raise TypeError(
                f"an LRP rule needs a Conv2d or Linear layer, not {type(layer).__name__}"
            )

    def forward(self, x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
        if self._conv is None:
            return F.linear(x, weight, bias)
        stride, padding, dilation, groups = self._conv
        return F.conv2d(x, weight, bias, stride, padding, dilation, groups)

    def backward(self, grad: Tensor, weight: Tensor, input_shape: torch.Size) -> Tensor:
        if self._conv is None:
            return grad @ weight
        stride, padding, dilation, groups = self._conv
        return torch.nn.grad.conv2d_input(
            input_shape, weight, grad, stride, padding, dilation, groups
        )


@dataclass
class BoundRule:
    """A rule fixed to one layer, with the rule's modified weights computed once."""

    rule: Rule
    affine: Affine
    params: dict[str, Tensor | None]

    def forward(self, x: Tensor) -> Tensor:
        """The layer's ordinary output."""
        return self.affine.forward(x, self.affine.weight, self.affine.bias)

    def relevance(self, x: Tensor, z: Tensor, r: Tensor) -> Tensor:
        """Relevance on input x, given the output z = forward(x) and the relevance r on z."""
        return self.rule.relevance(self.affine, self.params, x, z, r)


class Rule(ABC):
    """An LRP rule for Conv2d and Linear layers."""

    def bind(self, layer: nn.Module) -> BoundRule:
        """Fix the rule to `layer`, precomputing whatever modified weights the rule needs."""
        affine = Affine(layer)
        return BoundRule(self, affine, self.prepare(affine))

    def prepare(self, affine: Affine) -> dict[str, Tensor | None]:
        """The rule's modified parameters, computed once per layer."""
        return {}

    @abstractmethod
    def relevance(
        self, affine: Affine, params: dict[str, Tensor | None], x: Tensor, z: Tensor, r: Tensor
    ) -> Tensor:
        """Relevance on x, given the layer's output z and the relevance r on it."""

    @abstractmethod
    def describe(self) -> str:
        """A short name with parameters, e.g. 'epsilon(1e-6)'."""


def _split_signs(w: Tensor | None) -> tuple[Tensor | None, Tensor | None]:
    if w is None:
        return None, None
    return w.clamp(min=0), w.clamp(max=0)


class Epsilon(Rule):
    """LRP-epsilon: R_i = sum_j z_ij / (z_j + eps sign(z_j)) R_j, bias included in z_j."""

    def __init__(self, epsilon: float = 1e-6) -> None:
        self.epsilon = float(epsilon)

    def relevance(self, affine, params, x, z, r):
        return x * affine.backward(r / stabilize(z, self.epsilon), affine.weight, x.shape)

    def describe(self) -> str:
        return f"epsilon({number(self.epsilon)})"


class Z(Epsilon):
    """LRP-0: R_i = sum_j z_ij / z_j R_j; the tiny stabiliser only guards against z_j = 0."""

    def __init__(self, stabilizer: float = STABILIZER) -> None:
        super().__init__(stabilizer)

    def describe(self) -> str:
        return "z"


class AlphaBeta(Rule):
    """LRP-alpha-beta: positive and negative contributions normalised separately.

    R_i = sum_j (alpha z_ij+ / z_j+ - beta z_ij- / z_j-) R_j, where z_ij+ = x_i+ w_ij+ + x_i- w_ij-
    and z_ij- = x_i+ w_ij- + x_i- w_ij+ (so negative inputs are allowed). As in zennit, the positive
    part of the bias joins the denominator z_j+ and the negative part joins z_j-, so relevance
    absorbed by the bias is lost.
    """

    def __init__(self, alpha: float = 2.0, beta: float = 1.0, stabilizer: float = STABILIZER):
        if alpha < 0 or beta < 0 or alpha - beta != 1:
            raise ValueError(
                f"alpha-beta needs alpha, beta >= 0 and alpha - beta = 1, got {alpha}, {beta}"
            )
        self.alpha = float(alpha)
        self.beta = float(beta)
        self.stabilizer = float(stabilizer)

    def prepare(self, affine):
        w_pos, w_neg = _split_signs(affine.weight)
        b_pos, b_neg = _split_signs(affine.bias)
        return {"w_pos": w_pos, "w_neg": w_neg, "b_pos": b_pos, "b_neg": b_neg}

    def relevance(self, affine, params, x, z, r):
        x_pos, x_neg = x.clamp(min=0), x.clamp(max=0)
        w_pos, w_neg = params["w_pos"], params["w_neg"]
        out = self._part(affine, x_pos, x_neg, w_pos, w_neg, params["b_pos"], r)
        if self.beta:
            neg = self._part(affine, x_pos, x_neg, w_neg, w_pos, params["b_neg"], r)
            out = self.alpha * out - self.beta * neg
        elif self.alpha != 1:
            out = self.alpha * out
        return out

    def _part(self, affine, x_pos, x_neg, w_for_pos, w_for_neg, bias, r):
        denominator = affine.forward(x_pos, w_for_pos, bias) + affine.forward(x_neg, w_for_neg)
        g = r / stabilize(denominator, self.stabilizer)
        shape = x_pos.shape
        return x_pos * affine.backward(g, w_for_pos, shape) + x_neg * affine.backward(
            g, w_for_neg, shape
        )

    def describe(self) -> str:
        return f"alpha{number(self.alpha)}-beta{number(self.beta)}"


class _InputFree(Rule):
    """Rules whose shares do not depend on the input: R_i = sum_j v_ij / sum_i v_ij R_j for fixed
    weights v computed from the layer's (`shares`). Only inputs that really feed output j count
    in the denominator (zero padding does not), as in zennit."""

    def __init__(self, stabilizer: float = STABILIZER) -> None:
        self.stabilizer = float(stabilizer)

    @abstractmethod
    def shares(self, weight: Tensor) -> Tensor: ...

    def prepare(self, affine):
        return {"v": self.shares(affine.weight)}

    def relevance(self, affine, params, x, z, r):
        v = params["v"]
        denominator = affine.forward(torch.ones_like(x), v)
        return affine.backward(r / stabilize(denominator, self.stabilizer), v, x.shape)


class Flat(_InputFree):
    """Flat: each input in a receptive field gets an equal share, R_i = sum_j R_j / n_j."""

    def shares(self, weight: Tensor) -> Tensor:
        return torch.ones_like(weight)

    def describe(self) -> str:
        return "flat"


class WSquare(_InputFree):
    """w-square: R_i = sum_j w_ij^2 / sum_i w_ij^2 R_j (bias ignored, unlike zennit's WSquare)."""

    def shares(self, weight: Tensor) -> Tensor:
        return weight**2

    def describe(self) -> str:
        return "w-square"


BoundValue = float | Sequence[float] | Tensor


def _expand_bound(bound: Tensor, x: Tensor) -> Tensor:
    """A per-channel bound shaped like x (channel-major for a Linear behind a Flatten)."""
    bound = bound.to(device=x.device, dtype=x.dtype)
    if bound.ndim == 1 and bound.numel() > 1:
        channels = bound.numel()
        if x.ndim == 4 and x.shape[1] == channels:
            bound = bound.view(1, channels, 1, 1)
        elif x.ndim == 2 and x.shape[1] % channels == 0:
            bound = bound.repeat_interleave(x.shape[1] // channels).view(1, -1)
        else:
            raise ValueError(f"{channels} box bounds do not fit an input of shape {tuple(x.shape)}")
    return bound.expand_as(x)


class ZBox(Rule):
    """z^B: for inputs bounded to [l_i, h_i] (the first layer, pixels).

    R_i = sum_j (x_i w_ij - l_i w_ij+ - h_i w_ij-) / sum_i (...) R_j. `low`/`high` are a scalar, one
    value per input channel, or a tensor broadcastable to the input; None leaves them to be filled
    in by the engine from the normalisation (`with_bounds`).
    """

    def __init__(
        self,
        low: BoundValue | None = None,
        high: BoundValue | None = None,
        stabilizer: float = STABILIZER,
    ) -> None:
        self.low = None if low is None else torch.as_tensor(low, dtype=torch.float32)
        self.high = None if high is None else torch.as_tensor(high, dtype=torch.float32)
        self.stabilizer = float(stabilizer)

    def with_bounds(self, low: BoundValue, high: BoundValue) -> ZBox:
        return ZBox(low, high, self.stabilizer)

    def prepare(self, affine):
        if self.low is None or self.high is None:
            raise ValueError("the z^B rule needs the input bounds low and high")
        w_pos, w_neg = _split_signs(affine.weight)
        b_pos, b_neg = _split_signs(affine.bias)
        return {"w_pos": w_pos, "w_neg": w_neg, "b_pos": b_pos, "b_neg": b_neg}

    def relevance(self, affine, params, x, z, r):
        low, high = _expand_bound(self.low, x), _expand_bound(self.high, x)
        w_pos, w_neg = params["w_pos"], params["w_neg"]
        # The biases cancel (b - b+ - b- = 0); keeping them, and the grouping of the sums,
        # mirrors zennit's arithmetic so round-off matches too.
        bounds = affine.forward(low, w_pos, params["b_pos"]) + affine.forward(
            high, w_neg, params["b_neg"]
        )
        g = r / stabilize(z - bounds, self.stabilizer)
        return x * affine.backward(g, affine.weight, x.shape) - (
            low * affine.backward(g, w_pos, x.shape) + high * affine.backward(g, w_neg, x.shape)
        )

    def describe(self) -> str:
        return "z^B box"


class Gamma(Rule):
    """LRP-gamma, generalised to signed inputs as in zennit.

    For outputs z_j > 0: LRP-0 with positive contributions boosted, i.e. x+ on w + gamma w+ and
    x- on w + gamma w- (bias b + gamma b+); for z_j < 0 the mirror image (bias b + gamma b-).
    With non-negative inputs and z_j > 0 this is LRP-0 on w + gamma w+.
    """

    def __init__(self, gamma: float = 0.25, stabilizer: float = STABILIZER) -> None:
        self.gamma = float(gamma)
        self.stabilizer = float(stabilizer)

    def prepare(self, affine):
        w, b, gamma = affine.weight, affine.bias, self.gamma
        return {
            "w_up": w + gamma * w.clamp(min=0),
            "w_down": w + gamma * w.clamp(max=0),
            "b_up": None if b is None else b + gamma * b.clamp(min=0),
            "b_down": None if b is None else b + gamma * b.clamp(max=0),
        }

    def relevance(self, affine, params, x, z, r):
        x_pos, x_neg = x.clamp(min=0), x.clamp(max=0)
        w_up, w_down = params["w_up"], params["w_down"]
        pos = affine.forward(x_pos, w_up, params["b_up"]) + affine.forward(x_neg, w_down)
        neg = affine.forward(x_pos, w_down, params["b_down"]) + affine.forward(x_neg, w_up)
        g_pos = (z > 0) * r / stabilize(pos, self.stabilizer)
        g_neg = (z < 0) * r / stabilize(neg, self.stabilizer)
        shape = x.shape
        return (
            x_pos * affine.backward(g_pos, w_up, shape)
            + x_neg * affine.backward(g_pos, w_down, shape)
            + x_pos * affine.backward(g_neg, w_down, shape)
            + x_neg * affine.backward(g_neg, w_up, shape)
        )

    def describe(self) -> str:
        return f"gamma({number(self.gamma)})"


def norm_relevance(
    fn: Callable[..., Tensor],
    inputs: Sequence[Tensor],
    r: Tensor,
    stabilizer: float = STABILIZER,
) -> tuple[Tensor, ...]:
    """The proportional ('norm') rule for a parameter-free linear map y = fn(*inputs).

    Each input element gets x_i * d y_j / d x_i / y_j * R_j: average pooling and residual sums
    redistribute relevance in proportion to what each input contributed.
    """
    with torch.enable_grad():
        leaves = [t.detach().requires_grad_() for t in inputs]
        y = fn(*leaves)
        grads = torch.autograd.grad(y, leaves, r / stabilize(y.detach(), stabilizer))
    return tuple(t * g for t, g in zip(inputs, grads, strict=True))
