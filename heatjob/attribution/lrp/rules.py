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
from dataclasses import dataclass, field
from typing import Any

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
    """z + epsilon * sign(z), with sign(0) = +1 so that no denominator is zero.

    One allocation (filled on the device: no host tensor to copy over), then in place. It
    differs from zennit's `z >= 0` test only at z = -0.0, a sum of zeros only, whose inputs get
    zero relevance either way."""
    return torch.full_like(z, epsilon).copysign_(z).add_(z)


def stabilize_(z: Tensor, epsilon: float) -> Tensor:
    """`stabilize` in place, for a tensor the caller owns."""
    return z.add_(torch.full_like(z, epsilon).copysign_(z))


def scaled(denominator: Tensor, scale: float) -> Tensor:
    """denominator / scale, in place: r / scaled(d, s) = s r / d with the scaling done once per
    forward pass instead of once per target."""
    return denominator.div_(scale) if scale != 1 else denominator


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
    Conv2d), computed without building an autograd graph. `positive()`/`negative()` are w+ and w-,
    computed on first use and kept in `shared` (one dict per canonized model), so every composite
    of a worker uses one copy.
    """

    def __init__(self, layer: nn.Module, shared: dict | None = None) -> None:
        self.weight = layer.weight.detach()
        self.bias = None if layer.bias is None else layer.bias.detach()
        self._shared = {} if shared is None else shared
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

    def derived(self, kind: str, make: Callable[[], Tensor]) -> Tensor:
        """A tensor made from this layer's weights, made once per weight tensor and `kind`."""
        key = (self.weight.data_ptr(), self.weight.dtype, kind)
        if key not in self._shared:
            self._shared[key] = make()
        return self._shared[key]

    def positive(self) -> Tensor:
        return self.derived("w+", lambda: self.weight.clamp(min=0))

    def negative(self) -> Tensor:
        return self.derived("w-", lambda: self.weight.clamp(max=0))

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


Saved = dict[str, Any]


@dataclass(frozen=True)
class Signs:
    """What the graph proves about one layer (heatjob.attribution.lrp.signs), never read off the
    tensors, which would be a device->host sync per layer and pass: `input_non_negative`, the
    input is >= 0 (behind a ReLU), so every x- term is zero; `output_rectified`, relevance that
    reaches outputs z <= 0 is exactly zero (the output feeds a ReLU). Unknown means False: the
    rules' general path is exact for any sign."""

    input_non_negative: bool = False
    output_rectified: bool = False


UNKNOWN = Signs()


@dataclass
class BoundRule:
    """A rule fixed to one layer, with the rule's modified weights computed once.

    The engine calls `save` in the forward pass (what the rule needs from the input: denominators,
    masks) and `propagate` per backward pass, so several targets share one forward pass.
    `cache` keeps tensors that depend only on the input's shape (flat and z^B denominators).
    """

    rule: Rule
    affine: Affine
    params: dict[str, Tensor | None]
    signs: Signs = UNKNOWN
    cache: dict = field(default_factory=dict)

    def forward(self, x: Tensor) -> Tensor:
        """The layer's ordinary output."""
        return self.affine.forward(x, self.affine.weight, self.affine.bias)

    def save(self, x: Tensor, z: Tensor) -> Saved:
        """What `propagate` needs from input x and output z = forward(x) (never z itself)."""
        return self.rule.save(self, x, z)

    def propagate(self, saved: Saved, r: Tensor) -> Tensor:
        """Relevance on the input, given `save`'s result and the relevance r on the output."""
        return self.rule.propagate(self, saved, r)

    def relevance(self, x: Tensor, z: Tensor, r: Tensor) -> Tensor:
        """Relevance on input x, given the output z = forward(x) and the relevance r on z."""
        return self.propagate(self.save(x, z), r)

    def constant(self, kind: str, x: Tensor, make: Callable[[], Tensor]) -> Tensor:
        """A tensor that depends on x's shape, device and dtype only, made once per combination."""
        key = (kind, tuple(x.shape[1:]), x.device, x.dtype)
        if key not in self.cache:
            self.cache[key] = make()
        return self.cache[key]


class Rule(ABC):
    """An LRP rule for Conv2d and Linear layers."""

    # True where the relevance of input i is x_i times something finite (zero inputs get none);
    # heatjob.attribution.lrp.signs builds on it.
    multiplies_input = False

    def bind(
        self, layer: nn.Module, shared: dict | None = None, signs: Signs = UNKNOWN
    ) -> BoundRule:
        """Fix the rule to `layer`, precomputing whatever modified weights the rule needs.
        `shared`: a dict for weight-derived tensors shared between composites (see Affine);
        `signs`: what the graph proves about the layer's input and output."""
        affine = Affine(layer, shared)
        return BoundRule(self, affine, self.prepare(affine), signs)

    def prepare(self, affine: Affine) -> dict[str, Tensor | None]:
        """The rule's modified parameters, computed once per layer."""
        return {}

    @abstractmethod
    def save(self, bound: BoundRule, x: Tensor, z: Tensor) -> Saved:
        """What the backward pass needs from the layer's input x and output z."""

    @abstractmethod
    def propagate(self, bound: BoundRule, saved: Saved, r: Tensor) -> Tensor:
        """Relevance on the layer's input, given `save`'s result and the relevance r on z."""

    @abstractmethod
    def describe(self) -> str:
        """A short name with parameters, e.g. 'epsilon(1e-6)'."""


def _split_signs(t: Tensor | None) -> tuple[Tensor | None, Tensor | None]:
    if t is None:
        return None, None
    return t.clamp(min=0), t.clamp(max=0)


class Epsilon(Rule):
    """LRP-epsilon: R_i = sum_j z_ij / (z_j + eps sign(z_j)) R_j, bias included in z_j."""

    multiplies_input = True

    def __init__(self, epsilon: float = 1e-6) -> None:
        self.epsilon = float(epsilon)

    def save(self, bound, x, z):
        return {"x": x, "denominator": stabilize(z, self.epsilon)}

    def propagate(self, bound, saved, r):
        x, affine = saved["x"], bound.affine
        return affine.backward(r / saved["denominator"], affine.weight, x.shape).mul_(x)

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

    Behind a ReLU (x >= 0) the x- terms vanish, and z_j- = x w- + b- = z_j - z_j+ needs no
    convolution of its own: the layer then costs one extra forward conv (x w+) and one (alpha-1-
    beta-0) or two transposed convs per backward pass, against zennit's four and eight.
    """

    multiplies_input = True

    def __init__(self, alpha: float = 2.0, beta: float = 1.0, stabilizer: float = STABILIZER):
        if alpha < 0 or beta < 0 or alpha - beta != 1:
            raise ValueError(
                f"alpha-beta needs alpha, beta >= 0 and alpha - beta = 1, got {alpha}, {beta}"
            )
        self.alpha = float(alpha)
        self.beta = float(beta)
        self.stabilizer = float(stabilizer)

    def prepare(self, affine):
        b_pos, b_neg = _split_signs(affine.bias)
        return {"b_pos": b_pos, "b_neg": b_neg}

    def save(self, bound, x, z):
        if not bound.signs.input_non_negative:
            return {"x": x, "signed": True}
        affine = bound.affine
        z_pos = affine.forward(x, affine.positive(), bound.params["b_pos"])
        saved = {"x": x, "signed": False}
        if self.beta:  # before z_pos turns into its denominator, in place
            saved["neg"] = scaled(stabilize_(torch.sub(z, z_pos), self.stabilizer), self.beta)
        saved["pos"] = scaled(stabilize_(z_pos, self.stabilizer), self.alpha)
        return saved

    def propagate(self, bound, saved, r):
        if saved["signed"]:
            return self._signed(bound, saved["x"], r)
        # x * (alpha sum_j w+ r_j / z_j+ - beta sum_j w- r_j / z_j-), alpha and beta folded into
        # the saved denominators; in place, since the transposed convs return fresh tensors.
        x, affine = saved["x"], bound.affine
        out = affine.backward(r / saved["pos"], affine.positive(), x.shape)
        if self.beta:
            out.sub_(affine.backward(r / saved["neg"], affine.negative(), x.shape))
        return out.mul_(x)

    def _signed(self, bound, x, r):
        affine, params = bound.affine, bound.params
        x_pos, x_neg = x.clamp(min=0), x.clamp(max=0)
        w_pos, w_neg = affine.positive(), affine.negative()
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
    in the denominator (zero padding does not), as in zennit. The denominator depends on the
    input's shape alone, so it is computed once per shape."""

    def __init__(self, stabilizer: float = STABILIZER) -> None:
        self.stabilizer = float(stabilizer)

    @abstractmethod
    def shares(self, weight: Tensor) -> Tensor: ...

    def prepare(self, affine):
        return {"v": self.shares(affine.weight)}

    def save(self, bound, x, z):
        v = bound.params["v"]
        denominator = bound.constant(
            "denominator",
            x,
            lambda: stabilize(bound.affine.forward(torch.ones_like(x[:1]), v), self.stabilizer),
        )
        return {"shape": x.shape, "denominator": denominator}

    def propagate(self, bound, saved, r):
        return bound.affine.backward(r / saved["denominator"], bound.params["v"], saved["shape"])


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
        b_pos, b_neg = _split_signs(affine.bias)
        return {"b_pos": b_pos, "b_neg": b_neg}

    def _bounds(self, bound: BoundRule, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """low, high (shaped like one input) and sum_i (l_i w_ij+ + h_i w_ij-) + b_j: fixed."""
        affine, params = bound.affine, bound.params
        low, high = _expand_bound(self.low, x[:1]), _expand_bound(self.high, x[:1])
        # The biases cancel (b - b+ - b- = 0); keeping them, and the grouping of the sums,
        # mirrors zennit's arithmetic so round-off matches too.
        offset = affine.forward(low, affine.positive(), params["b_pos"]) + affine.forward(
            high, affine.negative(), params["b_neg"]
        )
        return low, high, offset

    def save(self, bound, x, z):
        low, high, offset = bound.constant("bounds", x, lambda: self._bounds(bound, x))
        denominator = stabilize(z - offset, self.stabilizer)
        return {"x": x, "low": low, "high": high, "denominator": denominator}

    def propagate(self, bound, saved, r):
        x, low, high, affine = saved["x"], saved["low"], saved["high"], bound.affine
        g = r / saved["denominator"]
        return x * affine.backward(g, affine.weight, x.shape) - (
            low * affine.backward(g, affine.positive(), x.shape)
            + high * affine.backward(g, affine.negative(), x.shape)
        )

    def describe(self) -> str:
        return "z^B box"


class Gamma(Rule):
    """LRP-gamma, generalised to signed inputs as in zennit.

    For outputs z_j > 0: LRP-0 with positive contributions boosted, i.e. x+ on w + gamma w+ and
    x- on w + gamma w- (bias b + gamma b+); for z_j < 0 the mirror image (bias b + gamma b-).
    With non-negative inputs and z_j > 0 this is LRP-0 on w + gamma w+.

    Behind a ReLU (x >= 0, proven by the graph: `Signs`) both denominators follow from z and
    a = x w+ + b+ (one extra conv): z + gamma a where z > 0 and (1 + gamma) z - gamma a where
    z < 0, sums of like-signed terms, so no cancellation and the stabiliser's sign is known.
    Where the graph proves that no relevance reaches outputs z < 0 (a conv followed by a ReLU)
    that half is neither computed nor propagated: one extra conv forward, one transposed conv
    back, the rule's floor.
    """

    multiplies_input = True

    def __init__(self, gamma: float = 0.25, stabilizer: float = STABILIZER) -> None:
        self.gamma = float(gamma)
        self.stabilizer = float(stabilizer)

    def prepare(self, affine):
        w, b, gamma = affine.weight, affine.bias, self.gamma
        return {
            "w_up": affine.derived(f"gamma{gamma}+", lambda: w + gamma * w.clamp(min=0)),
            "w_down": affine.derived(f"gamma{gamma}-", lambda: w + gamma * w.clamp(max=0)),
            "b_pos": None if b is None else b.clamp(min=0),
            "b_up": None if b is None else b + gamma * b.clamp(min=0),
            "b_down": None if b is None else b + gamma * b.clamp(max=0),
        }

    def save(self, bound, x, z):
        if not bound.signs.input_non_negative:
            return {"x": x, "signed": True, "up": z > 0, "down": z < 0}
        a = bound.affine.forward(x, bound.affine.positive(), bound.params["b_pos"])
        gamma, eps = self.gamma, self.stabilizer
        # 1 / denominator where the output's sign selects it, 0 elsewhere (kept for every target)
        up = torch.add(z, a, alpha=gamma)
        saved = {"x": x, "signed": False, "down": None}
        if not bound.signs.output_rectified:  # (1 + gamma) z - gamma a, in a's storage
            down = a.mul_(-gamma).add_(z, alpha=1 + gamma).sub_(eps).reciprocal_()
            saved["down"] = down.masked_fill_(z >= 0, 0)
        saved["up"] = up.add_(eps).reciprocal_().masked_fill_(z <= 0, 0)
        return saved

    def propagate(self, bound, saved, r):
        if saved["signed"]:
            return self._signed(bound, saved, r)
        x, affine, params = saved["x"], bound.affine, bound.params
        out = affine.backward(r * saved["up"], params["w_up"], x.shape)
        if saved["down"] is not None:
            out.add_(affine.backward(r * saved["down"], params["w_down"], x.shape))
        return out.mul_(x)

    def _signed(self, bound, saved, r):
        x, affine, params = saved["x"], bound.affine, bound.params
        x_pos, x_neg = x.clamp(min=0), x.clamp(max=0)
        w_up, w_down = params["w_up"], params["w_down"]
        pos = affine.forward(x_pos, w_up, params["b_up"]) + affine.forward(x_neg, w_down)
        neg = affine.forward(x_pos, w_down, params["b_down"]) + affine.forward(x_neg, w_up)
        g_pos = saved["up"] * r / stabilize(pos, self.stabilizer)
        g_neg = saved["down"] * r / stabilize(neg, self.stabilizer)
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
    denominator: Tensor | None = None,
    stabilizer: float = STABILIZER,
) -> tuple[Tensor, ...]:
    """The proportional ('norm') rule for a parameter-free linear map y = fn(*inputs).

    Each input element gets x_i * d y_j / d x_i / y_j * R_j: average pooling and residual sums
    redistribute relevance in proportion to what each input contributed. `denominator`: the
    stabilised y when the caller kept it from the forward pass.
    """
    with torch.enable_grad():
        leaves = [t.detach().requires_grad_() for t in inputs]
        y = fn(*leaves)
        if denominator is None:
            denominator = stabilize(y.detach(), stabilizer)
        grads = torch.autograd.grad(y, leaves, r / denominator)
    return tuple(t * g for t, g in zip(inputs, grads, strict=True))
