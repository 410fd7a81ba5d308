"""Once every unit is done (format 2): the workers' records assembled into format 1's
per-unit and per-sample arrays (units/done, host, node, pid, attempts, checksum;
samples/logits, failed, failure), so that readers of those arrays see the job.

The work is cut into blocks of the arrays' own chunks (4096 units, 4096 samples), so no two
blocks write into one chunk. In `submit` each block is a Ray task: the tasks read the
units' records and logits, and the driver only reads rows/sample (to know which unit owns
which samples), hands out blocks and gathers the few bytes each returns. Two passes:
the unit blocks first (they say which units have a record, and which samples failed), then
the sample blocks.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import zarr

from heatjob.store import schema
from heatjob.store.layout import owned_starts
from heatjob.store.location import open_group
from heatjob.store.records import COPIED_ATTRIBUTE, owned_logits, owning_units, parsed_records

BLOCK = 4096  # the chunk length of the per-unit and per-sample arrays (layout._BLOCK)

# fn, blocks -> [fn(root, block) for block in blocks], in the order of blocks
RunBlocks = Callable[[Callable, Sequence], list]


@dataclass(frozen=True)
class UnitBlock:
    start: int
    stop: int


@dataclass(frozen=True)
class UnitBlockResult:
    recorded: np.ndarray  # (stop - start,) bool: the unit has a done record
    failures: dict[int, str]  # sample -> reason, from the records
    done: int  # units of the block now flagged in units/done


@dataclass(frozen=True)
class SampleBlock:
    start: int
    stop: int
    first_unit: int  # units first_unit .. first_unit + len(recorded) own samples in the block
    starts: np.ndarray  # their first owned samples, and the end of the last one's
    recorded: np.ndarray  # (units,) bool: which of them have a record (their logits)
    failures: dict[int, str]  # the workers' failures among the block's samples


def assemble_unit_block(root: zarr.Group, block: UnitBlock) -> UnitBlockResult:
    """units/* of units start .. stop from their records; a unit flagged in units/done
    without a record (a format 1 unit, or one the copy kept) stays as it is."""
    a, b = block.start, block.stop
    records = parsed_records(root, a, b)
    recorded = np.array([r is not None for r in records], dtype=bool)
    kept = {
        name: root[name][a:b]
        for name in (schema.UNIT_HOST, schema.UNIT_NODE, schema.UNIT_PID)
        + (schema.UNIT_ATTEMPTS, schema.UNIT_CHECKSUM, schema.UNIT_DONE)
    }
    fields = {
        schema.UNIT_HOST: "host",
        schema.UNIT_NODE: "node",
        schema.UNIT_PID: "pid",
        schema.UNIT_ATTEMPTS: "attempts",
        schema.UNIT_CHECKSUM: "checksum",
    }
    failures: dict[int, str] = {}
    for i, record in enumerate(records):
        if record is None:
            continue
        for name, key in fields.items():
            kept[name][i] = record[key]
        failures.update({int(s): reason for s, reason in record.get("failures", {}).items()})
    kept[schema.UNIT_DONE] = kept[schema.UNIT_DONE] | recorded
    for name, values in kept.items():
        root[name][a:b] = values
    return UnitBlockResult(recorded, failures, int(kept[schema.UNIT_DONE].sum()))


def assemble_sample_block(root: zarr.Group, block: SampleBlock) -> None:
    """samples/logits, failed and failure of samples start .. stop: the logits from the
    records of the units that own them, the failures the driver found while planning
    (already there) and those the workers recorded."""
    a, b = block.start, block.stop
    logits = owned_logits(root, a, b, block.first_unit, block.starts, block.recorded)
    failed = root[schema.SAMPLE_FAILED][a:b]
    reasons = root[schema.SAMPLE_FAILURE][a:b]
    for sample, reason in block.failures.items():
        failed[sample - a], reasons[sample - a] = True, reason
    root[schema.SAMPLE_LOGITS][a:b] = logits
    root[schema.SAMPLE_FAILED][a:b] = failed
    root[schema.SAMPLE_FAILURE][a:b] = reasons


def in_process(root: zarr.Group) -> RunBlocks:
    """Every block in this process, on `root`."""
    return lambda fn, blocks: [fn(root, block) for block in blocks]


def on_ray(path: str, storage_options: dict | None, tasks: int) -> RunBlocks:
    """Every block a Ray task (at most `tasks` at once) that opens the store itself."""
    from heatjob.job.runner import map_tasks

    return lambda fn, blocks: map_tasks(
        _in_task, [(fn, path, storage_options, block) for block in blocks], tasks
    )


def _in_task(item: tuple[Callable, str, dict | None, object]):
    fn, path, storage_options, block = item
    return fn(open_group(path, "r+", storage_options), block)


def write_sample_arrays(root: zarr.Group, run_blocks: RunBlocks | None = None) -> None:
    """Format 2, once every unit is done: the records copied into format 1's arrays, block
    by block (`run_blocks`: where the blocks run; default this process)."""
    run_blocks = run_blocks or in_process(root)
    if COPIED_ATTRIBUTE in root.attrs:  # a rerun after a copy: assemble anew
        del root.attrs[COPIED_ATTRIBUTE]
    n_units = root[schema.UNIT_DONE].shape[0]
    n_samples = root[schema.SAMPLE_ID].shape[0]
    shard_size = int(root.attrs[schema.ROOT_ATTRIBUTE]["shard_size"])
    unit_blocks = [UnitBlock(a, min(a + BLOCK, n_units)) for a in range(0, n_units, BLOCK)]
    results = run_blocks(assemble_unit_block, unit_blocks)
    recorded = np.concatenate([r.recorded for r in results]) if results else np.zeros(0, bool)
    failures = {s: reason for r in results for s, reason in r.failures.items()}
    starts = owned_starts(root[schema.ROW_SAMPLE][:], shard_size, n_samples)
    run_blocks(assemble_sample_block, sample_blocks(starts, recorded, failures, n_samples))
    root.attrs[COPIED_ATTRIBUTE] = {"units_done": sum(r.done for r in results)}


def sample_blocks(
    starts: np.ndarray, recorded: np.ndarray, failures: dict[int, str], n_samples: int
) -> list[SampleBlock]:
    """The 4096-sample blocks, each with the units that own its samples."""
    by_block: dict[int, dict[int, str]] = {}
    for sample, reason in failures.items():
        by_block.setdefault(sample // BLOCK, {})[sample] = reason
    blocks = []
    for a in range(0, n_samples, BLOCK):
        b = min(a + BLOCK, n_samples)
        first, last = owning_units(starts, a, b)
        mine = by_block.get(a // BLOCK, {})
        blocks.append(
            SampleBlock(a, b, first, starts[first : last + 1], recorded[first:last], mine)
        )
    return blocks
