"""COCO layout: an instances JSON (`annotations`) and the folder of its images (`root`).

The JSON is parsed here (json from the standard library), not through pycocotools: the
reader needs every annotation checked on its own, so that one malformed entry fails its
sample, not the job, and keeps only what heatmaps need (boxes, categories, crowd flags).
pycocotools reads the same files in the tests, as the independent reading.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from heatjob.data.base import (
    SampleRecord,
    apply_limit,
    check_index,
    make_record,
    one_line,
    read_image,
)
from heatjob.data.registry import register_dataset
from heatjob.errors import DataError

# what the reader keeps of an annotation: its id, bbox, category_id, iscrowd (unchecked)
_Annotation = tuple[Any, Any, Any, Any]


def _load_json(path: Path) -> dict:
    try:
        with open(path, "rb") as handle:
            data = json.load(handle)
    except FileNotFoundError:
        raise DataError(f"COCO annotations not found: {path}") from None
    except (OSError, ValueError) as error:  # ValueError: JSON or UTF-8 decoding
        raise DataError(f"cannot parse COCO annotations {path}: {one_line(error)}") from None
    if not isinstance(data, dict):
        raise DataError(f"{path}: a COCO instances file is a JSON object")
    for key in ("images", "annotations", "categories"):
        if not isinstance(data.get(key), list):
            raise DataError(f"{path}: {key!r} missing or not a list")
    return data


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _categories(entries: list, path: Path) -> tuple[list[str], dict[int, int]]:
    """Class names in ascending category id, and category id -> class index."""
    by_id: dict[int, str] = {}
    for position, entry in enumerate(entries):
        if not isinstance(entry, dict) or not _is_int(entry.get("id")):
            raise DataError(f"{path}: categories[{position}] has no integer 'id'")
        if not isinstance(entry.get("name"), str) or not entry["name"]:
            raise DataError(f"{path}: category {entry['id']} has no 'name'")
        if entry["id"] in by_id:
            raise DataError(f"{path}: category id {entry['id']} appears twice")
        by_id[entry["id"]] = entry["name"]
    if not by_id:
        raise DataError(f"{path}: 'categories' is empty")
    ids = sorted(by_id)
    names = [by_id[i] for i in ids]
    if len(set(names)) != len(names):
        raise DataError(f"{path}: two categories share a name")
    return names, {category: index for index, category in enumerate(ids)}


def _images(entries: list, path: Path) -> list[dict]:
    seen: set[int] = set()
    for position, entry in enumerate(entries):
        if not isinstance(entry, dict) or not _is_int(entry.get("id")):
            raise DataError(f"{path}: images[{position}] has no integer 'id'")
        if not isinstance(entry.get("file_name"), str) or not entry["file_name"]:
            raise DataError(f"{path}: image {entry['id']} has no 'file_name'")
        if entry["id"] in seen:
            raise DataError(f"{path}: image id {entry['id']} appears twice")
        seen.add(entry["id"])
    return entries


def _group_annotations(entries: list, image_ids: set[int], path: Path) -> dict:
    """image id -> its annotations, each reduced to what a record needs."""
    grouped: dict[int, list[_Annotation]] = {}
    for position, entry in enumerate(entries):
        image_id = entry.get("image_id") if isinstance(entry, dict) else None
        if not _is_int(image_id) or image_id not in image_ids:
            # it belongs to no sample, so no sample can fail for it
            raise DataError(
                f"{path}: annotations[{position}] has image_id {image_id!r}, not an image of "
                "the file"
            )
        grouped.setdefault(image_id, []).append(
            (
                entry.get("id", position),
                entry.get("bbox"),
                entry.get("category_id"),
                entry.get("iscrowd", 0),
            )
        )
    return grouped


def _box(bbox: Any, width: int, height: int, where: str) -> tuple[float, float, float, float]:
    """A COCO bbox [x, y, w, h] (0-based, continuous pixels) as x0, y0, x1, y1 clipped to the
    image; one of no area or wholly outside the image cannot say where the object is."""
    if (
        not isinstance(bbox, list)
        or len(bbox) != 4
        or not all(isinstance(v, int | float) and not isinstance(v, bool) for v in bbox)
        or not all(math.isfinite(v) for v in bbox)
    ):
        raise DataError(f"{where}: bbox is not [x, y, width, height]: {str(bbox)[:60]}")
    x, y, w, h = (float(v) for v in bbox)
    if w <= 0 or h <= 0:
        raise DataError(f"{where}: bbox has no area: {bbox}")
    x0, y0 = max(x, 0.0), max(y, 0.0)
    x1, y1 = min(x + w, float(width)), min(y + h, float(height))
    if x1 <= x0 or y1 <= y0:
        raise DataError(f"{where}: bbox {bbox} lies outside the {width}x{height} image")
    return x0, y0, x1, y1


@register_dataset("coco")
class COCODataset:
    """The images of an instances file in the file's order; class k is the k-th category in
    ascending id order (val2014's 80: person ... toothbrush). Crowd annotations
    (iscrowd = 1) are kept with the difficult flag, as VOC's difficult boxes."""

    has_boxes = True

    @classmethod
    def open(
        cls, *, root: str, limit: int, annotations: str = "", unannotated: str = "skip", **_: object
    ) -> COCODataset:
        return cls(root, annotations, limit, keep_unannotated=unannotated == "keep")

    def __init__(
        self,
        root: str | Path,
        annotations: str | Path,
        limit: int = 0,
        keep_unannotated: bool = False,
    ) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise DataError(f"COCO image folder not found: {self.root}")
        if not annotations:
            raise DataError("kind coco needs [dataset] annotations (the instances JSON)")
        self.path = Path(annotations)
        data = _load_json(self.path)
        self.classes, self._category_index = _categories(data["categories"], self.path)
        images = _images(data["images"], self.path)
        grouped = _group_annotations(data["annotations"], {i["id"] for i in images}, self.path)
        if not keep_unannotated:
            images = [image for image in images if image["id"] in grouped]
        self._images = [
            (image["id"], image["file_name"], image.get("width"), image.get("height"))
            for image in apply_limit(images, limit)
        ]
        self._annotations = {i: grouped.get(i, []) for i, *_ in self._images}

    def __len__(self) -> int:
        return len(self._images)

    def ids(self) -> list[str]:
        return [str(image_id) for image_id, *_ in self._images]

    def image_path(self, index: int) -> Path:
        return self.root / self._images[check_index(index, len(self))][1]

    def record(self, index: int) -> SampleRecord:
        image_id, _, width, height = self._images[check_index(index, len(self))]
        where = f"{self.path}: image {image_id}"
        if not (_is_int(width) and _is_int(height) and width > 0 and height > 0):
            raise DataError(f"{where}: width and height must be positive integers")
        boxes, classes, crowd = [], [], []
        for annotation_id, bbox, category, iscrowd in self._annotations[image_id]:
            at = f"{where}, annotation {annotation_id}"
            if not _is_int(category) or category not in self._category_index:
                raise DataError(f"{at}: category_id {str(category)[:40]} is not a category")
            if not _is_int(iscrowd) or iscrowd not in (0, 1):
                raise DataError(f"{at}: iscrowd is not 0 or 1: {str(iscrowd)[:40]}")
            boxes.append(_box(bbox, width, height, at))
            classes.append(self._category_index[category])
            crowd.append(iscrowd == 1)
        return make_record(
            str(image_id), height, width, np.array(boxes).reshape(-1, 4), classes, crowd
        )

    def load_image(self, index: int) -> Image.Image:
        return read_image(self.image_path(index))
