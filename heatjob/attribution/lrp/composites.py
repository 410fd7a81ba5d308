"""Composites: which rule each layer gets, by the layer's role.

Every composite shares the rules for parameter-free layers (as zennit's composites do): ReLU and
unfolded batch norm pass relevance through, average pooling and residual sums redistribute it in
proportion to their inputs ("norm"), max pooling gives it to the winner (the plain gradient).
What differs is the rule for convolutions, for linear (dense) layers, and optionally for the first
conv/linear layer. Adding a composite is one `register(...)` entry below.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from heatjob.attribution.lrp.rules import AlphaBeta, Epsilon, Flat, Gamma, Rule, Z, ZBox
from heatjob.errors import SpecError

# Epsilon of the paper's LRP-eps layers: 0.1, the default of iNNvestigate's sequential CMP
# presets (LRPSequentialCompositeA/B), the implementation family the paper's strategies come from.
PAPER_EPSILON = 0.1

# Self-attention's rules (transformer.py): CP-LRP, queries and keys constant, or AttnLRP.
ATTENTION_RULES = ("cp", "attnlrp")

SHARED_RULES = "avgpool/residual sum: norm; relu/batch norm: pass; max-pool: winner-takes-all"


@dataclass(frozen=True)
class Composite:
    """Rules by layer role. `first` (if any) replaces the rule of the first layer in execution
    order among `first_types`: conv or linear for the flat and paper z^B variants, conv only for
    zennit's EpsilonGammaBox."""

    name: str
    conv: Rule
    linear: Rule
    first: Rule | None = None
    first_types: tuple[type[nn.Module], ...] = (nn.Conv2d, nn.Linear)
    # Reproduce zennit 0.5.1 exactly, down to the batch norms its canonizer leaves behind.
    zennit_compatible: bool = False
    # per module path, over the roles (an lrp method's `layers`)
    layers: tuple[tuple[str, Rule], ...] = ()
    # self-attention's rule, one of ATTENTION_RULES
    attention: str = "cp"

    def __post_init__(self) -> None:
        if self.attention not in ATTENTION_RULES:
            known = ", ".join(ATTENTION_RULES)
            why = f"attention {self.attention!r}; known: {known}"
            raise ValueError(f"composite {self.name!r}: {why}")

    def rule_for(self, layer: nn.Module, is_first: bool, path: str = "") -> Rule:
        for name, rule in self.layers:
            if name == path:
                return rule
        if is_first and self.first is not None:
            return self.first
        return self.conv if isinstance(layer, nn.Conv2d) else self.linear

    def describe(self) -> str:
        parts = []
        if self.first is not None:
            where = "first conv" if self.first_types == (nn.Conv2d,) else "first layer"
            first = self.first.describe()
            if isinstance(self.first, ZBox):
                first += " (bounds: normalised pixel values 0 and 1)"
            parts.append(f"{where}: {first}")
        parts.append(f"conv: {self.conv.describe()}")
        parts.append(f"linear: {self.linear.describe()}")
        if self.attention == "attnlrp":
            parts.append("attention: AttnLRP (softmax: Taylor rule; matmuls: uniform epsilon)")
        return "; ".join(parts) + "; " + SHARED_RULES


_REGISTRY: dict[str, Composite] = {}


def register(composite: Composite) -> Composite:
    if composite.name in _REGISTRY:
        raise ValueError(f"composite {composite.name!r} registered twice")
    _REGISTRY[composite.name] = composite
    return composite


def composite_names() -> list[str]:
    """Every composite name this version knows, sorted."""
    return sorted(_REGISTRY)


def get_composite(name: str) -> Composite:
    try:
        return _REGISTRY[name]
    except KeyError:
        known = ", ".join(composite_names())
        raise SpecError(f"unknown composite {name!r}; known: {known}") from None


def describe_composite(name: str) -> str:
    """One line: the composite's rules by layer role, with their parameters."""
    return get_composite(name).describe()


# zennit 0.5.1's composites with their default parameters.
_ZENNIT = {"linear": Epsilon(1e-6), "zennit_compatible": True}
register(Composite("EpsilonPlus", conv=AlphaBeta(1, 0), **_ZENNIT))
register(Composite("EpsilonAlpha2Beta1", conv=AlphaBeta(2, 1), **_ZENNIT))
register(Composite("EpsilonPlusFlat", conv=AlphaBeta(1, 0), first=Flat(), **_ZENNIT))
register(Composite("EpsilonAlpha2Beta1Flat", conv=AlphaBeta(2, 1), first=Flat(), **_ZENNIT))
register(
    Composite(
        "EpsilonGammaBox", conv=Gamma(0.25), first=ZBox(), first_types=(nn.Conv2d,), **_ZENNIT
    )
)

# Kohlbrenner et al. 2020: one rule everywhere (lrp-*) or by layer type (cmp-*), each also with
# the flat or the z^B rule on the first layer.
_PAPER = {
    "lrp-z": (Z(), Z()),
    "lrp-eps": (Epsilon(PAPER_EPSILON), Epsilon(PAPER_EPSILON)),
    "lrp-a1b0": (AlphaBeta(1, 0), AlphaBeta(1, 0)),
    "lrp-a2b1": (AlphaBeta(2, 1), AlphaBeta(2, 1)),
    "cmp-a1b0": (AlphaBeta(1, 0), Epsilon(PAPER_EPSILON)),
    "cmp-a2b1": (AlphaBeta(2, 1), Epsilon(PAPER_EPSILON)),
}
for _name, (_conv, _linear) in _PAPER.items():
    register(Composite(_name, conv=_conv, linear=_linear))
    register(Composite(f"{_name}-flat", conv=_conv, linear=_linear, first=Flat()))
    register(Composite(f"{_name}-zb", conv=_conv, linear=_linear, first=ZBox()))

# Vision transformers: LXT 2.1's CP-LRP recipe for torchvision's ViT (gamma on the patch embedding
# and on the MLP and head linear layers; the attention projections follow LRP-0 inside the
# attention rule). The transformer layers' own rules are shared by every composite.
register(Composite("cp-lrp", conv=Gamma(0.25), linear=Gamma(0.05)))

# AttnLRP (Achtibat et al. 2024) in the attention: relevance through the softmax (its Taylor rule)
# and both matmuls (epsilon, split evenly between their operands) to queries, keys and values.
# LXT 2.1 ships no AttnLRP recipe for torchvision's ViT (its ViT map holds queries and keys
# constant), so the conv and linear rules are those of its ViT recipe above, gamma against the
# noise of ViT heatmaps (the paper's appendix A.2.3): the two presets differ in attention alone.
register(Composite("attnlrp", conv=Gamma(0.25), linear=Gamma(0.05), attention="attnlrp"))
