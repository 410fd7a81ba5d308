"""What every method's `explain_rows(x, images, targets)` shares: the dtypes a pass may run
in, the check of its row lists, and the grouping of rows into backward passes."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

PRECISIONS = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def check_rows(x: Tensor, images: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
    """`images` and `targets` as long tensors on x's device, after checking that they are two
    equal 1-d index lists whose images lie in the batch x (n, channels, height, width)."""
    if x.ndim != 4:
        raise ValueError(f"expected images (n, channels, height, width), got {tuple(x.shape)}")
    # checked where the lists are (the host, from the worker), then moved: on a GPU a check
    # of device tensors would wait for the device (a tensor a caller gives is checked as is)
    images, targets = (v if isinstance(v, Tensor) else np.asarray(v) for v in (images, targets))
    if images.ndim != 1 or images.shape != targets.shape:
        raise ValueError(
            f"images and targets must be two equal 1-d index lists, got shapes "
            f"{tuple(images.shape)} and {tuple(targets.shape)}"
        )
    if len(images) and (images.min() < 0 or images.max() >= x.shape[0]):
        raise ValueError(f"image indices must lie in [0, {x.shape[0]})")
    return tuple(torch.as_tensor(v).long().to(x.device) for v in (images, targets))


def on_host(values) -> np.ndarray:
    """An index list as a host array. The worker's lists are numpy already; grouping rows
    from a device tensor would wait for the device (a tensor a caller gives is copied)."""
    return values.cpu().numpy() if isinstance(values, Tensor) else np.asarray(values)


def rounds(images) -> list[list[int]]:
    """Row positions grouped so that no image appears twice in a group (the k-th row of each
    image goes to group k): one backward pass per group, all groups from one forward pass.
    `images` as the caller gave them, before check_rows moves them to the device."""
    groups: list[list[int]] = []
    seen: dict[int, int] = {}
    for row, image in enumerate(on_host(images).tolist()):
        k = seen.get(image, 0)
        seen[image] = k + 1
        if k == len(groups):
            groups.append([])
        groups[k].append(row)
    return groups
