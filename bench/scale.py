"""What one more unit costs, through the real CLI: `heatjob submit` in a subprocess.

The same job (synthetic shapes, the shipped small CNN, 2 composites at 32x32, batch 4, one
CPU worker with as many torch threads as the machine has cores) runs twice per store
kind, once in many small units (`--small-shard` rows, the batch size: one batch per unit)
and once in few large ones (`--large-shard` rows, a multiple of it), so with the same
batches; the difference over
the difference in units is the cost of one unit:

- S3 requests per unit: the store on moto's S3 server on loopback, counting the requests
  its log shows (driver and worker together);
- wall seconds per unit beyond its compute, and the driver's CPU seconds per unit (read
  from /proc for the CLI's own process: Ray's processes are not in it), on a local folder,
  with `targets = "predicted:1"` (one row per image, so both runs compute the same
  batches; the S3 runs keep `labels`, whose units split samples); each local run
  `--repeats` times, the medians taken. Where the code records when each unit started and
  its seconds in the model (units/record `started`, `compute`), also the wall time beyond
  compute per unit, twice: of the whole run (its wall time less the units' model time:
  free of the model's run-to-run noise) and of the units' span (first start to last
  record: free of Ray's start and the final copy too);
- planning: `prepare` + `create_store` of a synthetic job of 10^4 .. `--plan-max` samples,
  in a subprocess each (seconds, the driver process's peak RSS); from 50,000 samples the
  annotations are read in Ray tasks on a local Ray, as `heatjob submit` reads them;
- many classes: a job of `--classes-samples` samples over `--classes` classes, one label
  and one box a sample (ImageNet's shape), built from arrays (`job_from_arrays`,
  `create_store`) and then the rows merge scores read back (`row_geometry`), each in a
  subprocess (seconds, the process's RSS before and its peak): what the (N, C) label and
  logit matrices cost the driver;
- merge throughput: `heatjob merge STORE -q --bootstrap 200` through the CLI on a store of
  `--merge-rows` rows (one composite and the two baselines, bench/metrics_bench.py's
  store), in one process and with `--workers 1` and `--workers 2` (each starting a local
  Ray, whose start is in its wall time): seconds and rows/s.

`--code DIR` runs another checkout's heatjob (PYTHONPATH=DIR), so that one invocation of
this file measures the code before and after a change alike.

    python bench/scale.py --out bench/results [--code /path/to/other/checkout] [--label main]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CHECKPOINT = ROOT / "models" / "small_cnn_shapes.pt"
COMPOSITES = ["EpsilonPlusFlat", "cmp-a2b1-flat"]
# one row per sample, so a unit of `--small-shard` rows is one batch of that many images:
# the many-small and few-large runs compute the same batches
LOCAL_TARGETS = "predicted:1"


class RequestCounter(logging.Handler):
    """Counts the HTTP requests moto's server logs."""

    count = 0

    def emit(self, record: logging.LogRecord) -> None:
        if "HTTP/1.1" in record.getMessage():
            self.count += 1


def spec_toml(
    store: str, shard: int, samples: int, options: dict | None, targets: str = "labels"
) -> str:
    lines = [
        "[dataset]",
        'kind = "synthetic"',
        f"num_samples = {samples}",
        "image_size = 32",
        "[model]",
        'arch = "small_cnn"',
        f'checkpoint = "{CHECKPOINT}"',
        "num_classes = 6",
        "[attribution]",
        f"composites = {json.dumps(COMPOSITES)}",
        f'targets = "{targets}"',
        "[store]",
        f'path = "{store}"',
        'dtype = "float16"',
    ]
    if options:
        lines.append(f"storage_options = {_inline(options)}")
    lines += ["[run]", "batch_size = 4", f"shard_size = {shard}", "workers = 1"]
    return "\n".join(lines) + "\n"


def _inline(value) -> str:
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {_inline(v)}" for k, v in value.items()) + " }"
    return json.dumps(value)


def cpu_seconds(pid: int) -> float | None:
    """utime + stime of one process, from /proc (None once it has gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_cli(code: Path, spec: Path) -> dict:
    """`heatjob submit SPEC -q` in a subprocess: wall seconds, the driver's CPU seconds
    (sampled until it exits), and the units it reported."""
    env = {**os.environ, "PYTHONPATH": str(code), "RAY_ADDRESS": ""}
    started = time.perf_counter()
    process = subprocess.Popen(
        [sys.executable, "-m", "heatjob.cli", "submit", str(spec), "-q"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=code,
    )
    cpu = 0.0
    while process.poll() is None:
        cpu = cpu_seconds(process.pid) or cpu
        time.sleep(0.05)
    out, err = process.communicate()
    wall = time.perf_counter() - started
    if process.returncode != 0:
        raise SystemExit(f"heatjob submit failed ({process.returncode}): {err[-2000:]}")
    units = int(out.split(": ", 1)[1].split(" of ")[0])
    return {"wall_s": wall, "driver_cpu_s": cpu, "units": units}


def per_unit(small: dict, large: dict, key: str) -> float:
    return (small[key] - large[key]) / (small["units"] - large["units"])


def local_runs(
    code: Path, base: Path, samples: int, shards: tuple[int, int], repeats: int = 3
) -> dict:
    """Each run `repeats` times, small and large in turn; the per-unit figures from the
    median runs: Ray's start and the imports (seconds, whatever the units) vary from run
    to run by about as much as 250 units cost."""
    tries: dict[int, list[dict]] = {shard: [] for shard in shards}
    for _ in range(max(1, repeats)):
        for shard in shards:
            spec = base / f"local-{shard}.toml"
            store = base / f"local-{shard}.zarr"
            shutil.rmtree(store, ignore_errors=True)
            spec.write_text(spec_toml(str(store), shard, samples, None, LOCAL_TARGETS))
            run = run_cli(code, spec) | units_phase(store)
            if "compute_s" in run:  # the whole run's wall time less the units' model time
                run["wall_beyond_compute_s"] = run["wall_s"] - run["compute_s"]
            tries[shard].append(run)
    runs = {shard: _median_run(t) for shard, t in tries.items()}
    small, large = runs[shards[0]], runs[shards[1]]
    out = {
        "targets": LOCAL_TARGETS,
        "repeats": max(1, repeats),
        "runs": {str(k): v for k, v in runs.items()},
        "wall_s_per_unit": per_unit(small, large, "wall_s"),
        "driver_cpu_s_per_unit": per_unit(small, large, "driver_cpu_s"),
    }
    if "beyond_compute_s" in small:
        out["beyond_compute_s_per_unit"] = per_unit(small, large, "beyond_compute_s")
        out["wall_beyond_compute_s_per_unit"] = per_unit(small, large, "wall_beyond_compute_s")
    return out


def units_phase(store: Path) -> dict:
    """From the done records (a code that writes `started` and `compute`): the span from
    the first unit's start to the last one's record, and how much of it was not in the
    model (loading, writing, the calls between units). Ray's start, the imports, the
    actor's set-up and the final copy are outside it, and so is the model's own
    run-to-run noise, which a difference of total wall times carries."""
    import zarr

    texts = zarr.open_group(store, mode="r")["units/record"][:].tolist()
    records = [json.loads(t) for t in texts if t]
    if not records or "compute" not in records[0]:
        return {}
    first = min(r["started"] for r in records)
    last = max(r["started"] + r["seconds"] for r in records)
    compute = sum(r["compute"] for r in records)
    return {
        "span_s": last - first,
        "compute_s": compute,
        "beyond_compute_s": last - first - compute,
    }


def _median_run(tries: list[dict]) -> dict:
    """The medians of wall and driver CPU seconds over the tries, and every try's."""
    out = {
        key: statistics.median(t[key] for t in tries)
        for key in (
            "wall_s",
            "driver_cpu_s",
            "span_s",
            "compute_s",
            "beyond_compute_s",
            "wall_beyond_compute_s",
        )
        if key in tries[0]
    }
    return out | {
        "units": tries[0]["units"],
        "tries_wall_s": [round(t["wall_s"], 3) for t in tries],
        "tries_driver_cpu_s": [t["driver_cpu_s"] for t in tries],
        "tries_beyond_compute_s": [round(t.get("beyond_compute_s", 0), 3) for t in tries],
        "tries_wall_beyond_compute_s": [round(t.get("wall_beyond_compute_s", 0), 3) for t in tries],
    }


def s3_runs(code: Path, base: Path, samples: int, shards: tuple[int, int]) -> dict:
    import boto3
    from moto.server import ThreadedMotoServer

    counter = RequestCounter()
    logging.getLogger("werkzeug").addHandler(counter)
    logging.getLogger("werkzeug").setLevel(logging.INFO)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    credentials = {"aws_access_key_id": "k", "aws_secret_access_key": "s"}
    boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", **credentials).create_bucket(
        Bucket="scale"
    )
    options = {"key": "k", "secret": "s", "client_kwargs": {"endpoint_url": endpoint}}
    runs = {}
    try:
        for shard in shards:
            spec = base / f"s3-{shard}.toml"
            spec.write_text(spec_toml(f"s3://scale/job-{shard}.zarr", shard, samples, options))
            counter.count = 0
            runs[shard] = run_cli(code, spec) | {"requests": 0}
            runs[shard]["requests"] = counter.count
    finally:
        server.stop()
    small, large = runs[shards[0]], runs[shards[1]]
    return {
        "runs": {str(k): v for k, v in runs.items()},
        "requests_per_unit": per_unit(small, large, "requests"),
        "composites": len(COMPOSITES),
    }


PLAN_SCRIPT = """
import json, resource, sys, time
from heatjob.job.prepare import prepare
from heatjob.spec import parse_spec
from heatjob.store.layout import create_store
try:  # the annotations in Ray tasks, as submit reads them (code before that: in the driver)
    from heatjob.job.submit import RaySession
    session = RaySession(None)
    options = {"on_cluster": session.map_blocks}
except ImportError:
    session, options = None, {}
n, path = int(sys.argv[1]), sys.argv[2]
spec = parse_spec({"dataset": {"kind": "synthetic", "num_samples": n, "image_size": 32},
    "model": {"arch": "small_cnn", "num_classes": 0},
    "attribution": {"composites": ["EpsilonPlusFlat"]},
    "store": {"path": path}, "run": {"shard_size": 64}}, source="bench")
t0 = time.perf_counter(); job = prepare(spec, progress=False, **options); t1 = time.perf_counter()
create_store(job); t2 = time.perf_counter()
rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
tasks = bool(session and session.connected)
if session:
    session.close()
print(json.dumps({"samples": n, "rows": job.plan.n_rows, "prepare_s": t1 - t0,
    "create_store_s": t2 - t1, "peak_rss_mb": rss, "in_ray_tasks": tasks}))
"""


CLASSES_SCRIPT = r"""
import json, resource, sys, time
import numpy as np
phase, n, c, path = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
rss = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
if phase == "plan":
    from heatjob.job.prepare import job_from_arrays
    from heatjob.spec import parse_spec
    from heatjob.store.layout import create_store
    spec = parse_spec({"dataset": {"kind": "synthetic", "num_samples": n, "image_size": 32},
        "model": {"arch": "small_cnn", "num_classes": c},
        "attribution": {"composites": ["EpsilonPlusFlat"]},
        "store": {"path": path}, "run": {"shard_size": 256}}, source="bench")
    klass = np.random.default_rng(0).integers(0, c, n)
    before = rss(); t0 = time.perf_counter()
    try:  # the annotations as pairs (code before that: the (N, C) matrix)
        from heatjob.job.plan import Labels
        labels = Labels.from_pairs(n, c, np.arange(n), klass)
    except ImportError:
        labels = np.zeros((n, c), dtype=bool)
        labels[np.arange(n), klass] = True
    job = job_from_arrays(spec, labels, boxes_xyxy=np.tile([4.0, 4.0, 20.0, 20.0], (n, 1)),
        boxes_sample=np.arange(n), boxes_class=klass)
    create_store(job)
    out = {"rows": job.plan.n_rows}
else:
    import zarr
    from heatjob.eval.merge import row_geometry
    root = zarr.open_group(path, mode="r")
    before = rss(); t0 = time.perf_counter()
    out = {"rows": len(row_geometry(root).rows)}
print(json.dumps({"phase": phase, "samples": n, "classes": c, **out,
    "seconds": time.perf_counter() - t0, "rss_before_mb": before, "peak_rss_mb": rss()}))
"""


def many_classes(code: Path, base: Path, samples: int, classes: int) -> list[dict]:
    """The plan then merge's rows of a job with many classes, each phase a subprocess."""
    env = {**os.environ, "PYTHONPATH": str(code)}
    path = str(base / "classes.zarr")
    out = []
    for phase in ("plan", "rows"):
        argv = [sys.executable, "-c", CLASSES_SCRIPT, phase, str(samples), str(classes), path]
        result = subprocess.run(argv, capture_output=True, text=True, env=env, cwd=code)
        if result.returncode:
            raise SystemExit(f"{phase}: {result.stderr.strip().splitlines()[-1]}")
        out.append(json.loads(result.stdout.strip().splitlines()[-1]))
    return out


def merge_runs(code: Path, base: Path, rows: int, size: int = 128) -> list[dict]:
    """`heatjob merge` of one store in one process, then on 1 and 2 Ray workers."""
    sys.path.insert(0, str(ROOT / "bench"))
    from metrics_bench import write_store

    path = base / "merge.zarr"
    write_store(str(path), rows, size)
    env = {**os.environ, "PYTHONPATH": str(code), "RAY_ADDRESS": ""}
    out = []
    for mode, extra in (
        ("in process", []),
        ("--workers 1", ["--workers", "1"]),
        ("--workers 2", ["--workers", "2"]),
    ):
        argv = [sys.executable, "-m", "heatjob.cli", "merge", str(path), "-q"]
        started = time.perf_counter()
        result = subprocess.run(
            argv + ["--bootstrap", "200"] + extra, capture_output=True, text=True, env=env
        )
        wall = time.perf_counter() - started
        if result.returncode:
            raise SystemExit(f"merge {mode}: {result.stderr.strip()[-2000:]}")
        out.append({"mode": mode, "rows": rows, "wall_s": wall, "rows_per_s": rows / wall})
    return out


def planning(code: Path, base: Path, sizes: list[int]) -> list[dict]:
    out = []
    env = {**os.environ, "PYTHONPATH": str(code)}
    for n in sizes:
        result = subprocess.run(
            [sys.executable, "-c", PLAN_SCRIPT, str(n), str(base / f"plan-{n}.zarr")],
            capture_output=True,
            text=True,
            env=env,
            cwd=code,
            check=True,
        )
        out.append(json.loads(result.stdout.strip().splitlines()[-1]))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    parser.add_argument("--code", type=Path, default=ROOT, help="the heatjob checkout to run")
    parser.add_argument("--label", default="", help="names the code in the JSON (e.g. main)")
    parser.add_argument("--samples", type=int, default=1024)
    parser.add_argument("--small-shard", type=int, default=4, help="= the batch size")
    parser.add_argument("--large-shard", type=int, default=256)
    parser.add_argument("--plan-max", type=int, default=100_000)
    parser.add_argument("--classes-samples", type=int, default=1_000_000)
    parser.add_argument("--classes", type=int, default=1000)
    parser.add_argument("--merge-rows", type=int, default=8192)
    parser.add_argument("--repeats", type=int, default=3, help="runs per local shard size")
    parser.add_argument(
        "--parts",
        default="s3,local,planning,classes,merge",
        help="which measurements (comma-separated)",
    )
    args = parser.parse_args()
    parts = set(args.parts.split(","))
    shards = (args.small_shard, args.large_shard)
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        result = {
            "benchmark": "scale",
            "code": args.label or str(args.code),
            "at": datetime.now().isoformat(timespec="seconds"),
            "cpus": len(os.sched_getaffinity(0)),
            "job": {
                "samples": args.samples,
                "composites": COMPOSITES,
                "shards": shards,
                "image_size": 32,
                "batch_size": 4,
                "workers": 1,
            },
        }
        if "s3" in parts:
            result["s3"] = s3_runs(args.code, base, args.samples, shards)
        if "local" in parts:
            result["local"] = local_runs(args.code, base, args.samples, shards, args.repeats)
        if "planning" in parts:
            sizes = [n for n in (10_000, 100_000, 1_000_000) if n <= args.plan_max]
            result["planning"] = planning(args.code, base, sizes)
        if "merge" in parts:
            result["merge"] = merge_runs(args.code, base, args.merge_rows)
        if "classes" in parts:
            result["classes"] = many_classes(args.code, base, args.classes_samples, args.classes)
    args.out.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    name = f"scale-{args.label}" if args.label else "scale"
    text = json.dumps(result, indent=2) + "\n"
    (args.out / f"{name}-{stamp}.json").write_text(text)
    (args.out / f"{name}-latest.json").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
