"""One worker: builds data set, model and LRP explainers once, then explains units.

Plain Python, no Ray: the runner wraps it in a Ray actor, tests call it directly.
A unit's heatmaps and, in a store of format 2, all its records (logits, chosen targets,
failures, the done record) go straight into the store from here; the driver gets a
summary (the same facts, a few kB) to count and, for a format 1 store, to write.
"""

from __future__ import annotations

import contextlib
import os
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from heatjob.attribution.lrp import explainers_for
from heatjob.attribution.registry import build_method
from heatjob.data import open_job_dataset
from heatjob.data.transforms import to_input
from heatjob.errors import DataError, SpecError
from heatjob.eval.perturbation import rows_curves
from heatjob.job.plan import PENDING_TARGET, Unit, unit_batches
from heatjob.job.prefetch import Loader
from heatjob.models import build_model
from heatjob.spec import JobSpec, parse_spec
from heatjob.store.curves import write_unit_curves
from heatjob.store.records import UnitWriter, done_record, this_process


@dataclass(frozen=True)
class UnitResult:
    unit: Unit
    owned: range  # the samples whose logits this unit reports (plan.owned_samples)
    logits: np.ndarray  # (len(owned), C) float32
    row_targets: np.ndarray | None  # (n_rows,) int32 when the worker chose them (predicted:K)
    seconds: float
    host: str
    pid: int
    node: str = ""  # the Ray node id, filled in by the runner's actor
    checksum: int = 0  # of the heatmaps written (store.unit_checksum)
    failures: dict[int, str] = field(default_factory=dict)  # unreadable images: sample -> reason
    recorded: bool = False  # the worker wrote the unit's records (format 2)


def pick_device(requested: str) -> torch.device:
    if requested == "cuda" or (requested == "auto" and torch.cuda.is_available()):
        return torch.device("cuda")
    return torch.device("cpu")


class UnitWorker:
    """Everything a worker needs, set up once; `run_unit` per unit of work."""

    def __init__(self, spec_dict: dict, store_path: str, num_classes: int, threads: int = 0):
        if threads:
            torch.set_num_threads(threads)
        self.spec: JobSpec = parse_spec(spec_dict, source="spec")
        self.store_path = store_path
        self.node = ""  # the Ray node id, set by the runner's actor
        self._writer: UnitWriter | None = None  # the store, opened at the first unit
        self.loader = Loader(self._timed_load)  # one loader thread for the worker's life
        self.device = pick_device(self.spec.run.device)
        if self.device.type == "cuda":
            # cuDNN's autotuner may pick another convolution algorithm per run; fixed,
            # deterministic algorithms make reruns and retried units reproducible.
            torch.backends.cudnn.benchmark = False
            torch.backends.cudnn.deterministic = True
        self.dataset = open_job_dataset(self.spec)
        m = self.spec.model
        self.model = build_model(
            m.arch, num_classes, m.weights, m.checkpoint, options=m.options
        ).to(self.device)
        if self.spec.run.precision == "float16" and self.device.type == "cpu":
            # CPU convolutions in float16 are far slower than in float32, and overflow
            raise SpecError("[run] precision float16 needs a GPU; on CPU use bfloat16 or float32")
        self.explainers = explainers_for(
            self.model,
            self.spec.attribution.composites,
            mean=m.mean,
            std=m.std,
            precision=self.spec.run.precision,
        )
        # the [attribution.methods] after the composites, in the spec's order
        for name, table in self.spec.attribution.methods.items():
            self.explainers[name] = build_method(
                table, self.model, mean=m.mean, std=m.std, precision=self.spec.run.precision
            )

    def load(self, samples: list[int]) -> tuple[torch.Tensor, dict[int, str]]:
        """A batch of inputs on the CPU, and the samples whose image could not be read;
        runs in the loader thread (heatjob.job.prefetch.Loader).

        An unreadable image does not stop the job: its input is zeros (so the batch keeps
        its shape), and `explain` turns its heatmap rows and logits into NaN.
        """
        ds, m = self.spec.dataset, self.spec.model
        size = ds.image_size
        batch, failures = [], {}
        for i in samples:
            try:
                image = self.dataset.load_image(i)
                batch.append(to_input(image, size, m.mean, m.std, ds.resize, ds.resize_to))
            except DataError as exc:
                failures[i] = str(exc)
                batch.append(torch.zeros(3, size, size))
        stacked = torch.stack(batch)
        # pinned memory lets the one copy to the GPU run asynchronously
        return (stacked.pin_memory() if self.device.type == "cuda" else stacked), failures

    def _timed_load(self, samples: list[int]) -> tuple[torch.Tensor, dict[int, str], float]:
        started = time.perf_counter()
        return (*self.load(samples), time.perf_counter() - started)

    def explain(
        self,
        rows_sample: np.ndarray,
        rows_target: np.ndarray,
        owned: range = range(0),
        then: list[int] | None = None,
    ) -> Explained:
        """Load, run forward, choose targets and explain rows with every composite; writes
        nothing. `owned`: samples whose logits are wanted besides the rows' own. `then`:
        the first batch of the unit expected next, loaded once this one's last has been.

        The logits come from the first explainer's own forward pass, so K composites cost K
        forward passes, not K + 1; under predicted:K the targets are chosen from them before
        any backward pass (an LRP Explainer's `forward_pass`)."""
        chunks = unit_batches(rows_sample, owned, self.spec.run.batch_size)
        pending = bool((rows_target == PENDING_TARGET).any())
        targets = rows_target.astype(np.int32, copy=True)
        logits: dict[int, np.ndarray] = {}
        failures: dict[int, str] = {}
        heatmaps: dict[str, np.ndarray] = {}
        inputs: dict[int, torch.Tensor] = {}  # kept on the device for the faithfulness curves
        keep_inputs = bool(self.spec.evaluation.faithfulness)
        timer = _Timer()
        # the next batch loads while this one is explained; each batch moves to the device once
        for chunk, (batch, failed, seconds) in self.loader.batches(chunks, then):
            timer.seconds["load"] += seconds  # in the loader thread
            failures.update(failed)
            x = batch.to(self.device, non_blocking=True)
            rows = np.flatnonzero(np.isin(rows_sample, chunk))
            out = self._explain_chunk(x, chunk, rows_sample, targets, rows, pending, timer)
            for name, maps in out.pop("maps").items():
                if name not in heatmaps:
                    heatmaps[name] = np.empty((len(rows_sample), *maps.shape[1:]), np.float32)
                heatmaps[name][rows] = maps
            for j, sample in enumerate(chunk):
                logits[sample] = out["logits"][j]
                if keep_inputs:
                    inputs[sample] = x[j]
        for sample in failures:
            logits[sample] = np.full_like(logits[sample], np.nan)
        size = self.spec.dataset.image_size
        for name in self.explainers:
            heatmaps.setdefault(name, np.zeros((len(rows_sample), size, size), np.float32))
        failed_rows = np.isin(rows_sample, list(failures))
        for maps in heatmaps.values():
            maps[failed_rows] = np.nan
        chosen = targets if pending else None
        return Explained(heatmaps, logits, chosen, failures, timer.seconds, inputs, targets)

    def _explain_chunk(self, x, chunk, rows_sample, targets, rows, pending, timer) -> dict:
        """One batch through every explainer; fills `targets[rows]` under predicted:K."""
        position = {sample: j for j, sample in enumerate(chunk)}
        images = np.array([position[s] for s in rows_sample[rows].tolist()], dtype=np.int64)
        logits, maps = None, {}
        for name, explainer in self.explainers.items():
            run = None
            if logits is None and pending:
                if hasattr(explainer, "forward_pass"):
                    with timer("explain"):
                        run = explainer.forward_pass(x)
                        logits = run.logits.cpu().numpy()
                else:  # a method without a separate forward pass: one plain forward first
                    with timer("forward"), torch.no_grad():
                        logits = self.model(x).float().cpu().numpy()
                chunk_logits = {sample: logits[j] for j, sample in enumerate(chunk)}
                targets[rows] = predicted_targets(rows_sample[rows], chunk_logits)
            with timer("explain"):
                if run is not None:
                    relevance = run.relevance(images, targets[rows].astype(np.int64))
                else:
                    relevance, out = _explain_rows(explainer, x, images, targets[rows], chunk)
                    logits = out.float().cpu().numpy() if logits is None else logits
                maps[name] = relevance.cpu().numpy()
        if logits is None:  # no explainer at all
            with timer("forward"), torch.no_grad():
                logits = self.model(x).float().cpu().numpy()
        return {"maps": maps, "logits": logits}

    @property
    def writer(self) -> UnitWriter:
        if self._writer is None:
            self._writer = UnitWriter(
                self.store_path, list(self.explainers), self.spec.store.storage_options
            )
        return self._writer

    def run_unit(
        self,
        unit: Unit,
        rows_sample: np.ndarray,
        rows_target: np.ndarray,
        owned: range,
        attempts: int = 1,
        then: list[int] | None = None,
    ) -> UnitResult:
        """Explain rows [unit.row_start, unit.row_stop); write their shards and, in a
        format 2 store, the unit's records, the done record last.

        attempts: which dispatch of the unit this is (the driver counts them).
        then: the first batch of the unit the driver expects to send next, loaded while
        this one is written (plan.first_batch).
        """
        start, started = time.perf_counter(), time.time()
        done = self.explain(rows_sample, rows_target, owned, then)
        _test_hold(unit)
        _test_fault(unit)
        checksum = self.writer.write_heatmaps(unit, done.heatmaps)
        if self.spec.evaluation.faithfulness:  # while the model and inputs are on the device
            write_unit_curves(  # before the done record, which covers them
                self.store_path,
                unit,
                self.curves(done, rows_sample, unit.row_start),
                self.spec.store.storage_options,
            )
        logits = done.logits
        owned_logits = np.stack([logits[s] for s in owned]) if len(owned) else np.zeros((0, 0))
        owned_logits = owned_logits.astype(np.float32)
        writer = this_process(self.node)
        if self.writer.owns_records:
            seconds, compute = time.perf_counter() - start, done.compute_seconds
            record = done_record(
                writer, attempts, checksum, done.failures, seconds, started, compute
            )
            self.writer.write_records(unit, owned_logits, done.chosen_targets, record)
        return UnitResult(
            unit=unit,
            owned=owned,
            logits=owned_logits,
            row_targets=done.chosen_targets,
            seconds=time.perf_counter() - start,
            host=writer.host,
            pid=writer.pid,
            node=writer.node,
            checksum=checksum,
            failures=done.failures,
            recorded=self.writer.owns_records,
        )

    def curves(self, done: Explained, rows_sample: np.ndarray, row_start: int) -> dict:
        """Perturbation curves of the rows just explained ([evaluation] faithfulness)."""
        dtype = self.spec.store.dtype
        m = self.spec.model
        return rows_curves(
            self.model,
            done.inputs,
            rows_sample,
            done.targets,
            row_start,
            {name: maps.astype(dtype) for name, maps in done.heatmaps.items()},
            self.spec.evaluation.faithfulness,
            self.spec.run.batch_size,
            m.mean,
            m.std,
        )


@dataclass(frozen=True)
class Explained:
    """What `UnitWorker.explain` made of some rows, before anything is written."""

    heatmaps: dict[str, np.ndarray]  # composite -> (rows, S, S) float32, NaN for failed samples
    logits: dict[int, np.ndarray]  # sample -> (C,) float32
    chosen_targets: np.ndarray | None  # the targets it chose (predicted:K), else None
    failures: dict[int, str]  # unreadable images: sample -> reason
    seconds: dict[str, float]  # load (in the loader thread), forward, explain
    inputs: dict = field(default_factory=dict)  # sample -> its input on the device
    targets: np.ndarray | None = None  # each row's target

    @property
    def compute_seconds(self) -> float:
        """Wall seconds in the model: forward and LRP passes, not loading."""
        return self.seconds["forward"] + self.seconds["explain"]


class _Timer:
    """Wall seconds per phase. Each timed phase ends in a copy to the host (logits,
    heatmaps), so on a GPU it counts the device's work, not just the launches."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {"load": 0.0, "forward": 0.0, "explain": 0.0}

    @contextlib.contextmanager
    def __call__(self, phase: str):
        started = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[phase] += time.perf_counter() - started


def _test_hold(unit: Unit) -> None:
    """Tests only: HEATJOB_TEST_HOLD="<unit>:<folder>" makes the first worker to reach that
    unit write its pid to <folder>/unit-<unit>.pid and wait there, so that a test can kill
    it mid-unit. A later attempt (the pid file exists) goes on."""
    hold = os.environ.get("HEATJOB_TEST_HOLD", "")
    if not hold or hold.split(":", 1)[0] != str(unit.index):
        return
    pid_file = os.path.join(hold.split(":", 1)[1], f"unit-{unit.index}.pid")
    try:
        with open(pid_file, "x") as handle:
            handle.write(str(os.getpid()))
    except FileExistsError:
        return
    time.sleep(120)


def _explain_rows(explainer, x, images, targets, chunk):
    if getattr(explainer, "needs_samples", False):  # smoothgrad: noise seeded per sample
        return explainer.explain_rows(x, images, targets.astype(np.int64), samples=chunk)
    return explainer.explain_rows(x, images, targets.astype(np.int64))


def _test_fault(unit: Unit) -> None:
    """Tests only: HEATJOB_TEST_FAULT="<unit>:<file>" makes that unit raise RuntimeError while
    <file> holds a count above zero, one less each time (an exception in a method, as a
    CUDA out-of-memory would raise it)."""
    fault = os.environ.get("HEATJOB_TEST_FAULT", "")
    if not fault or fault.split(":", 1)[0] != str(unit.index):
        return
    counter = fault.split(":", 1)[1]
    try:
        with open(counter) as handle:
            left = int(handle.read() or 0)
    except FileNotFoundError:
        return
    if left > 0:
        with open(counter, "w") as handle:
            handle.write(str(left - 1))
        raise RuntimeError(f"injected fault in unit {unit.index}")


def predicted_targets(rows_sample: np.ndarray, logits: dict[int, np.ndarray]) -> np.ndarray:
    """predicted:K — the k-th row of a sample explains its k-th highest logit.

    Units never split a sample under predicted:K (see plan.effective_shard_size),
    so a sample's rows here are all of its rows, in order.
    """
    targets = np.empty(len(rows_sample), dtype=np.int32)
    rank = 0
    for i, sample in enumerate(rows_sample):
        rank = rank + 1 if i and rows_sample[i - 1] == sample else 0
        order = np.argsort(-logits[int(sample)], kind="stable")
        targets[i] = order[rank]
    return targets
