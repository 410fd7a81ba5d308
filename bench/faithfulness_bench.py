"""What region perturbation costs per heatmap and step, and what batching the steps on the
device gains over one forward pass per step.

    python bench/faithfulness_bench.py --out bench/results          # demo model, CPU, ~1 min
    python bench/faithfulness_bench.py --device cuda --arch vgg16 --size 224 --out ...

Rows of the model's own inputs (random images, random weights unless --checkpoint) with
LRP heatmaps (EpsilonPlusFlat) made first, timed too so the curves' cost can be read
against the heatmaps'. Then the curves (steps, patch, morf + lerf + random, mean
baseline) three ways, best of --repeats each: heatjob's worker code with --batch images
per forward pass; the same code with one image per forward pass (one forward per step);
and Quantus 0.6's RegionPerturbation on the same rows, orders and baseline values (its
loop: one forward per step over all rows). All three must agree (max |diff| recorded).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
import warnings
from datetime import datetime
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from heatjob.attribution.lrp import explainers_for  # noqa: E402
from heatjob.eval.faithfulness import resolve_settings  # noqa: E402
from heatjob.eval.perturbation import unit_curves  # noqa: E402
from heatjob.models import build_model  # noqa: E402

ORDERS = ["morf", "lerf", "random"]
UNIT = ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0))


def synchronise(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def best_of(repeats: int, device: torch.device, run) -> tuple[float, object]:
    times, result = [], None
    for _ in range(repeats):
        synchronise(device)
        started = time.perf_counter()
        result = run()
        synchronise(device)
        times.append(time.perf_counter() - started)
    return min(times), result


def quantus_curves(model, x, heatmaps, targets, settings, device) -> dict[str, np.ndarray]:
    """Quantus's RegionPerturbation for morf and lerf with heatjob's mean baseline (the
    channel means, as a per-index array), as curves f(x_0), ..., f(x_K)."""
    import quantus

    patch = settings["patch"]
    means = np.repeat(x.mean(axis=(2, 3)), patch * patch, axis=1)
    with torch.no_grad():
        first = model(torch.from_numpy(x).to(device))[np.arange(len(x)), targets].cpu().numpy()
    out = {}
    for order in ("morf", "lerf"):
        metric = quantus.RegionPerturbation(
            patch_size=patch,
            order=order,
            regions_evaluation=settings["steps"],
            perturb_baseline=means,
            normalise=False,
            abs=False,
            disable_warnings=True,
        )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            drops = metric(
                model=model,
                x_batch=x,
                y_batch=targets,
                a_batch=heatmaps[:, None],
                softmax=False,
                device=str(device),
                batch_size=len(x),
            )
        out[order] = np.concatenate([first[:, None], first[:, None] - np.asarray(drops)], 1)
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", default="small_cnn")
    parser.add_argument("--checkpoint", default="models/small_cnn_shapes.pt")
    parser.add_argument("--classes", type=int, default=6)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--rows", type=int, default=16)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--patch", type=int, default=8)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--no-quantus", action="store_true")
    parser.add_argument("--out", default="bench/results")
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    checkpoint = args.checkpoint if args.arch == "small_cnn" else ""
    model = build_model(args.arch, args.classes, "", checkpoint).to(device).eval()
    rng = np.random.default_rng(0)
    x = rng.random((args.rows, 3, args.size, args.size), dtype=np.float32)
    xt = torch.from_numpy(x).to(device)
    with torch.no_grad():
        targets = model(xt).argmax(1).cpu().numpy()
    explainer = explainers_for(model, ["EpsilonPlusFlat"], mean=UNIT[0], std=UNIT[1])
    explainer = explainer["EpsilonPlusFlat"]
    rows = list(range(args.rows))

    def heatmaps_once():
        relevance, _ = explainer.explain_rows(xt, rows, targets.astype(np.int64))
        return relevance.cpu().numpy()

    heatmap_s, heatmaps = best_of(args.repeats, device, heatmaps_once)
    settings = resolve_settings(
        {"steps": args.steps, "patch": args.patch, "order": ORDERS}, args.size, "bench:"
    )
    ids = np.arange(args.rows)

    def curves(batch: int):
        return unit_curves(model, xt, {"m": heatmaps}, targets, ids, ids, settings, batch, *UNIT)[
            "m"
        ]

    batched_s, batched = best_of(args.repeats, device, lambda: curves(args.batch))
    single_s, single = best_of(args.repeats, device, lambda: curves(1))
    forwards = args.rows * (1 + len(ORDERS) * args.steps)
    per_step = args.rows * len(ORDERS) * args.steps  # heatmap-steps (row, order, step)
    report = {
        "when": datetime.now().isoformat(timespec="seconds"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.python_version()}",
        "device": args.device,
        "device_name": torch.cuda.get_device_name() if device.type == "cuda" else "CPU",
        "torch": torch.__version__,
        "threads": args.threads,
        "loadavg_1min_before": os.getloadavg()[0],
        "arch": args.arch,
        "size": args.size,
        "rows": args.rows,
        "steps": args.steps,
        "patch": args.patch,
        "orders": ORDERS,
        "batch": args.batch,
        "images_through_the_model": forwards,
        "heatmaps_s": heatmap_s,
        "heatmap_ms_per_row": 1000 * heatmap_s / args.rows,
        "batched_s": batched_s,
        "one_forward_per_step_s": single_s,
        "batched_ms_per_heatmap_step": 1000 * batched_s / per_step,
        "one_forward_per_step_ms_per_heatmap_step": 1000 * single_s / per_step,
        "batching_gain": single_s / batched_s,
        "max_abs_diff_batched_vs_single": float(
            max(np.abs(batched[o] - single[o]).max() for o in ORDERS)
        ),
    }
    if not args.no_quantus:
        quantus_s, theirs = best_of(
            1, device, lambda: quantus_curves(model, x, heatmaps, targets, settings, device)
        )
        report["quantus_s_morf_lerf"] = quantus_s
        report["quantus_ms_per_heatmap_step"] = 1000 * quantus_s / (args.rows * 2 * args.steps)
        report["max_abs_diff_vs_quantus"] = float(
            max(np.abs(batched[o] - theirs[o]).max() for o in theirs)
        )
    report["loadavg_1min_after"] = os.getloadavg()[0]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    text = json.dumps(report, indent=2) + "\n"
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    (out / f"faithfulness-{args.device}-{stamp}.json").write_text(text)
    (out / f"faithfulness-{args.device}-latest.json").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
