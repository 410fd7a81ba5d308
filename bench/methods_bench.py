"""Time per heatmap of each attribution method kind beside the plain forward+backward pass.

One process, random-weight torchvision models (fixed seed), one input batch of `--batch`
images with `--targets` target classes each (rows = batch x targets), every method built
through heatjob's registry (`build_method`) from its resolved spec table, as a worker
builds it. Per arch, best of --repeats rounds after one warm-up round, the methods taking
turns within each round (load from elsewhere hits them alike):

- baseline: model(x), then one backward of one_hot(target) * output to the input per
  target (the images of the batch together): one forward pass and one input gradient, the
  cost of a plain gradient heatmap; its time per heatmap is its time / rows
- each method: explain_rows(x, images, targets) over all rows; time / rows

`over_baseline` is a method's time per heatmap / the baseline's. Integrated gradients and
SmoothGrad cost about `steps` and `samples` gradients per heatmap. See
docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from datetime import datetime
from pathlib import Path

import torch
import torchvision

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from run import measure, rel_diff, sync  # noqa: E402

from heatjob.attribution import parse_method, resolved  # noqa: E402
from heatjob.attribution.registry import build_method  # noqa: E402

MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
# name -> method table; the parameters are the spec's defaults unless given here
METHODS = {
    "gradient": {"kind": "gradient"},
    "gradient-x-input": {"kind": "gradient-x-input"},
    "integrated-gradients": {"kind": "integrated-gradients", "steps": 16},
    "smoothgrad": {"kind": "smoothgrad", "samples": 20},
    "gradcam": {"kind": "gradcam"},
    "lrp EpsilonPlusFlat": {"kind": "lrp", "preset": "EpsilonPlusFlat"},
}
DEFAULTS = {"archs": "vgg16,resnet50", "batch": 2, "size": 224, "targets": 2, "repeats": 1}
QUICK = {"archs": "vgg11,resnet18", "batch": 2, "size": 32, "targets": 2, "repeats": 1}
QUICK_PARAMS = {"integrated-gradients": {"steps": 4}, "smoothgrad": {"samples": 4}}


def method_tables(quick: bool) -> dict[str, dict]:
    """Each method's table with its defaults resolved, as the spec stores it."""
    tables = {}
    for name, table in METHODS.items():
        table = {**table, **(QUICK_PARAMS.get(name, {}) if quick else {})}
        options = parse_method(name, table, f"[attribution.methods.{name}]", mean=MEAN, std=STD)
        tables[name] = resolved(options)
    return tables


def bench_arch(arch: str, args: argparse.Namespace, tables: dict, device: torch.device) -> dict:
    torch.manual_seed(0)
    model = torchvision.models.get_model(arch, weights=None, num_classes=args.targets + 3)
    model = model.eval().to(device)
    for p in model.parameters():
        p.requires_grad_(False)
    x = torch.randn(args.batch, 3, args.size, args.size, device=device)
    images = torch.arange(args.batch, device=device).repeat_interleave(args.targets)
    targets = torch.arange(args.targets, device=device).repeat(args.batch)
    rows = len(images)

    def baseline() -> torch.Tensor:
        xg = x.detach().requires_grad_(True)
        out = model(xg)
        grads = []
        for k in range(args.targets):
            onehot = torch.nn.functional.one_hot(
                torch.full_like(targets[: args.batch], k), out.shape[1]
            )
            (grad,) = torch.autograd.grad(out, xg, onehot * out, retain_graph=k < args.targets - 1)
            grads.append(grad.sum(1))
        return torch.stack(grads, 1).flatten(0, 1)

    methods = {
        name: build_method(table, model, mean=MEAN, std=STD, precision="float32")
        for name, table in tables.items()
    }
    fns = {"baseline": baseline} | {
        name: (lambda m=m: m.explain_rows(x, images, targets)[0]) for name, m in methods.items()
    }
    times, maps, _ = measure(fns, args.repeats, device)
    sync(device)
    base = times["baseline"] / rows
    return {
        "arch": arch,
        "rows": rows,
        "baseline_s_per_heatmap": base,
        "methods": [
            {
                "method": name,
                "table": tables[name],
                "s_per_heatmap": times[name] / rows,
                "over_baseline": times[name] / rows / base,
                "finite": bool(torch.isfinite(maps[name]).all()),
                "shape": list(maps[name].shape),
            }
            for name in tables
        ],
        # the gradient method is the baseline's computation: the bench times what it says
        "gradient_vs_baseline_max_rel_diff": rel_diff(maps["gradient"], maps["baseline"]),
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("bench/results"))
    parser.add_argument("--archs")
    parser.add_argument("--batch", type=int)
    parser.add_argument("--size", type=int)
    parser.add_argument("--targets", type=int, help="target classes per image")
    parser.add_argument("--repeats", type=int)
    parser.add_argument("--quick", action="store_true", help="vgg11+resnet18, 32 px, few steps")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: steadier)")
    args = parser.parse_args(argv)
    for key, value in (QUICK if args.quick else DEFAULTS).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    tables = method_tables(args.quick)
    load_before = os.getloadavg()[0]  # other work on the machine skews CPU timings
    results = [bench_arch(arch, args, tables, device) for arch in args.archs.split(",")]
    now = datetime.now()
    report = {
        "meta": {
            "device": device.type,
            "device_name": torch.cuda.get_device_name(device)
            if device.type == "cuda"
            else platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(),
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "batch": args.batch,
            "size": args.size,
            "targets": args.targets,
            "repeats": args.repeats,
            "date": now.strftime("%Y-%m-%d"),
            "loadavg_1min_before": load_before,
            "loadavg_1min_after": os.getloadavg()[0],
            "command": " ".join(["bench/methods_bench.py", *(argv or sys.argv[1:])]),
        },
        "results": results,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    stamp = now.strftime("%Y%m%d-%H%M%S")
    for name in (f"methods-{device.type}-{stamp}.json", f"methods-{device.type}-latest.json"):
        (args.out / name).write_text(json.dumps(report, indent=2) + "\n")
    return report


if __name__ == "__main__":
    report = main()
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from table import methods_table

    print(methods_table(report))
