"""The script that made the shipped demo model still runs, and its checkpoint loads."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from heatjob.errors import SpecError
from heatjob.models import build_model

ROOT = Path(__file__).resolve().parents[1]


def test_training_script_runs_and_writes_a_loadable_checkpoint(tmp_path):
    out = tmp_path / "model.pt"
    result = subprocess.run(
        [
            sys.executable,
            str(ROOT / "scripts/train_demo_model.py"),
            "--out",
            str(out),
            "--samples",
            "64",
            "--epochs",
            "1",
            "--image-size",
            "32",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    model = build_model("small_cnn", 6, checkpoint=str(out))
    assert model(torch.zeros(1, 3, 32, 32)).shape == (1, 6)


def test_training_script_trains_the_small_vit(tmp_path):
    out = tmp_path / "vit.pt"
    result = subprocess.run(
        [
            sys.executable,
            str(ROOT / "scripts/train_demo_model.py"),
            *("--arch", "small_vit", "--threads", "1", "--out", str(out)),
            *("--samples", "64", "--epochs", "1"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert "trivial baseline" in result.stdout
    model = build_model("small_vit", 6, checkpoint=str(out))  # 32 pixels, the ViT's default
    assert model(torch.zeros(1, 3, 32, 32)).shape == (1, 6)
    # a checkpoint of the other architecture is refused by name, not loaded into it
    with pytest.raises(SpecError, match="does not fit small_cnn"):
        build_model("small_cnn", 6, checkpoint=str(out))


def test_shipped_demo_model_recognises_the_demo_shapes():
    from heatjob.data import open_dataset
    from heatjob.data.transforms import to_input

    model = build_model("small_cnn", 6, checkpoint=str(ROOT / "models/small_cnn_shapes.pt"))
    dataset = open_dataset("synthetic", "", "", 0, num_samples=64, seed=0, image_size=64)
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    x = torch.stack([to_input(dataset.load_image(i), 64, mean, std) for i in range(64)])
    with torch.no_grad():
        predicted = model(x) > 0
    labels = torch.zeros_like(predicted)
    for i in range(64):
        labels[i, list(dataset.record(i).labels)] = True
    assert (predicted == labels).float().mean() > 0.95
