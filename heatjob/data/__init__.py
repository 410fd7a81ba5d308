"""Data set readers: sample ids, sizes, labels and boxes, and RGB images.

`to_input` (image -> model input) lives in heatjob.data.preprocess, which imports torch.
"""

from heatjob.data.base import (
    DATASET_KINDS,
    VOC_CLASSES,
    Dataset,
    SampleRecord,
    open_dataset,
    read_records,
    scale_boxes,
)

__all__ = [
    "DATASET_KINDS",
    "VOC_CLASSES",
    "Dataset",
    "SampleRecord",
    "open_dataset",
    "read_records",
    "scale_boxes",
]
