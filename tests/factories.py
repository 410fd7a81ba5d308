"""Builders shared by the tests: small data sets on disk (a PASCAL VOC layout with real
JPEGs and XML annotations), synthetic job specs, and finished stores of known heatmaps
made through heatjob's public prepare and create_store."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from heatjob.data.base import VOC_CLASSES
from heatjob.job.prepare import prepare
from heatjob.spec import parse_spec
from heatjob.store.layout import create_store


@dataclass(frozen=True)
class PlannedObject:
    name: str
    xmin: int  # VOC: 1-based, inclusive
    ymin: int
    xmax: int
    ymax: int
    difficult: bool = False


@dataclass(frozen=True)
class PlannedSample:
    id: str
    width: int
    height: int
    objects: tuple[PlannedObject, ...]
    float_coordinates: bool = False  # written as "12.0"
    difficult_tag: bool = True  # False: no <difficult> element (means 0)
    parts: tuple[PlannedObject, ...] = field(default=())  # <part> boxes of the first object


def _random_object(
    rng: np.random.Generator, name: str, width: int, height: int, difficult: bool = False
) -> PlannedObject:
    xmin = int(rng.integers(1, width // 2))
    ymin = int(rng.integers(1, height // 2))
    xmax = int(rng.integers(xmin + 5, width + 1))
    ymax = int(rng.integers(ymin + 5, height + 1))
    return PlannedObject(name, xmin, ymin, xmax, ymax, difficult)


def plan_voc_samples(
    n: int = 6, seed: int = 0, size_range: tuple[int, int] = (60, 120)
) -> list[PlannedSample]:
    """What make_voc_folder writes, sample by sample, in generation order.

    Sample 0 is non-square (width = size_range[1], height = size_range[0]) and holds two "dog"
    boxes (one at xmin = ymin = 1) and a difficult "person" with a <part>; sample 1 writes float
    coordinates and no <difficult> element; the rest are random with 1-3 objects.
    """
    rng = np.random.default_rng(seed)
    low, high = size_range
    numbers = rng.permutation(np.arange(1, 10 * n + 1))[:n]
    samples = []
    for index in range(n):
        sample_id = f"2008_{int(numbers[index]):06d}"
        if index == 0:
            width, height = high, low
            dog = PlannedObject("dog", 1, 1, width // 3, height // 2)
            objects = (
                dog,
                PlannedObject("dog", width // 2, height // 3, width - 2, height),
                PlannedObject("person", 5, height // 2, width // 2, height - 1, difficult=True),
            )
            head = PlannedObject("head", 6, height // 2 + 1, 15, height // 2 + 10)
            samples.append(
                PlannedSample(sample_id, width, height, (objects[2],) + objects[:2], parts=(head,))
            )
            continue
        width, height = (int(v) for v in rng.integers(low, high + 1, 2))
        count = 1 if index == 1 else int(rng.integers(1, 4))
        objects = tuple(
            _random_object(
                rng,
                str(rng.choice(VOC_CLASSES)),
                width,
                height,
                difficult=index > 1 and bool(rng.random() < 0.25),
            )
            for _ in range(count)
        )
        samples.append(
            PlannedSample(
                sample_id,
                width,
                height,
                objects,
                float_coordinates=index == 1,
                difficult_tag=index != 1,
            )
        )
    return samples


def _box_xml(obj: PlannedObject, as_float: bool) -> str:
    def number(value: int) -> str:
        return f"{value:.1f}" if as_float else str(value)

    return (
        "<bndbox>"
        f"<xmin>{number(obj.xmin)}</xmin><ymin>{number(obj.ymin)}</ymin>"
        f"<xmax>{number(obj.xmax)}</xmax><ymax>{number(obj.ymax)}</ymax>"
        "</bndbox>"
    )


def annotation_xml(sample: PlannedSample) -> str:
    """The VOC XML text of one planned sample."""
    objects = []
    for position, obj in enumerate(sample.objects):
        difficult = f"<difficult>{int(obj.difficult)}</difficult>" if sample.difficult_tag else ""
        parts = "".join(
            f"<part><name>{part.name}</name>{_box_xml(part, False)}</part>"
            for part in (sample.parts if position == 0 else ())
        )
        objects.append(
            f"<object><name>{obj.name}</name><pose>Unspecified</pose><truncated>0</truncated>"
            f"{difficult}{_box_xml(obj, sample.float_coordinates)}{parts}</object>"
        )
    return (
        "<annotation>\n"
        f"  <folder>VOC2012</folder><filename>{sample.id}.jpg</filename>\n"
        f"  <size><width>{sample.width}</width><height>{sample.height}</height>"
        "<depth>3</depth></size>\n"
        "  <segmented>0</segmented>\n"
        + "".join(f"  {text}\n" for text in objects)
        + "</annotation>\n"
    )


def make_voc_folder(
    root: Path, n: int = 6, seed: int = 0, size_range: tuple[int, int] = (60, 120)
) -> Path:
    """Write a small VOC folder at `root` and return it.

    Layout: Annotations/<id>.xml, JPEGImages/<id>.jpg (objects drawn as filled rectangles),
    ImageSets/Main/train.txt (the first half of plan_voc_samples, in order) and val.txt (the
    rest). The ids are not in sorted order.
    """
    root = Path(root)
    for folder in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng([seed, 1])
    samples = plan_voc_samples(n, seed, size_range)
    for sample in samples:
        (root / "Annotations" / f"{sample.id}.xml").write_text(annotation_xml(sample))
        background = tuple(int(v) for v in rng.integers(0, 256, 3))
        image = Image.new("RGB", (sample.width, sample.height), background)
        draw = ImageDraw.Draw(image)
        for obj in sample.objects:
            colour = tuple(int(v) for v in rng.integers(0, 256, 3))
            draw.rectangle((obj.xmin - 1, obj.ymin - 1, obj.xmax - 1, obj.ymax - 1), fill=colour)
        image.save(root / "JPEGImages" / f"{sample.id}.jpg", quality=90)
    half = (n + 1) // 2
    splits = {"train": samples[:half], "val": samples[half:]}
    for split, members in splits.items():
        text = "".join(f"{sample.id}\n" for sample in members)
        (root / "ImageSets" / "Main" / f"{split}.txt").write_text(text)
    return root


# ---------------------------------------------------------------- COCO and ImageNet layouts

# (id, name) in the order the file lists them: not ascending, with gaps, as COCO's own are
COCO_CATEGORIES = ((18, "dog"), (1, "person"), (62, "chair"), (3, "car"), (44, "bottle"))
# image index -> what is wrong with its one annotation (a fragment of the failure reason)
COCO_MALFORMED = {
    "bbox is not": {"bbox": [4.0, 5.0, 10.0]},
    "has no area": {"bbox": [4.0, 5.0, 0.0, 9.0]},
    "is not a category": {"category_id": 999},
    "iscrowd is not 0 or 1": {"iscrowd": 2},
    "lies outside": {"bbox": [500.0, 500.0, 10.0, 10.0]},
}


@dataclass(frozen=True)
class CocoLayout:
    root: Path  # the image folder
    annotations: Path  # the instances JSON
    image_ids: list[int]  # every image of the file, in file order
    unannotated: list[int]  # images without any annotation
    malformed: dict[int, str]  # image id -> a fragment of its failure reason


def _coco_image(rng: np.random.Generator, path: Path, width: int, height: int, boxes) -> None:
    image = Image.new("RGB", (width, height), tuple(int(v) for v in rng.integers(0, 256, 3)))
    draw = ImageDraw.Draw(image)
    for x, y, w, h in boxes:
        colour = tuple(int(v) for v in rng.integers(0, 256, 3))
        draw.rectangle((x, y, x + w - 1, y + h - 1), fill=colour)
    image.save(path, quality=90)


def make_coco_folder(
    root: Path,
    n: int = 6,
    seed: int = 0,
    size_range: tuple[int, int] = (48, 96),
    categories: tuple[tuple[int, str], ...] = COCO_CATEGORIES,
) -> CocoLayout:
    """A COCO-layout folder: root/images/<file_name>.jpg and root/instances.json.

    `n` good images with 1-3 float boxes each (image 0 holds a crowd annotation, image 1 a
    box sticking out past the right edge), then one image without annotations, then one
    image per COCO_MALFORMED entry; image ids are random and not ascending.
    """
    root = Path(root)
    images_dir = root / "images"
    images_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng([seed, 2])
    total = n + 1 + len(COCO_MALFORMED)
    ids = [int(v) for v in rng.permutation(np.arange(1, 1000 * total))[:total]]
    images, annotations, malformed = [], [], {}
    category_ids = [c for c, _ in categories]
    reasons = list(COCO_MALFORMED)
    for index, image_id in enumerate(ids):
        width, height = (int(v) for v in rng.integers(size_range[0], size_range[1] + 1, 2))
        file_name = f"COCO_val2014_{image_id:012d}.jpg"
        images.append(
            {
                "id": image_id,
                "file_name": file_name,
                "width": width,
                "height": height,
                "license": 1,
                "coco_url": "",
                "date_captured": "",
            }
        )
        count = int(rng.integers(1, 4)) if index < n else (0 if index == n else 1)
        drawn = []
        for k in range(count):
            w = round(float(rng.uniform(6, width / 2)), 2)
            h = round(float(rng.uniform(6, height / 2)), 2)
            x = round(float(rng.uniform(0, width - w)), 2)
            y = round(float(rng.uniform(0, height - h)), 2)
            if index == 1 and k == 0:
                w = round(width - x + 7.5, 2)  # past the right edge: clipped on reading
            entry = {
                "id": len(annotations) + 1,
                "image_id": image_id,
                "category_id": int(rng.choice(category_ids)),
                "bbox": [x, y, w, h],
                "area": w * h,
                "iscrowd": int(index == 0 and k == 0),
                "segmentation": [[x, y, x + w, y, x + w, y + h, x, y + h]],
            }
            if index > n:
                reason = reasons[index - n - 1]
                entry.update(COCO_MALFORMED[reason])
                malformed[image_id] = reason
            annotations.append(entry)
            drawn.append((int(x), int(y), max(1, int(w)), max(1, int(h))))
        _coco_image(rng, images_dir / file_name, width, height, drawn)
    data = {
        "info": {"description": "generated"},
        "licenses": [{"id": 1, "name": "none"}],
        "images": images,
        "annotations": annotations,
        "categories": [{"id": c, "name": name, "supercategory": "thing"} for c, name in categories],
    }
    path = root / "instances.json"
    path.write_text(json.dumps(data))
    return CocoLayout(images_dir, path, ids, [ids[n]], malformed)


@dataclass(frozen=True)
class ImageNetLayout:
    root: Path  # the images
    annotations: Path  # the box XMLs
    synsets: Path  # the synset list
    image_ids: list[str]  # sorted
    wnids: list[str]  # the synset list's order
    missing_xml: str  # an image without a box XML
    unknown_synset: str  # an image whose XML names a synset the list lacks


def make_imagenet_folder(
    root: Path, n: int = 6, n_classes: int = 12, seed: int = 0, size_range=(48, 120)
) -> ImageNetLayout:
    """An ILSVRC-2012-validation layout: root/val/ILSVRC2012_val_<8 digits>.JPEG,
    root/boxes/<same stem>.xml (VOC format, <name> a synset, 1-2 boxes of the image's
    class), root/LOC_synset_mapping.txt (n_classes lines, names 0 and 1 shared). The last
    two images lack their XML and name an unknown synset."""
    root = Path(root)
    val, boxes = root / "val", root / "boxes"
    val.mkdir(parents=True, exist_ok=True)
    boxes.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng([seed, 3])
    wnids = [f"n{v:08d}" for v in sorted(rng.choice(10**7, n_classes, replace=False))]
    lines = [
        f"{w} {'crane' if i < 2 else f'thing{i}'}, other name {i}" for i, w in enumerate(wnids)
    ]
    synsets = root / "LOC_synset_mapping.txt"
    synsets.write_text("\n".join(lines) + "\n")
    ids = [f"ILSVRC2012_val_{i:08d}" for i in sorted(rng.choice(50000, n, replace=False) + 1)]
    for index, image_id in enumerate(ids):
        width, height = (int(v) for v in rng.integers(size_range[0], size_range[1] + 1, 2))
        wnid = wnids[int(rng.integers(n_classes))] if index < n - 1 else "n99999999"
        objects = [_random_object(rng, wnid, width, height) for _ in range(int(rng.integers(1, 3)))]
        sample = PlannedSample(image_id, width, height, tuple(objects))
        if index != n - 2:
            (boxes / f"{image_id}.xml").write_text(annotation_xml(sample))
        image = Image.new("RGB", (width, height), tuple(int(v) for v in rng.integers(0, 256, 3)))
        draw = ImageDraw.Draw(image)
        for obj in objects:
            colour = tuple(int(v) for v in rng.integers(0, 256, 3))
            draw.rectangle((obj.xmin - 1, obj.ymin - 1, obj.xmax - 1, obj.ymax - 1), fill=colour)
        image.save(val / f"{image_id}.JPEG", format="JPEG", quality=90)
    return ImageNetLayout(val, boxes, synsets, ids, wnids, ids[n - 2], ids[n - 1])


def compact_state_dict(arch: str, num_classes: int) -> dict:
    """A state_dict that fits torchvision's `arch` (random weights) and takes under a MiB on
    disk: each weight is one random row broadcast over its leading dimensions (an expanded
    tensor saves only its row), scaled by 1/sqrt(fan-in); batch norm is the identity."""
    import torch
    import torchvision

    with torch.device("meta"):  # shapes only, no memory
        model = torchvision.models.get_model(arch, weights=None, num_classes=num_classes)
    generator = torch.Generator().manual_seed(0)
    state = {}
    for key, value in model.state_dict().items():
        if not value.dtype.is_floating_point:
            state[key] = torch.zeros(value.shape, dtype=value.dtype)
        elif key.endswith("running_var") or (value.dim() == 1 and key.endswith("weight")):
            state[key] = torch.ones(1).expand(value.shape)
        elif value.dim() == 1:  # biases, running means
            state[key] = torch.zeros(1).expand(value.shape)
        else:
            fan_in = value[0].numel()
            row = (torch.rand(value.shape[-1], generator=generator) * 2 - 1) * (3 / fan_in) ** 0.5
            state[key] = row.expand(value.shape)
    return state


def fake_torchvision_cache(torch_home: Path, arch: str, weights: str) -> Path:
    """Put a compact state_dict where torchvision looks for `weights` of `arch` (under
    $TORCH_HOME/hub/checkpoints, named after the weights' URL), so that loading them by
    name needs no download."""
    import torch
    import torchvision

    enum = torchvision.models.get_model_weights(arch)[weights]
    path = Path(torch_home) / "hub" / "checkpoints" / Path(enum.url).name
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(compact_state_dict(arch, len(enum.meta["categories"])), path)
    return path


SIZE = 32
COMPOSITES = ("EpsilonPlusFlat", "cmp-a2b1-flat")


def synthetic_spec(path, n_samples=24, size=SIZE, shard=8, composites=COMPOSITES):
    """A synthetic-shapes job of the untrained small CNN, float16 store at `path`."""
    return parse_spec(
        {
            "dataset": {"kind": "synthetic", "num_samples": n_samples, "image_size": size},
            "model": {"arch": "small_cnn", "num_classes": 0},
            "attribution": {"composites": list(composites), "targets": "labels"},
            "store": {"path": str(path), "dtype": "float16"},
            "run": {"shard_size": shard},
        }
    )


def blob_heatmaps(root, composite_index: int, seed: int = 0) -> np.ndarray:
    """One map per row: a peak on the centre of one of the target's boxes, plus noise.

    Composite 0 puts its peak on the target's first box; composite 1 on the first
    box of another class when the sample has one (a non-discriminative heatmap).
    """
    rng = np.random.default_rng([seed, composite_index])
    rows_sample, rows_target = root["rows/sample"][:], root["rows/target"][:]
    bs, bc, xyxy = root["boxes/sample"][:], root["boxes/class"][:], root["boxes/xyxy"][:]
    s = root["heatmaps"][COMPOSITES[0]].shape[-1]
    yy, xx = np.mgrid[0:s, 0:s] + 0.5
    out = np.empty((len(rows_sample), s, s), np.float32)
    for r, (smp, t) in enumerate(zip(rows_sample, rows_target, strict=True)):
        own = np.flatnonzero((bs == smp) & (bc == t))
        other = np.flatnonzero((bs == smp) & (bc != t))
        box = xyxy[own[0]] if composite_index == 0 or len(other) == 0 else xyxy[other[0]]
        cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
        blob = np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / 8.0)
        out[r] = blob + 0.05 * rng.standard_normal((s, s))
    return out


def make_store(path, n_samples=24, shard=8, seed=0, heatmaps=None):
    """A finished store; `heatmaps` maps composite -> (M, S, S) to override the blobs."""
    job = prepare(synthetic_spec(path, n_samples, shard=shard), progress=False)
    root = create_store(job)
    for i, c in enumerate(COMPOSITES):
        maps = heatmaps[c] if heatmaps and c in heatmaps else blob_heatmaps(root, i, seed)
        root[f"heatmaps/{c}"][:] = maps
    n, k = job.labels.shape
    root["samples/logits"][:] = np.random.default_rng(seed).standard_normal((n, k))
    root["units/done"][:] = True
    return root


def run_job_locally(spec, threads: int = 1):
    """A whole job without Ray: prepare, create the store, every unit through the worker
    the runner wraps (UnitWorker), and the driver's finish_unit. Returns the open store."""
    from heatjob.job.plan import owned_samples
    from heatjob.job.worker import UnitWorker
    from heatjob.store.units import finish_unit

    job = prepare(spec, progress=False)
    root = create_store(job)
    worker = UnitWorker(job.spec.to_dict(), job.spec.store.path, job.num_classes, threads)
    rows_sample, rows_target = job.plan.rows_sample, job.plan.rows_target
    for unit in job.plan.units:
        rows = slice(unit.row_start, unit.row_stop)
        owned = owned_samples(unit, rows_sample, len(job.sample_ids))
        result = worker.run_unit(unit, rows_sample[rows], rows_target[rows], owned)
        finish_unit(
            root,
            unit,
            result.owned,
            result.logits,
            result.row_targets,
            checksum=result.checksum,
            failures=result.failures,
        )
    return root
