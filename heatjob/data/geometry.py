"""Where an original image's pixels land in the model's S x S input: the resize (and crop)
that the images go through, and the same map applied to boxes. Pure numpy.

`squash` resizes to S x S whatever the aspect ratio (heatjob's default). `crop` resizes
the shorter side to `resize_to`, the longer one in proportion, and cuts the centre S x S,
with the sizes and offsets rounded as torchvision's Resize(int) and CenterCrop round them,
so that ImageNet-trained weights see what their own transforms give them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

CROP_RATIO = 256 / 224  # torchvision's ImageNet evaluation: resize to 256, crop 224


@dataclass(frozen=True)
class InputGeometry:
    """The resized image's (height, width) and the crop's top-left corner in it."""

    resized: tuple[int, int]
    offset: tuple[int, int]  # (top, left)
    size: int


def crop_short_side(size: int, resize_to: int = 0) -> int:
    """The shorter side before the crop: `resize_to`, or 0 for size * 256 / 224."""
    return resize_to or round(size * CROP_RATIO)


def input_geometry(
    height: int, width: int, size: int, resize: str = "squash", resize_to: int = 0
) -> InputGeometry:
    """The geometry of an original height x width image in the S x S input."""
    if resize == "squash":
        return InputGeometry((size, size), (0, 0), size)
    if resize != "crop":
        raise ValueError(f"unknown resize mode {resize!r}")
    short = crop_short_side(size, resize_to)
    # torchvision's _compute_resized_output_size: the longer side is truncated, not rounded
    if width <= height:
        new_width, new_height = short, int(short * height / width)
    else:
        new_height, new_width = short, int(short * width / height)
    # torchvision's center_crop: offsets int(round((side - crop) / 2))
    top = int(round((new_height - size) / 2.0))
    left = int(round((new_width - size) / 2.0))
    return InputGeometry((new_height, new_width), (top, left), size)


def transform_boxes(
    boxes: np.ndarray, height: int, width: int, geometry: InputGeometry
) -> tuple[np.ndarray, np.ndarray]:
    """Boxes in original pixels -> input pixels, clipped to the S x S input, and which boxes
    keep an area (a box the crop cuts away entirely is dropped by the caller).

    Returns (B, 4) float32 and (B,) bool.
    """
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    new_height, new_width = geometry.resized
    top, left = geometry.offset
    scaled = boxes * np.array([new_width, new_height, new_width, new_height], dtype=np.float64)
    scaled /= np.array([width, height, width, height], dtype=np.float64)
    if (top, left) == (0, 0) and geometry.resized == (geometry.size, geometry.size):
        return scaled.astype(np.float32), np.ones(len(scaled), dtype=bool)  # squash: no cut
    scaled -= np.array([left, top, left, top], dtype=np.float64)
    clipped = np.clip(scaled, 0.0, float(geometry.size))
    kept = (clipped[:, 2] > clipped[:, 0]) & (clipped[:, 3] > clipped[:, 1])
    return clipped.astype(np.float32), kept
