"""`heatjob evaluate STORE`: perturbation curves for a finished store, from its heatmaps.

The heatmaps are read from the store (never recomputed); the model and the data set are
built again from the store's own spec, in this process, on its device (a GPU when there
is one). Unit by unit, each flagged in `curves/done` once written, so an interrupted run
resumes where it stopped; a store whose curves were made with other settings is refused
unless `--overwrite`.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass

import torch
from tqdm import tqdm

from heatjob.data import open_job_dataset
from heatjob.data.transforms import to_input
from heatjob.errors import DataError, HeatjobError
from heatjob.eval.faithfulness import DEFAULTS, resolve_settings
from heatjob.eval.perturbation import rows_curves
from heatjob.job.worker import pick_device
from heatjob.models import build_model, file_sha256
from heatjob.spec import parse_spec
from heatjob.store import schema
from heatjob.store.curves import create_curves, curve_settings, curves_done, write_unit_curves
from heatjob.store.layout import open_store
from heatjob.store.units import done_flags, store_units


@dataclass(frozen=True)
class EvaluateSummary:
    store: str
    settings: dict
    units_total: int
    units_run: int
    rows: int
    seconds: float
    device: str


def chosen_settings(stored: dict, from_spec: dict, options: dict, where: str, size: int) -> dict:
    """The settings to run: the store's (resuming), else the spec's, else the defaults,
    with the command line's options over them."""
    base = stored or from_spec or DEFAULTS
    return resolve_settings({**base, **options}, size, where)


def evaluate(
    path: str,
    options: dict | None = None,
    *,
    overwrite: bool = False,
    batch_size: int = 0,
    progress: bool = True,
) -> EvaluateSummary:
    """Write (or finish) the store's curves; returns what was done."""
    started = time.perf_counter()
    root, info = open_store(path, mode="r+")
    done = done_flags(root)
    if not done.all():
        raise HeatjobError(
            f"store {path} is not finished: {int(done.sum())} of {len(done)} units done; "
            "run `heatjob submit` again to finish it"
        )
    spec = parse_spec(info.attrs["spec"], source=path)
    stored = curve_settings(root)
    settings = chosen_settings(
        stored, spec.evaluation.faithfulness, options or {}, "heatjob evaluate:", info.image_size
    )
    units = store_units(root, info)
    if stored and stored != settings and not overwrite:
        key = next(k for k in settings if stored.get(k) != settings[k])
        raise HeatjobError(
            f"store {path} holds curves made with {key} = {stored.get(key)!r}, not "
            f"{settings[key]!r}; use --overwrite to replace them"
        )
    if not stored or stored != settings:
        n_rows = root[schema.ROW_SAMPLE].shape[0]
        create_curves(root, info.sources, n_rows, info.shard_size, len(units), settings)
    pending = [u for u in units if not curves_done(root)[u.index]]
    m = spec.model
    if m.checkpoint and file_sha256(m.checkpoint) != info.attrs.get("checkpoint_sha256", ""):
        raise HeatjobError(
            f"{m.checkpoint} is not the checkpoint store {path} was made with (sha256 differs)"
        )
    device = pick_device(spec.run.device)
    n_classes = m.num_classes or len(info.classes)
    model = build_model(m.arch, n_classes, m.weights, m.checkpoint).to(device)
    dataset = open_job_dataset(spec)
    rows_sample = root[schema.ROW_SAMPLE][:]
    rows_target = root[schema.ROW_TARGET][:]
    arrays = {name: root[schema.heatmaps(name)] for name in info.sources}
    batch = batch_size or spec.run.batch_size
    rows_done = 0
    for unit in tqdm(pending, desc="curves", unit="unit", disable=not progress, file=sys.stderr):
        rows = slice(unit.row_start, unit.row_stop)
        samples = rows_sample[rows]
        inputs = _inputs(dataset, sorted(set(samples.tolist())), spec, device)
        heatmaps = {name: array[rows] for name, array in arrays.items()}
        curves = rows_curves(
            model,
            inputs,
            samples,
            rows_target[rows],
            unit.row_start,
            heatmaps,
            settings,
            batch,
            m.mean,
            m.std,
        )
        write_unit_curves(path, unit, curves)
        rows_done += unit.n_rows
    return EvaluateSummary(
        path,
        settings,
        len(units),
        len(pending),
        rows_done,
        time.perf_counter() - started,
        device.type,
    )


def _inputs(dataset, samples: list[int], spec, device) -> dict[int, torch.Tensor]:
    """Each sample's model input on the device; an unreadable image gives zeros (its
    heatmap rows are NaN in the store, so its curves are NaN)."""
    size, m = spec.dataset.image_size, spec.model
    out = {}
    for sample in samples:
        try:
            x = to_input(dataset.load_image(sample), size, m.mean, m.std)
        except DataError:
            x = torch.zeros(3, size, size)
        out[sample] = x.to(device)
    return out


def describe(summary: EvaluateSummary) -> str:
    s = summary.settings
    what = (
        f"steps {s['steps']}, patch {s['patch']}, {'/'.join(s['order'])}, baseline {s['baseline']}"
    )
    if summary.units_run == 0:
        return f"{summary.store}: curves of all {summary.units_total} units already done ({what})"
    rate = summary.rows / summary.seconds if summary.seconds else 0.0
    return (
        f"{summary.store}: curves of {summary.units_run} of {summary.units_total} units, "
        f"{summary.rows} rows in {summary.seconds:.1f} s ({rate:.1f} rows/s on "
        f"{summary.device}; {what})"
    )
