"""Perturbation curves on the device: the model's target logit as patches are replaced.

For a row with input x (normalised, C x S x S), heatmap h and target t, and an order of
the patches (heatjob.eval.faithfulness.patch_orders), x_k is x with the first k patches
replaced by the baseline's values there, and the curve is f_t(x_0), ..., f_t(x_K).
Every x_k is built directly from x (x_k = where(rank < k, baseline, x), rank = the
position of a pixel's patch in the order), so the steps of many rows and orders go
through the model together in batches of `batch_size` images, without the sequential
dependence of the step-by-step loop.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from heatjob.eval.faithfulness import patch_orders


def baseline_values(
    x: torch.Tensor,
    kind: str,
    patch: int,
    samples: np.ndarray,
    seed: int,
    mean: tuple[float, ...],
    std: tuple[float, ...],
) -> torch.Tensor:
    """(n, C, S, S) values that perturbed pixels take, for inputs x (n, C, S, S).

    mean: each channel's mean over the original image; zero: 0 in the normalised space
    (the data set's mean colour); blur: the image under a Gaussian of σ = patch px
    (replicated edges); noise: pixel values uniform in [0, 1), seeded by (seed, sample)
    so a sample's rows and methods share it, then normalised like the input.
    """
    if kind == "mean":
        return x.mean(dim=(2, 3), keepdim=True).expand_as(x)
    if kind == "zero":
        return torch.zeros_like(x)
    if kind == "blur":
        return gaussian_blur(x, float(patch))
    if kind == "noise":
        shape = x.shape[1:]
        noise = np.stack(
            [np.random.default_rng([seed, int(s)]).random(shape, dtype=np.float32) for s in samples]
        )
        m = torch.tensor(mean, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
        s = torch.tensor(std, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
        return (torch.from_numpy(noise).to(x.device, x.dtype) - m) / s
    raise ValueError(f"unknown baseline {kind!r}")


def gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur per channel, kernel radius ceil(3σ), edges replicated."""
    radius = max(1, math.ceil(3 * sigma))
    offsets = torch.arange(-radius, radius + 1, dtype=x.dtype, device=x.device)
    kernel = torch.exp(-(offsets**2) / (2 * sigma**2))
    kernel = kernel / kernel.sum()
    c = x.shape[1]
    padded = torch.nn.functional.pad(x, (radius, radius, radius, radius), mode="replicate")
    out = torch.nn.functional.conv2d(padded, kernel.view(1, 1, 1, -1).repeat(c, 1, 1, 1), groups=c)
    return torch.nn.functional.conv2d(out, kernel.view(1, 1, -1, 1).repeat(c, 1, 1, 1), groups=c)


def pixel_ranks(orders: np.ndarray, patch: int, size: int) -> np.ndarray:
    """(n, S, S) int32: the position in the order of each pixel's patch."""
    n, g2 = orders.shape
    g = size // patch
    ranks = np.empty_like(orders)
    ranks[np.arange(n)[:, None], orders] = np.arange(g2)
    grid = ranks.reshape(n, g, g).astype(np.int32)
    return grid.repeat(patch, axis=1).repeat(patch, axis=2)


@torch.no_grad()
def curves(
    model: torch.nn.Module,
    x: torch.Tensor,
    base: torch.Tensor,
    targets: np.ndarray,
    ranks: dict[str, np.ndarray],
    steps: int,
    batch_size: int,
    first: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """{order: (n, steps + 1) float32} target logits along each order's perturbation.

    x, base: (n, C, S, S) on the model's device; ranks: order -> pixel_ranks. Step 0 (x
    itself) is one forward per row shared by the orders, or `first` when given.
    """
    n = x.shape[0]
    device = x.device
    names = list(ranks)
    rank_t = torch.from_numpy(np.stack([ranks[o] for o in names])).to(device)  # (O, n, S, S)
    # one job per (row, order, step) as columns (row, order, step); step 0 (rank < 0 is
    # nowhere: x itself) once per row, under order 0
    grid = np.stack(
        np.meshgrid(np.arange(n), np.arange(len(names)), np.arange(1, steps + 1), indexing="ij"),
        -1,
    ).reshape(-1, 3)
    if first is None:
        grid = np.concatenate(
            [np.stack([np.arange(n), np.zeros(n, int), np.zeros(n, int)], 1), grid]
        )
    out = np.full((len(names), n, steps + 1), np.nan, dtype=np.float32)
    if first is not None:
        out[:, :, 0] = first
    targets_t = torch.as_tensor(np.asarray(targets, dtype=np.int64), device=device)
    for start in range(0, len(grid), batch_size):
        chunk = grid[start : start + batch_size]
        i, j, k = (torch.from_numpy(chunk[:, c]).to(device) for c in range(3))
        rank = rank_t[j, i].unsqueeze(1)  # (b, 1, S, S)
        perturbed = torch.where(rank < k.view(-1, 1, 1, 1), base[i], x[i])
        logits = model(perturbed).float()
        values = logits.gather(1, targets_t[i].view(-1, 1)).squeeze(1).cpu().numpy()
        zero = chunk[:, 2] == 0
        out[:, chunk[zero, 0], 0] = values[zero]  # step 0 serves every order
        out[chunk[~zero, 1], chunk[~zero, 0], chunk[~zero, 2]] = values[~zero]
    return {o: out[j] for j, o in enumerate(names)}


def unit_curves(
    model: torch.nn.Module,
    x: torch.Tensor,
    heatmaps: dict[str, np.ndarray],
    targets: np.ndarray,
    rows: np.ndarray,
    samples: np.ndarray,
    settings: dict,
    batch_size: int,
    mean: tuple[float, ...],
    std: tuple[float, ...],
) -> dict[str, dict[str, np.ndarray]]:
    """{method: {order: (n, steps + 1)}} for n rows (x: each row's input, on the device).

    The random order does not look at the heatmap, so its curve is computed once and is
    the same for every method. Rows whose heatmap is not finite (a failed sample) get NaN.
    """
    steps, patch, seed = settings["steps"], settings["patch"], settings["seed"]
    size = x.shape[-1]
    base = baseline_values(x, settings["baseline"], patch, samples, seed, mean, std)
    ranked = [o for o in settings["order"] if o != "random"]
    out: dict[str, dict[str, np.ndarray]] = {}
    first = None
    shared: dict[str, np.ndarray] = {}
    for name, maps in heatmaps.items():
        ranks = {
            o: pixel_ranks(patch_orders(maps, patch, o, rows, seed), patch, size) for o in ranked
        }
        if "random" in settings["order"] and not shared:
            ranks["random"] = pixel_ranks(
                patch_orders(maps, patch, "random", rows, seed), patch, size
            )
        got = curves(model, x, base, targets, ranks, steps, batch_size, first) if ranks else {}
        if first is None and got:
            first = next(iter(got.values()))[:, 0].copy()
        if "random" in got:
            shared["random"] = got["random"]
        got.update(shared)
        bad = ~np.isfinite(maps.reshape(len(maps), -1)).all(axis=1)
        out[name] = {}
        for o in settings["order"]:
            curve = got[o].copy()
            curve[bad] = np.nan
            out[name][o] = curve
    return out


def rows_curves(
    model: torch.nn.Module,
    inputs: dict[int, torch.Tensor],
    rows_sample: np.ndarray,
    targets: np.ndarray,
    row_start: int,
    heatmaps: dict[str, np.ndarray],
    settings: dict,
    batch_size: int,
    mean: tuple[float, ...],
    std: tuple[float, ...],
) -> dict[str, dict[str, np.ndarray]]:
    """The curves of one unit's rows (store rows row_start ...), inputs by sample on the
    device. The heatmaps are taken as the store holds them (its dtype), so curves made
    later from the store (`heatjob evaluate`) order the patches the same way."""
    rows_sample = np.asarray(rows_sample)
    if not len(rows_sample):
        steps = settings["steps"]
        empty = np.zeros((0, steps + 1), dtype=np.float32)
        return {name: {o: empty for o in settings["order"]} for name in heatmaps}
    x = torch.stack([inputs[int(s)] for s in rows_sample]).float()
    rows = row_start + np.arange(len(rows_sample))
    return unit_curves(
        model, x, heatmaps, targets, rows, rows_sample, settings, batch_size, mean, std
    )
