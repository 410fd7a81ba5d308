"""The attribution method kinds: one table, filled where each kind is defined
(`@register_method("gradient")` on its options dataclass).

A kind's options dataclass holds the parameters of one `[attribution.methods.<name>]`
table, with their defaults; `parse_method` checks a table against it (unknown key, wrong
type, a bad value: one SpecError line naming the key) and `resolved` gives the table with
every default filled in, which is what the spec, the store's provenance and resume see.
`options.build(model, mean=, std=, precision=)` makes the object the worker calls:
`explain_rows(x, images, targets) -> (maps (rows, S, S), logits (n, C))`, like the LRP
Explainer.

Importing heatjob.attribution imports every method module, so the table is complete
before anyone looks at it.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Callable
from typing import Any, TypeVar

from heatjob.errors import SpecError

T = TypeVar("T", bound=type)
_KINDS: dict[str, type] = {}
# a method's name is its store array's name, heatmaps/<name>
METHOD_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


def register_method(kind: str) -> Callable[[T], T]:
    """Class decorator on a frozen options dataclass: `kind = "<kind>"` in a method table
    parses into it. The class may define `check(self, fail)` (fail(key, message) raises)
    for checks beyond the field types, and must define `build(model, *, mean, std,
    precision)`."""

    def add(cls: T) -> T:
        if kind in _KINDS:
            raise ValueError(f"method kind {kind!r} is registered twice")
        _KINDS[kind] = cls
        cls.kind = kind
        return cls

    return add


def method_kinds() -> tuple[str, ...]:
    return tuple(_KINDS)


def method_options(kind: str) -> type:
    return _KINDS[kind]


def describe_kind(kind: str) -> str:
    """One line: the kind's purpose and its options with their defaults."""
    cls = _KINDS[kind]
    options = [
        f"{f.name} = {f.default if f.default is not dataclasses.MISSING else f.default_factory()!r}"
        for f in dataclasses.fields(cls)
    ]
    doc = (cls.__doc__ or "").strip().splitlines()[0]
    return f"{doc} Options: {', '.join(options) if options else 'none'}."


def parse_method(name: str, table: Any, where: str, *, mean: Any = None, std: Any = None) -> Any:
    """The options of one method table; `where` is "<source>: [attribution.methods.<name>]".
    With the model's input `mean` and `std`, a kind that depends on them (zbox bounds)
    resolves its defaults from them (`with_input_bounds(mean, std, fail)`)."""
    if not isinstance(table, dict):
        raise SpecError(f"{where} must be a table")
    kinds = method_kinds()
    if "kind" not in table:
        raise SpecError(f"{where} kind is missing; one of {', '.join(kinds)}")
    kind = table["kind"]
    if kind not in _KINDS:
        raise SpecError(f"{where} kind must be one of {', '.join(kinds)}, got {_short(kind)}")
    cls = _KINDS[kind]
    fields = {f.name: f for f in dataclasses.fields(cls)}
    values = {}
    for key, value in table.items():
        if key == "kind":
            continue
        if key not in fields:
            known = ", ".join(["kind", *fields])
            raise SpecError(f"{where} unknown key {_short(key)} for kind {kind!r}; known: {known}")
        values[key] = _coerce(value, fields[key].type, f"{where} {key}")
    options = cls(**values)

    def fail(key: str, message: str) -> None:
        raise SpecError(f"{where} {key} {message}")

    check = getattr(options, "check", None)
    if check is not None:
        check(fail)
    with_inputs = getattr(options, "with_input_bounds", None)
    if with_inputs is not None and mean is not None:
        with_inputs(mean, std, fail)
    return options


def build_method(table: dict[str, Any], model: Any, **kwargs: Any) -> Any:
    """The explainer of a resolved method table (JobSpec.attribution.methods[name])."""
    options = _KINDS[table["kind"]](**{k: v for k, v in table.items() if k != "kind"})
    return options.build(model, **kwargs)


def resolved(options: Any) -> dict[str, Any]:
    """A method's table with every default filled in: {"kind": ..., parameter: value}."""
    return {"kind": options.kind, **dataclasses.asdict(options)}


def _coerce(value: Any, kind: Any, where: str) -> Any:
    kind = kind if isinstance(kind, str) else kind.__name__
    if kind == "int":
        if isinstance(value, bool) or not isinstance(value, int):
            raise SpecError(f"{where} must be an integer, got {_short(value)}")
        if not -(2**63) <= value < 2**63:
            raise SpecError(f"{where} is out of range, got {_short(value)}")
        return value
    if kind == "float":
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise SpecError(f"{where} must be a number, got {_short(value)}")
        value = float(value)
        if not math.isfinite(value):
            raise SpecError(f"{where} must be finite, got {value}")
        return value
    if kind == "dict":
        if not isinstance(value, dict):
            raise SpecError(f"{where} must be a table, got {_short(value)}")
        return value
    if kind == "str":
        if not isinstance(value, str):
            raise SpecError(f"{where} must be a string, got {_short(value)}")
        return value
    raise AssertionError(f"no coercion for {kind}")


def _short(value: Any, limit: int = 60) -> str:
    text = " ".join(repr(value).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."
