"""The baseline methods against independent implementations: zennit 0.5.1's Gradient,
IntegratedGradients, SmoothGrad and Occlusion attributors (called with attr_output =
onehot * output, the seeding every heatjob heatmap uses), and Captum 0.9's LayerGradCam with
LayerAttribution.interpolate (bilinear, align_corners = False).

Models: heatjob's SmallCNN and torchvision's resnet18 and vgg11, random weights and random
batch-norm statistics, at small input sizes. Rows repeat images (several targets of one
image share the forward pass) so the grouping into backward passes is exercised.
"""

import numpy as np
import pytest
import torch
from captum.attr import LayerAttribution, LayerGradCam
from torch import nn
from zennit.attribution import Gradient, IntegratedGradients, Occlusion, SmoothGrad
from zennit_models import build, randomize

from heatjob.attribution.gradcam import default_layer
from heatjob.attribution.registry import build_method
from heatjob.models import SmallCNN

NUM_CLASSES = 10
SIZE = 64
IMAGES = torch.tensor([0, 0, 1, 2, 2, 2])
TARGETS = torch.tensor([1, 3, 0, 2, 7, 9])
# float32 round-off relative to the largest |value| of the reference maps
STRICT = 1e-5
# SmoothGrad's noisy copies are compared one row at a time against heatjob's batch of rows;
# on resnet18 and vgg11 that batch-shape rounding reaches about 1.2e-5 on some CPUs
NOISY = 5e-5


def build_model(name: str) -> nn.Module:
    torch.manual_seed(0)
    if name == "small_cnn":
        return randomize(SmallCNN(num_classes=NUM_CLASSES, width=8))
    # VGG with 64-unit dense layers (same layer types): with 4096 units, a batch of six
    # rows and a batch of one round differently enough to flip a hidden ReLU now and then
    return build(name, small_classifier=True)


@pytest.fixture(scope="module", params=["small_cnn", "resnet18", "vgg11"])
def case(request):
    model = build_model(request.param)
    x = torch.randn(3, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(1))
    return request.param, model, x


def method(model, kind: str, **options):
    return build_method({"kind": kind, **options}, model, mean=None, std=None)


def rows(x):
    """Each row's image and its one-hot output seed."""
    xr = x[IMAGES].clone()
    onehot = torch.nn.functional.one_hot(TARGETS, NUM_CLASSES).float()
    return xr, onehot


def relative(ours: torch.Tensor, reference: torch.Tensor) -> float:
    scale = reference.abs().max().item()
    assert scale > 0 and torch.isfinite(ours).all()
    return ((ours - reference).abs().max() / scale).item()


def report(name: str, kind: str, diff: float) -> None:
    print(f"{kind} on {name}: max |diff| / max |ref| = {diff:.2e}")


def test_gradient_equals_zennit(case):
    name, model, x = case
    maps, logits = method(model, "gradient").explain_rows(x, IMAGES, TARGETS)
    xr, onehot = rows(x)
    with Gradient(model) as attributor:
        out, reference = attributor(xr, lambda output: onehot * output)
    diff = relative(maps, reference.sum(1))
    report(name, "gradient", diff)
    assert diff < STRICT
    assert torch.allclose(logits[IMAGES], out.detach(), rtol=1e-5, atol=1e-5)


def test_gradient_x_input_equals_zennit_gradient_times_input(case):
    name, model, x = case
    maps, _ = method(model, "gradient-x-input").explain_rows(x, IMAGES, TARGETS)
    xr, onehot = rows(x)
    with Gradient(model) as attributor:
        _, reference = attributor(xr, lambda output: onehot * output)
    diff = relative(maps, (reference * xr).sum(1))
    report(name, "gradient-x-input", diff)
    assert diff < STRICT


@pytest.mark.parametrize("steps", [1, 7])
def test_integrated_gradients_equals_zennit(case, steps):
    name, model, x = case
    maps, _ = method(model, "integrated-gradients", steps=steps).explain_rows(x, IMAGES, TARGETS)
    xr, onehot = rows(x)
    with IntegratedGradients(model, n_iter=steps) as attributor:
        _, reference = attributor(xr, lambda output: onehot * output)
    diff = relative(maps, reference.sum(1))
    report(name, f"integrated-gradients steps={steps}", diff)
    assert diff < STRICT


def test_smoothgrad_equals_zennit_given_the_same_noise(case, monkeypatch):
    """Row by row, zennit's SmoothGrad drawing the very noise heatjob draws for that row
    (its torch.randn_like replaced by the row's seeded generator) gives heatjob's map."""
    name, model, x = case
    samples = [10, 11, 12]  # the data set index of each image: seeds the noise
    sg = method(model, "smoothgrad", samples=5, noise=0.2, seed=3)
    maps, _ = sg.explain_rows(x, IMAGES, TARGETS, samples=samples)
    worst = 0.0
    for k, (image, target) in enumerate(zip(IMAGES.tolist(), TARGETS.tolist(), strict=True)):
        generator = sg.generator(samples[image], target)
        monkeypatch.setattr(
            torch, "randn_like", lambda t, g=generator: torch.randn(t.shape[1:], generator=g)[None]
        )
        onehot = torch.nn.functional.one_hot(torch.tensor([target]), NUM_CLASSES).float()
        with SmoothGrad(model, noise_level=0.2, n_iter=5) as attributor:
            _, reference = attributor(x[image : image + 1].clone(), lambda o, h=onehot: h * o)
        monkeypatch.undo()
        worst = max(worst, relative(maps[k : k + 1], reference.sum(1)))
    report(name, "smoothgrad (same noise)", worst)
    assert worst < NOISY


def test_smoothgrad_is_seeded_per_sample_and_target(case):
    name, model, x = case
    sg = method(model, "smoothgrad", samples=4, noise=0.1, seed=0)
    a, _ = sg.explain_rows(x, IMAGES, TARGETS, samples=[5, 6, 7])
    b, _ = sg.explain_rows(x, IMAGES, TARGETS, samples=[5, 6, 7])
    assert torch.equal(a, b)
    # the same rows with their images at other places in the batch: the same noise, so the
    # same maps. (Another batch size is not a fair check: its convolutions round
    # differently, and under noise one max-pool tie flipped by that round-off moves a
    # gradient by far more than round-off on some CPUs.)
    perm = [2, 0, 1]
    moved, _ = sg.explain_rows(
        x[perm],
        torch.tensor([perm.index(i) for i in IMAGES.tolist()]),
        TARGETS,
        samples=[[5, 6, 7][p] for p in perm],
    )
    assert relative(moved, a) < STRICT
    other, _ = method(model, "smoothgrad", samples=4, noise=0.1, seed=1).explain_rows(
        x, IMAGES, TARGETS, samples=[5, 6, 7]
    )
    assert not torch.equal(a, other)
    # one sample is the clean image: SmoothGrad with n_iter = 1 is the gradient (zennit)
    one, _ = method(model, "smoothgrad", samples=1).explain_rows(x, IMAGES, TARGETS)
    grad, _ = method(model, "gradient").explain_rows(x, IMAGES, TARGETS)
    assert relative(one, grad) < STRICT


def test_smoothgrad_agrees_statistically_with_zennit(case):
    """Per row, heatjob's SmoothGrad correlates with zennit's as well as two zennit runs
    with different seeds correlate with each other."""
    name, model, x = case
    n = 24
    ours, _ = method(model, "smoothgrad", samples=n, noise=0.1).explain_rows(x, IMAGES, TARGETS)
    xr, onehot = rows(x)
    runs = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        with SmoothGrad(model, noise_level=0.1, n_iter=n) as attributor:
            runs.append(attributor(xr, lambda o: onehot * o)[1].sum(1))

    def corr(a, b):
        pairs = zip(a, b, strict=True)
        return np.array([np.corrcoef(p.ravel(), q.ravel())[0, 1] for p, q in pairs])

    zennit_pair = corr(runs[0].numpy(), runs[1].numpy())
    ours_vs = corr(ours.numpy(), runs[0].numpy())
    print(
        f"smoothgrad on {name}: corr ours/zennit {ours_vs.min():.3f}, zennit/zennit "
        f"{zennit_pair.min():.3f}"
    )
    assert (ours_vs >= zennit_pair - 0.1).all()


@pytest.mark.parametrize("explicit", [False, True])
def test_gradcam_equals_captum(case, explicit):
    name, model, x = case
    layer = {"small_cnn": "features.10", "resnet18": "layer3", "vgg11": "features.13"}[name]
    layer = layer if explicit else default_layer(model)
    maps, _ = method(model, "gradcam", layer=layer if explicit else "").explain_rows(
        x, IMAGES, TARGETS
    )
    cam = LayerGradCam(model, model.get_submodule(layer))
    xr = x[IMAGES].clone()
    attribution = cam.attribute(xr, target=TARGETS, relu_attributions=True)
    reference = LayerAttribution.interpolate(attribution, (SIZE, SIZE), "bilinear")[:, 0]
    diff = relative(maps, reference.detach())
    report(name, f"gradcam {layer}", diff)
    assert diff < STRICT


def test_gradcam_default_layer_is_the_last_conv_blocks_output():
    assert default_layer(build_model("small_cnn")) == "features.14"
    assert default_layer(build_model("resnet18")) == "layer4.1"
    assert default_layer(build_model("vgg11")) == "features.19"


@pytest.mark.parametrize(("window", "stride"), [(16, 16), (16, 8), (24, 20)])
def test_occlusion_equals_zennit(case, window, stride):
    """Non-overlapping patches, overlapping ones, and patches that wrap around the edge."""
    name, model, x = case
    ours, logits = method(model, "occlusion", window=window, stride=stride).explain_rows(
        x, IMAGES, TARGETS
    )
    xr, onehot = rows(x)
    attributor = Occlusion(model, window=window, stride=stride)
    output, reference = attributor(xr, lambda out: onehot * out)
    diff = relative(ours, reference.sum(1))
    report(name, f"occlusion {window}/{stride}", diff)
    assert diff < STRICT
    assert torch.allclose(logits[IMAGES], output, rtol=1e-5, atol=1e-5)
    # the map varies across patches: occluding changes the target logit
    assert ours.flatten(1).std(1).min() > 0
