"""Generated shapes on cluttered backgrounds: a data set that needs no files.

Sample i is drawn from numpy's default_rng([seed, i]) alone, so any process regenerates any
sample identically. Objects have random colours and sizes, so only their shape tells their
class: a model trained on them has to look at the objects, and its heatmaps should too.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
from PIL import Image

from heatjob.data.base import SampleRecord, check_index, make_record
from heatjob.data.registry import register_dataset
from heatjob.errors import DataError

SHAPE_CLASSES: tuple[str, ...] = ("disk", "square", "triangle", "cross", "ring", "bar")
MIN_IMAGE_SIZE = 16
OBJECT_SIZE_RANGE = (0.15, 0.40)  # an object's longer side, as a share of the image side
MAX_OBJECTS = 3
OBJECT_GAP = 3  # pixels of background kept between the squares that hold two objects
MIN_CONTRAST = 80  # least largest-channel difference between an object and its background
PIXEL_NOISE = 6
_PLACEMENT_TRIES = 20
_COLOUR_TRIES = 8


@lru_cache(maxsize=32)
def _interpolation_matrix(size: int, grid: int) -> np.ndarray:
    """(size, grid) weights that linearly interpolate `grid` samples onto `size` pixel centres."""
    position = (np.arange(size) + 0.5) / size * (grid - 1)
    left = np.minimum(np.floor(position).astype(int), grid - 2)
    weight = position - left
    matrix = np.zeros((size, grid))
    matrix[np.arange(size), left] = 1.0 - weight
    matrix[np.arange(size), left + 1] = weight
    matrix.setflags(write=False)
    return matrix


def _smooth_noise(rng: np.random.Generator, size: int, grid: int, amplitude: float) -> np.ndarray:
    """(size, size, 3) colour noise, smooth over size / grid pixels."""
    coarse = rng.uniform(-amplitude, amplitude, (grid, grid, 3))
    matrix = _interpolation_matrix(size, grid)
    rows = np.tensordot(matrix, coarse, axes=(1, 0))  # (size, grid, 3)
    return np.einsum("xj,yjc->yxc", matrix, rows)


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    base = rng.uniform(60.0, 196.0, 3)
    coarse = _smooth_noise(rng, size, 4, 50.0)
    fine = _smooth_noise(rng, size, max(4, size // 6), 15.0)
    return base + coarse + fine


@lru_cache(maxsize=512)
def _shape_mask(shape: str, height: int, width: int) -> np.ndarray:
    """The shape filling a height x width patch, as a boolean mask over pixel centres."""
    v = ((np.arange(height) + 0.5) / height)[:, None]
    u = ((np.arange(width) + 0.5) / width)[None, :]
    radius2 = (u - 0.5) ** 2 + (v - 0.5) ** 2
    if shape == "disk":
        mask = radius2 <= 0.25
    elif shape == "ring":
        mask = (radius2 <= 0.25) & (radius2 >= 0.25 * 0.3)
    elif shape == "triangle":
        mask = np.abs(u - 0.5) <= v / 2
    elif shape == "cross":
        mask = (np.abs(u - 0.5) <= 1 / 6) | (np.abs(v - 0.5) <= 1 / 6)
    else:  # square and bar fill their patch
        mask = np.ones((height, width), dtype=bool)
    mask = np.broadcast_to(mask, (height, width)).copy()
    mask.setflags(write=False)
    return mask


def _patch_size(rng: np.random.Generator, shape: str, image_size: int) -> tuple[int, int]:
    low = max(3, round(OBJECT_SIZE_RANGE[0] * image_size))
    high = max(low, round(OBJECT_SIZE_RANGE[1] * image_size))
    side = int(rng.integers(low, high + 1))
    if shape != "bar":
        return side, side
    thickness = max(2, round(side / 3.5))
    return (thickness, side) if rng.integers(2) == 0 else (side, thickness)


def _overlaps(box: tuple[int, int, int, int], others: list[tuple[int, int, int, int]]) -> bool:
    x0, y0, x1, y1 = box
    return any(
        x0 < ox1 + OBJECT_GAP
        and ox0 < x1 + OBJECT_GAP
        and y0 < oy1 + OBJECT_GAP
        and oy0 < y1 + OBJECT_GAP
        for ox0, oy0, ox1, oy1 in others
    )


def _object_colour(rng: np.random.Generator, background: np.ndarray) -> np.ndarray:
    """A random colour that stands out from every background pixel under the object."""
    for _ in range(_COLOUR_TRIES):
        colour = rng.uniform(0.0, 255.0, 3)
        if np.abs(background - colour).max(axis=-1).min() >= MIN_CONTRAST:
            return colour
    return np.where(background.mean(axis=0) < 127.5, 255.0, 0.0)


def generate_sample(
    seed: int, index: int, image_size: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sample `index` of `seed`: image uint8 (S, S, 3), tight boxes float32 (B, 4) in half-open
    pixels, classes int32 (B,)."""
    rng = np.random.default_rng([seed, index])
    image = _background(rng, image_size)
    smooth = image.copy()
    patches: list[tuple[int, int, int, int]] = []
    boxes, classes = [], []
    for _ in range(int(rng.integers(1, MAX_OBJECTS + 1))):
        label = int(rng.integers(len(SHAPE_CLASSES)))
        shape = SHAPE_CLASSES[label]
        height, width = _patch_size(rng, shape, image_size)
        for _ in range(_PLACEMENT_TRIES):
            x = int(rng.integers(0, image_size - width + 1))
            y = int(rng.integers(0, image_size - height + 1))
            if not _overlaps((x, y, x + width, y + height), patches):
                break
        else:
            continue
        mask = _shape_mask(shape, height, width)
        colour = _object_colour(rng, smooth[y : y + height, x : x + width][mask])
        image[y : y + height, x : x + width][mask] = colour
        patches.append((x, y, x + width, y + height))
        rows = np.flatnonzero(mask.any(axis=1))
        cols = np.flatnonzero(mask.any(axis=0))
        boxes.append((x + cols[0], y + rows[0], x + cols[-1] + 1, y + rows[-1] + 1))
        classes.append(label)
    image += rng.uniform(-PIXEL_NOISE, PIXEL_NOISE, image.shape)
    pixels = np.clip(np.rint(image), 0, 255).astype(np.uint8)
    return (
        pixels,
        np.array(boxes, dtype=np.float32).reshape(-1, 4),
        np.array(classes, dtype=np.int32),
    )


@register_dataset("synthetic")
class SyntheticDataset:
    """`num_samples` generated images of image_size x image_size with 1-3 shapes each."""

    has_boxes = True

    @classmethod
    def open(
        cls, *, limit: int, num_samples: int, seed: int, image_size: int, **_: object
    ) -> SyntheticDataset:
        return cls(num_samples=num_samples, seed=seed, image_size=image_size, limit=limit)

    def __init__(
        self, num_samples: int = 256, seed: int = 0, image_size: int = 64, limit: int = 0
    ) -> None:
        if num_samples <= 0:
            raise DataError(f"synthetic num_samples must be positive, got {num_samples}")
        if image_size < MIN_IMAGE_SIZE:
            raise DataError(
                f"synthetic image_size must be at least {MIN_IMAGE_SIZE}, got {image_size}"
            )
        self.classes = list(SHAPE_CLASSES)
        self.seed = int(seed)
        self.image_size = int(image_size)
        self.num_samples = min(num_samples, limit) if limit > 0 else num_samples
        self._cached: tuple[int, np.ndarray, SampleRecord] | None = None

    def __len__(self) -> int:
        return self.num_samples

    def ids(self) -> list[str]:
        return [f"synthetic-{index:06d}" for index in range(len(self))]

    def _sample(self, index: int) -> tuple[np.ndarray, SampleRecord]:
        index = check_index(index, len(self))
        cached = self._cached
        if cached is not None and cached[0] == index:
            return cached[1], cached[2]
        pixels, boxes, classes = generate_sample(self.seed, index, self.image_size)
        record = make_record(
            f"synthetic-{index:06d}", self.image_size, self.image_size, boxes, classes
        )
        pixels.setflags(write=False)
        self._cached = (index, pixels, record)
        return pixels, record

    def record(self, index: int) -> SampleRecord:
        return self._sample(index)[1]

    def load_image(self, index: int) -> Image.Image:
        return Image.fromarray(self._sample(index)[0])
