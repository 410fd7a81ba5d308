"""Data set readers: sample ids, sizes, labels and boxes, and RGB images.

Each reader registers its kind (heatjob.data.registry); `to_input` (image -> model
input) lives in heatjob.data.transforms, which imports torch.
"""

# the readers: imported for their registration
from heatjob.data import coco, imagefolder, imagenet, synthetic, voc  # noqa: E402, F401, I001
from heatjob.data.base import VOC_CLASSES, Dataset, SampleRecord, read_records, scale_boxes
from heatjob.data.registry import dataset_kinds, open_dataset, open_job_dataset, register_dataset

__all__ = [
    "VOC_CLASSES",
    "Dataset",
    "SampleRecord",
    "dataset_kinds",
    "open_dataset",
    "open_job_dataset",
    "read_records",
    "register_dataset",
    "scale_boxes",
]
