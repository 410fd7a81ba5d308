"""`heatjob merge` in process against merge with its units in Ray tasks (1 and 2 workers).

    python bench/merge_scale.py --rows 4096 --size 128 --out bench/results

One synthetic store (one composite, float16, 64 rows a shard, one box a row; the store
metrics_bench.py's --memory runs use) is merged three times, each in a fresh process:
in process, then with --workers 1 and --workers 2 on a local Ray started before the clock
starts (its start-up is reported apart). Per run: the merge's seconds and rows/s, the
seconds spent scoring (the part the tasks take over; the rest, aggregates and bootstrap,
is the driver's either way), the driver's peak RSS (VmHWM) and what it held after its
imports, and a digest of everything the merge wrote (per-row arrays and attributes but
the time stamp), which must be the same for the three.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
from datetime import datetime
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))
from metrics_bench import write_store  # noqa: E402

CHILD = r"""
import hashlib, json, sys, time
import numpy as np
import zarr

def kb(field):  # this process's own memory: VmHWM is its peak RSS
    line = next(l for l in open("/proc/self/status") if l.startswith(field + ":"))
    return int(line.split()[1])

path, resamples, workers = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
from heatjob.eval import merge as merge_module
from heatjob.eval import merge_tasks

scoring = []
def timed(score):
    def wrapper(*args, **kwargs):
        start = time.perf_counter()
        out = score(*args, **kwargs)
        scoring.append(time.perf_counter() - start)
        return out
    return wrapper

merge_module.score_store = timed(merge_module.score_store)
merge_tasks.score_store_tasks = timed(merge_tasks.score_store_tasks)
ray_start = 0.0
if workers:
    from heatjob.job import runner
    start = time.perf_counter()
    runner.connect(None)
    ray_start = time.perf_counter() - start
imported = kb("VmRSS")
start = time.perf_counter()
if workers:
    merge_tasks.merge_on_ray(path, workers, None, progress=False, resamples=resamples)
else:
    merge_module.merge(path, progress=False, resamples=resamples)
seconds = time.perf_counter() - start

root = zarr.open_group(path, mode="r")
digest = hashlib.blake2b(digest_size=8)
written = sorted(
    name for name, a in root.members(max_depth=None)
    if isinstance(a, zarr.Array) and name.startswith(("metrics/", "rows/"))
)
for name in written:
    digest.update(name.encode() + np.ascontiguousarray(root[name][...]).tobytes())
attrs = json.loads(json.dumps(dict(root.attrs)))
attrs["merged"].pop("at")
digest.update(json.dumps(attrs, sort_keys=True).encode())
print(json.dumps({
    "seconds": seconds, "scoring_s": scoring[0], "ray_start_s": ray_start,
    "peak_kb": kb("VmHWM"), "imported_kb": imported, "digest": digest.hexdigest(),
}))
"""


def run_merge(path: str, resamples: int, workers: int) -> dict:
    """One merge in a fresh process (workers 0 = in process)."""
    env = dict(os.environ, PYTHONPATH=str(REPO), RAY_ADDRESS="")
    result = subprocess.run(
        [sys.executable, "-c", CHILD, path, str(resamples), str(workers)],
        check=True,
        capture_output=True,
        text=True,
        env=env,
    )
    return json.loads(result.stdout.strip().splitlines()[-1])


def describe(mode: str, rows: int, measured: dict) -> dict:
    return {
        "mode": mode,
        "merge_s": round(measured["seconds"], 2),
        "rows_per_s": round(rows / measured["seconds"], 1),
        "scoring_s": round(measured["scoring_s"], 2),
        "scoring_rows_per_s": round(rows / measured["scoring_s"], 1),
        "ray_start_s": round(measured["ray_start_s"], 2),
        "driver_peak_rss_mb": round(measured["peak_kb"] / 1024, 1),
        "driver_rss_before_merge_mb": round(measured["imported_kb"] / 1024, 1),
        "digest": measured["digest"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=4096)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--bootstrap", type=int, default=200, help="resamples of each merge")
    parser.add_argument("--out", default="bench/results")
    parser.add_argument("--tmp", default=None, help="where the store is written")
    args = parser.parse_args()

    report = {
        "when": datetime.now().isoformat(timespec="seconds"),
        "command": "python bench/merge_scale.py " + " ".join(sys.argv[1:]),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.python_version()}",
        "loadavg_1min_before": round(os.getloadavg()[0], 2),
        "rows": args.rows,
        "size": args.size,
        "composites": 1,
        "sources_scored": 3,  # the composite and the two baselines
        "shard_size": 64,
        "dtype": "float16",
        "bootstrap_resamples": args.bootstrap,
    }
    runs = []
    with tempfile.TemporaryDirectory(dir=args.tmp) as tmp:
        path = str(Path(tmp) / "store.zarr")
        write_store(path, args.rows, args.size)
        for mode, workers in (("in process", 0), ("--workers 1", 1), ("--workers 2", 2)):
            runs.append(describe(mode, args.rows, run_merge(path, args.bootstrap, workers)))
            print(json.dumps(runs[-1]), file=sys.stderr)
    report["runs"] = runs
    report["same_output"] = len({r["digest"] for r in runs}) == 1
    report["loadavg_1min_after"] = round(os.getloadavg()[0], 2)
    report["bench_peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    text = json.dumps(report, indent=2) + "\n"
    (out / f"merge-scale-{stamp}.json").write_text(text)
    (out / "merge-scale-latest.json").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
