"""An image-classification folder: root/<class>/<image>; one label per image, no boxes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from heatjob.data.base import (
    SampleRecord,
    apply_limit,
    check_index,
    make_record,
    read_image,
    read_image_size,
)
from heatjob.data.registry import register_dataset
from heatjob.errors import DataError

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp"})


@register_dataset("imagefolder")
class ImageFolderDataset:
    """Classes are the sorted subfolder names; samples are ordered by (class, file name)."""

    has_boxes = False

    @classmethod
    def open(cls, *, root: str, limit: int, **_: object) -> ImageFolderDataset:
        return cls(root, limit)

    def __init__(self, root: str | Path, limit: int = 0) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise DataError(f"image folder root not found: {self.root}")
        class_dirs = sorted(
            (path for path in self.root.iterdir() if path.is_dir()),
            key=lambda path: path.name,
        )
        class_dirs = [path for path in class_dirs if not path.name.startswith(".")]
        if not class_dirs:
            raise DataError(f"image folder root has no class subfolders: {self.root}")
        self.classes = [path.name for path in class_dirs]
        samples = [
            (path, label)
            for label, class_dir in enumerate(class_dirs)
            for path in sorted(class_dir.iterdir(), key=lambda path: path.name)
            if path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES
        ]
        if not samples:
            raise DataError(f"image folder has no images in its class subfolders: {self.root}")
        self._samples = apply_limit(samples, limit)

    def __len__(self) -> int:
        return len(self._samples)

    def ids(self) -> list[str]:
        return [f"{self.classes[label]}/{path.stem}" for path, label in self._samples]

    def image_path(self, index: int) -> Path:
        return self._samples[check_index(index, len(self))][0]

    def record(self, index: int) -> SampleRecord:
        path, label = self._samples[check_index(index, len(self))]
        height, width = read_image_size(path)
        return make_record(
            f"{self.classes[label]}/{path.stem}",
            height,
            width,
            np.zeros((0, 4), dtype=np.float32),
            np.zeros(0, dtype=np.int32),
            labels=(label,),
        )

    def load_image(self, index: int) -> Image.Image:
        return read_image(self.image_path(index))
