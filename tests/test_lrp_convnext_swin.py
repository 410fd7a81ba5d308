"""ConvNeXt and Swin (V1) with the shared transformer rules: conservation on bias-free copies, LRP-0
= gradient x input of the network with its LayerNorm stds, GELU ratios and softmax weights
detached (`tests/detached.py`), every composite, the handler of each layer, and Swin V2 refused by
path and type. torchvision's convnext_tiny and swin_t at 64 px, and small configurations of the
same classes (every layer kind, shifted and padded windows included) where many runs are needed."""

from __future__ import annotations

import pytest
import torch
import torchvision
from detached import bias_free, detached_rules, gradient_x_input
from torch import nn
from torchvision.models.convnext import CNBlockConfig, ConvNeXt
from torchvision.models.swin_transformer import (
    PatchMergingV2,
    SwinTransformer,
    SwinTransformerBlockV2,
)

from heatjob.attribution.lrp import Explainer, composite_names, ensure_supported
from heatjob.attribution.lrp.canonizers import trace
from heatjob.attribution.lrp.composites import Composite
from heatjob.attribution.lrp.handlers import plan
from heatjob.attribution.lrp.rules import Z
from heatjob.errors import UnsupportedModelError

NUM_CLASSES = 5
TARGETS = torch.tensor([1, 3])
# LRP-0 with no stabiliser to speak of: the identity with gradient x input is then exact
EXACT_Z = Composite("z-exact", conv=Z(1e-30), linear=Z(1e-30))


def small_convnext() -> nn.Module:
    return ConvNeXt([CNBlockConfig(16, 32, 2), CNBlockConfig(32, None, 2)], num_classes=5)


def small_swin() -> nn.Module:
    # 48 px: 12x12 tokens in 4x4 windows (shifted by 2), then 6x6 padded to 8x8 (shifted too)
    return SwinTransformer([4, 4], 16, [2, 2], [2, 4], [4, 4], num_classes=NUM_CLASSES)


# name: (builder, input size)
MODELS = {
    "convnext_tiny": (lambda: torchvision.models.convnext_tiny(num_classes=NUM_CLASSES), 64),
    "swin_t": (lambda: torchvision.models.swin_t(num_classes=NUM_CLASSES), 64),
    "small_convnext": (small_convnext, 32),
    "small_swin": (small_swin, 48),
}


def build(name: str) -> nn.Module:
    """Random weights with every part doing something: torchvision starts biases, layer scales
    (1e-6) and the relative position bias near zero and the linear layers at N(0, 0.02)."""
    torch.manual_seed(0)
    model = MODELS[name][0]()
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.LayerNorm):
                module.weight.normal_(1.0, 0.3)
                module.bias.normal_(0.0, 0.1)
            elif isinstance(module, (nn.Linear, nn.Conv2d)):
                module.reset_parameters()
        for path, param in model.named_parameters():
            if path.endswith("layer_scale"):
                param.normal_(0.0, 0.5)  # signed: a scale, not a gate
            elif path.endswith("relative_position_bias_table"):
                param.normal_(0.0, 1.0)
    return model.eval()


def images(name: str, n: int = 2) -> torch.Tensor:
    size = MODELS[name][1]
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize(
    "name",
    [
        pytest.param("convnext_tiny", marks=pytest.mark.slow),
        pytest.param("swin_t", marks=pytest.mark.slow),
        "small_convnext",
        "small_swin",
    ],
)
def test_lrp0_conserves_and_is_gradient_x_input_of_the_detached_network(name):
    model, x = bias_free(build(name)), images(name)
    heatmaps, logits = Explainer(model, EXACT_Z).explain(x, TARGETS)
    target_logits = logits[torch.arange(2), TARGETS]
    assert target_logits.abs().min() > 0.05  # a real signal to conserve
    torch.testing.assert_close(heatmaps.sum((1, 2)), target_logits, rtol=1e-4, atol=1e-5)
    with detached_rules():
        expected = gradient_x_input(model, x, TARGETS)
    assert (heatmaps - expected).abs().max() <= 1e-5 * expected.abs().max()


# alpha-beta (EpsilonPlus's convolutions) loses relevance on ConvNeXt at small inputs: a 7x7
# depthwise output over a 2x2 map sums 4 inputs, all of them negative now and then, so its z+ is
# zero and its relevance goes nowhere. Swin's one convolution has 48 inputs per output.
CONSERVING = {
    "convnext_tiny": ["cp-lrp", "lrp-z", "EpsilonGammaBox"],
    "swin_t": ["cp-lrp", "lrp-z", "EpsilonPlus", "EpsilonGammaBox"],
    "small_convnext": ["cp-lrp", "lrp-z", "EpsilonGammaBox"],
    "small_swin": ["cp-lrp", "lrp-z", "EpsilonPlus", "EpsilonGammaBox"],
}


@pytest.mark.parametrize(
    ("name", "composite"),
    [
        pytest.param(name, composite, marks=[pytest.mark.slow] if "small" not in name else [])
        for name, composites in CONSERVING.items()
        for composite in composites
    ],
)
def test_relevance_is_conserved_without_biases(name, composite):
    model, x = bias_free(build(name)), images(name)
    heatmaps, logits = Explainer(model, composite).explain(x, TARGETS)
    target_logits = logits[torch.arange(2), TARGETS]
    assert target_logits.abs().min() > 0.05
    torch.testing.assert_close(heatmaps.sum((1, 2)), target_logits, rtol=1e-4, atol=1e-5)


def test_biases_absorb_relevance():
    """With biases part of the logit stays there: the heatmap differs from the logit, which the
    bias-free copy conserves (above)."""
    for name in ("small_convnext", "small_swin"):
        heatmaps, logits = Explainer(build(name), "lrp-z").explain(images(name), TARGETS)
        target_logits = logits[torch.arange(2), TARGETS]
        assert not torch.allclose(heatmaps.sum((1, 2)), target_logits, rtol=1e-2), name


@pytest.mark.parametrize("composite", composite_names())
@pytest.mark.parametrize("name", ["small_convnext", "small_swin"])
def test_every_composite_explains_convnext_and_swin(name, composite):
    model, x = build(name), images(name)
    heatmaps, logits = Explainer(model, composite).explain(x, TARGETS)
    assert heatmaps.shape == (2, *x.shape[2:])
    assert torch.isfinite(heatmaps).all() and heatmaps.abs().sum() > 0
    torch.testing.assert_close(logits, model(x), rtol=1e-5, atol=1e-5)


def _handlers(model: nn.Module) -> dict[str, str]:
    return {s.node.name: s.handler.name for s in plan(trace(model))}


def test_plan_gives_each_layer_its_handler():
    convnext = _handlers(small_convnext())
    assert convnext["features_0_1"] == "channel layer norm"  # LayerNorm2d
    assert convnext["features_1_0_block_0"] == "conv/linear"  # depthwise
    assert convnext["features_1_0_block_1"] == "gradient layers"  # Permute
    assert convnext["features_1_0_block_2"] == "layer norm"
    assert convnext["mul"] == "gate product"  # layer scale
    assert convnext["features_1_0_stochastic_depth"] == "gradient layers"
    assert convnext["add"] == "transformer residual sum"
    assert convnext["avgpool"] == "transformer average pooling"
    swin = _handlers(small_swin())
    assert swin["shifted_window_attention_1"] == "window attention"
    assert swin["_get_relative_position_bias_1"] == "shapes and parameters"
    assert swin["_patch_merging_pad"] == "patch merging"
    assert swin["features_1_0_mlp_1"] == "gelu"
    assert swin["avgpool"] == "transformer average pooling"


def test_swin_v2_is_refused_by_path_and_type():
    with pytest.raises(UnsupportedModelError) as error:
        ensure_supported(
            SwinTransformer(
                [4, 4],
                16,
                [2, 2],
                [2, 4],
                [4, 4],
                block=SwinTransformerBlockV2,
                downsample_layer=PatchMergingV2,
            )
        )
    message = str(error.value)
    assert "\n" not in message
    assert "'features.1.0.attn' (" in message and "ShiftedWindowAttentionV2)" in message, message
