"""`kind = "lrp"` methods: an LRP composite with its rules and parameters spelled out.

Optionally from a named preset (a composite of `heatjob composites`, keeping its
canonizing: zennit-named presets keep zennit's batch-norm leftovers); `conv`, `linear`
and `first` replace the rule of that layer role, `layers` the rule of single modules by
path (over the roles). Without a preset, `conv` and `linear` are required and batch
norm is folded exactly.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from torch import nn

from heatjob.attribution.lrp.composites import Composite, composite_names, get_composite
from heatjob.attribution.lrp.rules import AlphaBeta, Epsilon, Flat, Gamma, Rule, WSquare, Z, ZBox
from heatjob.attribution.registry import register_method

# rule name -> (its parameters with defaults, a builder from them)
RULES: dict[str, tuple[dict[str, float], Any]] = {
    "z": ({}, lambda: Z()),
    "epsilon": ({"epsilon": 1e-6}, lambda epsilon: Epsilon(epsilon)),
    "zplus": ({}, lambda: AlphaBeta(1.0, 0.0)),
    "alpha-beta": ({"alpha": 2.0, "beta": 1.0}, lambda alpha, beta: AlphaBeta(alpha, beta)),
    "gamma": ({"gamma": 0.25}, lambda gamma: Gamma(gamma)),
    "flat": ({}, lambda: Flat()),
    "wsquare": ({}, lambda: WSquare()),
    "zbox": ({}, lambda: ZBox()),  # bounds: the normalised images of pixel values 0 and 1
}
ROLES = ("conv", "linear", "first")


def resolve_rule(table: Any, fail, key: str) -> dict[str, Any]:
    """A rule table with its parameters' defaults filled in, checked."""
    if not isinstance(table, dict):
        fail(key, f'must be a table like {{ rule = "epsilon", epsilon = 0.25 }}, got {table!r}')
    name = table.get("rule")
    if name not in RULES:
        fail(f"{key}.rule", f"must be one of {', '.join(RULES)}, got {name!r}")
    defaults, _ = RULES[name]
    out: dict[str, Any] = {"rule": name}
    for param, value in table.items():
        if param == "rule":
            continue
        if param not in defaults:
            known = ", ".join(defaults) or "none"
            fail(f"{key}.{param}", f"is not a parameter of rule {name!r} (its parameters: {known})")
        if isinstance(value, bool) or not isinstance(value, int | float):
            fail(f"{key}.{param}", f"must be a number, got {value!r}")
    for param, default in defaults.items():
        out[param] = float(table.get(param, default))
    if name == "epsilon" and out["epsilon"] < 0:
        fail(f"{key}.epsilon", f"must be 0 or positive, got {out['epsilon']}")
    if name == "gamma" and out["gamma"] < 0:
        fail(f"{key}.gamma", f"must be 0 or positive, got {out['gamma']}")
    unbalanced = out.get("beta", 0) < 0 or abs(out.get("alpha", 1) - out.get("beta", 0) - 1) > 1e-9
    if name == "alpha-beta" and unbalanced:
        alpha, beta = out["alpha"], out["beta"]
        fail(key, f"alpha - beta must be 1 (beta >= 0), got alpha {alpha}, beta {beta}")
    return out


def build_rule(table: dict[str, Any]) -> Rule:
    params = {k: v for k, v in table.items() if k != "rule"}
    return RULES[table["rule"]][1](**params)


@register_method("lrp")
@dataclass(frozen=True)
class LrpOptions:
    """An LRP composite: a preset, and rules by layer role (conv, linear, first) and path."""

    preset: str = ""  # a composite name (`heatjob composites`), or "" for none
    conv: dict = field(default_factory=dict)  # { rule = "...", <its parameters> }
    linear: dict = field(default_factory=dict)
    first: dict = field(default_factory=dict)  # the first conv or linear layer
    layers: dict = field(default_factory=dict)  # module path -> rule table

    def check(self, fail) -> None:
        if self.preset and self.preset not in composite_names():
            fail("preset", f"is not a composite (`heatjob composites` lists them): {self.preset!r}")
        if not self.preset:
            for role in ("conv", "linear"):
                if not getattr(self, role):
                    fail(role, "is required without a preset")
        # resolve in place: a frozen dataclass, so through object.__setattr__
        for role in ROLES:
            if getattr(self, role):
                object.__setattr__(self, role, resolve_rule(getattr(self, role), fail, role))
        layers = {}
        for path, table in self.layers.items():
            layers[path] = resolve_rule(table, fail, f"layers.{path}")
        object.__setattr__(self, "layers", layers)

    def composite(self, name: str = "lrp") -> Composite:
        base = get_composite(self.preset) if self.preset else None
        conv = build_rule(self.conv) if self.conv else base.conv
        linear = build_rule(self.linear) if self.linear else base.linear
        first = build_rule(self.first) if self.first else (base.first if base else None)
        kwargs = {"first_types": base.first_types} if base is not None else {}
        layers = tuple((path, build_rule(table)) for path, table in self.layers.items())
        return Composite(
            name,
            conv=conv,
            linear=linear,
            first=first,
            zennit_compatible=bool(base and base.zennit_compatible),
            layers=layers,
            **kwargs,
        )

    def build(self, model: nn.Module, *, mean, std, precision: str = "float32"):
        from heatjob.attribution.lrp.engine import Explainer

        return Explainer(model, self.composite(), mean, std, precision=precision)


def check_layers(options: dict[str, Any], model: nn.Module) -> str | None:
    """The first `layers` path that is not a Conv2d or Linear module of the model, if any."""
    modules = dict(model.named_modules())
    for path in options.get("layers", {}):
        if not isinstance(modules.get(path), nn.Conv2d | nn.Linear):
            return path
    return None
