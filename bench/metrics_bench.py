"""Speed of heatjob's full metric set against Quantus 0.6.0 on the same heatmaps, and
merge's peak memory on synthetic stores of growing size.

    python bench/metrics_bench.py --out bench/results            # speed, ~1-2 min
    python bench/metrics_bench.py --memory 2000,8000 --out ...    # peak RSS of merge per size

Speed: N heatmaps of S x S (float16, a smooth blob near a box plus noise, as LRP maps
look), 1-3 random boxes each. heatjob scores them as float16 (as merge reads a float16
store) with merge's own per-row function
(`merge.score_block`: pointing game, hard subset, relevance mass and its weighted
form, other-class mass, relevance rank, pixel AP, the heatmap box); Quantus with
PointingGame, RelevanceMassAccuracy, RelevanceRankAccuracy and AUC on dense masks of
the same boxes (its nearest equivalents). Quantus gets the first --quantus-rows of
the maps, heatjob all N; both report rows per second, best of --repeats rounds that
alternate the two. The ratio is the median over rounds of heatjob's rows/s over
Quantus's in the same round (load on a shared machine hits both alike).

Memory: for each row count, a store with one composite at S x S float16 is written
to a temporary folder and `heatjob merge` runs on it in a fresh process, which
reports its own peak RSS (VmHWM). If the peak does not grow with the rows, merge
streams.
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
import time
import warnings
from datetime import datetime
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from heatjob.eval import merge as merge_module  # noqa: E402
from heatjob.eval import metrics  # noqa: E402


def synthetic_rows(n: int, size: int, seed: int):
    """Heatmaps (n, S, S) float16, per-row boxes, original image sizes."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] + 0.5
    maps = np.empty((n, size, size), np.float16)
    boxes = []
    for i in range(n):
        k = int(rng.integers(1, 4))
        x0, y0 = rng.uniform(0, size * 0.7, (2, k))
        w, h = rng.uniform(size * 0.1, size * 0.3, (2, k))
        b = np.stack([x0, y0, np.minimum(x0 + w, size), np.minimum(y0 + h, size)], axis=1)
        boxes.append(b.astype(np.float32))
        cx, cy = (b[0, 0] + b[0, 2]) / 2 + rng.normal(0, 5), (b[0, 1] + b[0, 3]) / 2
        blob = np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * (size / 12) ** 2))
        maps[i] = blob + 0.1 * rng.standard_normal((size, size))
    sizes = rng.integers(size, 2 * size, (n, 2))
    return maps, boxes, sizes


def heatjob_rows_per_second(maps, boxes, sizes, other) -> float:
    n = len(maps)
    geometry = merge_module.RowGeometry(
        rows=np.arange(n),
        sample=np.arange(n),
        target=np.zeros(n, np.int64),
        boxes=boxes,
        other_boxes=other,
        image_sizes=sizes,
        other_class=np.array([len(o) > 0 for o in other]),
        score=np.zeros(n),
        ground_truth={},
        n_samples=n,
        n_classes=1,
    )
    start = time.perf_counter()
    for a in range(0, n, 64):  # one store shard at a time, as merge does
        index = np.arange(a, min(n, a + 64))
        merge_module.score_block(maps[index], geometry, index)  # float16, as stored
    return n / (time.perf_counter() - start)


def heatjob_four_rows_per_second(maps, boxes, sizes) -> float:
    """The four metrics that mirror Quantus's suite: pointing game, mass, rank, pixel AP."""
    n, size = len(maps), maps.shape[-1]
    start = time.perf_counter()
    for a in range(0, n, 64):
        h = maps[a : a + 64]
        b = boxes[a : a + 64]
        masks = metrics.box_masks(b, size)
        ranked = metrics.rank_rows(h)
        metrics.pointing_game_hits(h, b, sizes[a : a + 64], ranked=ranked)
        metrics.relevance_mass(h, masks)
        metrics.relevance_rank(h, masks, ranked)
        metrics.pixel_average_precision(h, masks, ranked)
    return n / (time.perf_counter() - start)


def quantus_rows_per_second(maps, masks) -> float:
    import quantus

    n = len(maps)
    a = maps.astype(np.float32)[:, None]
    s = masks.astype(np.float32)[:, None]
    x = np.zeros((n, 3, *maps.shape[1:]), np.float32)
    y = np.zeros(n, int)
    suite = [
        quantus.PointingGame(disable_warnings=True, display_progressbar=False),
        quantus.RelevanceMassAccuracy(disable_warnings=True, display_progressbar=False),
        quantus.RelevanceRankAccuracy(disable_warnings=True, display_progressbar=False),
        quantus.AUC(disable_warnings=True, display_progressbar=False),
    ]
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for metric in suite:
            metric(model=None, x_batch=x, y_batch=y, a_batch=a, s_batch=s, channel_first=True)
    return n / (time.perf_counter() - start)


def speed(args) -> dict:
    maps, boxes, sizes = synthetic_rows(args.rows, args.size, seed=0)
    other = [b[1:] if len(b) > 1 else np.zeros((0, 4), np.float32) for b in boxes]
    masks = metrics.box_masks(boxes, args.size)
    q = min(args.quantus_rows, args.rows)
    ours, four, theirs = [], [], []
    for _ in range(args.repeats):
        ours.append(heatjob_rows_per_second(maps, boxes, sizes, other))
        four.append(heatjob_four_rows_per_second(maps, boxes, sizes))
        theirs.append(quantus_rows_per_second(maps[:q], masks[:q]))
    return {
        "rows": args.rows,
        "quantus_rows": q,
        "size": args.size,
        "dtype": "float16",
        "heatjob_metrics": "pointing_game, hard, relevance_mass(+weighted, other-class), "
        "relevance_rank, pixel_ap, heatmap_box",
        "quantus_metrics": "PointingGame, RelevanceMassAccuracy, RelevanceRankAccuracy, AUC",
        "heatjob_rows_per_s": round(max(ours), 2),
        "quantus_rows_per_s": round(max(theirs), 3),
        # each round runs both back to back, so its ratio is the fairest on a shared machine
        "ratio": round(float(np.median(np.array(ours) / np.array(theirs))), 1),
        "ratio_of_best_rounds": round(max(ours) / max(theirs), 1),
        # the same four metrics as Quantus's suite (PG, mass, rank, pixel AP for its AUC)
        "heatjob_four_rows_per_s": round(max(four), 2),
        "ratio_four": round(float(np.median(np.array(four) / np.array(theirs))), 1),
        "all_rounds": {"heatjob": ours, "heatjob_four": four, "quantus": theirs},
    }


CHILD = """
import sys, time
def kb(field):  # this process's own memory: VmHWM is its peak RSS, reset by exec
    line = next(l for l in open("/proc/self/status") if l.startswith(field + ":"))
    return int(line.split()[1])
from heatjob.eval.merge import merge
imported = kb("VmRSS")
start = time.perf_counter()
merge(sys.argv[1], progress=False, resamples=int(sys.argv[2]))
print(time.perf_counter() - start, kb("VmHWM"), imported)
"""


def write_store(path: str, n_rows: int, size: int) -> None:
    """A finished one-composite store of n_rows synthetic rows (one row per sample)."""
    from heatjob.job.prepare import job_from_arrays
    from heatjob.spec import parse_spec
    from heatjob.store.layout import create_store

    spec = parse_spec(
        {
            "dataset": {"kind": "synthetic", "num_samples": n_rows, "image_size": size},
            "model": {"arch": "small_cnn", "num_classes": 6},
            "attribution": {"composites": ["EpsilonPlusFlat"], "targets": "labels"},
            "store": {"path": path, "dtype": "float16"},
            "run": {"shard_size": 64},
        }
    )
    rng = np.random.default_rng(1)
    classes = rng.integers(0, 6, n_rows)
    labels = np.zeros((n_rows, 6), bool)
    labels[np.arange(n_rows), classes] = True
    _, boxes, sizes = synthetic_rows(64, size, seed=2)  # box shapes reused shard by shard
    xyxy = np.concatenate([boxes[i % 64][:1] for i in range(n_rows)])
    job = job_from_arrays(
        spec,
        labels,
        classes=["a", "b", "c", "d", "e", "f"],
        sample_ids=[f"s{i}" for i in range(n_rows)],
        sizes=np.tile(sizes[:1], (n_rows, 1)),
        boxes_xyxy=xyxy,
        boxes_sample=np.arange(n_rows),
        boxes_class=classes,
    )
    plan = job.plan
    root = create_store(job)
    maps, _, _ = synthetic_rows(64, size, seed=3)
    array = root["heatmaps/EpsilonPlusFlat"]
    for unit in plan.units:
        array[unit.row_start : unit.row_stop] = maps[: unit.n_rows]
    root["samples/logits"][:] = rng.standard_normal((n_rows, 6)).astype(np.float32)
    root["units/done"][:] = True


def memory(args) -> list[dict]:
    out = []
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    for n in [int(v) for v in args.memory.split(",")]:
        with tempfile.TemporaryDirectory(dir=args.tmp) as tmp:
            path = str(Path(tmp) / "store.zarr")
            write_store(path, n, args.size)
            result = subprocess.run(
                [sys.executable, "-c", CHILD, path, str(args.bootstrap)],
                check=True,
                capture_output=True,
                text=True,
                env=env,
            )
            seconds, rss_kb, imported_kb = result.stdout.split()
            out.append(
                {
                    "rows": n,
                    "size": args.size,
                    "heatmap_bytes_float16": n * args.size * args.size * 2,
                    "merge_s": round(float(seconds), 1),
                    "peak_rss_mb": round(int(rss_kb) / 1024, 1),
                    # what the interpreter and merge's imports hold before merge starts
                    "rss_after_import_mb": round(int(imported_kb) / 1024, 1),
                    "merge_growth_mb": round((int(rss_kb) - int(imported_kb)) / 1024, 1),
                    "bootstrap_resamples": args.bootstrap,
                }
            )
            print(json.dumps(out[-1]), file=sys.stderr)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="bench/results")
    parser.add_argument("--rows", type=int, default=512)
    parser.add_argument("--quantus-rows", type=int, default=64)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--memory", default="", help="comma-separated row counts, e.g. 2000,8000")
    parser.add_argument("--bootstrap", type=int, default=200, help="resamples in --memory runs")
    parser.add_argument("--tmp", default=None, help="where --memory writes its stores")
    args = parser.parse_args()

    report = {
        "when": datetime.now().isoformat(timespec="seconds"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.python_version()}",
        "loadavg_1min_before": os.getloadavg()[0],
    }
    if args.memory:
        report["memory"] = memory(args)
    else:
        report["speed"] = speed(args)
    report["bench_peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    kind = "metrics-memory" if args.memory else "metrics"
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    text = json.dumps(report, indent=2) + "\n"
    (out / f"{kind}-{stamp}.json").write_text(text)
    (out / f"{kind}-latest.json").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
