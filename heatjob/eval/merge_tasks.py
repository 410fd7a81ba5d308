"""`heatjob merge --workers N / --address ADDR`: the units scored in Ray tasks.

The driver holds what the in-process merge holds besides the heatmaps: each row's
geometry (its boxes), then each row's values. A task opens the store itself, reads its
block of consecutive units one shard at a time and returns their per-row values, the
box-AP inputs among them (each row's heatmap box; the target logits stay with the
driver). The tasks run the in-process code (`merge.score_unit`) on the same units, and
their values are joined in row order, so what merge writes is the same bit for bit;
the reduction (aggregates, tables, bootstrap, box AP) is the driver's, as in process.

The store must be at the same path on every node that runs a task (a URL, or a
shared file system); a local path is made absolute, as a task's working directory is
not the driver's.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path

import numpy as np
from tqdm import tqdm

from heatjob.errors import HeatjobError
from heatjob.eval import merge as merge_module
from heatjob.eval.merge import RowGeometry, heatmap_arrays, join_blocks, score_unit, source_names
from heatjob.job.plan import Unit
from heatjob.store.layout import open_store
from heatjob.store.location import is_url

TASKS_PER_WORKER = 4  # blocks per worker: a slow node or a long block holds up less


@dataclass(frozen=True)
class MergeTask:
    """One task's work: consecutive units and the geometry of their scored rows only."""

    path: str
    units: tuple[Unit, ...]
    sizes: tuple[int, ...]  # scored rows per unit, in order
    geometry: RowGeometry  # the block's scored rows, in row order

    @property
    def n_rows(self) -> int:
        return sum(self.sizes)


def check_workers(workers: int | None) -> None:
    if workers is not None and workers < 1:
        raise HeatjobError(f"--workers must be at least 1, got {workers}")


def split_blocks(blocks: list, tasks: int) -> list[list]:
    """Consecutive runs of (unit, index) blocks, about TASKS_PER_WORKER per worker."""
    if not blocks:
        return []
    per_task = math.ceil(len(blocks) / (max(1, tasks) * TASKS_PER_WORKER))
    return [blocks[i : i + per_task] for i in range(0, len(blocks), per_task)]


def block_geometry(geometry: RowGeometry, positions: np.ndarray) -> RowGeometry:
    """The rows at `positions` of `geometry`, what score_block reads of them; the ground
    truth and the sampling pool stay with the driver, which computes box AP."""
    take = positions.tolist()
    return replace(
        geometry,
        rows=geometry.rows[positions],
        sample=geometry.sample[positions],
        target=geometry.target[positions],
        boxes=[geometry.boxes[i] for i in take],
        other_boxes=[geometry.other_boxes[i] for i in take],
        image_sizes=geometry.image_sizes[positions],
        other_class=geometry.other_class[positions],
        score=geometry.score[positions],
        ground_truth={},
        pool=np.zeros(0, np.int64),
    )


def task_path(path: str) -> str:
    return path if is_url(path) else str(Path(path).resolve())


def plan_tasks(path: str, geometry: RowGeometry, blocks: list, tasks: int) -> list[MergeTask]:
    """The (unit, index) blocks of merge.unit_blocks as MergeTasks, in row order."""
    out = []
    for run in split_blocks(blocks, tasks):
        positions = np.concatenate([index for _, index in run])
        out.append(
            MergeTask(
                path=task_path(path),
                units=tuple(unit for unit, _ in run),
                sizes=tuple(len(index) for _, index in run),
                geometry=block_geometry(geometry, positions),
            )
        )
    return out


def score_task(task: MergeTask) -> dict[str, dict[str, np.ndarray]]:
    """In a Ray task: {source: per-row values} of the task's scored rows, unit by unit."""
    root, info = open_store(task.path, mode="r")
    arrays = heatmap_arrays(root, info)
    scored, start = [], 0
    for unit, size in zip(task.units, task.sizes, strict=True):
        index = np.arange(start, start + size)
        scored.append(score_unit(arrays, unit, task.geometry, index, info.image_size))
        start += size
    return join_blocks(source_names(info), scored)


def score_store_tasks(root, info, geometry, progress: bool, tasks: int) -> dict:
    """merge.score_store's per-row values, the units scored in at most `tasks` Ray tasks
    at once; the driver keeps only the values each task returns."""
    from heatjob.job.runner import map_tasks

    work = plan_tasks(
        info.path, geometry, list(merge_module.unit_blocks(root, info, geometry)), tasks
    )
    bar = tqdm(
        total=sum(len(t.units) for t in work),
        desc=f"merge ({tasks} task{'s' if tasks != 1 else ''})",
        unit="shard",
        disable=not progress,
        file=sys.stderr,
        leave=False,
    )
    with bar:
        results = map_tasks(
            score_task, work, tasks, on_result=lambda i, _: bar.update(len(work[i].units))
        )
    return join_blocks(source_names(info), results)


def cluster_cpus(address: str | None) -> int:
    """Tasks at once when only --address is given: one per CPU of the cluster."""
    from heatjob.job.runner import cluster_resources

    return max(1, int(cluster_resources(address)[0].get("CPU", 1)))


def merge_on_ray(path: str, workers: int | None, address: str | None, **options):
    """merge.merge with its units scored in Ray tasks: `workers` at once (default: one per
    CPU of the cluster). Attaches to `address` / RAY_ADDRESS or starts a local Ray, before
    the store is touched, so a wrong address leaves the old results in place."""
    check_workers(workers)
    from heatjob.job import runner

    started = runner.connect(address)
    try:
        tasks = workers if workers is not None else cluster_cpus(address)
        return merge_module.merge_with(partial(score_store_tasks, tasks=tasks), path, **options)
    finally:
        if started:
            runner.shutdown()
