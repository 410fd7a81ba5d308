"""One table of layer handlers: for each kind of graph node, whether it is supported and how it
is rewritten, decided together.

`plan(gm)` walks a frozen snapshot of the traced graph (the modules as traced, before any of them
is swapped) and gives every node the first handler that claims it. The handler's `check` runs
there, on the snapshot, and returns the decision its `rewrite` later applies (a product's operand
roles, the module to wrap), so the support check and the rewrite cannot read different graphs. A
node no handler claims is refused with the user's module path and type.

Handlers are registered where their rules live: `engine.py` (convolutional nets) and
`transformer.py` (LayerNorm, attention, GELU, tokens); `heatjob.attribution.lrp` imports both,
so the table is full before anything plans.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import torch
from torch import fx, nn

from heatjob.errors import UnsupportedModelError


@dataclass(frozen=True)
class Snapshot:
    """The traced graph as it was before any rewrite: its modules by path, and the nodes that
    carry no relevance (computed from shapes and parameters only, never from the input)."""

    gm: fx.GraphModule
    modules: Mapping[str, nn.Module]
    static: frozenset[fx.Node]

    def module(self, node: fx.Node) -> nn.Module | None:
        return self.modules.get(str(node.target)) if node.op == "call_module" else None


@dataclass
class Rewrite:
    """What a handler's rewrite may use: the graph being rewritten, the composite and its box
    bounds, the shared modified weights, the first layer's path, the modules swapped so far."""

    gm: fx.GraphModule
    composite: Any
    low: torch.Tensor
    high: torch.Tensor
    shared: dict
    first: str | None
    # per conv/linear path, what the graph proves about its signs (heatjob.attribution.lrp.signs)
    signs: Mapping[str, Any] = field(default_factory=dict)
    swapped: set[str] = field(default_factory=set)

    def swap(self, target: str, module: nn.Module) -> None:
        """Put `module` at `target` (once per path: a module called twice is wrapped once)."""
        if target in self.swapped:
            return
        self.swapped.add(target)
        parent_name, _, attr = target.rpartition(".")
        parent = self.gm.get_submodule(parent_name) if parent_name else self.gm
        setattr(parent, attr, module)


@dataclass(frozen=True)
class Handler:
    """One node kind. `claims` says whether the node is of this kind; `check` raises
    UnsupportedModelError where the node is of the kind but cannot be explained, and returns what
    `rewrite` needs; `rewrite` None means the node's plain gradient is its LRP rule."""

    name: str
    claims: Callable[[Snapshot, fx.Node], bool]
    check: Callable[[Snapshot, fx.Node], Any] = lambda snapshot, node: None
    rewrite: Callable[[Rewrite, fx.Node, Any], None] | None = None
    # what a refusal lists as supported ("" for plumbing nodes a user never names)
    label: str = ""


@dataclass(frozen=True)
class Step:
    node: fx.Node
    handler: Handler
    decision: Any

    def apply(self, context: Rewrite) -> None:
        if self.handler.rewrite is not None:
            self.handler.rewrite(context, self.node, self.decision)


_HANDLERS: list[Handler] = []


def register_handler(handler: Handler, *, first: bool = False) -> Handler:
    """Add a handler to the table; `first` puts it before every handler registered so far."""
    if any(h.name == handler.name for h in _HANDLERS):
        raise ValueError(f"layer handler {handler.name!r} registered twice")
    _HANDLERS.insert(0, handler) if first else _HANDLERS.append(handler)
    return handler


def handler_names() -> list[str]:
    return [h.name for h in _HANDLERS]


def supported_labels() -> str:
    return ", ".join(dict.fromkeys(h.label for h in _HANDLERS if h.label))


def module_path(node: fx.Node) -> str:
    """The model path of the layer a node belongs to: its own path for a module call, else the
    innermost module whose forward made it."""
    if node.op == "call_module":
        return str(node.target)
    stack = node.meta.get("nn_module_stack") or {}
    if not stack:
        return "<model>"
    path, _ = list(stack.values())[-1]
    return path or "<model>"


def owner_type(node: fx.Node) -> str | None:
    """The type name of the module whose forward made a function node, if any."""
    stack = node.meta.get("nn_module_stack") or {}
    if not stack:
        return None
    _, kind = list(stack.values())[-1]
    return kind if isinstance(kind, str) else getattr(kind, "__name__", str(kind))


def function_name(target: object) -> str:
    name = getattr(target, "__name__", repr(target))
    module = getattr(target, "__module__", None) or ""
    return f"{module}.{name}" if module and module != "builtins" else name


def node_kind(snapshot: Snapshot, node: fx.Node) -> str:
    """The type a user knows the node by: the module's class, or the function in its layer."""
    module = snapshot.module(node)
    if module is not None:
        return type(module).__name__
    if node.op == "call_method":
        kind = f"Tensor.{node.target}"
    elif node.op == "call_function":
        kind = function_name(node.target)
    else:
        kind = f"{node.op} {node.target}"
    owner = owner_type(node)
    return f"{kind} in {owner}" if owner else kind


def unsupported(snapshot: Snapshot | None, node: fx.Node, why: str, kind: str = "") -> Exception:
    """The refusal of one node: path, type, why, and what the table supports."""
    kind = kind or (node_kind(snapshot, node) if snapshot is not None else str(node.target))
    return UnsupportedModelError(
        f"cannot explain layer '{module_path(node)}' ({kind}): {why}; supported: "
        f"{supported_labels()}"
    )


# Where a value is a shape or a Python number rather than a tensor computed from the input.
_SHAPE_SOURCES = frozenset({"shape", "size"})
_SHAPE_METHODS = frozenset({"size", "dim"})


def _is_static(node: fx.Node, static: set[fx.Node]) -> bool:
    if node.op == "get_attr":
        return True  # a parameter or buffer: a constant that absorbs what relevance reaches it
    if node.op == "call_function" and node.target is getattr and node.args[1] in _SHAPE_SOURCES:
        return True
    if node.op == "call_method" and node.target in _SHAPE_METHODS:
        return True
    if node.op not in ("call_function", "call_method"):
        return False
    inputs = node.all_input_nodes
    if node.op == "call_function" and node.target is torch._assert:
        return all(n in static for n in inputs)
    return bool(inputs) and all(n in static for n in inputs)


def snapshot(gm: fx.GraphModule) -> Snapshot:
    static: set[fx.Node] = set()
    for node in gm.graph.nodes:
        if _is_static(node, static):
            static.add(node)
    return Snapshot(gm, MappingProxyType(dict(gm.named_modules())), frozenset(static))


def plan(gm: fx.GraphModule) -> list[Step]:
    """Every node's handler and decision, in execution order, from one snapshot of `gm` taken
    before anything is rewritten. Raises UnsupportedModelError at the first node without one."""
    inputs = [n for n in gm.graph.nodes if n.op == "placeholder"]
    if len(inputs) != 1:
        raise UnsupportedModelError(
            f"model {gm.__class__.__name__} takes {len(inputs)} inputs; LRP here needs exactly one"
        )
    frozen = snapshot(gm)
    steps = []
    for node in gm.graph.nodes:
        handler = next((h for h in _HANDLERS if h.claims(frozen, node)), None)
        if handler is None:
            why = (
                "no LRP rule for this layer type"
                if node.op == "call_module"
                else ("no LRP rule for this operation")
            )
            raise unsupported(frozen, node, why)
        steps.append(Step(node, handler, handler.check(frozen, node)))
    return steps


def apply(steps: list[Step], context: Rewrite) -> fx.GraphModule:
    for step in steps:
        step.apply(context)
    context.gm.recompile()
    return context.gm


# Plumbing every model shares, whatever its layers.
register_handler(
    Handler("input/output", lambda s, n: n.op in ("placeholder", "output")), first=True
)
register_handler(
    Handler(
        "shapes and parameters",
        # Shape arithmetic (x.shape[2] // 16, asserts) and parameters (a class token, a position
        # embedding): no relevance flows into them, whatever reaches a parameter stays there.
        lambda s, n: n in s.static,
    )
)


def _is_index(index: object) -> bool:
    if isinstance(index, tuple):
        return all(_is_index(i) for i in index)
    return index is None or index is Ellipsis or isinstance(index, int | slice)


register_handler(
    Handler(
        "item or slice",
        # x[:, 0] (the class token's row), or an item of a layer's tuple output (attention's
        # (output, weights)): the gradient moves relevance to the elements taken, unchanged.
        lambda s, n: (
            n.op == "call_function" and n.target is operator.getitem and _is_index(n.args[1])
        ),
        label="indexing",
    )
)
