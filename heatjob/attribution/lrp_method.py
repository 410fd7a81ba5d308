"""`kind = "lrp"` methods: an LRP composite with its rules and parameters spelled out.

Optionally from a named preset (a composite of `heatjob composites`, keeping its
canonizing: zennit-named presets keep zennit's batch-norm leftovers); `conv`, `linear`
and `first` replace the rule of that layer role, `layers` the rule of single modules by
path (over the roles). Without a preset, `conv` and `linear` are required and batch
norm is folded exactly.
"""

from __future__ import annotations

import math
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
    # low/high: a number or one per input channel; by default the normalised images of pixel
    # values 0 and 1 (filled in by `with_input_bounds` from the model's mean and std)
    "zbox": ({"low": None, "high": None}, lambda low, high: ZBox(low, high)),
}
ROLES = ("conv", "linear", "first")
CHANNELS = 3  # the input channels a zbox bound may list one value each for


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
        if name == "zbox":
            continue  # a number or a list, checked below
        if isinstance(value, bool) or not isinstance(value, int | float):
            fail(f"{key}.{param}", f"must be a number, got {value!r}")
    if name == "zbox":
        return _resolve_box(table, fail, key)
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


def _resolve_box(table: dict[str, Any], fail, key: str) -> dict[str, Any]:
    """zbox bounds as lists of floats, one value or one per input channel (R, G, B); absent
    ones stay None until `with_input_bounds` fills them in from the normalisation."""
    out: dict[str, Any] = {"rule": "zbox"}
    for param in ("low", "high"):
        value = table.get(param)
        values = value if isinstance(value, list) else [value]
        if value is None:
            out[param] = None
        elif len(values) in (1, CHANNELS) and all(_is_finite_number(v) for v in values):
            out[param] = [float(v) for v in values]
        else:
            fail(
                f"{key}.{param}",
                f"must be a number or {CHANNELS} numbers (one per channel), got {value!r}",
            )
    return _check_box(out, fail, key)


def _is_finite_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _check_box(table: dict[str, Any], fail, key: str) -> dict[str, Any]:
    low, high = table["low"], table["high"]
    if low is not None and high is not None:
        lows = low * CHANNELS if len(low) == 1 else low
        highs = high * CHANNELS if len(high) == 1 else high
        if any(lo >= hi for lo, hi in zip(lows, highs, strict=True)):
            fail(key, f"low must be below high in every channel, got low {low}, high {high}")
    return table


def _box_defaults(table: dict[str, Any], mean, std, fail, key: str) -> dict[str, Any]:
    """A zbox table with the bounds it left out set to the normalised pixel values 0 and 1."""
    out = dict(table)
    if out["low"] is None:
        out["low"] = [(0 - m) / s for m, s in zip(mean, std, strict=True)]
    if out["high"] is None:
        out["high"] = [(1 - m) / s for m, s in zip(mean, std, strict=True)]
    return _check_box(out, fail, key)


def build_rule(table: dict[str, Any]) -> Rule:
    params = {k: v for k, v in table.items() if k != "rule"}
    if table["rule"] == "zbox":  # None: the engine's default bounds; one value: every channel
        params = {k: v if v is None or len(v) > 1 else v[0] for k, v in params.items()}
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

    def with_input_bounds(self, mean, std, fail) -> None:
        """Fill in the zbox bounds a table left out (the normalised images of pixel values 0
        and 1, per channel), so the resolved table holds every value the maps depend on."""
        for role in ROLES:
            table = getattr(self, role)
            if table.get("rule") == "zbox":
                object.__setattr__(self, role, _box_defaults(table, mean, std, fail, role))
        layers = {
            path: _box_defaults(t, mean, std, fail, f"layers.{path}") if t["rule"] == "zbox" else t
            for path, t in self.layers.items()
        }
        object.__setattr__(self, "layers", layers)

    def composite(self, name: str = "lrp") -> Composite:
        base = get_composite(self.preset) if self.preset else None
        conv = build_rule(self.conv) if self.conv else base.conv
        linear = build_rule(self.linear) if self.linear else base.linear
        first = build_rule(self.first) if self.first else (base.first if base else None)
        kwargs = (
            {"first_types": base.first_types, "attention": base.attention}
            if base is not None
            else {}
        )
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
