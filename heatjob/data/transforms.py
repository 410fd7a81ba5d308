"""PIL image -> the model's normalised input tensor."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torchvision.transforms.functional as F
from PIL import Image
from torchvision.transforms import InterpolationMode


def to_input(
    image: Image.Image, size: int, mean: Sequence[float], std: Sequence[float]
) -> torch.Tensor:
    """(3, size, size) float32: resized to size x size (no crop, bilinear, antialiased),
    scaled to [0, 1], then normalised per channel, like torchvision's
    Compose([Resize((size, size)), ToTensor(), Normalize(mean, std)])."""
    if image.mode != "RGB":
        image = image.convert("RGB")
    resized = F.resize(
        image, [size, size], interpolation=InterpolationMode.BILINEAR, antialias=True
    )
    return F.normalize(F.to_tensor(resized), mean=list(mean), std=list(std))
