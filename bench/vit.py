"""Cost of a vision transformer heatmap against the model's plain forward+backward.

Random-weight torchvision ViTs (fixed seed, one input batch) at a small image size. Per arch x
composite, best of --repeats after one warm-up, the two taking turns within each round:

- baseline: model(x), then backward of one_hot(target) * output to the input (frozen weights)
- heatjob: Explainer.explain(x, targets), the Explainer built outside the timing

    python bench/vit.py [--archs vit_b_16,vit_b_32] [--size 64] [--batch 8] [--threads 2]

writes bench/results/vit-<device>-<stamp>.json and vit-<device>-latest.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from datetime import datetime
from pathlib import Path

import torch
import torchvision

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from heatjob.attribution.lrp import Explainer  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--archs", default="vit_b_16,vit_b_32")
    parser.add_argument("--composites", default="cp-lrp,lrp-z,EpsilonPlus")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", type=Path, default=RESULTS)
    return parser


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - start


def _model(arch: str, size: int, device: str) -> torch.nn.Module:
    torch.manual_seed(0)
    model = torchvision.models.get_model(arch, image_size=size, num_classes=10)
    with torch.no_grad():  # torchvision starts the head at zero: no relevance at all
        torch.nn.init.normal_(model.heads.head.weight, std=0.05)
    for param in model.parameters():
        param.requires_grad_(False)
    return model.eval().to(device)


def bench_arch(arch: str, args: argparse.Namespace) -> list[dict]:
    model = _model(arch, args.size, args.device)
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(args.batch, 3, args.size, args.size, generator=gen).to(args.device)
    targets = torch.arange(args.batch, device=args.device) % 10

    def baseline() -> None:
        inputs = x.clone().requires_grad_(True)
        out = model(inputs)
        torch.autograd.grad(out, inputs, torch.nn.functional.one_hot(targets, 10).float())

    rows = []
    for name in args.composites.split(","):
        explainer = Explainer(model, name)
        times: dict[str, list[float]] = {"baseline": [], "heatjob": []}
        for round_ in range(args.repeats + 1):
            t_base = _timed(baseline)
            t_lrp = _timed(lambda e=explainer: e.explain(x, targets))
            if round_:  # the first round warms up
                times["baseline"].append(t_base)
                times["heatjob"].append(t_lrp)
        base, lrp = min(times["baseline"]), min(times["heatjob"])
        rows.append(
            {
                "arch": arch,
                "composite": name,
                "baseline_s": base,
                "heatjob_s": lrp,
                "ratio": lrp / base,
                "per_heatmap_ms": 1000 * lrp / args.batch,
            }
        )
        print(
            f"{arch} {name}: {lrp / base:.2f}x plain forward+backward, "
            f"{1000 * lrp / args.batch:.1f} ms per heatmap"
        )
    return rows


def main() -> None:
    args = get_args_parser().parse_args()
    torch.set_num_threads(args.threads)
    rows = [row for arch in args.archs.split(",") for row in bench_arch(arch, args)]
    device = "cpu" if args.device == "cpu" else "cuda"
    hardware = torch.cuda.get_device_name() if device == "cuda" else platform.processor() or "cpu"
    result = {
        "bench": "vit",
        "command": "python bench/vit.py " + " ".join(sys.argv[1:]),
        "date": datetime.now().isoformat(timespec="seconds"),
        "hardware": hardware,
        "threads": args.threads,
        "load_average_1min": os.getloadavg()[0],
        "torch": torch.__version__,
        "size": args.size,
        "batch": args.batch,
        "repeats": args.repeats,
        "results": rows,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    for name in (f"vit-{device}-{stamp}.json", f"vit-{device}-latest.json"):
        (args.out / name).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
