"""End to end on real parts: a generated VOC folder, a real Ray, a real Zarr store.

One Ray is shared by the module (it takes ~10 s to start). Expected values are
computed independently here: logits by running the model on torchvision's own
transforms, heatmaps by zennit, metrics by a naive loop over the store.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import ray
import torch
import torchvision.transforms as T
import xarray as xr
import zarr
from factories import make_voc_folder
from PIL import Image
from zennit.attribution import Gradient
from zennit.canonizers import SequentialMergeBatchNorm
from zennit.composites import EpsilonPlusFlat

from heatjob.data.base import VOC_CLASSES
from heatjob.errors import HeatjobError
from heatjob.eval.merge import merge
from heatjob.job.submit import submit
from heatjob.models import SmallCNN
from heatjob.spec import parse_spec, with_overrides

pytestmark = pytest.mark.slow

SIZE = 32
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


@pytest.fixture(scope="module")
def ray_session():
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        object_store_memory=100 * 1024**2,
        logging_level="ERROR",
    )
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def voc_job(tmp_path_factory, ray_session):
    """A 6-image VOC folder, a random small CNN with non-trivial batch norm, a finished store."""
    base = tmp_path_factory.mktemp("job")
    root = make_voc_folder(base / "VOC", n=12, seed=3)
    torch.manual_seed(0)
    model = SmallCNN(num_classes=20).eval()
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.2, 0.2)
            module.running_var.uniform_(0.5, 2.0)
            module.weight.data.uniform_(0.5, 1.5)
            module.bias.data.uniform_(-0.1, 0.1)
    checkpoint = base / "model.pt"
    torch.save(model.state_dict(), checkpoint)
    spec = parse_spec(
        {
            "dataset": {"kind": "voc", "root": str(root), "split": "val", "image_size": SIZE},
            "model": {"arch": "small_cnn", "checkpoint": str(checkpoint), "num_classes": 20},
            "attribution": {"composites": ["EpsilonPlusFlat", "cmp-a2b1-flat"]},
            "store": {"path": str(base / "store.zarr"), "dtype": "float32"},
            "run": {"batch_size": 4, "shard_size": 3, "workers": 2},
        },
        source="test.toml",
    )
    summary = submit(spec, progress=False)
    return {"spec": spec, "root": root, "model": model, "summary": summary}


def _val_ids(root):
    return [
        line.split()[0]
        for line in (root / "ImageSets/Main/val.txt").read_text().split("\n")
        if line.strip()
    ]


def _inputs(root, ids):
    transform = T.Compose([T.Resize((SIZE, SIZE)), T.ToTensor(), T.Normalize(MEAN, STD)])
    images = [Image.open(root / "JPEGImages" / f"{i}.jpg").convert("RGB") for i in ids]
    return torch.stack([transform(im) for im in images])


def test_store_holds_the_contract_layout(voc_job):
    spec, root = voc_job["spec"], voc_job["root"]
    store = zarr.open_group(spec.store.path, mode="r")
    ids = _val_ids(root)
    assert store["samples/id"][:].tolist() == ids
    n_rows = store["rows/sample"].shape[0]
    assert store["heatmaps/EpsilonPlusFlat"].shape == (n_rows, SIZE, SIZE)
    assert store["heatmaps/EpsilonPlusFlat"].metadata.dimension_names == ("row", "y", "x")
    assert store["heatmaps/EpsilonPlusFlat"].chunks == (1, SIZE, SIZE)
    assert store["heatmaps/EpsilonPlusFlat"].shards == (3, SIZE, SIZE)
    assert store["units/done"][:].all()
    attrs = store.attrs["heatjob"]
    assert attrs["classes"] == list(VOC_CLASSES)
    assert attrs["spec"]["model"]["arch"] == "small_cnn"
    assert attrs["torch_version"] == torch.__version__ and attrs["version"]
    assert len(attrs["checkpoint_sha256"]) == 64

    # rows: every class present in a sample, ascending, by sample
    labels = store["samples/labels"][:]
    expected = [(s, c) for s in range(len(ids)) for c in np.flatnonzero(labels[s])]
    got = list(zip(store["rows/sample"][:].tolist(), store["rows/target"][:].tolist(), strict=True))
    assert got == expected

    # boxes: the first box of the first sample, read from its XML by hand
    import xml.etree.ElementTree as ET

    tree = ET.parse(root / "Annotations" / f"{ids[0]}.xml")
    width = int(tree.find("size/width").text)
    height = int(tree.find("size/height").text)
    bnd = tree.find("object/bndbox")
    xmin, ymin, xmax, ymax = (float(bnd.find(k).text) for k in ("xmin", "ymin", "xmax", "ymax"))
    first = np.flatnonzero(store["boxes/sample"][:] == 0)[0]
    np.testing.assert_allclose(
        store["boxes/xyxy"][first],
        [
            (xmin - 1) * SIZE / width,
            (ymin - 1) * SIZE / height,
            xmax * SIZE / width,
            ymax * SIZE / height,
        ],
        rtol=1e-6,
    )
    assert store["samples/size"][0].tolist() == [height, width]


def test_logits_and_heatmaps_match_independent_computation(voc_job):
    spec, root, model = voc_job["spec"], voc_job["root"], voc_job["model"]
    store = zarr.open_group(spec.store.path, mode="r")
    ids = _val_ids(root)
    x = _inputs(root, ids)
    with torch.no_grad():
        logits = model(x)
    np.testing.assert_allclose(store["samples/logits"][:], logits.numpy(), rtol=1e-4, atol=1e-5)

    rows_sample = store["rows/sample"][:]
    rows_target = torch.as_tensor(store["rows/target"][:], dtype=torch.long)
    xr_ = x[rows_sample].clone().requires_grad_(True)
    composite = EpsilonPlusFlat(canonizers=[SequentialMergeBatchNorm()])
    with Gradient(model=model, composite=composite) as attributor:
        out = model(xr_)
        grad = torch.zeros_like(out)
        grad[torch.arange(len(out)), rows_target] = out[torch.arange(len(out)), rows_target]
        _, relevance = attributor(xr_, grad)
    expected = relevance.sum(1).detach().numpy()
    stored = store["heatmaps/EpsilonPlusFlat"][:]
    scale = np.abs(expected).max()
    assert np.abs(stored - expected).max() <= 1e-4 * scale


def test_xarray_reads_dimension_names(voc_job):
    path = voc_job["spec"].store.path
    heatmaps = xr.open_zarr(path, group="heatmaps", zarr_format=3, consolidated=False)
    assert heatmaps["cmp-a2b1-flat"].dims == ("row", "y", "x")
    samples = xr.open_zarr(path, group="samples", zarr_format=3, consolidated=False)
    assert samples["logits"].dims == ("sample", "class")
    assert float(heatmaps["cmp-a2b1-flat"].isnull().sum()) == 0


def test_resume_does_only_missing_units_and_restores_them(voc_job):
    spec = voc_job["spec"]
    store = zarr.open_group(spec.store.path, mode="r+")
    before = store["heatmaps/cmp-a2b1-flat"][:]
    done = store["units/done"]
    assert done.shape[0] >= 3
    done[0] = False
    done[2] = False
    store["heatmaps/cmp-a2b1-flat"][6:9] = np.zeros((3, SIZE, SIZE))
    with pytest.raises(HeatjobError, match="not finished: 1 of 3 units done"):
        merge(spec.store.path, progress=False)
    summary = submit(with_overrides(spec, run={"workers": 1}), progress=False)
    assert summary.units_run == 2
    assert store["units/done"][:].all()
    np.testing.assert_array_equal(store["heatmaps/cmp-a2b1-flat"][:], before)
    again = submit(spec, progress=False)
    assert again.units_run == 0


def test_resume_refuses_a_different_spec(voc_job):
    spec = voc_job["spec"]
    other = with_overrides(spec, attribution={"composites": ("EpsilonPlus",)})
    with pytest.raises(HeatjobError, match=r"\[attribution\] composites"):
        submit(other, progress=False)


def test_overwrite_never_deletes_foreign_folders(voc_job, tmp_path):
    foreign = tmp_path / "precious"
    foreign.mkdir()
    (foreign / "thesis.tex").write_text("years of work")
    spec = with_overrides(voc_job["spec"], store={"path": str(foreign)})
    with pytest.raises(HeatjobError, match="not a heatjob store"):
        submit(spec, overwrite=True, progress=False)
    assert (foreign / "thesis.tex").read_text() == "years of work"


def test_merge_matches_a_naive_reading_of_the_store(voc_job, tmp_path):
    path = voc_job["spec"].store.path
    report = merge(path, json_path=str(tmp_path / "m.json"), progress=False)
    written = json.loads((tmp_path / "m.json").read_text())
    assert set(written) == {"EpsilonPlusFlat", "cmp-a2b1-flat"}
    assert written == report.metrics
    assert zarr.open_group(path, mode="r").attrs["metrics"] == written

    store = zarr.open_group(path, mode="r")
    heatmaps = store["heatmaps/EpsilonPlusFlat"][:].astype(np.float64)
    rows_sample, rows_target = store["rows/sample"][:], store["rows/target"][:]
    boxes, box_sample, box_class = (
        store["boxes/xyxy"][:],
        store["boxes/sample"][:],
        store["boxes/class"][:],
    )
    centres = np.arange(SIZE) + 0.5
    masses = []
    for r, (s, t) in enumerate(zip(rows_sample, rows_target, strict=True)):
        mask = np.zeros((SIZE, SIZE), bool)
        for x0, y0, x1, y1 in boxes[(box_sample == s) & (box_class == t)]:
            mask |= (
                (centres[:, None] >= y0)
                & (centres[:, None] < y1)
                & (centres[None, :] >= x0)
                & (centres[None, :] < x1)
            )
        positive = np.clip(heatmaps[r], 0, None)
        masses.append(positive[mask].sum() / positive.sum() if positive.sum() else 0.0)
    metrics = written["EpsilonPlusFlat"]
    assert metrics["n_rows"] == len(rows_sample)
    assert metrics["relevance_mass"] == pytest.approx(np.mean(masses), abs=1e-5)
    for key in ("pointing_game", "relevance_mass_weighted", "relevance_rank", "pixel_ap"):
        assert metrics[key] is not None


def test_predicted_targets_follow_the_stored_logits(ray_session, tmp_path):
    spec = parse_spec(
        {
            "dataset": {"kind": "synthetic", "num_samples": 10, "image_size": SIZE, "seed": 4},
            "model": {"arch": "small_cnn", "num_classes": 6},
            "attribution": {"composites": ["lrp-eps"], "targets": "predicted:2"},
            "store": {"path": str(tmp_path / "pred.zarr")},
            "run": {"batch_size": 8, "shard_size": 5},
        }
    )
    submit(spec, progress=False)
    store = zarr.open_group(spec.store.path, mode="r")
    assert store.attrs["heatjob"]["shard_size"] == 6  # rounded up to whole samples (2 rows each)
    logits = store["samples/logits"][:]
    top2 = np.argsort(-logits, axis=1, kind="stable")[:, :2]
    assert store["rows/sample"][:].tolist() == np.repeat(np.arange(10), 2).tolist()
    assert store["rows/target"][:].tolist() == top2.ravel().tolist()


def test_imagefolder_store_skips_box_metrics_and_says_so(ray_session, tmp_path):
    rng = np.random.default_rng(0)
    for name in ("cats", "dogs"):
        (tmp_path / "folder" / name).mkdir(parents=True)
        for i in range(3):
            pixels = rng.integers(0, 255, (40, 50, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(tmp_path / "folder" / name / f"{i}.png")
    spec = parse_spec(
        {
            "dataset": {
                "kind": "imagefolder",
                "root": str(tmp_path / "folder"),
                "image_size": SIZE,
            },
            "model": {"arch": "small_cnn"},
            "attribution": {"composites": ["EpsilonPlus"]},
            "store": {"path": str(tmp_path / "folder.zarr")},
            "run": {"shard_size": 4},
        }
    )
    submit(spec, progress=False)
    store = zarr.open_group(spec.store.path, mode="r")
    assert store["samples/id"][:].tolist() == [
        f"{c}/{i}" for c in ("cats", "dogs") for i in range(3)
    ]
    assert store["rows/target"][:].tolist() == [0, 0, 0, 1, 1, 1]
    assert store["boxes/xyxy"].shape == (0, 4)
    report = merge(spec.store.path, progress=False)
    assert report.metrics["EpsilonPlus"]["pointing_game"] is None
    assert any("no boxes" in note for note in report.notes)


def test_a_worker_that_cannot_set_up_fails_with_the_one_line_cause(voc_job, ray_session):
    from heatjob.job.runner import WorkerPlan, run_units
    from heatjob.store.layout import open_store
    from heatjob.store.units import store_units

    spec = voc_job["spec"]
    elsewhere = with_overrides(spec, dataset={"root": "/nonexistent/VOC"})
    root, info = open_store(spec.store.path)
    units = store_units(root, info)[:1]
    rows_sample, rows_target = root["rows/sample"][:], root["rows/target"][:]
    with pytest.raises(HeatjobError, match="/nonexistent/VOC"):
        run_units(
            elsewhere.to_dict(),
            spec.store.path,
            20,
            6,
            rows_sample,
            rows_target,
            units,
            WorkerPlan(1, 1.0, 0.0, 1),
            on_result=lambda result, attempts: None,
        )


def test_a_missing_image_is_recorded_as_a_failure_and_the_job_finishes(voc_job, tmp_path):
    import shutil

    root = tmp_path / "VOC"
    shutil.copytree(voc_job["root"], root)
    victim = _val_ids(root)[-1]
    (root / "JPEGImages" / f"{victim}.jpg").unlink()
    spec = with_overrides(
        voc_job["spec"],
        dataset={"root": str(root)},
        store={"path": str(tmp_path / "s.zarr")},
        run={"workers": 1},
    )
    submit(spec, progress=False)
    store = zarr.open_group(spec.store.path, mode="r")
    assert store["units/done"][:].all()
    last = len(_val_ids(root)) - 1
    assert np.flatnonzero(store["samples/failed"][:]).tolist() == [last]
    assert f"image not found: {root / 'JPEGImages' / victim}.jpg" == store["samples/failure"][last]
    heatmaps = store["heatmaps/EpsilonPlusFlat"][:]
    victim_rows = store["rows/sample"][:] == last
    assert np.isnan(heatmaps[victim_rows]).all() and np.isfinite(heatmaps[~victim_rows]).all()
