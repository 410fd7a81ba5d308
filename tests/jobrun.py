"""The CLI run for real, in processes of its own: started, its worker or its driver killed
with SIGKILL mid-job, and run again. Shared by the resume tests on a folder and on S3."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import zarr
from ray_cluster import process_stats

from heatjob.store.records import done_units

HEATJOB = [sys.executable, "-m", "heatjob.cli"]


def _env(env: dict | None) -> dict:
    return {**os.environ, "RAY_ADDRESS": "", **(env or {})}  # always a local Ray


def heatjob(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*HEATJOB, *args], capture_output=True, text=True, env=_env(env), timeout=600
    )


def start(*args: str, env: dict | None = None) -> subprocess.Popen:
    """The CLI in a session of its own, so that the test can kill it with all it started."""
    return subprocess.Popen(
        [*HEATJOB, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_env(env),
        start_new_session=True,
    )


def descendants(pid: int) -> list[int]:
    """Every process below `pid` (Ray's raylet, GCS and workers), from /proc."""
    children: dict[int, list[int]] = {}
    for child, fields in process_stats().items():
        children.setdefault(int(fields[1]), []).append(child)  # field 4: the parent's pid
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def kill_everything(process: subprocess.Popen) -> None:
    """SIGKILL to the driver's process group and to every process it started: Ray puts its
    workers in sessions of their own, so killing the group alone would leave them running."""
    below = descendants(process.pid)
    os.killpg(process.pid, signal.SIGKILL)
    for pid in below:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    process.communicate(timeout=60)


def done_count(store: str | Path, storage_options: dict | None = None) -> int:
    """Units with a done record; 0 while the store is not there yet."""
    try:
        root = zarr.open_group(str(store), mode="r", storage_options=storage_options)
        return int(done_units(root).sum())
    except Exception:  # not created yet, or being created
        return 0


def wait_for(condition: Callable[[], object], timeout: float = 300, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def kill_a_worker_mid_unit(spec: Path, folder: Path, unit: int, *args: str) -> None:
    """Submit, SIGKILL the worker that holds `unit` (HEATJOB_TEST_HOLD), and wait for the job
    to end; it must end well (the unit retried on a fresh worker)."""
    process = start("submit", str(spec), *args, "-q", env={"HEATJOB_TEST_HOLD": f"{unit}:{folder}"})
    pid_file = folder / f"unit-{unit}.pid"
    try:
        wait_for(lambda: pid_file.exists() and pid_file.read_text(), what=f"unit {unit}'s worker")
        os.kill(int(pid_file.read_text()), signal.SIGKILL)
        _, stderr = process.communicate(timeout=300)
    except BaseException:
        kill_everything(process)
        raise
    assert process.returncode == 0, stderr


def kill_the_driver_mid_job(
    spec: Path,
    folder: Path,
    held: int,
    done: Callable[[], int],
    at_least: int,
    *args: str,
) -> None:
    """Submit, and once unit `held` is held mid-way by its worker and `done()` counts at
    least `at_least` finished units, SIGKILL the driver and everything it started."""
    process = start("submit", str(spec), *args, "-q", env={"HEATJOB_TEST_HOLD": f"{held}:{folder}"})

    def running(condition: Callable[[], bool]) -> Callable[[], bool]:
        def check() -> bool:
            assert process.poll() is None, "the job ended before it could be killed"
            return condition()

        return check

    try:
        held_file = folder / f"unit-{held}.pid"
        wait_for(running(held_file.exists), what=f"unit {held} to start")
        wait_for(running(lambda: done() >= at_least), what=f"{at_least} units done")
    finally:
        kill_everything(process)
