"""The LRP engine: relevance as a modified gradient.

Each layer of the canonized fx graph is swapped for a module whose forward is the ordinary one and
whose backward returns the relevance its rule gives to the layer's inputs (custom autograd
Functions). A plain autograd backward from the output, seeded with the target logit, then carries
relevance to the input: per batch one forward and one backward, and the rule-modified weights are
computed once when the Explainer is built.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, fx, nn

from heatjob.attribution.lrp.canonizers import (
    ACTIVATIONS,
    ADD_FUNCTIONS,
    AFFINE_LAYERS,
    BATCH_NORMS,
    GRADIENT_MODULES,
    MUL_FUNCTIONS,
    POOL_FUNCTIONS,
    RELU_FUNCTIONS,
    RELU_METHODS,
    SHAPE_FUNCTIONS,
    SHAPE_METHODS,
    canonize,
    check_module,
    check_supported,
    features_operand,
    trace,
)
from heatjob.attribution.lrp.composites import Composite, get_composite
from heatjob.attribution.lrp.handlers import (
    Handler,
    Rewrite,
    Snapshot,
    apply,
    module_path,
    plan,
    register_handler,
    unsupported,
)
from heatjob.attribution.lrp.rules import (
    STABILIZER,
    UNKNOWN,
    BoundRule,
    ZBox,
    norm_relevance,
    stabilize,
)
from heatjob.attribution.lrp.signs import layer_signs
from heatjob.attribution.rows import PRECISIONS, check_rows, rounds
from heatjob.errors import UnsupportedModelError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
PROPORTIONAL_MODULES = (nn.AvgPool2d, nn.AdaptiveAvgPool2d)


class _RuleFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, bound: BoundRule) -> Tensor:
        z = bound.forward(x)
        ctx.bound = bound
        # Computed once per forward pass and reused by every backward pass (target) after it.
        ctx.saved = bound.save(x, z)
        return z

    @staticmethod
    def backward(ctx, r: Tensor) -> tuple[Tensor, None]:
        return ctx.bound.propagate(ctx.saved, r), None


class _PassFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, fn: Callable[[Tensor], Tensor]) -> Tensor:
        return fn(x)

    @staticmethod
    def backward(ctx, r: Tensor) -> tuple[Tensor, None]:
        return r, None


class _ProportionalFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, fn: Callable[..., Tensor], stabilizer: float, *inputs: Tensor) -> Tensor:
        y = fn(*inputs)
        ctx.fn = fn
        ctx.inputs = inputs
        ctx.denominator = stabilize(y, stabilizer)
        return y

    @staticmethod
    def backward(ctx, r: Tensor) -> tuple[Tensor | None, ...]:
        return (None, None, *norm_relevance(ctx.fn, ctx.inputs, r, ctx.denominator))


class _SumFunction(torch.autograd.Function):
    """a + b: each gets x * R / (a + b), the proportional rule written out (no autograd call)."""

    @staticmethod
    def forward(ctx, a: Tensor, b: Tensor, stabilizer: float) -> Tensor:
        y = a + b
        ctx.inputs = (a, b)
        ctx.denominator = stabilize(y, stabilizer)
        return y

    @staticmethod
    def backward(ctx, r: Tensor) -> tuple[Tensor, Tensor, None]:
        a, b = ctx.inputs
        g = r / ctx.denominator
        return _unbroadcast(a * g, a.shape), _unbroadcast(b * g, b.shape), None


def _unbroadcast(t: Tensor, shape: torch.Size) -> Tensor:
    while t.ndim > len(shape):
        t = t.sum(0)
    dims = tuple(i for i, n in enumerate(shape) if n == 1 and t.shape[i] != 1)
    return t.sum(dims, keepdim=True) if dims else t


class RuleLayer(nn.Module):
    """A Conv2d/Linear layer that hands relevance back by its LRP rule."""

    def __init__(self, bound: BoundRule, description: str) -> None:
        super().__init__()
        self.bound = bound
        self.description = description

    def forward(self, x: Tensor) -> Tensor:
        return _RuleFunction.apply(x, self.bound)

    def extra_repr(self) -> str:
        return self.description


class PassLayer(nn.Module):
    """ReLU or an unfolded batch norm: relevance passes through unchanged."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        # Never in place: rules keep their inputs on ctx, outside autograd's version checks,
        # so an activation overwriting its input would change what a rule reads later. The
        # module is the explained copy's own (the user's model is never touched).
        if getattr(module, "inplace", False):
            module.inplace = False
        self.module = module

    def forward(self, x: Tensor) -> Tensor:
        return _PassFunction.apply(x, self.module)


class ProportionalLayer(nn.Module):
    """Average pooling: relevance goes to the inputs in proportion to their contribution."""

    def __init__(self, module: nn.Module, stabilizer: float = STABILIZER) -> None:
        super().__init__()
        self.module = module
        self.stabilizer = stabilizer

    def forward(self, x: Tensor) -> Tensor:
        return _ProportionalFunction.apply(self.module, self.stabilizer, x)


def _relu(x: Tensor) -> Tensor:
    return torch.relu(x)


def relu_pass(x: Tensor, *args: object, **kwargs: object) -> Tensor:
    """ReLU whose backward passes relevance through (extra args such as inplace are ignored)."""
    return _PassFunction.apply(x, _relu)


def residual_sum(a: Tensor, b: Tensor, stabilizer: float = STABILIZER) -> Tensor:
    """a + b whose backward splits relevance between a and b in proportion to their values."""
    return _SumFunction.apply(a, b, stabilizer)


class _GateFunction(torch.autograd.Function):
    """features * gate (squeeze-excitation): for a fixed gate the product is linear in the
    features, so all relevance goes to them and none (zeros) to the gate's branch."""

    @staticmethod
    def forward(ctx, features: Tensor, gate: Tensor, layer: str) -> Tensor:
        y = features * gate
        if y.shape != features.shape:
            raise UnsupportedModelError(
                f"cannot explain layer '{layer}' (gate x features): the gate of shape "
                f"{tuple(gate.shape)} would broadcast the features of shape "
                f"{tuple(features.shape)} to {tuple(y.shape)}; the gate must broadcast into the "
                "features"
            )
        ctx.features_shape = features.shape
        ctx.gate_shape = gate.shape
        ctx.layer = layer
        return y

    @staticmethod
    def backward(ctx, r: Tensor) -> tuple[Tensor, Tensor, None]:
        if r.shape != ctx.features_shape:  # the features must take the relevance as it is
            raise AssertionError(
                f"layer '{ctx.layer}': relevance of shape {tuple(r.shape)} reached a gated "
                f"product whose features have shape {tuple(ctx.features_shape)}"
            )
        return r, r.new_zeros(ctx.gate_shape), None


def gated(features: Tensor, gate: object, *, layer: str) -> Tensor:
    """features * gate, the gate a sigmoid's output (squeeze-excitation) or a constant: all
    relevance goes to the features, none to the gate. The attach_rules rewrite puts the features
    first, whichever side of the product they stood on; `layer` names it in errors."""
    if not isinstance(gate, Tensor):
        return _PassFunction.apply(features, lambda t: t * gate)
    return _GateFunction.apply(features, gate, layer)


def avg_pool2d_proportional(x: Tensor, *args: object, **kwargs: object) -> Tensor:
    def pool(t: Tensor) -> Tensor:
        return F.avg_pool2d(t, *args, **kwargs)

    return _ProportionalFunction.apply(pool, STABILIZER, x)


def adaptive_avg_pool2d_proportional(x: Tensor, *args: object, **kwargs: object) -> Tensor:
    def pool(t: Tensor) -> Tensor:
        return F.adaptive_avg_pool2d(t, *args, **kwargs)

    return _ProportionalFunction.apply(pool, STABILIZER, x)


_POOL_REPLACEMENTS = {
    F.avg_pool2d: avg_pool2d_proportional,
    F.adaptive_avg_pool2d: adaptive_avg_pool2d_proportional,
}


def _first_layer(gm: fx.GraphModule, types: tuple[type[nn.Module], ...]) -> str | None:
    for node in gm.graph.nodes:
        if node.op == "call_module" and isinstance(gm.get_submodule(str(node.target)), types):
            return str(node.target)
    return None


def _rule_of(gm: fx.GraphModule, composite: Composite, path: str, first: str | None):
    return composite.rule_for(gm.get_submodule(path), is_first=path == first, path=path)


def attach_rules(
    gm: fx.GraphModule,
    composite: Composite,
    low: Tensor,
    high: Tensor,
    shared: dict | None = None,
) -> fx.GraphModule:
    """Swap every layer of a canonized graph for its LRP counterpart, in place. `shared`: a dict
    for weight-derived tensors (w+, w-, ...) that composites on the same weights share.

    Every node's handler and decision come from one snapshot of the graph taken before the first
    swap (`handlers.plan`), so a gate is still known by its Sigmoid module when its product is
    rewritten."""
    steps = plan(gm)
    first = _first_layer(gm, composite.first_types)
    shared = {} if shared is None else shared
    # Likewise the signs each layer sees, read off the graph so that no pass inspects a tensor.
    roles = {s.node: s.decision for s in steps if s.handler.name == "gate product"}
    signs = layer_signs(gm, lambda path: _rule_of(gm, composite, path, first), roles)
    return apply(steps, Rewrite(gm, composite, low, high, shared, first, signs))


def rule_layer(context: Rewrite, target: str, module: nn.Module) -> RuleLayer:
    """The composite's rule for the conv/linear layer at `target`, bound to its weights."""
    composite = context.composite
    rule = composite.rule_for(module, is_first=target == context.first, path=target)
    if isinstance(rule, ZBox) and rule.low is None:
        rule = rule.with_bounds(context.low, context.high)
    bound = rule.bind(module, context.shared, context.signs.get(target, UNKNOWN))
    return RuleLayer(bound, f"{target}: {rule.describe()}")


def _module_kind(types: tuple[type[nn.Module], ...]) -> Callable[[Snapshot, fx.Node], bool]:
    return lambda snapshot, node: isinstance(snapshot.module(node), types)


def _function_kind(functions: tuple[Callable, ...]) -> Callable[[Snapshot, fx.Node], bool]:
    return lambda snapshot, node: node.op == "call_function" and node.target in functions


def _swap_with(
    wrap: Callable[[Rewrite, str, nn.Module], nn.Module],
) -> Callable[[Rewrite, fx.Node, nn.Module], None]:
    def rewrite(context: Rewrite, node: fx.Node, module: nn.Module) -> None:
        context.swap(str(node.target), wrap(context, str(node.target), module))

    return rewrite


def _check_layer(snapshot: Snapshot, node: fx.Node) -> nn.Module:
    module = snapshot.module(node)
    check_module(str(node.target), module)
    return module


def _retarget(function: Callable) -> Callable[[Rewrite, fx.Node, object], None]:
    def rewrite(context: Rewrite, node: fx.Node, decision: object) -> None:
        node.op, node.target = "call_function", function

    return rewrite


def check_sum(snapshot: Snapshot, node: fx.Node) -> None:
    tensors = [a for a in node.args if isinstance(a, fx.Node)]
    if len(node.args) != 2 or len(tensors) != 2 or node.kwargs:
        raise unsupported(snapshot, node, "only a sum of two tensors has a rule")


def _check_product(snapshot: Snapshot, node: fx.Node) -> int:
    """The features' operand index. A parameter times features (ConvNeXt's layer scale) is,
    like a gate, a constant factor: linear in the features, which take all the relevance."""
    constant = [isinstance(a, fx.Node) and a in snapshot.static for a in node.args]
    if len(node.args) == 2 and not node.kwargs and constant.count(True) == 1:
        return constant.index(False)
    return features_operand(snapshot.gm, node, snapshot.modules)


def _rewrite_product(context: Rewrite, node: fx.Node, features: int) -> None:
    node.args = (node.args[features], node.args[1 - features])
    node.kwargs = {"layer": module_path(node)}
    node.target = gated


def _rewrite_pool(context: Rewrite, node: fx.Node, decision: object) -> None:
    node.target = _POOL_REPLACEMENTS[node.target]


_LAYER_HANDLERS = (
    Handler(
        "conv/linear",
        _module_kind(AFFINE_LAYERS),
        _check_layer,
        _swap_with(rule_layer),
        label="Conv2d, Linear",
    ),
    Handler(
        "activation/batch norm",
        _module_kind((nn.ReLU, *ACTIVATIONS, *BATCH_NORMS)),
        _check_layer,
        _swap_with(lambda context, target, module: PassLayer(module)),
        label=", ".join(t.__name__ for t in (nn.ReLU, *ACTIVATIONS, *BATCH_NORMS)),
    ),
    Handler(
        "average pooling",
        _module_kind(PROPORTIONAL_MODULES),
        _check_layer,
        _swap_with(lambda context, target, module: ProportionalLayer(module)),
        label="AvgPool2d, AdaptiveAvgPool2d",
    ),
    Handler(
        "gradient layers",  # max-pool (winner-takes-all), flatten, dropout, identity
        _module_kind(GRADIENT_MODULES),
        _check_layer,
        label=", ".join(t.__name__ for t in GRADIENT_MODULES),
    ),
    Handler(
        "relu function",
        lambda s, n: (
            (n.op == "call_function" and n.target in RELU_FUNCTIONS)
            or (n.op == "call_method" and n.target in RELU_METHODS)
        ),
        rewrite=_retarget(relu_pass),
        label="relu functions",
    ),
    Handler(
        "sum",
        _function_kind(ADD_FUNCTIONS),
        check_sum,
        _retarget(residual_sum),
        label="residual sums of two tensors",
    ),
    Handler(
        "gate product",
        _function_kind(MUL_FUNCTIONS),
        _check_product,
        _rewrite_product,
        label="gate or parameter x feature products (squeeze-excitation, layer scale)",
    ),
    Handler(
        "pooling function",
        _function_kind(POOL_FUNCTIONS),
        rewrite=_rewrite_pool,
        label="pooling functions",
    ),
    Handler(
        "shape function",
        lambda s, n: (
            (n.op == "call_function" and n.target in SHAPE_FUNCTIONS)
            or (n.op == "call_method" and n.target in SHAPE_METHODS)
        ),
        label="flatten/view/reshape/permute/cat",
    ),
)
for _handler in _LAYER_HANDLERS:
    register_handler(_handler)


def ensure_supported(model: nn.Module) -> None:
    """Raise UnsupportedModelError naming the first layer (path and type) the engine cannot
    explain. Cheap: traces the model without copying its weights."""
    check_supported(trace(model))


def _copy_sharing_tensors(gm: fx.GraphModule) -> fx.GraphModule:
    """A copy of `gm`'s modules and graph that shares its (frozen) weight and buffer tensors."""
    memo = {id(t): t for t in (*gm.parameters(), *gm.buffers())}
    return copy.deepcopy(gm, memo)


def explainers_for(
    model: nn.Module,
    composites: Iterable[str],
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    precision: str = "float32",
) -> dict[str, Explainer]:
    """One Explainer per composite, all sharing one canonized copy of the model's weights and
    one copy of each rule's modified weights (w+, w-: alpha-beta, gamma and z^B share them).

    A worker explaining ten composites of VGG16 would otherwise hold ten 0.5 GB copies.
    """
    canonical: dict[bool, fx.GraphModule] = {}
    shared: dict = {}
    explainers = {}
    for name in composites:
        zennit = get_composite(name).zennit_compatible
        if zennit not in canonical:
            canonical[zennit] = _canonize(model, zennit, precision)
        explainers[name] = Explainer(
            model, name, mean, std, canonical=canonical[zennit], precision=precision, shared=shared
        )
    return explainers


def _canonize(model: nn.Module, zennit: bool, precision: str) -> fx.GraphModule:
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    # Batch norm is folded in float32 first, then the folded weights are rounded once.
    return canonize(model, zennit_leftovers=zennit).to(PRECISIONS[precision])


class Explainer:
    """LRP heatmaps of one model under one composite; everything heavy is set up once, here.

    `model` is left untouched: the engine works on a canonized deep copy (batch norm folded, eval
    mode). `mean`/`std` are the input normalisation; they set the z^B box bounds to the normalised
    images of pixel values 0 and 1, per channel. `precision` ("float32", "bfloat16", "float16") is
    the dtype the weights and the whole pass run in; heatmaps and logits come back as float32.
    """

    def __init__(
        self,
        model: nn.Module,
        composite: str | Composite,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        canonical: fx.GraphModule | None = None,
        precision: str = "float32",
        shared: dict | None = None,
    ) -> None:
        """`canonical`: a `canonize(model, ...)` result in `precision` to reuse, `shared`: a dict
        of modified weights to share (both from `explainers_for`)."""
        self.composite = get_composite(composite) if isinstance(composite, str) else composite
        mean_t = torch.tensor(mean, dtype=torch.float32)
        std_t = torch.tensor(std, dtype=torch.float32)
        self.low = (0 - mean_t) / std_t
        self.high = (1 - mean_t) / std_t
        if canonical is None:
            gm = _canonize(model, self.composite.zennit_compatible, precision)
        else:
            gm = _copy_sharing_tensors(canonical)
        self.dtype = PRECISIONS[precision]
        self.model = attach_rules(gm, self.composite, self.low, self.high, shared)

    def explain(self, x: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
        """Heatmaps (n, H, W) for target class targets[i] of image x[i], and the logits (n, C).

        The target logit's value is the relevance put on the output (zero on other classes); the
        heatmap is the input relevance summed over colour channels.
        """
        targets = torch.as_tensor(targets, device=x.device).long()
        if targets.shape != (x.shape[0],):
            raise ValueError(f"expected {x.shape[0]} targets, got shape {tuple(targets.shape)}")
        return self.explain_rows(x, torch.arange(x.shape[0], device=x.device), targets)

    def explain_rows(self, x: Tensor, images: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
        """Heatmaps (m, H, W), row k explaining class targets[k] of image x[images[k]], from one
        forward pass over x; and the logits (n, C).

        Several targets of one image (labels, predicted:K, all) share the forward pass: each
        backward pass takes at most one row per image, so an image with K rows costs K backward
        passes and the batch max(K) in all, against K forward+backward passes one target at a time.
        """
        images, targets = check_rows(x, images, targets)  # before the pass: no wasted forward
        run = self.forward_pass(x)
        return run.relevance(images, targets), run.logits

    def forward_pass(self, x: Tensor) -> LrpPass:
        """The forward pass over x, kept for the backward passes of `LrpPass.relevance`: the
        worker reads its logits (choosing predicted:K targets from them) before any backward."""
        x = x.detach().to(self.dtype).requires_grad_(True)
        with torch.enable_grad():
            output = self.model(x)
        return LrpPass(x, output)


class LrpPass:
    """One forward pass of an Explainer; `relevance` runs its backward passes, once."""

    def __init__(self, x: Tensor, output: Tensor) -> None:
        self.x = x
        self.output = output
        self.logits = output.detach().float()

    def relevance(self, images: Tensor, targets: Tensor) -> Tensor:
        """Heatmaps (m, H, W) of rows (images[k], targets[k]); frees the pass afterwards."""
        x, output = self.x, self.output
        groups = rounds(images)
        images, targets = check_rows(x, images, targets)
        heatmaps = torch.empty(len(images), *x.shape[2:], device=x.device)
        values = output.detach()
        with torch.enable_grad():
            for k, rows in enumerate(groups):
                rows_t = torch.as_tensor(rows, device=x.device)
                seed = torch.zeros_like(output)
                image, target = images[rows_t], targets[rows_t]
                seed[image, target] = values[image, target]
                last = k == len(groups) - 1
                (relevance,) = torch.autograd.grad(output, x, seed, retain_graph=not last)
                heatmaps[rows_t] = relevance[image].float().sum(dim=1)
        self.output = None  # the graph is gone; a second call would fail inside autograd
        return heatmaps
