"""The torchvision families the engine explains, on small inputs with random weights.

Every family conserves relevance on a bias-free copy (heatmap sum = target logit); where
activations other than ReLU6 are used, LRP-0 equals gradient x input there too, of the same network
with its squeeze-excitation gates and its activation ratios act(z) / z detached (so that their
gradients are the engine's rules: a constant gate, pass-through). Where zennit 0.5.1 takes the
architecture (no batch norm, or its ResNet canonizer), heatmaps equal zennit's.
"""

import copy

import pytest
import torch
import torchvision
from detached import detach_ratio
from torch import nn
from zennit.attribution import Gradient
from zennit.composites import EpsilonAlpha2Beta1Flat, EpsilonGammaBox, EpsilonPlusFlat
from zennit.torchvision import ResNetCanonizer

from heatjob.attribution.lrp import Explainer, ensure_supported
from heatjob.errors import UnsupportedModelError

NUM_CLASSES = 5
MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
# name: (input size, LRP-0 = gradient x input with gates and activation ratios detached,
# builder keyword arguments). False: conservation checked with alpha-1-beta-0 only.
FAMILIES = {
    "alexnet": (64, True, {}),
    "vgg11": (32, True, {}),
    "vgg11_bn": (32, True, {}),
    "resnet18": (32, True, {}),
    "resnext50_32x4d": (32, True, {}),
    "wide_resnet50_2": (32, True, {}),
    "densenet121": (32, True, {}),
    # ReLU6 clips; LRP-0's sums cancel there (heatmap sum 0.02 of the logit), so alpha-1-beta-0
    "mobilenet_v2": (32, False, {}),
    # Squeeze-excitation families (Sigmoid / Hardsigmoid gate modules).
    "mobilenet_v3_small": (64, True, {}),  # hardswish
    "efficientnet_b0": (64, True, {}),  # SiLU, StochasticDepth
    "regnet_y_400mf": (64, True, {}),  # ReLU
    "googlenet": (64, True, {"aux_logits": False, "init_weights": False}),
    "inception_v3": (80, True, {"aux_logits": False, "init_weights": False}),
}
SLOW = {"resnext50_32x4d", "wide_resnet50_2", "densenet121", "inception_v3", "efficientnet_b0"}
GATES = (nn.Sigmoid, nn.Hardsigmoid)  # in these families, the squeeze-excitation gates
SIGNED_ACTIVATIONS = (nn.Hardswish, nn.SiLU)


def family_params():
    return [
        pytest.param(name, marks=pytest.mark.slow) if name in SLOW else name for name in FAMILIES
    ]


def build(name: str, bias_free: bool) -> nn.Module:
    torch.manual_seed(0)
    model = getattr(torchvision.models, name)(num_classes=NUM_CLASSES, **FAMILIES[name][2])
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.weight.uniform_(0.5, 1.5)
                module.running_var.uniform_(0.5, 1.5)
                if bias_free:  # folds into a bias-free conv
                    module.bias.zero_()
                    module.running_mean.zero_()
                else:
                    module.bias.normal_(0, 0.1)
                    module.running_mean.normal_(0, 0.1)
            elif isinstance(module, nn.Linear):
                # torchvision's N(0, 0.01) classifier init shrinks logits to ~1e-10, where the
                # 1e-6 stabilisers dominate; PyTorch's default init keeps their scale.
                module.reset_parameters()
            if isinstance(module, (nn.Conv2d, nn.Linear)) and module.bias is not None:
                if bias_free:
                    module.bias.zero_()
                else:
                    module.bias.normal_(0, 0.05)
    return model.eval()


def images(size: int, n: int = 2) -> torch.Tensor:
    torch.manual_seed(1)
    return (torch.rand(n, 3, size, size) - MEAN) / STD


def _detach_output(module, inputs, output):
    return output.detach()


def rules_as_gradients(model: nn.Module) -> nn.Module:
    """A copy of `model` whose gradient x input is LRP-0, computed by plain autograd: each
    squeeze-excitation gate is a constant (its forward value) and each hardswish / SiLU output is
    z * (act(z) / z) with the ratio constant, so relevance passes through it. Same forward."""
    model = copy.deepcopy(model)
    for module in model.modules():
        if hasattr(module, "inplace"):
            module.inplace = False  # the hooks need the activation's input unchanged
        if isinstance(module, GATES):
            module.register_forward_hook(_detach_output)
        elif isinstance(module, SIGNED_ACTIVATIONS):
            module.register_forward_hook(detach_ratio)
    return model


@pytest.mark.parametrize("name", family_params())
def test_relevance_is_conserved_and_lrp0_equals_gradient_times_input(name):
    """LRP-0 conserves and equals gradient x input of `rules_as_gradients(model)`. ReLU6
    (mobilenet_v2): LRP-0 divides by sums that cancel, so conservation is checked with
    alpha-1-beta-0, whose denominators add like-signed terms."""
    size, lrp0, _ = FAMILIES[name]
    # Random-init activations shrink with depth; inputs scaled so that the logits are about 1e4
    # (a bias-free ReLU net is linear in its input's scale) keep the 1e-6 stabiliser small.
    model, x = build(name, bias_free=True), images(size)
    with torch.no_grad():
        x = x * (1e4 / model(x).abs().max())
    targets = torch.tensor([1, 3])
    heatmap, logits = Explainer(model, "lrp-z" if lrp0 else "lrp-a1b0").explain(x, targets)
    assert heatmap.shape == (2, size, size) and torch.isfinite(heatmap).all()
    picked = logits[torch.arange(2), targets]
    assert picked.abs().min() > 0
    torch.testing.assert_close(heatmap.sum(dim=(1, 2)), picked, rtol=1e-3, atol=1e-5)
    if lrp0:
        x_req = x.clone().requires_grad_()
        out = rules_as_gradients(model)(x_req)
        (grad,) = torch.autograd.grad(out[torch.arange(2), targets].sum(), x_req)
        expected = (grad * x).sum(1)
        scale = expected.abs().max()
        assert (heatmap - expected).abs().max() <= 1e-3 * scale


@pytest.mark.parametrize("name", family_params())
def test_every_family_runs_under_a_paper_composite(name):
    size = FAMILIES[name][0]
    model, x = build(name, bias_free=False), images(size)
    heatmap, logits = Explainer(model, "cmp-a2b1-flat").explain(x, torch.tensor([0, 4]))
    assert torch.isfinite(heatmap).all() and heatmap.abs().sum() > 0
    with torch.no_grad():
        torch.testing.assert_close(logits, model(x), rtol=1e-4, atol=1e-4)


def zennit_heatmap(model, composite, x, targets):
    with Gradient(copy.deepcopy(model), composite) as attributor:
        seed = torch.eye(NUM_CLASSES)[targets]
        _, relevance = attributor(x.clone(), lambda output: seed * output)
    return relevance.sum(1)


@pytest.mark.parametrize(
    ("name", "composite"),
    [
        ("alexnet", "EpsilonPlusFlat"),
        ("alexnet", "EpsilonGammaBox"),
        pytest.param("resnext50_32x4d", "EpsilonAlpha2Beta1Flat", marks=pytest.mark.slow),
        pytest.param("wide_resnet50_2", "EpsilonGammaBox", marks=pytest.mark.slow),
    ],
)
def test_matches_zennit(name, composite):
    size = FAMILIES[name][0]
    model, x = build(name, bias_free=False), images(size)
    targets = torch.tensor([2, 0])
    ours, _ = Explainer(model, composite).explain(x, targets)
    canonizers = [ResNetCanonizer()] if "res" in name else []
    low, high = (0 - MEAN) / STD, (1 - MEAN) / STD
    zennit_composite = {
        "EpsilonPlusFlat": lambda: EpsilonPlusFlat(canonizers=canonizers),
        "EpsilonAlpha2Beta1Flat": lambda: EpsilonAlpha2Beta1Flat(canonizers=canonizers),
        "EpsilonGammaBox": lambda: EpsilonGammaBox(low, high, canonizers=canonizers),
    }[composite]()
    reference = zennit_heatmap(model, zennit_composite, x, targets)
    assert (ours - reference).abs().max() <= 1e-5 * reference.abs().max()


def test_product_of_two_feature_maps_is_unsupported():
    class Square(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3)

        def forward(self, x):
            y = self.conv(x)
            return (y * y).flatten(1)

    with pytest.raises(UnsupportedModelError, match=r"'<model>' \(_operator.mul\): only a"):
        ensure_supported(Square())


@pytest.mark.parametrize(
    ("name", "kind"),
    [
        ("shufflenet_v2_x0_5", r"stage2.0.*torch.transpose"),
        ("swin_v2_t", r"'features.1.0.attn' \(.* in ShiftedWindowAttentionV2\)"),
    ],
)
def test_unsupported_families_name_the_module(name, kind):
    model = getattr(torchvision.models, name)(num_classes=NUM_CLASSES)
    with pytest.raises(UnsupportedModelError, match=kind):
        ensure_supported(model)
