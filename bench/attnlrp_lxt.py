"""How far heatjob's attnlrp composite is from LXT 2.1's AttnLRP, relative to the largest value.

- layer: one random nn.MultiheadAttention (width 16, 4 heads, batch first), a random relevance at
  its output handed back to its input by heatjob's AttnLRP attention and by LXT's explicit
  linear_epsilon, matmul and softmax composed the same way;
- vit: random-weight torchvision ViTs at --size px, heatmaps of the attnlrp composite against
  LXT's efficient rules with its AttnLRP attention wrapper and zennit gamma 0.25/0.05.

LXT runs in its own process (tests/oracle/lxt_attnlrp.py, the oracle of
tests/test_lrp_attnlrp.py): it patches torch and zennit globally.

    python bench/attnlrp_lxt.py [--archs vit_b_16,vit_b_32] [--size 64] [--batch 2]

writes bench/results/attnlrp-lxt-cpu-<stamp>.json and attnlrp-lxt-cpu-latest.json.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from datetime import datetime
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torchvision.models.vision_transformer import VisionTransformer

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from heatjob.attribution.lrp import Explainer  # noqa: E402
from heatjob.attribution.lrp.transformer import AttentionLayer  # noqa: E402

RESULTS = ROOT / "bench" / "results"
ORACLE = ROOT / "tests" / "oracle" / "lxt_attnlrp.py"
# torchvision's ViT-B configurations, by patch size
BASE = {"num_layers": 12, "num_heads": 12, "hidden_dim": 768, "mlp_dim": 3072, "num_classes": 10}
PATCHES = {"vit_b_16": 16, "vit_b_32": 32}


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--archs", default="vit_b_16,vit_b_32")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=RESULTS)
    return parser


def _oracle(*args: object) -> None:
    command = [sys.executable, str(ORACLE), *map(str, args)]
    subprocess.run(command, check=True, capture_output=True, text=True)


def _relative(ours: np.ndarray, expected: np.ndarray) -> float:
    return float(np.abs(ours - expected).max() / np.abs(expected).max())


def layer(folder: Path) -> dict:
    torch.manual_seed(0)
    attention = nn.MultiheadAttention(16, 4, batch_first=True).eval()
    with torch.no_grad():
        attention.in_proj_bias.normal_(0.0, 0.1)
        attention.out_proj.bias.normal_(0.0, 0.1)
    generator = torch.Generator().manual_seed(1)
    x, relevance = (torch.randn(2, 7, 16, generator=generator) for _ in range(2))
    paths = [folder / name for name in ("state.pt", "x.npy", "r.npy", "out.npy")]
    torch.save(attention.state_dict(), paths[0])
    np.save(paths[1], x.numpy())
    np.save(paths[2], relevance.numpy())
    _oracle("layer", *paths, attention.num_heads)
    inputs = x.clone().requires_grad_(True)
    output, _ = AttentionLayer(attention, "attnlrp")(inputs, inputs, inputs)
    (ours,) = torch.autograd.grad(output, inputs, relevance)
    return {"case": "layer", "max_abs_diff_over_max": _relative(ours.numpy(), np.load(paths[3]))}


def vit(arch: str, args: argparse.Namespace, folder: Path) -> dict:
    config = {**BASE, "image_size": args.size, "patch_size": PATCHES[arch]}
    torch.manual_seed(0)
    model = VisionTransformer(**config)
    with torch.no_grad():  # torchvision starts the head and the class token at zero
        nn.init.normal_(model.heads.head.weight, std=0.05)
        nn.init.normal_(model.class_token, std=0.5)
    model.eval()
    x = torch.randn(args.batch, 3, args.size, args.size, generator=torch.Generator().manual_seed(2))
    targets = torch.arange(args.batch) % 10
    paths = [folder / f"{arch}.{ext}" for ext in ("pt", "x.npy", "t.npy", "out.npy")]
    torch.save(model.state_dict(), paths[0])
    np.save(paths[1], x.numpy())
    np.save(paths[2], targets.numpy())
    ours = Explainer(model, "attnlrp").explain(x, targets)[0].numpy()
    _oracle("vit", json.dumps(config), *paths)
    return {"case": arch, "max_abs_diff_over_max": _relative(ours, np.load(paths[3]))}


def main() -> None:
    args = get_args_parser().parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as folder:
        rows = [layer(Path(folder))]
        rows += [vit(arch, args, Path(folder)) for arch in args.archs.split(",")]
    result = {
        "bench": "attnlrp-lxt",
        "command": "python bench/attnlrp_lxt.py " + " ".join(sys.argv[1:]),
        "date": datetime.now().isoformat(timespec="seconds"),
        "torch": torch.__version__,
        "size": args.size,
        "batch": args.batch,
        "results": rows,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    for name in (f"attnlrp-lxt-cpu-{stamp}.json", "attnlrp-lxt-cpu-latest.json"):
        (args.out / name).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
