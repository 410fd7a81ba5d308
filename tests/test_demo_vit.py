"""The ViT demo: the shipped small ViT checkpoint recognises the synthetic shapes better than
the trivial answer, jobs/demo-vit.toml parses into that model, and the job run for real
(submit, then merge) puts more of cp-lrp's relevance on the target than a random map."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torchvision.models.vision_transformer import VisionTransformer

from heatjob.data import open_dataset
from heatjob.data.transforms import to_input
from heatjob.eval.merge import merge
from heatjob.job.submit import submit
from heatjob.models import build_model
from heatjob.spec import load_spec, with_overrides

ROOT = Path(__file__).resolve().parents[1]
JOB = ROOT / "jobs" / "demo-vit.toml"
CHECKPOINT = ROOT / "models" / "small_vit_shapes.pt"
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def _shapes(n: int, seed: int, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    dataset = open_dataset("synthetic", "", "", 0, num_samples=n, seed=seed, image_size=size)
    x = torch.stack([to_input(dataset.load_image(i), size, MEAN, STD) for i in range(n)])
    labels = torch.zeros(n, len(dataset.classes), dtype=torch.bool)
    for i in range(n):
        labels[i, list(dataset.record(i).labels)] = True
    return x, labels


def test_the_shipped_vit_is_a_small_vit_and_beats_the_trivial_answer():
    model = build_model("small_vit", 6, checkpoint=str(CHECKPOINT))
    assert isinstance(model, VisionTransformer)
    assert CHECKPOINT.stat().st_size < 2 * 2**20
    # seed 3000: neither the training (1000) nor the validation (2000) nor the job's (0) images
    x, labels = _shapes(512, seed=3000, size=32)
    with torch.no_grad():
        predicted = model(x) > 0
    accuracy = (predicted == labels).float().mean().item()
    trivial = (~labels).float().mean().item()  # every shape answered absent
    # 3 points over the trivial answer: well beyond chance on 3072 labels (a weak model, but
    # not one that has learnt only the labels' frequencies)
    assert accuracy > trivial + 0.03, (accuracy, trivial)
    # the trivial answer gets no image fully right (every image holds a shape)
    exact = (predicted == labels).all(dim=1).float().mean().item()
    assert exact > 0.05, exact


def test_the_vit_demo_spec_names_the_shipped_vit_and_its_methods():
    spec = load_spec(JOB)
    assert spec.model.arch == "small_vit"
    assert (ROOT / spec.model.checkpoint).resolve() == CHECKPOINT
    assert "cp-lrp" in spec.attribution.composites
    kinds = {m["kind"] for m in spec.attribution.methods.values()}
    assert "gradient" in kinds
    model = build_model(
        spec.model.arch, spec.model.num_classes, checkpoint=str(ROOT / spec.model.checkpoint)
    )
    size = spec.dataset.image_size
    assert model(torch.zeros(1, 3, size, size)).shape == (1, spec.model.num_classes)


@pytest.mark.slow
def test_the_vit_demo_runs_and_cp_lrp_sits_on_the_target_more_than_a_random_map(tmp_path):
    path = tmp_path / "demo-vit.zarr"
    spec = load_spec(JOB)
    spec = with_overrides(
        spec,
        store={"path": str(path)},
        model={"checkpoint": str(CHECKPOINT)},
        run={"workers": 1},
    )
    submit(spec, progress=False)
    report = merge(str(path), progress=False)
    names = {*spec.attribution.composites, *spec.attribution.methods}
    assert set(report.metrics) == names
    rows = report.metrics["cp-lrp"]["n_rows"]
    assert rows > 0 and all(m["n_rows"] == rows for m in report.metrics.values())
    random = report.baselines["baseline:random"]
    assert report.metrics["cp-lrp"]["relevance_mass"] > random["relevance_mass"]
    assert report.metrics["cp-lrp"]["pointing_game"] > random["pointing_game"]
