"""Speed of heatjob's LRP engine against a plain forward+backward and against zennit 0.5.1.

Everything runs in one process on random-weight torchvision models (fixed seed, one input batch
for all). Per arch x composite it times, best of --repeats after one warm-up:

- baseline: model(x), then backward of one_hot(target) * output to the input
- heatjob: Explainer.explain(x, targets), the Explainer built outside the timing
- zennit: the Gradient attributor, hooks registered once outside the timing (on a copy)

The three take turns within each round, so a noisy shared machine slows them alike.
Parameters are frozen, so all three compute the input gradient only. It also records
max|heatjob - zennit| / max|zennit| and the peak memory each method adds while it runs (CUDA:
max_memory_allocated; CPU: the process's peak RSS, reset before each call through
/proc/self/clear_refs, minus its RSS before the call).

Then, per arch x composite: `--targets` targets per image from one forward pass
(Explainer.explain_rows) against as many separate passes, and each `--precisions` dtype's time
and heatmap error against float32. See bench/README.md.
"""

from __future__ import annotations

import argparse
import copy
import ctypes
import json
import math
import os
import platform
import re
import sys
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

import torch
import torchvision
from zennit import composites as zcomposites
from zennit.attribution import Gradient
from zennit.torchvision import ResNetCanonizer, VGGCanonizer

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from heatjob.attribution.lrp import Explainer  # noqa: E402

MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
DEFAULTS = {
    "archs": "vgg16,resnet50",
    "composites": "EpsilonPlusFlat,EpsilonAlpha2Beta1Flat,EpsilonGammaBox",
    "batch": 8,
    "size": 224,
    "repeats": 2,
    "targets": 20,
    "targets_batch": 2,
}
QUICK = {
    "archs": "vgg11,resnet18",
    "composites": "EpsilonPlusFlat",
    "batch": 2,
    "size": 64,
    "repeats": 1,
    "targets": 4,
    "targets_batch": 2,
}
COLUMNS = [
    ("arch", "arch"),
    ("composite", "composite"),
    ("baseline_s", "baseline s"),
    ("heatjob_s", "heatjob s"),
    ("zennit_s", "zennit s"),
    ("heatjob_over_baseline", "heatjob/base"),
    ("zennit_over_baseline", "zennit/base"),
    ("zennit_over_heatjob", "zennit/heatjob"),
    ("max_rel_diff", "max rel diff"),
]


def zennit_composite(name: str, device: torch.device, canonizers: list) -> object:
    if name == "EpsilonGammaBox":
        mean = torch.tensor(MEAN, device=device).view(1, 3, 1, 1)
        std = torch.tensor(STD, device=device).view(1, 3, 1, 1)
        return zcomposites.EpsilonGammaBox(
            (0 - mean) / std, (1 - mean) / std, canonizers=canonizers
        )
    return getattr(zcomposites, name)(canonizers=canonizers)


def canonizers_for(arch: str) -> list:
    if arch.startswith("vgg"):
        return [VGGCanonizer()]
    if arch.startswith("resnet"):
        return [ResNetCanonizer()]
    raise SystemExit(f"no zennit canonizer known for {arch!r} (use vgg* or resnet*)")


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _status_kb(key: str) -> float:
    match = re.search(rf"^{key}:\s+(\d+) kB", Path("/proc/self/status").read_text(), re.M)
    return float(match.group(1)) if match else math.nan


def start_peak(device: torch.device) -> float:
    """Reset the peak-memory counter; returns the memory in use now (MB)."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return torch.cuda.memory_allocated(device) / 2**20
    try:
        # Freed memory back to the OS first, or a method reusing another's freed heap would
        # show no growth; then Linux's VmHWM := VmRSS.
        ctypes.CDLL("libc.so.6").malloc_trim(0)
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return math.nan
    return _status_kb("VmRSS") / 1024


def peak_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return _status_kb("VmHWM") / 1024


def measure(fns: dict[str, Callable[[], torch.Tensor]], repeats: int, device: torch.device):
    """Best wall time of each fn over `repeats` rounds after one warm-up round, its last result
    and the most memory (MB) it added while running. The fns take turns within each round, so
    load from elsewhere on a shared machine hits them alike."""
    best = dict.fromkeys(fns, math.inf)
    results: dict[str, torch.Tensor] = {}
    peaks = dict.fromkeys(fns, 0.0)
    for round_ in range(repeats + 1):
        for name, fn in fns.items():
            results.pop(name, None)  # the last result would count in the next peak
            sync(device)
            before = start_peak(device)
            start = time.perf_counter()
            results[name] = fn().detach()
            sync(device)
            if round_ > 0:
                best[name] = min(best[name], time.perf_counter() - start)
            peaks[name] = max(peaks[name], peak_mb(device) - before)
    return best, results, peaks


def rel_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / b.abs().max()).item()


def bench_targets(explainer: Explainer, x: torch.Tensor, n_targets: int, device) -> dict:
    """n_targets heatmaps per image: one forward pass shared by all (explain_rows) against one
    forward+backward pass per target (explain, the images of the batch together)."""
    images = torch.arange(x.shape[0], device=device).repeat_interleave(n_targets)
    classes = torch.arange(n_targets, device=device).repeat(x.shape[0])

    def separate() -> torch.Tensor:
        maps = [
            explainer.explain(x, torch.full((x.shape[0],), k, device=device))[0]
            for k in range(n_targets)
        ]
        return torch.stack(maps, dim=1).flatten(0, 1)

    times, maps, _ = measure(
        {"shared": lambda: explainer.explain_rows(x, images, classes)[0], "separate": separate},
        1,
        device,
    )
    return {
        "images": x.shape[0],
        "targets_per_image": n_targets,
        "shared_s": times["shared"],
        "separate_s": times["separate"],
        "shared_over_separate": times["shared"] / times["separate"],
        "max_rel_diff": rel_diff(maps["shared"], maps["separate"]),
    }


def bench_precision(model, composite, x, targets, reference, device, precision) -> dict:
    explainer = Explainer(model, composite, mean=MEAN, std=STD, precision=precision)
    times, maps, peaks = measure({precision: lambda: explainer.explain(x, targets)[0]}, 1, device)
    heat = maps[precision]
    rows = reference.flatten(1)
    rel_l2 = (heat.flatten(1) - rows).norm(dim=1) / rows.norm(dim=1)
    corr = [
        torch.corrcoef(torch.stack([a, b]))[0, 1].item()
        for a, b in zip(heat.flatten(1), rows, strict=True)
    ]
    return {
        "precision": precision,
        "seconds": times[precision],
        "peak_mb": peaks[precision],
        "finite": bool(torch.isfinite(heat).all()),
        "max_rel_diff": rel_diff(heat, reference),
        "rel_l2_mean": rel_l2.mean().item(),
        "pearson_min": min(corr),
    }


def bench_one(
    arch: str,
    composite: str,
    x: torch.Tensor,
    targets: torch.Tensor,
    args: argparse.Namespace,
    device: torch.device,
) -> dict:
    repeats = args.repeats
    torch.manual_seed(0)
    model = getattr(torchvision.models, arch)(weights=None, num_classes=1000).eval().to(device)
    model.requires_grad_(False)
    one_hot = torch.nn.functional.one_hot(targets, 1000).to(x.dtype)

    def baseline() -> torch.Tensor:
        xg = x.detach().requires_grad_(True)
        out = model(xg)
        out.backward(one_hot * out)
        return xg.grad

    explainer = Explainer(model, composite, mean=MEAN, std=STD)
    zennit_model = copy.deepcopy(model)  # zennit's hooks stay on it; the baseline stays plain
    zcomp = zennit_composite(composite, device, canonizers_for(arch))
    with Gradient(zennit_model, zcomp) as attributor:
        times, maps, peaks = measure(
            {
                "baseline": baseline,
                "heatjob": lambda: explainer.explain(x, targets)[0],
                "zennit": lambda: attributor(x, lambda out: one_hot * out)[1].sum(dim=1),
            },
            repeats,
            device,
        )
    base_s, heat_s, zen_s = times["baseline"], times["heatjob"], times["zennit"]
    heat, zen = maps["heatjob"], maps["zennit"]
    del maps, zennit_model
    extra = {}
    if args.targets:
        extra["targets"] = bench_targets(explainer, x[: args.targets_batch], args.targets, device)
    extra["precisions"] = [
        bench_precision(model, composite, x, targets, heat, device, precision)
        for precision in args.precisions.split(",")
        if precision
    ]
    return {
        "arch": arch,
        "composite": composite,
        "baseline_s": base_s,
        "heatjob_s": heat_s,
        "zennit_s": zen_s,
        "heatjob_over_baseline": heat_s / base_s,
        "zennit_over_baseline": zen_s / base_s,
        "zennit_over_heatjob": zen_s / heat_s,
        "max_rel_diff": rel_diff(heat, zen),
        "peak_mb": peaks,
        **extra,
    }


def table(results: list[dict]) -> str:
    def cell(value: object) -> str:
        if isinstance(value, float):
            return f"{value:.1e}" if value < 1e-3 else f"{value:.3f}"
        return str(value)

    lines = [
        "| " + " | ".join(title for _, title in COLUMNS) + " |",
        "|" + "|".join("---" for _ in COLUMNS) + "|",
    ]
    lines += ["| " + " | ".join(cell(r[key]) for key, _ in COLUMNS) + " |" for r in results]
    return "\n".join(lines)


def targets_table(results: list[dict]) -> str:
    lines = [
        "| arch | composite | images x targets | shared s | separate s | shared/separate |",
        "|---|---|---|---|---|---|",
    ]
    for r in results:
        t = r.get("targets")
        if t:
            lines.append(
                f"| {r['arch']} | {r['composite']} | {t['images']} x {t['targets_per_image']} | "
                f"{t['shared_s']:.3f} | {t['separate_s']:.3f} | {t['shared_over_separate']:.3f} |"
            )
    return "\n".join(lines)


def precision_table(results: list[dict]) -> str:
    lines = [
        "| arch | composite | precision | s | float32 s | rel L2 (mean) | min Pearson r |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in results:
        for p in r.get("precisions", []):
            lines.append(
                f"| {r['arch']} | {r['composite']} | {p['precision']} | {p['seconds']:.3f} | "
                f"{r['heatjob_s']:.3f} | {p['rel_l2_mean']:.3g} | {p['pearson_min']:.4f} |"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("bench/results"))
    parser.add_argument("--archs")
    parser.add_argument("--composites")
    parser.add_argument("--batch", type=int)
    parser.add_argument("--size", type=int)
    parser.add_argument("--repeats", type=int)
    parser.add_argument("--targets", type=int, help="targets per image for the shared-pass test")
    parser.add_argument("--targets-batch", type=int, help="images in the shared-pass test")
    parser.add_argument("--precisions", help="dtypes to compare with float32 (comma list)")
    parser.add_argument("--quick", action="store_true", help="vgg11+resnet18, tiny inputs")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument(
        "--threads", type=int, default=os.cpu_count(), help="torch threads (default: all cores)"
    )
    args = parser.parse_args(argv)
    for key, value in (QUICK if args.quick else DEFAULTS).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.precisions is None:  # float16 convolutions on CPU are far slower than float32
        args.precisions = "bfloat16,float16" if args.device == "cuda" else "bfloat16"

    torch.set_num_threads(args.threads)
    load_before = os.getloadavg()[0]  # other work on the machine skews CPU timings
    device = torch.device(args.device)
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(args.batch, 3, args.size, args.size, generator=generator).to(device)
    targets = torch.randint(0, 1000, (args.batch,), generator=generator).to(device)

    results = [
        bench_one(arch, composite, x, targets, args, device)
        for arch in args.archs.split(",")
        for composite in args.composites.split(",")
    ]
    device_name = (
        torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else platform.processor() or platform.machine()
    )
    report = {
        "meta": {
            "torch": torch.__version__,
            "device": str(device),
            "device_name": device_name,
            "cpu_count": os.cpu_count(),
            "threads": torch.get_num_threads(),
            "loadavg_1min_before": load_before,
            "batch": args.batch,
            "size": args.size,
            "repeats": args.repeats,
            "date": datetime.now().isoformat(timespec="seconds"),
            "peak_mb": "memory each method adds at its peak: cuda max_memory_allocated, "
            "or on CPU peak RSS (reset per call) minus RSS before the call",
            "targets_batch": args.targets_batch,
            "loadavg_1min_after": None,
        },
        "results": results,
        "geomean_zennit_over_heatjob": math.exp(
            sum(math.log(r["zennit_over_heatjob"]) for r in results) / len(results)
        ),
    }
    report["meta"]["loadavg_1min_after"] = os.getloadavg()[0]
    args.out.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    text = json.dumps(report, indent=2) + "\n"
    for name in (f"engine-{device.type}-{stamp}.json", f"engine-{device.type}-latest.json"):
        (args.out / name).write_text(text)
    print(
        f"{device_name}, torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"batch {args.batch}, size {args.size}, best of {args.repeats}\n"
    )
    print(table(results))
    print(f"\ngeomean zennit/heatjob: {report['geomean_zennit_over_heatjob']:.2f}")
    print("\n" + targets_table(results))
    print("\n" + precision_table(results))
    return report


if __name__ == "__main__":
    main()
