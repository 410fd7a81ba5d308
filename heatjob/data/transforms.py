"""PIL image -> the model's normalised input tensor."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torchvision.transforms.functional as F
from PIL import Image
from torchvision.transforms import InterpolationMode

from heatjob.data.geometry import input_geometry


def model_view(
    image: Image.Image, size: int, resize: str = "squash", resize_to: int = 0
) -> Image.Image:
    """The S x S RGB image the model sees (heatjob.data.geometry says where each pixel went):
    squash is torchvision's Resize((S, S)); crop is Resize(resize_to) then CenterCrop(S).
    Bilinear with antialiasing."""
    if image.mode != "RGB":
        image = image.convert("RGB")
    width, height = image.size
    geometry = input_geometry(height, width, size, resize, resize_to)
    resized = F.resize(
        image, list(geometry.resized), interpolation=InterpolationMode.BILINEAR, antialias=True
    )
    if geometry.resized == (size, size):
        return resized
    top, left = geometry.offset
    return F.crop(resized, top, left, size, size)


def to_input(
    image: Image.Image,
    size: int,
    mean: Sequence[float],
    std: Sequence[float],
    resize: str = "squash",
    resize_to: int = 0,
) -> torch.Tensor:
    """(3, size, size) float32: the model's view of the image (`model_view`), scaled to
    [0, 1], then normalised per channel, like torchvision's
    Compose([Resize((size, size)), ToTensor(), Normalize(mean, std)]) for squash."""
    view = model_view(image, size, resize, resize_to)
    return F.normalize(F.to_tensor(view), mean=list(mean), std=list(std))
