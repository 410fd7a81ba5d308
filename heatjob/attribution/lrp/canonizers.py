"""Bring a model into the form LRP rules expect: a checked torch.fx graph, batch norm folded.

`trace` turns the model into an fx graph whose nodes are the layers in execution order; any module
without children is kept whole, so an unknown layer shows up under its own path and type.
`check_supported` rejects what the engine has no rule for, naming the module path and type: it
plans the graph with the table of layer handlers (`handlers.py`), the same plan the engine's
rewrite applies.
`fold_batch_norms` merges each batch norm that directly follows a conv/linear layer into that
layer's weights (what zennit's SequentialMergeBatchNorm and ResNetCanonizer do). Residual `add`s
need no rewriting here: the engine gives every tensor addition the proportional rule.
"""

from __future__ import annotations

import copy
import operator
from collections.abc import Callable, Mapping

import torch
import torch.nn.functional as F
from torch import fx, nn
from torchvision.ops import StochasticDepth
from torchvision.ops.misc import Permute

from heatjob.attribution.lrp.handlers import function_name, module_path, owner_type, plan
from heatjob.attribution.lrp.rules import conv_padding
from heatjob.errors import UnsupportedModelError

BATCH_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d)
AFFINE_LAYERS = (nn.Conv2d, nn.Linear)
# Activations other than ReLU pass relevance through unchanged, as zennit's composites do.
ACTIVATIONS = (nn.ReLU6, nn.Hardswish, nn.SiLU, nn.Sigmoid, nn.Hardsigmoid)
# Modules whose gradient is their LRP rule (max pooling: winner-takes-all).
GRADIENT_MODULES: tuple[type[nn.Module], ...] = (
    nn.MaxPool2d,
    nn.Flatten,
    nn.Dropout,
    nn.Identity,
    StochasticDepth,
    Permute,  # ConvNeXt's and Swin's channels-last <-> channels-first
)
RELU_FUNCTIONS: tuple[Callable, ...] = (F.relu, torch.relu)
ADD_FUNCTIONS: tuple[Callable, ...] = (operator.add, operator.iadd, torch.add)
# Products: a squeeze-excitation gate times the features (relevance goes to the features only).
MUL_FUNCTIONS: tuple[Callable, ...] = (operator.mul, torch.mul)
# Functional average pooling: the proportional rule, like the AvgPool modules.
POOL_FUNCTIONS: tuple[Callable, ...] = (F.avg_pool2d, F.adaptive_avg_pool2d)
# Operations whose gradient is their LRP rule: shape changes and concatenation move relevance
# without changing it, max pooling gives it to the winner, dropout is the identity in eval mode.
SHAPE_FUNCTIONS: tuple[Callable, ...] = (
    torch.flatten,
    torch.permute,
    torch.cat,
    F.max_pool2d,
    torch.max_pool2d,
    F.dropout,
)
SHAPE_METHODS = frozenset({"view", "reshape", "flatten", "contiguous", "permute", "transpose"})
RELU_METHODS = frozenset({"relu"})


class _LayerTracer(fx.Tracer):
    # Keep every childless module whole (torch.fx would trace into an unknown one and report
    # some primitive op instead of the layer the user knows).
    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return next(m.children(), None) is None or super().is_leaf_module(m, module_qualified_name)


def trace(model: nn.Module) -> fx.GraphModule:
    """An fx graph of `model` sharing its modules (no copy of weights)."""
    try:
        graph = _LayerTracer().trace(model)
    except Exception as error:  # fx raises many kinds; any of them means "cannot follow it"
        raise UnsupportedModelError(
            f"cannot trace model {type(model).__name__} with torch.fx (needed to find its "
            f"layers): {type(error).__name__}: {error}"
        ) from error
    return fx.GraphModule(model, graph, class_name=type(model).__name__)


def _unsupported(path: str, kind: str, why: str) -> UnsupportedModelError:
    return UnsupportedModelError(f"cannot explain layer '{path}' ({kind}): {why}")


def check_module(path: str, module: nn.Module) -> None:
    """Refuse a conv whose padding the rules cannot mirror, a batch norm that cannot fold."""
    kind = type(module).__name__
    if isinstance(module, nn.Conv2d) and (
        module.padding_mode != "zeros" or conv_padding(module) is None
    ):
        raise _unsupported(path, kind, "only symmetric zero padding is supported")
    if isinstance(module, BATCH_NORMS) and (
        module.running_mean is None or module.running_var is None
    ):
        raise _unsupported(path, kind, "batch norm without running statistics cannot be folded")


GATES = (nn.Sigmoid, nn.Hardsigmoid)
GATE_FUNCTIONS: tuple[Callable, ...] = (torch.sigmoid, F.sigmoid, F.hardsigmoid)


def _is_gate(modules: Mapping[str, nn.Module], arg: object) -> bool:
    if not isinstance(arg, fx.Node):
        return False
    if arg.op == "call_module":
        return isinstance(modules.get(str(arg.target)), GATES)
    return arg.op == "call_function" and arg.target in GATE_FUNCTIONS


def features_operand(
    gm: fx.GraphModule, node: fx.Node, modules: Mapping[str, nn.Module] | None = None
) -> int:
    """For a product a * b of the traced graph, before any layer is swapped: the index (0 or 1)
    of the features, the other operand being the gate (a Sigmoid/Hardsigmoid output, as in
    squeeze-excitation, or a constant). Raises UnsupportedModelError naming the layer when the
    roles cannot be told apart: neither operand is a gate (a product of two feature maps) or
    both are. `modules`: the graph's modules as traced (default: as they are now)."""
    modules = dict(gm.named_modules()) if modules is None else modules
    path = module_path(node)
    kind = function_name(node.target)
    owner = owner_type(node)
    if owner is not None:
        kind = f"{kind} in {owner}"
    why = "only a constant or a sigmoid gate (squeeze-excitation) times features has a rule"
    if len(node.args) != 2 or node.kwargs:
        raise _unsupported(path, kind, f"{why}; this product does not take two operands")
    gates = [_is_gate(modules, arg) for arg in node.args]
    if gates == [True, False]:
        return 1
    if gates == [False, True]:
        return 0
    which = "both operands are gates" if all(gates) else "neither operand is a gate"
    raise _unsupported(
        path, kind, f"{why}; here {which}, so which one carries the features is undetermined"
    )


def check_supported(gm: fx.GraphModule) -> None:
    """Raise UnsupportedModelError for the first node (in execution order) without a rule."""
    plan(gm)


def _fold_into(layer: nn.Module, bn: nn.Module) -> None:
    # Same arithmetic order as zennit's MergeBatchNorm, so round-off matches.
    mean, var = bn.running_mean, bn.running_var
    gain = bn.weight.detach() if bn.weight is not None else torch.ones_like(mean)
    shift = bn.bias.detach() if bn.bias is not None else torch.zeros_like(mean)
    scale = gain / (var + bn.eps) ** 0.5
    weight = layer.weight.detach()
    bias = layer.bias.detach() if layer.bias is not None else torch.zeros_like(mean)
    shape = (-1,) + (1,) * (weight.ndim - 1)
    layer.weight = nn.Parameter(weight * scale.view(shape), requires_grad=False)
    layer.bias = nn.Parameter((bias - mean) * scale + shift, requires_grad=False)


def _make_zennit_identity(bn: nn.Module) -> None:
    # zennit 0.5.1 leaves a folded batch norm in the graph with weight 1, bias 0, mean 0, var 1
    # but its eps kept, so it still scales by 1/sqrt(1 + eps) in the forward pass (its backward
    # passes relevance through).
    if bn.weight is not None:
        bn.weight.data.fill_(1.0)
        bn.bias.data.zero_()
    bn.running_mean.zero_()
    bn.running_var.fill_(1.0)


def fold_batch_norms(gm: fx.GraphModule, zennit_leftovers: bool = False) -> None:
    """Merge each batch norm that directly follows a conv/linear layer into that layer, in place.

    Only where the layer's output feeds nothing but the batch norm and the layer module is called
    once, so folding cannot change any other path. Other batch norms stay (and pass relevance).
    With `zennit_leftovers` a folded batch norm stays in the graph as zennit leaves it (see
    `_make_zennit_identity`), so zennit-named composites give zennit's heatmaps bit for bit.
    """
    calls: dict[str, int] = {}
    for node in gm.graph.nodes:
        if node.op == "call_module":
            calls[str(node.target)] = calls.get(str(node.target), 0) + 1
    for node in list(gm.graph.nodes):
        if node.op != "call_module" or calls[str(node.target)] != 1:
            continue
        bn = gm.get_submodule(str(node.target))
        source = node.args[0] if node.args else None
        if not isinstance(bn, BATCH_NORMS) or not isinstance(source, fx.Node):
            continue
        if source.op != "call_module" or calls[str(source.target)] != 1 or len(source.users) != 1:
            continue
        layer = gm.get_submodule(str(source.target))
        if not isinstance(layer, AFFINE_LAYERS):
            continue
        _fold_into(layer, bn)
        if zennit_leftovers:
            _make_zennit_identity(bn)
            continue
        node.replace_all_uses_with(source)
        gm.graph.erase_node(node)
    gm.graph.lint()
    gm.delete_all_unused_submodules()
    gm.recompile()


def canonize(model: nn.Module, zennit_leftovers: bool = False) -> fx.GraphModule:
    """A checked, batch-norm-folded fx copy of `model` in eval mode; `model` is left untouched."""
    gm = trace(model)
    check_supported(gm)
    gm = copy.deepcopy(gm)  # copies the weights; the tracing above shared them with `model`
    gm.eval()
    for param in gm.parameters():
        param.requires_grad_(False)
    with torch.no_grad():
        fold_batch_norms(gm, zennit_leftovers)
    return gm
