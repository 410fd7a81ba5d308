"""Train a demo model: heatjob's small CNN or small ViT on the synthetic shapes data set.

The repo ships the results (models/small_cnn_shapes.pt, which jobs/demo.toml explains,
and models/small_vit_shapes.pt, which jobs/demo-vit.toml explains). Training and
validation images come from other seeds than the demo jobs' (seed 0), so the demos'
heatmaps are of images the model never saw.

    python scripts/train_demo_model.py --out models/small_cnn_shapes.pt
    python scripts/train_demo_model.py --arch small_vit --samples 10000 --epochs 7 \
        --threads 2 --out models/small_vit_shapes.pt
"""

from __future__ import annotations

import argparse
import time

import torch
from torch import nn

from heatjob.data import open_dataset
from heatjob.data.transforms import to_input
from heatjob.models import OWN_ARCHITECTURES

MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


def tensors(seed: int, n: int, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    dataset = open_dataset("synthetic", "", "", 0, num_samples=n, seed=seed, image_size=size)
    x = torch.stack([to_input(dataset.load_image(i), size, MEAN, STD) for i in range(n)])
    y = torch.zeros(n, len(dataset.classes))
    for i in range(n):
        y[i, list(dataset.record(i).labels)] = 1.0
    return x, y


def build(arch: str, num_classes: int, size: int) -> nn.Module:
    if arch == "small_vit":
        return OWN_ARCHITECTURES[arch](num_classes=num_classes, image_size=size)
    return OWN_ARCHITECTURES[arch](num_classes=num_classes)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--samples", type=int, default=4000)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--arch", choices=("small_cnn", "small_vit"), default="small_cnn")
    parser.add_argument(
        "--image-size", type=int, default=None, help="default: 64 (small_cnn), 32 (small_vit)"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=0, help="torch threads; 0: torch's own")
    args = parser.parse_args()

    if args.threads:
        torch.set_num_threads(args.threads)
    size = args.image_size or (32 if args.arch == "small_vit" else 64)
    torch.manual_seed(args.seed)
    x_train, y_train = tensors(1000, args.samples, size)
    x_val, y_val = tensors(2000, max(64, args.samples // 8), size)
    model = build(args.arch, y_train.shape[1], size)
    optimiser = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimiser, max_lr=2e-3, total_steps=args.epochs * -(-args.samples // 64)
    )
    loss_fn = nn.BCEWithLogitsLoss()
    start = time.perf_counter()
    for epoch in range(args.epochs):
        model.train()
        order = torch.randperm(args.samples)
        total = 0.0
        for i in range(0, args.samples, 64):
            batch = order[i : i + 64]
            loss = loss_fn(model(x_train[batch]), y_train[batch])
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            schedule.step()
            total += loss.item() * len(batch)
        model.eval()
        with torch.no_grad():
            predicted = model(x_val) > 0
        accuracy = (predicted == y_val.bool()).float().mean().item()
        exact = (predicted == y_val.bool()).all(dim=1).float().mean().item()
        print(
            f"epoch {epoch + 1}/{args.epochs}: loss {total / args.samples:.4f}, "
            f"val label accuracy {accuracy:.3f}, exact {exact:.3f} "
            f"({time.perf_counter() - start:.0f} s)",
            flush=True,
        )
    # The trivial answer, every shape absent, scores the share of absent labels.
    absent = 1.0 - y_val.mean().item()
    print(f"trivial baseline (every shape absent): label accuracy {absent:.3f}, exact 0.000")
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    torch.save(state, args.out)
    print(f"saved {args.out} ({sum(v.numel() for v in state.values())} values)")


if __name__ == "__main__":
    main()
