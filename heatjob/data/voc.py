"""PASCAL VOC layout: ImageSets/Main/<split>.txt, Annotations/<id>.xml, JPEGImages/<id>.jpg."""

from __future__ import annotations

import math
import xml.etree.ElementTree as ET
from collections.abc import Mapping
from pathlib import Path

import numpy as np
from PIL import Image

from heatjob.data.base import (
    VOC_CLASSES,
    SampleRecord,
    apply_limit,
    check_index,
    make_record,
    one_line,
    read_image,
    read_image_size,
)
from heatjob.data.registry import register_dataset
from heatjob.errors import DataError

_MAX_SIDE = 2**31 - 1  # samples/size is int32
_CLASS_INDEX = {name: index for index, name in enumerate(VOC_CLASSES)}


def read_split_file(path: Path) -> list[str]:
    """Sample ids from a split list: one per line, first token (per-class lists add a column)."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise DataError(f"split file not found: {path}") from None
    except (OSError, UnicodeDecodeError) as error:
        raise DataError(f"cannot read split file {path}: {one_line(error)}") from None
    return [line.split()[0] for line in text.splitlines() if line.strip()]


def _number(element: ET.Element, tag: str, xml_path: Path) -> float:
    text = element.findtext(tag)
    if text is None or not text.strip():
        raise DataError(f"{xml_path}: <{tag}> missing in <{element.tag}>")
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not math.isfinite(value):
        raise DataError(f"{xml_path}: <{tag}> is not a number: {text.strip()[:40]!r}")
    return value


def _box(
    bndbox: ET.Element, name: str, width: int, height: int, xml_path: Path
) -> tuple[float, float, float, float]:
    """A VOC box (1-based, inclusive) as x0, y0, x1, y1 (0-based, half-open), clipped to the
    image. A box that sticks out of the image is clipped; one that is inverted or lies wholly
    outside the image is an error, since it cannot say where the object is."""
    xmin, ymin, xmax, ymax = (
        _number(bndbox, tag, xml_path) for tag in ("xmin", "ymin", "xmax", "ymax")
    )
    if xmax < xmin or ymax < ymin:
        raise DataError(
            f"{xml_path}: box of {name!r} is inverted: "
            f"xmin {xmin:g} ymin {ymin:g} xmax {xmax:g} ymax {ymax:g}"
        )
    x0, y0 = max(xmin - 1.0, 0.0), max(ymin - 1.0, 0.0)
    x1, y1 = min(xmax, float(width)), min(ymax, float(height))
    if x1 <= x0 or y1 <= y0:
        raise DataError(
            f"{xml_path}: box of {name!r} lies outside the {width}x{height} image: "
            f"xmin {xmin:g} ymin {ymin:g} xmax {xmax:g} ymax {ymax:g}"
        )
    return x0, y0, x1, y1


def parse_annotation(
    xml_path: Path,
    sample_id: str,
    image_path: Path | None = None,
    class_index: Mapping[str, int] = _CLASS_INDEX,
    vocabulary: str = "a PASCAL VOC class",
) -> SampleRecord:
    """One VOC-format annotation file as a record; the size comes from the image when <size>
    lacks it. `class_index` maps <name> to a class (ImageNet's XMLs name WordNet synsets)."""
    try:
        root = ET.parse(xml_path).getroot()
    except FileNotFoundError:
        raise DataError(f"annotation not found: {xml_path}") from None
    except (ET.ParseError, OSError, ValueError, LookupError) as error:
        # ValueError / LookupError: an encoding that the XML declares but Python cannot decode
        raise DataError(f"cannot parse annotation {xml_path}: {one_line(error)}") from None

    height = width = 0
    size = root.find("size")
    if size is not None and size.findtext("width") and size.findtext("height"):
        width = int(_number(size, "width", xml_path))
        height = int(_number(size, "height", xml_path))
        if max(width, height) > _MAX_SIDE:
            raise DataError(f"{xml_path}: <size> {width}x{height} is not a plausible image size")
    if height <= 0 or width <= 0:
        if image_path is None:
            raise DataError(f"{xml_path}: <size> missing and no image to read it from")
        height, width = read_image_size(image_path)

    boxes, classes, difficult = [], [], []
    for obj in root.findall("object"):
        name = (obj.findtext("name") or "").strip()
        if name not in class_index:
            raise DataError(f"{xml_path}: unknown class name {name[:40]!r} (not {vocabulary})")
        bndbox = obj.find("bndbox")
        if bndbox is None:
            raise DataError(f"{xml_path}: object {name!r} has no <bndbox>")
        boxes.append(_box(bndbox, name, width, height, xml_path))
        classes.append(class_index[name])
        flag = (obj.findtext("difficult") or "0").strip()
        if flag not in ("0", "1", "0.0", "1.0"):
            raise DataError(f"{xml_path}: <difficult> is not 0 or 1: {flag[:40]!r}")
        difficult.append(flag.startswith("1"))

    return make_record(
        sample_id,
        height,
        width,
        np.array(boxes, dtype=np.float32).reshape(-1, 4),
        classes,
        difficult,
    )


@register_dataset("voc")
class VOCDataset:
    """A split of a PASCAL VOC folder; class k is VOC_CLASSES[k]."""

    has_boxes = True

    @classmethod
    def open(cls, *, root: str, split: str, limit: int, **_: object) -> VOCDataset:
        return cls(root, split, limit)

    def __init__(self, root: str | Path, split: str, limit: int = 0) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise DataError(f"VOC root folder not found: {self.root}")
        self.split = split
        self.classes = list(VOC_CLASSES)
        split_path = self.root / "ImageSets" / "Main" / f"{split}.txt"
        self._ids = apply_limit(read_split_file(split_path), limit)

    def __len__(self) -> int:
        return len(self._ids)

    def ids(self) -> list[str]:
        return list(self._ids)

    def annotation_path(self, index: int) -> Path:
        return self.root / "Annotations" / f"{self._ids[check_index(index, len(self))]}.xml"

    def image_path(self, index: int) -> Path:
        return self.root / "JPEGImages" / f"{self._ids[check_index(index, len(self))]}.jpg"

    def record(self, index: int) -> SampleRecord:
        index = check_index(index, len(self))
        return parse_annotation(
            self.annotation_path(index), self._ids[index], self.image_path(index)
        )

    def load_image(self, index: int) -> Image.Image:
        return read_image(self.image_path(index))
