"""The pass machinery: signs proven from the graph (the rules' short paths), no tensor->Python
conversion inside a pass, in-place activations made harmless, and the worker's logits taken from
the first explain forward."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torchvision
from torch import nn

from heatjob.attribution.lrp import Explainer, engine
from heatjob.attribution.lrp.canonizers import canonize
from heatjob.attribution.lrp.composites import get_composite
from heatjob.attribution.lrp.handlers import plan
from heatjob.attribution.lrp.rules import UNKNOWN
from heatjob.attribution.lrp.signs import layer_signs
from heatjob.job.plan import PENDING_TARGET
from heatjob.job.worker import UnitWorker
from tests.factories import synthetic_spec

COMPOSITES = ["EpsilonGammaBox", "EpsilonAlpha2Beta1Flat", "EpsilonPlus", "lrp-a1b0", "lrp-z"]


def _randomize_batch_norms(model: nn.Module) -> nn.Module:
    torch.manual_seed(0)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 1.5)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.2, 0.2)
    return model.eval()


def _model(arch: str) -> nn.Module:
    torch.manual_seed(0)
    return _randomize_batch_norms(getattr(torchvision.models, arch)(num_classes=10))


def _signs(arch: str, composite: str) -> dict:
    gm = canonize(_model(arch), zennit_leftovers=get_composite(composite).zennit_compatible)
    rules = get_composite(composite)
    roles = {s.node: s.decision for s in plan(gm) if s.handler.name == "gate product"}
    return layer_signs(gm, lambda path: rules.rule_for(gm.get_submodule(path), False, path), roles)


def test_signs_proven_where_the_graph_shows_them():
    vgg = _signs("vgg11", "EpsilonGammaBox")
    convs = [p for p in vgg if p.startswith("features")]
    assert not vgg[convs[0]].input_non_negative  # the image
    assert all(vgg[p].input_non_negative for p in convs[1:])
    assert all(vgg[p].output_rectified for p in convs)  # conv -> (leftover bn) -> ReLU
    assert vgg["classifier.0"].input_non_negative and not vgg["classifier.6"].output_rectified
    res = _signs("resnet18", "EpsilonGammaBox")
    assert res["layer1.0.conv1"].output_rectified and res["layer1.0.conv2"].input_non_negative
    # conv2 of a block feeds the residual sum, which may be > 0 where conv2's output is < 0
    assert not res["layer1.0.conv2"].output_rectified
    assert not res["layer2.0.downsample.0"].output_rectified
    mobile = _signs("mobilenet_v2", "lrp-a1b0")
    assert mobile["features.0.0"].output_rectified  # conv -> folded bn -> ReLU6
    assert mobile["features.1.conv.1"].input_non_negative  # behind ReLU6
    assert not mobile["features.1.conv.1"].output_rectified  # the linear bottleneck


# Random-init mobilenet_v2's heatmaps are ~1e-9 of its logits (relevance cancels across 17
# linear bottlenecks), so round-off of the two paths' groupings (z- = z - z+ against its own
# conv) shows at 1e-4 of the heatmap's maximum there.
TOLERANCE = {"vgg11_bn": 1e-5, "resnet18": 1e-5, "mobilenet_v2": 1e-3}


@pytest.mark.parametrize("arch", ["vgg11_bn", "resnet18", "mobilenet_v2"])
def test_short_paths_equal_the_general_path(arch, monkeypatch):
    """The signs the graph proves change speed only: heatmaps equal those of the rules' general
    path (every sign unknown), which tests/test_lrp_zennit.py checks against zennit."""
    model = _model(arch)
    torch.manual_seed(1)
    x = torch.randn(2, 3, 48, 48)
    targets = torch.tensor([3, 7])
    fast = {name: Explainer(model, name).explain(x, targets)[0] for name in COMPOSITES}
    monkeypatch.setattr(engine, "layer_signs", lambda gm, rule_of, roles: _all_unknown(gm))
    for name in COMPOSITES:
        general = Explainer(model, name).explain(x, targets)[0]
        scale = general.abs().max()
        torch.testing.assert_close(fast[name], general, rtol=0, atol=TOLERANCE[arch] * scale)


def _all_unknown(gm):
    return {
        str(n.target): UNKNOWN
        for n in gm.graph.nodes
        if n.op == "call_module"
        and isinstance(gm.get_submodule(str(n.target)), nn.Conv2d | nn.Linear)
    }


class _Conversions:
    """Makes every tensor->Python conversion raise: on a GPU each is a device->host sync."""

    NAMES = ("__bool__", "item", "tolist", "__float__", "__int__", "__index__", "numpy")

    def __init__(self, monkeypatch):
        self.monkeypatch = monkeypatch

    def __enter__(self):
        for name in self.NAMES:
            self.monkeypatch.setattr(torch.Tensor, name, _raiser(name))

    def __exit__(self, *exc):
        self.monkeypatch.undo()


def _raiser(name):
    def refuse(self, *args, **kwargs):
        raise AssertionError(f"Tensor.{name} called inside an explain pass")

    return refuse


@pytest.mark.parametrize("arch", ["vgg11_bn", "resnet18", "mobilenet_v3_small"])
def test_a_pass_converts_no_tensor_to_python(arch, monkeypatch):
    model = _model(arch)
    torch.manual_seed(2)
    x = torch.randn(2, 3, 40, 40)
    names = ["EpsilonGammaBox", "EpsilonAlpha2Beta1Flat", "lrp-a1b0-zb", "lrp-eps-flat"]
    explainers = [Explainer(model, name) for name in names]
    images, targets = np.array([0, 1, 1]), np.array([2, 5, 1])
    for explainer in explainers:
        explainer.explain_rows(x, images, targets)  # one-time constants (flat, z^B) made here
        expected = explainer.explain_rows(x, images, targets)[0]
        with _Conversions(monkeypatch):
            run = explainer.forward_pass(x)
            maps = run.relevance(images, targets)
        torch.testing.assert_close(maps, expected, rtol=0, atol=0)


def test_the_conversion_guard_catches_a_sync(monkeypatch):
    with _Conversions(monkeypatch), pytest.raises(AssertionError, match="__bool__"):
        bool(torch.ones(1).min() >= 0)


class _Activations(nn.Module):
    """A saved input that an in-place activation would overwrite: branch b reads y after
    conv2 saved y as its input."""

    def __init__(self, inplace: bool) -> None:
        super().__init__()
        torch.manual_seed(3)
        self.conv1 = nn.Conv2d(3, 6, 3, padding=1)
        self.conv2 = nn.Conv2d(6, 6, 3, padding=1)
        self.conv3 = nn.Conv2d(6, 6, 3, padding=1)
        self.acts = nn.ModuleList(
            [nn.ReLU6(inplace), nn.Hardswish(inplace), nn.SiLU(inplace), nn.ReLU(inplace)]
        )
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 4))

    def forward(self, x):
        y = self.conv1(x)
        a = self.conv2(y)  # keeps y for its rule
        b = self.conv3(self.acts[2](self.acts[1](self.acts[0](y))))  # overwrites y in place
        return self.head(self.acts[3](a + b))


@pytest.mark.parametrize("composite", ["lrp-z", "lrp-a2b1", "EpsilonGammaBox"])
def test_in_place_activations_give_the_out_of_place_heatmaps(composite):
    torch.manual_seed(4)
    x = torch.randn(2, 3, 12, 12)
    targets = torch.tensor([1, 3])
    inplace = _Activations(True).eval()
    plain = _Activations(False).eval()
    ours, logits = Explainer(inplace, composite).explain(x, targets)
    expected, expected_logits = Explainer(plain, composite).explain(x, targets)
    torch.testing.assert_close(ours, expected, rtol=0, atol=0)
    torch.testing.assert_close(logits, expected_logits, rtol=0, atol=0)
    assert all(act.inplace for act in inplace.acts)  # the user's model is left as it was


def _counting_worker(tmp_path, composites):
    spec = synthetic_spec(tmp_path / "s.zarr", n_samples=6, composites=composites)
    raw = spec.to_dict()
    raw["run"]["batch_size"] = 4
    worker = UnitWorker(raw, "", num_classes=6, threads=1)
    calls = {"model": 0}
    worker.model.register_forward_hook(lambda *a: calls.__setitem__("model", calls["model"] + 1))
    for name, explainer in worker.explainers.items():
        calls[name] = 0

        def hook(*args, name=name):
            calls[name] += 1

        explainer.model.register_forward_hook(hook)
    return worker, calls


@pytest.mark.parametrize("targets", ["labels", "predicted"])
def test_worker_runs_one_forward_per_composite_and_batch(tmp_path, targets):
    composites = ("EpsilonPlusFlat", "cmp-a2b1-flat", "lrp-z")
    worker, calls = _counting_worker(tmp_path, composites)
    rows_sample = np.array([0, 0, 1, 2, 2, 3, 4, 4, 5, 5])
    rows_target = np.array([0, 1, 2, 3, 1, 0, 4, 5, 2, 3], dtype=np.int32)
    if targets == "predicted":  # predicted:2 on samples 0, 2, 4, 5
        keep = np.array([0, 1, 3, 4, 6, 7, 8, 9])
        rows_sample, rows_target = rows_sample[keep], np.full(8, PENDING_TARGET, np.int32)
    done = worker.explain(rows_sample, rows_target, owned=range(6))
    batches = 2  # 6 samples, batch_size 4
    assert calls == {"model": 0, **dict.fromkeys(composites, batches)}
    x = torch.stack([worker.load([i])[0][0] for i in range(6)])
    with torch.no_grad():
        reference = worker.model(x).numpy()
    logits = np.stack([done.logits[i] for i in range(6)])
    np.testing.assert_allclose(logits, reference, rtol=1e-5, atol=1e-6)
    if targets == "predicted":
        order = np.argsort(-reference, axis=1, kind="stable")
        expected = np.concatenate([order[s, :2] for s in (0, 2, 4, 5)])
        np.testing.assert_array_equal(done.chosen_targets, expected)
        rows_target = expected
    explainer = Explainer(
        worker.model, "cmp-a2b1-flat", mean=worker.spec.model.mean, std=worker.spec.model.std
    )
    images = torch.as_tensor(rows_sample)
    maps, _ = explainer.explain_rows(x, images, torch.as_tensor(rows_target.astype(np.int64)))
    np.testing.assert_allclose(
        done.heatmaps["cmp-a2b1-flat"], maps.numpy(), rtol=1e-5, atol=1e-6 * float(maps.abs().max())
    )


@pytest.mark.parametrize(
    "table",
    [
        {"kind": "gradient"},
        {"kind": "integrated-gradients", "steps": 3},
        {"kind": "smoothgrad", "samples": 3},
        {"kind": "gradcam"},
    ],
    ids=lambda t: t["kind"],
)
def test_a_gradient_method_converts_no_tensor_to_python(table, monkeypatch):
    """The worker's rows are numpy: grouping them into backward passes and seeding the noise
    happen on the host, never by reading a (device) tensor back."""
    from heatjob.attribution.registry import build_method

    model = _model("resnet18")
    torch.manual_seed(2)
    x = torch.randn(2, 3, 40, 40)
    method = build_method(table, model, mean=None, std=None)
    images, targets = np.array([0, 1, 1]), np.array([2, 5, 1])
    expected = method.explain_rows(x, images, targets)[0]
    with _Conversions(monkeypatch):
        maps = method.explain_rows(x, images, targets)[0]
    torch.testing.assert_close(maps, expected, rtol=0, atol=0)
