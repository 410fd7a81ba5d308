"""The shipped job specs for data users must bring (VOC 2007, COCO 2014, ImageNet val):
each one, its paths pointed at a generated folder of the same layout, passes
`heatjob submit --dry-run`: every key checked, the data set read, the model built (weights
by name from a prepared torchvision cache: nothing is downloaded) and one batch calibrated.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import torch
from factories import (
    compact_state_dict,
    fake_torchvision_cache,
    make_coco_folder,
    make_imagenet_folder,
    make_voc_folder,
)

from heatjob.spec import to_toml

JOBS = Path(__file__).resolve().parents[1] / "jobs"
HEATJOB = [sys.executable, "-m", "heatjob.cli"]


def _voc2007(tmp: Path) -> dict:
    root = make_voc_folder(tmp / "VOC2007", n=4)
    split = root / "ImageSets" / "Main"
    (split / "test.txt").write_text((split / "val.txt").read_text())
    checkpoint = tmp / "vgg16-voc2007.pt"
    torch.save(compact_state_dict("vgg16", 20), checkpoint)
    return {"dataset": {"root": str(root)}, "model": {"checkpoint": str(checkpoint)}}


def _coco2014(tmp: Path) -> dict:
    categories = tuple((i + 1 + i // 8, f"category{i}") for i in range(80))  # ids with gaps
    coco = make_coco_folder(tmp / "coco", n=3, categories=categories)
    checkpoint = tmp / "resnet50-coco2014.pt"
    torch.save(compact_state_dict("resnet50", 80), checkpoint)
    return {
        "dataset": {"root": str(coco.root), "annotations": str(coco.annotations)},
        "model": {"checkpoint": str(checkpoint)},
    }


def _imagenet(tmp: Path) -> dict:
    layout = make_imagenet_folder(tmp / "ILSVRC", n=4, n_classes=1000, size_range=(230, 400))
    fake_torchvision_cache(tmp / "torch", "resnet50", "IMAGENET1K_V1")
    return {
        "dataset": {
            "root": str(layout.root),
            "annotations": str(layout.annotations),
            "synsets": str(layout.synsets),
        }
    }


@pytest.mark.slow
@pytest.mark.parametrize(
    ("job", "layout"),
    [
        ("voc2007-vgg16", _voc2007),
        ("coco2014-resnet50", _coco2014),
        ("imagenet-val-resnet50", _imagenet),
    ],
)
def test_a_shipped_job_passes_the_dry_run_on_a_folder_of_its_layout(job, layout, tmp_path):
    raw = tomllib.loads((JOBS / f"{job}.toml").read_text())
    for section, values in layout(tmp_path).items():
        for key, value in values.items():
            assert key in raw[section], f"{job}: [{section}] {key} is not a path it sets"
            raw[section][key] = value
    raw["store"]["path"] = str(tmp_path / "out.zarr")
    raw["run"]["batch_size"] = 1  # one calibration row: a 224 x 224 VGG16 is slow on a CPU
    spec = tmp_path / f"{job}.toml"
    spec.write_text(to_toml(raw))
    env = {
        **os.environ,
        "RAY_ADDRESS": "",
        "TORCH_HOME": str(tmp_path / "torch"),  # an empty cache unless the layout filled it
    }
    result = subprocess.run(
        [*HEATJOB, "submit", str(spec), "--dry-run", "--limit", "1"],
        capture_output=True,
        text=True,
        env=env,
        timeout=900,
    )
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "out.zarr").exists()  # a dry run writes nothing
    lines = dict(line.split(maxsplit=1) for line in result.stdout.splitlines())
    n_classes = raw["model"]["num_classes"]
    # labels of the first sample; ImageNet: one target, the labelled class
    assert lines["data"].startswith("1 samples, ")
    assert lines["data"].endswith(f"(targets = labels), {n_classes} classes")
    if job.startswith("imagenet"):
        assert lines["data"].startswith("1 samples, 1 heatmap rows")
    attribution = raw["attribution"]
    n_composites, n_methods = len(attribution["composites"]), len(attribution["methods"])
    sources = f"{n_composites + n_methods} heatmap sources ({n_composites} composites, "
    assert f"{sources}{n_methods} method" in lines["work"]
    assert lines["calibration"].startswith("1 rows (1 images) on cpu")
