"""What the graph proves about the signs a rule layer sees, so that no pass inspects a tensor.

Two facts per Conv2d/Linear layer of a canonized graph, read from the graph before any layer is
swapped (engine.attach_rules):

- its input is non-negative: it comes from a ReLU, a sigmoid, or pooling / reshaping / sums /
  gated products of non-negative values. The rules then drop every x- term (exactly zero).
- its output is rectified: relevance that reaches outputs z <= 0 is exactly zero, because the
  output feeds only a ReLU (through sign-keeping layers) whose zeros get no relevance from
  anything downstream. gamma then skips its z < 0 half.

Deciding this on the tensors (`x.min() >= 0`, `g.any()`) would cost a device->host sync per
layer per pass on a GPU. Where nothing is proven the rules take their general path, which is
exact for any sign: a missed fact costs speed, never correctness.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Mapping

import torch
from torch import fx, nn

from heatjob.attribution.lrp.canonizers import (
    ADD_FUNCTIONS,
    AFFINE_LAYERS,
    BATCH_NORMS,
    GATE_FUNCTIONS,
    GATES,
    MUL_FUNCTIONS,
    POOL_FUNCTIONS,
    RELU_FUNCTIONS,
    RELU_METHODS,
    SHAPE_FUNCTIONS,
    SHAPE_METHODS,
)
from heatjob.attribution.lrp.rules import Rule, Signs

RECTIFIERS = (nn.ReLU, nn.ReLU6)
# value -> the same positions (or a subset), relevance passed or routed unchanged
_ROUTING_MODULES = (nn.Identity, nn.Dropout, nn.Flatten, nn.MaxPool2d)
_POOLING_MODULES = (nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d)
# activations f with f(0) = 0 whose relevance passes through
_ZERO_KEEPING = (nn.ReLU, nn.ReLU6, nn.Hardswish, nn.SiLU)


def _module(gm: fx.GraphModule, node: fx.Node) -> nn.Module | None:
    return gm.get_submodule(str(node.target)) if node.op == "call_module" else None


def _pure_scaling(module: nn.Module) -> bool:
    """A batch norm that only multiplies by a non-negative factor (zennit's folded leftovers)."""
    if not isinstance(module, BATCH_NORMS) or module.running_mean is None:
        return False
    shift_free = module.bias is None or bool((module.bias == 0).all())
    gain_ok = module.weight is None or bool((module.weight >= 0).all())
    return shift_free and gain_ok and bool((module.running_mean == 0).all())


def _is_relu(gm: fx.GraphModule, node: fx.Node) -> bool:
    if node.op == "call_module":
        return isinstance(_module(gm, node), RECTIFIERS)
    if node.op == "call_function":
        return node.target in RELU_FUNCTIONS
    return node.op == "call_method" and node.target in RELU_METHODS


def _sign_keeping(gm: fx.GraphModule, node: fx.Node) -> bool:
    """y has the sign of x position by position, and relevance passes back unchanged."""
    module = _module(gm, node)
    if module is not None:
        return isinstance(module, (nn.Identity, nn.Dropout)) or _pure_scaling(module)
    return node.op == "call_method" and node.target in ("contiguous",)


def _tensor_args(node: fx.Node) -> list[fx.Node]:
    args = node.args[0] if node.target is torch.cat else node.args
    return [a for a in args if isinstance(a, fx.Node)]


def non_negative_nodes(gm: fx.GraphModule) -> set[fx.Node]:
    """The nodes whose value is >= 0 for every input, in one pass in execution order."""
    known: set[fx.Node] = set()
    for node in gm.graph.nodes:
        module = _module(gm, node)
        inputs = [a for a in node.args[:1] if isinstance(a, fx.Node)]
        from_inputs = bool(inputs) and all(a in known for a in inputs)
        if module is not None:
            produces = (
                isinstance(module, (*RECTIFIERS, *GATES))
                or (
                    isinstance(module, (*_POOLING_MODULES, *_ROUTING_MODULES))
                    or _pure_scaling(module)
                )
                and from_inputs
            )
            produces = produces or (type(module).__name__ == "StochasticDepth" and from_inputs)
        elif node.op == "call_function":
            target = node.target
            if target in RELU_FUNCTIONS or target in GATE_FUNCTIONS:
                produces = True
            elif target in ADD_FUNCTIONS or target in MUL_FUNCTIONS or target is torch.cat:
                tensors = _tensor_args(node)
                constants = [a for a in node.args if isinstance(a, (int, float))]
                produces = bool(tensors) and all(a in known for a in tensors)
                produces = produces and all(c >= 0 for c in constants)
            elif target in POOL_FUNCTIONS or target in SHAPE_FUNCTIONS:
                produces = from_inputs
            else:
                produces = False
        elif node.op == "call_method":
            produces = node.target in RELU_METHODS or (
                node.target in SHAPE_METHODS and node.target != "size" and from_inputs
            )
        else:
            produces = False
        if produces:
            known.add(node)
    return known


def _vanishing_nodes(
    gm: fx.GraphModule, multiplies_input: Callable[[str], bool], roles: Mapping[fx.Node, int]
) -> set[fx.Node]:
    """The nodes whose zero-valued positions get exactly zero relevance, decided from the output
    backwards: every user hands a zero input no relevance (a rule multiplying by its input,
    proportional pooling and sums, the gate branch of a product) or keeps zeros where they are
    (ReLU, reshapes, max-pool, concatenation) and is itself such a node."""
    vanishing: set[fx.Node] = set()

    def user_ok(node: fx.Node, user: fx.Node) -> bool:
        if user.op == "output":
            return True  # the seed is the logit's value: zero where the logit is zero
        module = _module(gm, user)
        if module is not None:
            if isinstance(module, AFFINE_LAYERS):
                return multiplies_input(str(user.target))
            if isinstance(module, (nn.AvgPool2d, nn.AdaptiveAvgPool2d)):
                return True
            keeps = isinstance(module, (*_ZERO_KEEPING, *_ROUTING_MODULES))
            keeps = keeps or _pure_scaling(module) or type(module).__name__ == "StochasticDepth"
            return keeps and user in vanishing
        target = user.target
        if user.op == "call_function":
            if target in ADD_FUNCTIONS or target in POOL_FUNCTIONS:
                return True
            if target in MUL_FUNCTIONS:
                if user not in roles:  # shape arithmetic, not a gate product
                    return False
                features = user.args[roles[user]]
                return features is not node or user in vanishing
            if target in RELU_FUNCTIONS or target in SHAPE_FUNCTIONS:
                return user in vanishing
            if target is operator.getitem:  # a slice routes relevance like a reshape
                return user in vanishing
            return target is getattr  # shapes, not values
        if user.op == "call_method":
            keeps = target in RELU_METHODS or target in SHAPE_METHODS
            return target == "size" or (keeps and user in vanishing)
        return False

    for node in reversed(list(gm.graph.nodes)):
        if node.users and all(user_ok(node, user) for user in node.users):
            vanishing.add(node)
    return vanishing


def _rectified(gm: fx.GraphModule, node: fx.Node, vanishing: set[fx.Node]) -> bool:
    """Relevance reaching positions where `node` is <= 0 is zero: it feeds only ReLUs, through
    sign-keeping layers, and the ReLUs' zeros get no relevance."""
    if not node.users:
        return False
    for user in node.users:
        if _is_relu(gm, user):
            if user not in vanishing:
                return False
        elif not (_sign_keeping(gm, user) and _rectified(gm, user, vanishing)):
            return False
    return True


def layer_signs(
    gm: fx.GraphModule, rule_of: Callable[[str], Rule], roles: Mapping[fx.Node, int]
) -> dict[str, Signs]:
    """Signs of every Conv2d/Linear module of a canonized (not yet rewritten) graph, by module
    path; `rule_of(path)` is the rule the layer will get. A module called at several places gets
    only what holds at all of them."""
    non_negative = non_negative_nodes(gm)
    vanishing = _vanishing_nodes(gm, lambda path: rule_of(path).multiplies_input, roles)
    signs: dict[str, Signs] = {}
    for node in gm.graph.nodes:
        if node.op != "call_module" or not isinstance(_module(gm, node), AFFINE_LAYERS):
            continue
        source = node.args[0] if node.args else None
        here = Signs(
            input_non_negative=isinstance(source, fx.Node) and source in non_negative,
            output_rectified=_rectified(gm, node, vanishing),
        )
        path = str(node.target)
        before = signs.get(path, here)
        signs[path] = Signs(
            before.input_non_negative and here.input_non_negative,
            before.output_rectified and here.output_rectified,
        )
    return signs
