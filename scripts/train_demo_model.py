"""Train the demo model: heatjob's SmallCNN on the synthetic shapes data set.

The repo ships the result (models/small_cnn_shapes.pt), which jobs/demo.toml
explains. Training and validation images come from other seeds than the demo
job's (seed 0), so the demo's heatmaps are of images the model never saw.

    python scripts/train_demo_model.py --out models/small_cnn_shapes.pt
"""

from __future__ import annotations

import argparse
import time

import torch
from torch import nn

from heatjob.data import open_dataset
from heatjob.data.transforms import to_input
from heatjob.models import SmallCNN

MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


def tensors(seed: int, n: int, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    dataset = open_dataset("synthetic", "", "", 0, num_samples=n, seed=seed, image_size=size)
    x = torch.stack([to_input(dataset.load_image(i), size, MEAN, STD) for i in range(n)])
    y = torch.zeros(n, len(dataset.classes))
    for i in range(n):
        y[i, list(dataset.record(i).labels)] = 1.0
    return x, y


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--samples", type=int, default=4000)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    torch.manual_seed(args.seed)
    x_train, y_train = tensors(1000, args.samples, args.image_size)
    x_val, y_val = tensors(2000, max(64, args.samples // 8), args.image_size)
    model = SmallCNN(num_classes=y_train.shape[1])
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
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    torch.save(state, args.out)
    print(f"saved {args.out} ({sum(v.numel() for v in state.values())} values)")


if __name__ == "__main__":
    main()
