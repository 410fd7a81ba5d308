"""Reading a data set's annotations into the arrays a store starts with, in blocks of
samples: in the driver for a small data set, in Ray tasks (one per block) for a large one,
so that the driver holds arrays and never one Python object per sample.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from tqdm import tqdm

from heatjob.data import open_job_dataset
from heatjob.data.base import Dataset, read_record_range
from heatjob.data.geometry import input_geometry, transform_boxes
from heatjob.job.plan import Labels
from heatjob.spec import JobSpec

BLOCK_SAMPLES = 10_000  # samples per block: a task long enough to be worth starting
ON_CLUSTER_FROM = 50_000  # samples from which the blocks run in Ray tasks

# fn, items, on_result(i, result) -> [fn(item) for item in items]
MapBlocks = Callable[[Callable, Sequence, Callable[[int, object], None]], list]


@dataclass(frozen=True)
class Annotations:
    """The samples' annotations as arrays (boxes in heatmap pixels)."""

    ids: np.ndarray  # (N,) str
    # the classes present as (sample, class) pairs, sorted, without repeats (Labels)
    label_sample: np.ndarray  # (L,) int64
    label_class: np.ndarray  # (L,) int32
    sizes: np.ndarray  # (N, 2) int32: height, width of the original image
    boxes_xyxy: np.ndarray  # (B, 4) float32
    boxes_sample: np.ndarray  # (B,) int64
    boxes_class: np.ndarray  # (B,) int32
    boxes_difficult: np.ndarray  # (B,) bool
    failures: dict[int, str]  # samples whose annotation could not be read
    cropped_away: int  # boxes that [dataset] resize = "crop" cut away entirely

    def __len__(self) -> int:
        return len(self.ids)

    def labels(self, num_classes: int) -> Labels:
        return Labels(len(self), num_classes, self.label_sample, self.label_class)


def read_block(
    dataset: Dataset, spec: JobSpec, num_classes: int, start: int, stop: int
) -> Annotations:
    """Samples start .. stop of `dataset`, as arrays."""
    failures: dict[int, str] = {}
    records = read_record_range(dataset, start, stop, failures)
    ds = spec.dataset
    labels = Labels.of([r.labels for r in records], num_classes)
    boxes, box_sample, box_class, box_difficult = [], [], [], []
    cropped_away = 0
    for i, record in enumerate(records):
        # a box the crop cuts away leaves the sample's boxes; the sample keeps its labels
        geometry = input_geometry(
            record.height, record.width, ds.image_size, ds.resize, ds.resize_to
        )
        xyxy, kept = transform_boxes(record.boxes, record.height, record.width, geometry)
        cropped_away += int((~kept).sum())
        boxes.append(xyxy[kept].reshape(-1, 4))
        box_sample.append(np.full(int(kept.sum()), start + i, dtype=np.int64))
        box_class.append(record.box_classes[kept])
        box_difficult.append(record.box_difficult[kept])
    return Annotations(
        ids=np.array([r.id for r in records], dtype=str),
        label_sample=start + labels.sample,
        label_class=labels.klass,
        sizes=np.array([(r.height, r.width) for r in records], dtype=np.int32).reshape(-1, 2),
        boxes_xyxy=np.concatenate(boxes or [np.zeros((0, 4))]).astype(np.float32),
        boxes_sample=np.concatenate(box_sample or [np.zeros(0)]).astype(np.int64),
        boxes_class=np.concatenate(box_class or [np.zeros(0)]).astype(np.int32),
        boxes_difficult=np.concatenate(box_difficult or [np.zeros(0)]).astype(bool),
        failures=failures,
        cropped_away=cropped_away,
    )


def join(blocks: Sequence[Annotations]) -> Annotations:
    """Consecutive blocks as one."""
    return Annotations(
        ids=np.concatenate([b.ids for b in blocks]),
        label_sample=np.concatenate([b.label_sample for b in blocks]),
        label_class=np.concatenate([b.label_class for b in blocks]),
        sizes=np.concatenate([b.sizes for b in blocks]),
        boxes_xyxy=np.concatenate([b.boxes_xyxy for b in blocks]),
        boxes_sample=np.concatenate([b.boxes_sample for b in blocks]),
        boxes_class=np.concatenate([b.boxes_class for b in blocks]),
        boxes_difficult=np.concatenate([b.boxes_difficult for b in blocks]),
        failures={s: reason for b in blocks for s, reason in b.failures.items()},
        cropped_away=sum(b.cropped_away for b in blocks),
    )


def block_task(item: tuple[JobSpec, int, int, int]) -> Annotations:
    """In a Ray task: the task opens the data set itself."""
    spec, num_classes, start, stop = item
    return read_block(open_job_dataset(spec), spec, num_classes, start, stop)


def read_annotations(
    dataset: Dataset,
    spec: JobSpec,
    num_classes: int,
    progress: bool = False,
    on_cluster: Callable[[], MapBlocks] | None = None,
) -> Annotations:
    """Every sample's annotations, block by block; in Ray tasks (`on_cluster()` gives the
    map that runs them) when the data set has ON_CLUSTER_FROM samples or more."""
    n = len(dataset)
    starts = list(range(0, n, BLOCK_SAMPLES))
    bar = tqdm(
        total=n, desc="annotations", unit="img", disable=not progress, leave=False, file=sys.stderr
    )
    with bar:
        if on_cluster is not None and n >= ON_CLUSTER_FROM:
            items = [(spec, num_classes, a, min(a + BLOCK_SAMPLES, n)) for a in starts]
            blocks = on_cluster()(block_task, items, lambda i, b: bar.update(len(b)))
        else:
            blocks = []
            for a in starts:
                blocks.append(read_block(dataset, spec, num_classes, a, min(a + BLOCK_SAMPLES, n)))
                bar.update(len(blocks[-1]))
    return join(blocks) if blocks else read_block(dataset, spec, num_classes, 0, 0)
