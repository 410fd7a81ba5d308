"""The job spec: a TOML file parsed into typed, validated sections.

Validation happens up front, before Ray starts or a byte is written: every
problem is a `SpecError` whose one-line message names the file and the key.
Relative paths in a spec are relative to the working directory.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from heatjob.attribution import parse_method, resolved
from heatjob.attribution.lrp.composites import composite_names
from heatjob.attribution.registry import METHOD_NAME
from heatjob.data.registry import dataset_kinds
from heatjob.errors import SpecError
from heatjob.eval.faithfulness import resolve_settings

STORE_DTYPES = ("float16", "float32")
RESIZE_MODES = ("squash", "crop")
UNANNOTATED = ("skip", "keep")
# the [dataset] file keys each kind needs besides root
_DATASET_FILES = {"coco": ("annotations",), "imagenet": ("annotations", "synsets")}
DEVICES = ("auto", "cpu", "cuda")
MAX_IMAGE_SIZE = 4096  # a float32 heatmap row is then 64 MiB; larger is a typo
PRECISIONS = ("float32", "bfloat16", "float16")  # the dtype the LRP pass runs in
_PREDICTED = re.compile(r"^predicted:(\d+)$")


@dataclass(frozen=True)
class DatasetSpec:
    kind: str
    root: str = ""
    split: str = "val"
    image_size: int = 224
    limit: int = 0
    num_samples: int = 256  # synthetic only
    seed: int = 0  # synthetic only
    annotations: str = ""  # coco: the instances JSON; imagenet: the folder of box XMLs
    synsets: str = ""  # imagenet: the synset list that fixes the class order
    unannotated: str = "skip"  # coco: images without annotations, skip | keep
    resize: str = "squash"  # squash | crop (heatjob.data.geometry)
    resize_to: int = 0  # crop: the shorter side before the crop; 0 = image_size * 256 / 224


@dataclass(frozen=True)
class ModelSpec:
    arch: str
    weights: str = ""
    checkpoint: str = ""
    num_classes: int = 0  # 0 = the data set's number of classes
    mean: tuple[float, ...] = (0.485, 0.456, 0.406)
    std: tuple[float, ...] = (0.229, 0.224, 0.225)
    # keyword arguments for the torchvision builder, e.g. { image_size = 96 } for a ViT
    options: dict = field(default_factory=dict)


@dataclass(frozen=True)
class AttributionSpec:
    composites: tuple[str, ...] = ()
    targets: str = "labels"
    # [attribution.methods.<name>] tables, each resolved: {"kind": ..., every parameter}
    methods: dict = field(default_factory=dict)

    @property
    def sources(self) -> tuple[str, ...]:
        """Every heatmap array's name, composites then methods: heatmaps/<name>."""
        return (*self.composites, *self.methods)

    @property
    def predicted_k(self) -> int:
        """K of `predicted:K`, 0 for the other target modes."""
        match = _PREDICTED.match(self.targets)
        return int(match.group(1)) if match else 0


@dataclass(frozen=True)
class StoreSpec:
    path: str  # a local path or an fsspec URL (s3://bucket/key, ...)
    dtype: str = "float16"
    storage_options: dict = field(default_factory=dict)  # fsspec options for a URL


@dataclass(frozen=True)
class RunSpec:
    batch_size: int = 32
    workers: int = 0  # 0 = one per GPU, or one per 2 CPUs when there is none
    # heatmap rows per Zarr shard, which is also the unit of work; 0 = automatic: prepare
    # picks it (heatjob.job.plan.auto_shard_size) and the resolved spec holds the number
    shard_size: int = 0
    device: str = "auto"
    num_gpus: float = 0.0  # GPUs per worker (fractional shares one); 0 = automatic
    precision: str = "float32"


@dataclass(frozen=True)
class EvaluationSpec:
    # region perturbation on the workers (heatjob.eval.faithfulness); {} = off
    faithfulness: dict = field(default_factory=dict)


@dataclass(frozen=True)
class JobSpec:
    dataset: DatasetSpec
    model: ModelSpec
    attribution: AttributionSpec
    store: StoreSpec
    run: RunSpec = field(default_factory=RunSpec)
    evaluation: EvaluationSpec = field(default_factory=EvaluationSpec)
    source: str = "<spec>"

    def to_dict(self) -> dict[str, Any]:
        """The full spec with defaults filled in, as plain TOML/JSON values."""
        out = dataclasses.asdict(self)
        out.pop("source")
        return _lists(out)

    def content_dict(self) -> dict[str, Any]:
        """The parts of the spec that decide what the store holds.

        Where the store lives (and how to reach it), how many workers run, their
        GPUs and batch size do not
        change the heatmaps' meaning, so a store may be resumed under a spec that
        differs only there.
        """
        spec = self.to_dict()
        spec["store"].pop("path")
        spec["store"].pop("storage_options")
        for key in ("workers", "batch_size", "device", "num_gpus"):
            spec["run"].pop(key)
        return spec


_SECTIONS: dict[str, type] = {
    "dataset": DatasetSpec,
    "model": ModelSpec,
    "attribution": AttributionSpec,
    "store": StoreSpec,
    "run": RunSpec,
    "evaluation": EvaluationSpec,
}


def load_spec(path: str | Path) -> JobSpec:
    """Read and validate a job spec file."""
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise SpecError(f"spec file not found: {path}") from None
    except OSError as exc:
        raise SpecError(f"cannot read spec file {path}: {exc.strerror}") from None
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise SpecError(f"{path}: invalid TOML: {exc}") from None
    return parse_spec(raw, source=str(path))


def parse_spec(raw: dict[str, Any], source: str = "<spec>") -> JobSpec:
    """Turn parsed TOML into a validated JobSpec (no file system checks)."""
    if not isinstance(raw, dict):
        raise SpecError(f"{source}: a job spec is a TOML table")
    for section in raw:
        if section not in _SECTIONS:
            raise SpecError(
                f"{source}: unknown section [{_name(section)}]; known: {', '.join(_SECTIONS)}"
            )
    for required in ("dataset", "model", "attribution", "store"):
        if required not in raw:
            raise SpecError(f"{source}: missing section [{required}]")
    sections = {
        name: _section(raw.get(name, {}), name, cls, source) for name, cls in _SECTIONS.items()
    }
    attribution = sections["attribution"]
    model = sections["model"]
    # zbox bounds default to the normalisation's images of 0 and 1; a bad mean/std is
    # reported by _check_values, so it is not used here
    good = (
        len(model.mean) == len(model.std) == 3
        and all(math.isfinite(v) for v in (*model.mean, *model.std))
        and all(v > 0 for v in model.std)
    )
    inputs = (model.mean, model.std) if good else (None, None)
    methods = _methods(attribution.methods, attribution.composites, source, *inputs)
    sections["attribution"] = dataclasses.replace(attribution, methods=methods)
    spec = JobSpec(**sections, source=source)
    _check_values(spec)
    faithfulness = resolve_settings(
        spec.evaluation.faithfulness,
        spec.dataset.image_size,
        f"{source}: [evaluation] faithfulness",
    )
    spec = dataclasses.replace(
        spec, evaluation=dataclasses.replace(spec.evaluation, faithfulness=faithfulness)
    )
    return spec


def _methods(
    tables: dict, composites: tuple[str, ...], source: str, mean: Any, std: Any
) -> dict[str, dict]:
    """Each [attribution.methods.<name>] table checked and with its defaults filled in."""
    known_composites = set(composite_names())
    out = {}
    for name, table in tables.items():
        shown = name if _BARE_KEY.match(name) else _short(name)  # TOML keys are strings
        where = f"{source}: [attribution.methods.{shown}]"
        if not METHOD_NAME.match(name):
            raise SpecError(
                f"{where} the name must be letters, digits, '_', '-' or '.', starting with a "
                "letter or digit (it names the store array heatmaps/<name>)"
            )
        if name in known_composites or name in composites:
            raise SpecError(f"{where} the name is a composite's; give the method another name")
        out[name] = resolved(parse_method(name, table, where, mean=mean, std=std))
    return out


def _section(table: Any, name: str, cls: type, source: str) -> Any:
    if not isinstance(table, dict):
        raise SpecError(f"{source}: [{name}] must be a table")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    values = {}
    for key, value in table.items():
        if key not in fields:
            raise SpecError(
                f"{source}: unknown key [{name}] {_name(key)}; known: {', '.join(fields)}"
            )
        values[key] = _coerce(value, fields[key], f"[{name}] {key}", source)
    missing = [
        f.name
        for f in fields.values()
        if f.default is dataclasses.MISSING
        and f.default_factory is dataclasses.MISSING
        and f.name not in values
    ]
    if missing:
        raise SpecError(f"{source}: missing key [{name}] {missing[0]}")
    return cls(**values)


def _coerce(value: Any, f: dataclasses.Field, where: str, source: str) -> Any:
    kind = f.type if isinstance(f.type, str) else f.type.__name__
    if kind == "int":
        if isinstance(value, bool) or not isinstance(value, int):
            hint = _INT_HINTS.get(where, "")
            raise SpecError(f"{source}: {where} must be an integer{hint}, got {_short(value)}")
        if not -(2**63) <= value < 2**63:  # TOML's range; a JSON spec (store attrs) has none
            raise SpecError(f"{source}: {where} is out of range, got {_short(value)}")
        return value
    if kind == "float":
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise SpecError(f"{source}: {where} must be a number, got {value!r}")
        return float(value)
    if kind == "dict":
        if not isinstance(value, dict):
            raise SpecError(f"{source}: {where} must be a table, got {value!r}")
        return value
    if kind == "str":
        if not isinstance(value, str):
            raise SpecError(f"{source}: {where} must be a string, got {_short(value)}")
        return value
    if kind == "tuple[float, ...]":
        if not isinstance(value, list) or not all(
            isinstance(v, int | float) and not isinstance(v, bool) for v in value
        ):
            raise SpecError(f"{source}: {where} must be a list of numbers, got {_short(value)}")
        try:
            return tuple(float(v) for v in value)
        except OverflowError:
            raise SpecError(
                f"{source}: {where} holds a number too large: {_short(value)}"
            ) from None
    if kind == "tuple[str, ...]":
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise SpecError(f"{source}: {where} must be a list of strings, got {_short(value)}")
        return tuple(value)
    raise AssertionError(f"no coercion for {kind}")


# what a user who writes a word where a number goes should read
_INT_HINTS = {"[run] shard_size": " (0 = automatic)"}


def _name(key: Any) -> str:
    """A key as the user typed it, quoted when it is not a plain word (say, holds a newline)."""
    return key if isinstance(key, str) and key.isidentifier() else _short(key)


def _short(value: Any, limit: int = 60) -> str:
    """A value for an error message: one line, not a page."""
    text = " ".join(repr(value).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _check_dataset_inputs(ds: DatasetSpec, fail) -> None:
    """The keys that say which files a kind reads and how its images become inputs."""
    for key in _DATASET_FILES.get(ds.kind, ()):
        if not getattr(ds, key):
            fail(f"[dataset] {key}", f"is required for kind = {ds.kind!r}")
    if ds.unannotated not in UNANNOTATED:
        fail("[dataset] unannotated", f"must be skip or keep, got {_short(ds.unannotated)}")
    if ds.resize not in RESIZE_MODES:
        fail("[dataset] resize", f"must be squash or crop, got {_short(ds.resize)}")
    if ds.resize == "squash" and ds.resize_to:
        fail("[dataset] resize_to", 'applies to resize = "crop" only; remove it or set resize')
    if ds.resize_to and not ds.image_size <= ds.resize_to <= MAX_IMAGE_SIZE:
        fail(
            "[dataset] resize_to",
            f"must be 0 or image_size ({ds.image_size}) to {MAX_IMAGE_SIZE}, got {ds.resize_to}",
        )


# Builder arguments that [model] sets through keys of its own.
OWN_MODEL_KEYS = frozenset({"weights", "num_classes", "progress"})


def _check_values(spec: JobSpec) -> None:
    src = spec.source
    ds, model, attr, store, run = spec.dataset, spec.model, spec.attribution, spec.store, spec.run

    def fail(key: str, message: str) -> None:
        raise SpecError(f"{src}: {key} {message}")

    kinds = dataset_kinds()
    if ds.kind not in kinds:
        fail("[dataset] kind", f"must be one of {', '.join(kinds)}, got {ds.kind!r}")
    if ds.kind != "synthetic" and not ds.root:
        fail("[dataset] root", f"is required for kind = {ds.kind!r}")
    if not 8 <= ds.image_size <= MAX_IMAGE_SIZE:
        fail("[dataset] image_size", f"must be 8 to {MAX_IMAGE_SIZE}, got {ds.image_size}")
    if ds.limit < 0:
        fail("[dataset] limit", f"must be 0 (all) or positive, got {ds.limit}")
    if ds.num_samples < 1:
        fail("[dataset] num_samples", f"must be positive, got {ds.num_samples}")
    _check_dataset_inputs(ds, fail)
    if not model.arch:
        fail("[model] arch", "must name an architecture")
    if model.weights and model.checkpoint:
        fail("[model] weights", "and [model] checkpoint are exclusive; set one")
    if model.num_classes < 0:
        fail("[model] num_classes", f"must be positive, got {model.num_classes}")
    for key, values in (("mean", model.mean), ("std", model.std)):
        if len(values) != 3:
            fail(f"[model] {key}", f"must have 3 values (R, G, B), got {len(values)}")
        if not all(math.isfinite(v) for v in values):
            fail(f"[model] {key}", f"must be finite numbers, got {list(values)}")
    if any(v <= 0 for v in model.std):
        fail("[model] std", f"must be positive, got {list(model.std)}")
    for key, value in model.options.items():
        if key in OWN_MODEL_KEYS:
            fail(f"[model] options {_name(key)}", f"is set by [model] {key}, not by options")
        if isinstance(value, dict | list):
            fail(
                f"[model] options {_name(key)}",
                f"must be a number, string or boolean, got {_short(value)}",
            )
    if not attr.sources:
        fail("[attribution] composites", "must name at least one composite (or add a method)")
    if len(set(attr.composites)) != len(attr.composites):
        fail("[attribution] composites", f"lists a composite twice: {list(attr.composites)}")
    if attr.targets not in ("labels", "all") and not _PREDICTED.match(attr.targets):
        fail("[attribution] targets", f"must be labels, all or predicted:K, got {attr.targets!r}")
    if attr.targets.startswith("predicted:") and attr.predicted_k < 1:
        fail("[attribution] targets", f"needs K >= 1, got {attr.targets!r}")
    if not store.path:
        fail("[store] path", "must not be empty")
    if store.dtype not in STORE_DTYPES:
        fail("[store] dtype", f"must be one of {', '.join(STORE_DTYPES)}, got {store.dtype!r}")
    if run.batch_size < 1:
        fail("[run] batch_size", f"must be positive, got {run.batch_size}")
    if run.workers < 0:
        fail("[run] workers", f"must be 0 (automatic) or positive, got {run.workers}")
    if run.shard_size < 0:
        fail("[run] shard_size", f"must be 0 (automatic) or positive, got {run.shard_size}")
    if run.num_gpus < 0:
        fail("[run] num_gpus", f"must be 0 (automatic) or positive, got {run.num_gpus}")
    if run.device not in DEVICES:
        fail("[run] device", f"must be one of {', '.join(DEVICES)}, got {run.device!r}")
    if run.precision not in PRECISIONS:
        fail(
            "[run] precision",
            f"must be one of {', '.join(PRECISIONS)}, got {run.precision!r}",
        )


def with_overrides(spec: JobSpec, **changes: dict[str, Any]) -> JobSpec:
    """A copy of `spec` with some section fields replaced, e.g. store={"path": p}."""
    sections = {
        name: dataclasses.replace(getattr(spec, name), **values)
        for name, values in changes.items()
        if values
    }
    return dataclasses.replace(spec, **sections)


def _lists(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _lists(v) for k, v in value.items()}
    if isinstance(value, tuple | list):
        return [_lists(v) for v in value]
    return value


_BARE_KEY = re.compile(r"^[A-Za-z0-9_-]+$")


def to_toml(tables: dict[str, dict[str, Any]]) -> str:
    """Spec tables (e.g. JobSpec.to_dict()) as TOML text that load_spec reads back."""
    lines = []
    for section, values in tables.items():
        lines.append(f"[{_toml_key(section)}]")
        lines += [f"{_toml_key(key)} = {_toml_value(value)}" for key, value in values.items()]
    return "\n".join(lines) + "\n"


def _toml_key(key: str) -> str:
    return key if _BARE_KEY.match(key) else json.dumps(key, ensure_ascii=False)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        return ("inf" if value > 0 else "-inf") if math.isinf(value) else repr(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)  # a JSON string is a TOML basic string
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        items = (f"{_toml_key(k)} = {_toml_value(v)}" for k, v in value.items())
        return "{" + ", ".join(items) + "}"
    raise TypeError(f"no TOML form for {type(value).__name__}")


if __name__ == "__main__":  # `python -m heatjob.spec store-path SPEC`, for the Makefile
    import sys

    if len(sys.argv) != 3 or sys.argv[1] != "store-path":
        sys.exit("usage: python -m heatjob.spec store-path SPEC.toml")
    try:
        print(load_spec(sys.argv[2]).store.path)
    except SpecError as exc:
        sys.exit(f"heatjob: error: {exc}")
