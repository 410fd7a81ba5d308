"""ImageNet with boxes (ILSVRC 2012 validation): the images (`root`), one VOC-format box XML
per image (`annotations`, object names are WordNet synsets) and a synset list (`synsets`)
whose line order is the class order: `nXXXXXXXX name, other name, ...` per line, the layout
of LOC_synset_mapping.txt (the sorted synset order torchvision's ImageNet weights use).
"""

from __future__ import annotations

import re
from pathlib import Path

from PIL import Image

from heatjob.data.base import SampleRecord, apply_limit, check_index, one_line, read_image
from heatjob.data.imagefolder import IMAGE_SUFFIXES
from heatjob.data.registry import register_dataset
from heatjob.data.voc import parse_annotation
from heatjob.errors import DataError

_SYNSET_LINE = re.compile(r"^(n\d{8})\s+(\S.*)$")


def read_synsets(path: Path) -> tuple[list[str], list[str]]:
    """(synset ids, class names) in the file's order. A class name is the synset's first
    name; a name that several synsets share (ImageNet has "crane" twice) gets its synset id
    in brackets, so every class name is unique."""
    try:
        lines = path.read_text().splitlines()
    except FileNotFoundError:
        raise DataError(f"synset list not found: {path}") from None
    except (OSError, UnicodeDecodeError) as error:
        raise DataError(f"cannot read synset list {path}: {one_line(error)}") from None
    wnids, names = [], []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        match = _SYNSET_LINE.match(line.strip())
        if match is None:
            raise DataError(
                f"{path}:{number}: expected 'nXXXXXXXX name, ...', got {line.strip()[:40]!r}"
            )
        wnids.append(match.group(1))
        names.append(match.group(2).split(",")[0].strip())
    if not wnids:
        raise DataError(f"synset list is empty: {path}")
    if len(set(wnids)) != len(wnids):
        twice = next(w for w in wnids if wnids.count(w) > 1)
        raise DataError(f"{path}: synset {twice} is listed twice")
    shared = {name for name in names if names.count(name) > 1}
    names = [f"{n} ({w})" if n in shared else n for n, w in zip(names, wnids, strict=True)]
    return wnids, names


@register_dataset("imagenet")
class ImageNetDataset:
    """The images of `root` in file-name order; sample id = file name without extension;
    class k = line k of the synset list. The labels are the classes of the image's boxes
    (one, the labelled class, in ILSVRC's validation set)."""

    has_boxes = True

    @classmethod
    def open(
        cls, *, root: str, limit: int, annotations: str = "", synsets: str = "", **_: object
    ) -> ImageNetDataset:
        return cls(root, annotations, synsets, limit)

    def __init__(
        self, root: str | Path, annotations: str | Path, synsets: str | Path, limit: int = 0
    ) -> None:
        if not annotations or not synsets:
            raise DataError("kind imagenet needs [dataset] annotations and synsets")
        self.root, self.annotations = Path(root), Path(annotations)
        if not self.root.is_dir():
            raise DataError(f"ImageNet image folder not found: {self.root}")
        if not self.annotations.is_dir():
            raise DataError(f"ImageNet box folder not found: {self.annotations}")
        self.synsets = Path(synsets)
        self.wnids, self.classes = read_synsets(self.synsets)
        self._class_index = {wnid: index for index, wnid in enumerate(self.wnids)}
        images = sorted(
            (p for p in self.root.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES),
            key=lambda p: p.name,
        )
        if not images:
            raise DataError(f"ImageNet image folder has no images: {self.root}")
        self._images = apply_limit(images, limit)

    def __len__(self) -> int:
        return len(self._images)

    def ids(self) -> list[str]:
        return [path.stem for path in self._images]

    def image_path(self, index: int) -> Path:
        return self._images[check_index(index, len(self))]

    def record(self, index: int) -> SampleRecord:
        image = self.image_path(index)
        return parse_annotation(
            self.annotations / f"{image.stem}.xml",
            image.stem,
            image,
            class_index=self._class_index,
            vocabulary=f"a synset of {self.synsets}",
        )

    def load_image(self, index: int) -> Image.Image:
        return read_image(self.image_path(index))
