"""What every data set reader gives: sample records (ids, sizes, labels, boxes) and RGB images."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np
from PIL import Image
from tqdm import tqdm

from heatjob.errors import DataError

VOC_CLASSES: tuple[str, ...] = (
    "aeroplane",
    "bicycle",
    "bird",
    "boat",
    "bottle",
    "bus",
    "car",
    "cat",
    "chair",
    "cow",
    "diningtable",
    "dog",
    "horse",
    "motorbike",
    "person",
    "pottedplant",
    "sheep",
    "sofa",
    "train",
    "tvmonitor",
)


def _frozen_array(values, dtype, shape: tuple[int, ...]) -> np.ndarray:
    array = np.array(values, dtype=dtype).reshape(shape)
    array.setflags(write=False)
    return array


@dataclass(frozen=True)
class SampleRecord:
    """The annotations of one sample.

    Boxes are in original image pixels, x0, y0, x1, y1, half-open and 0-based. The arrays are
    converted to their dtypes and made read-only, so a record can be shared and cached.
    """

    id: str
    height: int
    width: int
    labels: tuple[int, ...]
    boxes: np.ndarray
    box_classes: np.ndarray
    box_difficult: np.ndarray

    def __post_init__(self) -> None:
        boxes = _frozen_array(self.boxes, np.float32, (-1, 4))
        count = len(boxes)
        object.__setattr__(self, "boxes", boxes)
        object.__setattr__(self, "box_classes", _frozen_array(self.box_classes, np.int32, (count,)))
        object.__setattr__(
            self, "box_difficult", _frozen_array(self.box_difficult, np.bool_, (count,))
        )
        object.__setattr__(self, "labels", tuple(int(label) for label in self.labels))
        object.__setattr__(self, "height", int(self.height))
        object.__setattr__(self, "width", int(self.width))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, SampleRecord):
            return NotImplemented
        return (
            (self.id, self.height, self.width, self.labels)
            == (other.id, other.height, other.width, other.labels)
            and np.array_equal(self.boxes, other.boxes)
            and np.array_equal(self.box_classes, other.box_classes)
            and np.array_equal(self.box_difficult, other.box_difficult)
        )

    def __hash__(self) -> int:
        return hash((self.id, self.height, self.width, self.labels))


def make_record(
    sample_id: str,
    height: int,
    width: int,
    boxes,
    box_classes,
    box_difficult=None,
    labels=None,
) -> SampleRecord:
    """A record whose labels default to the distinct box classes, ascending."""
    box_classes = np.asarray(box_classes, dtype=np.int32).reshape(-1)
    if box_difficult is None:
        box_difficult = np.zeros(len(box_classes), dtype=bool)
    if labels is None:
        labels = sorted({int(c) for c in box_classes})
    return SampleRecord(
        id=sample_id,
        height=height,
        width=width,
        labels=tuple(labels),
        boxes=np.asarray(boxes, dtype=np.float32).reshape(-1, 4),
        box_classes=box_classes,
        box_difficult=box_difficult,
    )


@runtime_checkable
class Dataset(Protocol):
    """A data set as the job sees it: an ordered list of samples."""

    classes: list[str]
    has_boxes: bool

    def __len__(self) -> int: ...

    def ids(self) -> list[str]:
        """The sample ids in order, without parsing annotations."""
        ...

    def record(self, index: int) -> SampleRecord:
        """The annotations of sample `index`."""
        ...

    def load_image(self, index: int) -> Image.Image:
        """Sample `index` as an RGB image of its original size."""
        ...


def read_records(
    dataset: Dataset, progress: bool = False, failures: dict[int, str] | None = None
) -> list[SampleRecord]:
    """The annotations of every sample, in order (with a progress bar on stderr if asked).

    With `failures`, a sample whose annotation cannot be read does not stop the read: its
    reason goes into `failures[index]` and its record is empty (size 0 x 0, no labels).
    """
    indices = tqdm(
        range(len(dataset)),
        desc="annotations",
        unit="img",
        disable=not progress,
        leave=False,
        file=sys.stderr,
    )
    if failures is None:
        return [dataset.record(index) for index in indices]
    return [_record_or_empty(dataset, index, failures) for index in indices]


def read_record_range(
    dataset: Dataset, start: int, stop: int, failures: dict[int, str]
) -> list[SampleRecord]:
    """The annotations of samples start .. stop, a failure as in `read_records`."""
    return [_record_or_empty(dataset, index, failures) for index in range(start, stop)]


def _record_or_empty(dataset: Dataset, index: int, failures: dict[int, str]) -> SampleRecord:
    try:
        return dataset.record(index)
    except DataError as exc:
        failures[index] = str(exc)
        # ids() only now: listing every id per sample read would be quadratic
        return make_record(dataset.ids()[index], 0, 0, np.zeros((0, 4)), np.zeros(0))


def check_index(index: int, length: int) -> int:
    """`index` as a non-negative position, or IndexError (a programming error, not a user's)."""
    if not -length <= index < length:
        raise IndexError(f"sample index {index} out of range for {length} samples")
    return index % length


def apply_limit(items: list, limit: int) -> list:
    """The first `limit` items; all of them when `limit` is 0."""
    return items[:limit] if limit > 0 else items


def read_image(path) -> Image.Image:
    """An image file as RGB, or DataError naming the file."""
    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except FileNotFoundError:
        raise DataError(f"image not found: {path}") from None
    except OSError as error:
        raise DataError(f"cannot read image {path}: {one_line(error)}") from None


def read_image_size(path) -> tuple[int, int]:
    """(height, width) from an image file's header, without decoding the pixels."""
    try:
        with Image.open(path) as image:
            width, height = image.size
    except FileNotFoundError:
        raise DataError(f"image not found: {path}") from None
    except OSError as error:
        raise DataError(f"cannot read image {path}: {one_line(error)}") from None
    return height, width


def one_line(error: BaseException) -> str:
    return " ".join(str(error).split())


def scale_boxes(boxes: np.ndarray, height: int, width: int, size: int) -> np.ndarray:
    """Boxes in original image pixels -> heatmap pixels of a size x size resize (no crop)."""
    scaled = np.asarray(boxes, dtype=np.float64).reshape(-1, 4) * size
    scaled /= np.array([width, height, width, height], dtype=np.float64)
    return scaled.astype(np.float32)
