"""PASCAL VOC layout: ImageSets/Main/<split>.txt, Annotations/<id>.xml, JPEGImages/<id>.jpg."""

from __future__ import annotations

import xml.etree.ElementTree as ET
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
from heatjob.errors import DataError

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
        return float(text)
    except ValueError:
        raise DataError(f"{xml_path}: <{tag}> is not a number: {text.strip()!r}") from None


def parse_annotation(
    xml_path: Path, sample_id: str, image_path: Path | None = None
) -> SampleRecord:
    """One VOC annotation file as a record; the size comes from the image when <size> lacks it."""
    try:
        root = ET.parse(xml_path).getroot()
    except FileNotFoundError:
        raise DataError(f"annotation not found: {xml_path}") from None
    except (ET.ParseError, OSError) as error:
        raise DataError(f"cannot parse annotation {xml_path}: {one_line(error)}") from None

    boxes, classes, difficult = [], [], []
    for obj in root.findall("object"):
        name = (obj.findtext("name") or "").strip()
        if name not in _CLASS_INDEX:
            raise DataError(f"{xml_path}: unknown class name {name!r} (not a PASCAL VOC class)")
        bndbox = obj.find("bndbox")
        if bndbox is None:
            raise DataError(f"{xml_path}: object {name!r} has no <bndbox>")
        xmin, ymin, xmax, ymax = (
            _number(bndbox, tag, xml_path) for tag in ("xmin", "ymin", "xmax", "ymax")
        )
        boxes.append((xmin - 1.0, ymin - 1.0, xmax, ymax))
        classes.append(_CLASS_INDEX[name])
        flag = (obj.findtext("difficult") or "0").strip()
        try:
            difficult.append(bool(int(float(flag))))
        except ValueError:
            raise DataError(f"{xml_path}: <difficult> is not 0 or 1: {flag!r}") from None

    height = width = 0
    size = root.find("size")
    if size is not None and size.findtext("width") and size.findtext("height"):
        width = int(_number(size, "width", xml_path))
        height = int(_number(size, "height", xml_path))
    if height <= 0 or width <= 0:
        if image_path is None:
            raise DataError(f"{xml_path}: <size> missing and no image to read it from")
        height, width = read_image_size(image_path)

    return make_record(
        sample_id,
        height,
        width,
        np.array(boxes, dtype=np.float32).reshape(-1, 4),
        classes,
        difficult,
    )


class VOCDataset:
    """A split of a PASCAL VOC folder; class k is VOC_CLASSES[k]."""

    has_boxes = True

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
