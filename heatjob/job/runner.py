"""Ray at the edge: start or attach, size the worker pool, dispatch units, gather.

Workers are Ray actors around `UnitWorker`: the model, the explainers and the open
store are set up once per actor. Heatmaps never pass through Ray's object store;
a worker writes its unit's records itself (store format 2), and the result the
driver gets is a few kilobytes it only counts (or, for a format 1 store, writes).
"""

from __future__ import annotations

import math
import os
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import ray

from heatjob.errors import HeatjobError, SpecError
from heatjob.job.plan import Unit, first_batch, owned_samples

if TYPE_CHECKING:
    from heatjob.job.worker import UnitResult

OBJECT_STORE_BYTES = 256 * 1024**2  # results are small; a local Ray needs little


@dataclass(frozen=True)
class WorkerPlan:
    workers: int
    num_cpus: float  # per worker (fractional, so a reading task never starves)
    num_gpus: float
    threads: int  # torch threads per worker

    def describe(self) -> str:
        kind = "GPU" if self.num_gpus else "CPU"
        return f"{self.workers} {kind} worker{'s' if self.workers != 1 else ''}"


def ray_address(address: str | None) -> str | None:
    """The cluster to attach to: `--address`, else RAY_ADDRESS, else None (a local Ray)."""
    return address or os.environ.get("RAY_ADDRESS") or None


def connect(address: str | None) -> bool:
    """Attach to `address` / RAY_ADDRESS, or start a local Ray. True if we started it."""
    if ray.is_initialized():
        return False
    address = ray_address(address)
    if address is not None and not _reachable(address):
        raise HeatjobError(f"cannot reach the Ray cluster at {address} (nothing answers there)")
    kwargs: dict = {"include_dashboard": False, "logging_level": "ERROR"}
    if address is None:
        kwargs["object_store_memory"] = OBJECT_STORE_BYTES
    try:
        ray.init(address=address, **kwargs)
    except ConnectionError as exc:
        raise HeatjobError(f"cannot reach the Ray cluster at {address}: {exc}") from None
    return address is None


def shutdown() -> None:
    ray.shutdown()


def local_resources() -> dict[str, float]:
    """What a local Ray would find: the CPUs this process may use, the visible GPUs."""
    import torch

    return {"CPU": float(len(os.sched_getaffinity(0))), "GPU": float(torch.cuda.device_count())}


def cluster_resources(address: str | None) -> tuple[dict[str, float], str]:
    """The resources workers can be planned on, and where they are, without starting a
    local Ray: this machine's, or those of the cluster at `address` / RAY_ADDRESS."""
    address = ray_address(address)
    if address is None:
        return local_resources(), "this machine"
    attached = ray.is_initialized()
    connect(address)
    try:
        return dict(ray.cluster_resources()), f"the cluster at {address}"
    finally:
        if not attached:
            ray.shutdown()


def ray_cpus() -> int:
    """The CPUs of the Ray cluster this process is connected to (`connect` first)."""
    return max(1, int(ray.cluster_resources().get("CPU", 1)))


def _reachable(address: str, timeout: float = 5.0) -> bool:
    """Whether host:port answers; Ray itself would retry an unreachable address for minutes."""
    host, _, port = address.split("://", 1)[-1].rpartition(":")
    if not host or not port.isdigit():
        return True  # "auto" and the like: Ray resolves them and fails fast
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except OSError:
        return False
    return True


def plan_workers(
    requested: int,
    device: str,
    n_units: int,
    num_gpus: float = 0.0,
    resources: dict[str, float] | None = None,
) -> WorkerPlan:
    """How many workers and what each asks Ray for, from what the cluster has.

    num_gpus: GPUs per worker ([run] num_gpus; fractional shares a GPU), 0 = one each.
    resources: the cluster's totals (default: ray.cluster_resources()).
    Never asks for a GPU the cluster lacks, nor for more GPUs than it has: such a
    request would wait forever.
    """
    resources = ray.cluster_resources() if resources is None else resources
    cpus = float(resources.get("CPU", 1.0))
    gpus = float(resources.get("GPU", 0.0))
    if device == "cuda" and gpus <= 0:
        raise SpecError("[run] device = 'cuda' but the Ray cluster has no GPU")
    use_gpu = gpus > 0 and device != "cpu"
    if use_gpu and num_gpus > gpus:
        raise SpecError(f"[run] num_gpus = {num_gpus} per worker, but the cluster has {gpus:g}")
    if requested:
        workers = requested
    elif use_gpu:
        workers = int(gpus / num_gpus + 1e-9) if num_gpus else int(gpus)
    else:
        workers = max(1, int(cpus) // 2)
    if use_gpu and num_gpus:
        workers = min(workers, int(gpus / num_gpus + 1e-9))  # all of them must fit at once
    workers = max(1, min(workers, n_units))
    num_cpus = min(1.0, cpus / workers) if use_gpu else cpus / workers
    per_gpu = (num_gpus or min(1.0, gpus / workers)) if use_gpu else 0.0
    threads = max(1, int(cpus // workers)) if not use_gpu else 1
    # Rounded down: requests that add up to more than the cluster has leave an actor
    # unscheduled forever (3 workers x round(2/3, 3) CPUs = 2.001 > 2).
    return WorkerPlan(workers, _floor3(num_cpus), _floor3(per_gpu), threads)


def _floor3(value: float) -> float:
    return math.floor(value * 1000) / 1000


class RayWorker:
    """The actor: a UnitWorker whose set-up error surfaces at the first call.

    Ray reports an exception raised in an actor's constructor only as a dead actor, without
    its cause; raised from a method, it arrives as the cause of a RayTaskError, so the user
    sees heatjob's one-line message (say, a data root that this node cannot see).
    """

    def __init__(self, *args) -> None:
        self.worker, self.error = None, None
        # imported here: torch and the models load in the actor, not in a driver that only
        # maps tasks (merge, planning)
        from heatjob.job.worker import UnitWorker

        try:
            self.worker = UnitWorker(*args)
            self.worker.node = ray.get_runtime_context().get_node_id()
        except HeatjobError as exc:
            self.error = exc

    def run_unit(self, *args) -> UnitResult:
        if self.error is not None:
            raise self.error
        return self.worker.run_unit(*args)


MAX_ATTEMPTS = 3  # dispatches of one unit before the job gives up on it


@dataclass(frozen=True)
class UnitFailure:
    """A unit the job gave up on after MAX_ATTEMPTS dispatches, and the last cause."""

    unit: Unit
    cause: str

    def describe(self) -> str:
        u = self.unit
        rows = f"rows {u.row_start}-{u.row_stop - 1}"
        return f"unit {u.index} ({rows}) failed {MAX_ATTEMPTS} times; last: {self.cause}"


class UnitsFailed(HeatjobError):
    """Some units failed MAX_ATTEMPTS times; every other unit ran to the end."""

    def __init__(self, failures: Sequence[UnitFailure]) -> None:
        self.failures = list(failures)
        more = ""
        if len(self.failures) > 1:
            others = ", ".join(str(f.unit.index) for f in self.failures[1:])
            more = f" (and units {others})"
        super().__init__(
            f"{self.failures[0].describe()}{more}; every other unit is done: "
            "run `heatjob submit` again to retry"
        )


def _cause(exc: BaseException) -> str:
    """One line for what ended a unit: a worker's exception (its type and message), or a
    dead worker."""
    if isinstance(exc, ray.exceptions.RayTaskError) and exc.cause is not None:
        cause = exc.cause
        text = f"{type(cause).__name__}: {cause}"
    elif isinstance(exc, ray.exceptions.RayTaskError):
        text = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
    else:
        text = f"its worker died ({' '.join(str(exc).split())})"
    return " ".join(text.split())[:300]


def run_units(
    spec_dict: dict,
    store_path: str,
    num_classes: int,
    n_samples: int,
    rows_sample: np.ndarray,
    rows_target: np.ndarray,
    units: Sequence[Unit],
    workers: WorkerPlan,
    on_result: Callable[[UnitResult, int], None],
) -> None:
    """Run `units` over a pool of actors; call `on_result(result, attempts)` as each ends.

    heatjob re-dispatches itself rather than leaving it to Ray's task retries, so that it
    knows how many attempts each unit took (the store records them). Whatever ends a unit,
    a dead worker or an exception raised in it (a CUDA out-of-memory, a bug in a method),
    is that unit's failure: its actor is replaced by a fresh one and the unit goes back in
    the queue, up to MAX_ATTEMPTS dispatches. A unit that fails that often is given up on,
    the others run to the end, and then UnitsFailed names each with its cause. A unit
    rewrites its whole shard, so a retry cannot duplicate rows. A HeatjobError raised in a
    worker (say, a data root its node cannot see) stops the job: every unit would meet it.
    """
    actor_class = ray.remote(RayWorker).options(
        num_cpus=workers.num_cpus, num_gpus=workers.num_gpus, max_restarts=0
    )

    def new_actor():
        return actor_class.remote(spec_dict, store_path, num_classes, workers.threads)

    batch_size = int(spec_dict["run"]["batch_size"])

    def dispatch(actor, unit: Unit):
        rows = slice(unit.row_start, unit.row_stop)
        owned = owned_samples(unit, rows_sample, n_samples)
        # Units go out in order as actors free up, so this actor's next one is likely the
        # one a pool's length further on: its first batch loads while this one is written.
        after = queue[-workers.workers] if len(queue) >= workers.workers else None
        then = None if after is None else first_batch(after, rows_sample, n_samples, batch_size)
        return actor.run_unit.remote(
            unit, rows_sample[rows], rows_target[rows], owned, attempts[unit.index], then
        )

    queue = list(reversed(units))  # pop() from the end takes units in order
    idle = [new_actor() for _ in range(workers.workers)]
    attempts: dict[int, int] = {}
    running: dict = {}  # object ref -> (actor, unit)
    given_up: list[UnitFailure] = []
    try:
        while queue or running:
            while queue and idle:
                actor, unit = idle.pop(), queue.pop()
                attempts[unit.index] = attempts.get(unit.index, 0) + 1
                running[dispatch(actor, unit)] = (actor, unit)
            [ref], _ = ray.wait(list(running), num_returns=1)
            actor, unit = running.pop(ref)
            try:
                result = ray.get(ref)
            except ray.exceptions.RayTaskError as exc:
                _raise_user_error(exc)
                _retry_or_give_up(unit, exc, attempts, queue, given_up)
                ray.kill(actor)  # its state (GPU memory, a half-run method) is suspect
                idle.append(new_actor())
                continue
            except ray.exceptions.RayError as exc:  # a dead worker, Ray's OOM killer, ...
                _retry_or_give_up(unit, exc, attempts, queue, given_up)
                ray.kill(actor)
                idle.append(new_actor())
                continue
            idle.append(actor)
            on_result(result, attempts[unit.index])
    finally:
        for actor in [*idle, *(a for a, _ in running.values())]:
            ray.kill(actor)
    if given_up:
        raise UnitsFailed(given_up)


def _raise_user_error(exc: ray.exceptions.RayTaskError) -> None:
    """A HeatjobError raised in a task or actor is the user's input at fault (a path, a key):
    raised as itself, so the user sees its one line, and never retried."""
    if isinstance(exc.cause, HeatjobError):
        raise exc.cause from None


def _retry_or_give_up(
    unit: Unit,
    exc: BaseException,
    attempts: dict[int, int],
    queue: list[Unit],
    given_up: list[UnitFailure],
) -> None:
    if attempts[unit.index] >= MAX_ATTEMPTS:
        given_up.append(UnitFailure(unit, _cause(exc)))
    else:
        queue.append(unit)


def map_tasks(
    fn: Callable,
    items: Sequence,
    tasks: int,
    num_cpus: float = 1.0,
    on_result: Callable[[int, object], None] | None = None,
    keep: bool = True,
) -> list:
    """`[fn(item) for item in items]`, each call a Ray task, at most `tasks` running at once.

    The one way heatjob spreads work that is not a unit (planning, merge) over a cluster.
    The returned list is in the order of `items`; `on_result(i, result)` is called in the
    order tasks finish, which is not that order (a progress bar, or a reduction that does not
    depend on order: with `keep=False` results are not kept, so the driver holds only those
    in flight). An exception in a task is raised here (a HeatjobError as itself, so the user
    sees its one line); the tasks still running are cancelled.
    Connect first (`connect`).
    """
    remote = ray.remote(fn).options(num_cpus=num_cpus, max_retries=2)
    pending = list(reversed(range(len(items))))
    running: dict = {}
    out: list = [None] * len(items)
    try:
        while pending or running:
            while pending and len(running) < max(1, tasks):
                i = pending.pop()
                running[remote.remote(items[i])] = i
            [ref], _ = ray.wait(list(running), num_returns=1)
            i = running.pop(ref)
            try:
                out[i] = ray.get(ref)
            except ray.exceptions.RayTaskError as exc:
                _raise_user_error(exc)
                raise
            if on_result is not None:
                on_result(i, out[i])
            if not keep:
                out[i] = None
    finally:
        for ref in running:
            ray.cancel(ref, force=True)
    return out
