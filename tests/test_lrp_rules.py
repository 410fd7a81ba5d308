"""LRP rules against the formulas of docs/mission.md, written out by hand in numpy (float64).

A Conv2d is a linear map too: `dense(layer, shape)` writes it as a matrix W[i, j] (input i, output
j) and a bias b[j], so every formula below is the textbook one over z_ij = x_i w_ij.
"""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from heatjob.attribution.lrp import Explainer, composite_names, describe_composite, ensure_supported
from heatjob.attribution.lrp.rules import (
    UNKNOWN,
    AlphaBeta,
    Epsilon,
    Flat,
    Gamma,
    Signs,
    WSquare,
    Z,
    ZBox,
)
from heatjob.errors import SpecError, UnsupportedModelError

EPS = 1e-6  # the rules' default stabiliser
MEAN = np.array([0.485, 0.456, 0.406])
STD = np.array([0.229, 0.224, 0.225])


# ---- hand-written formulas -------------------------------------------------------------------


def stab(z, eps=EPS):
    return z + eps * np.where(z >= 0, 1.0, -1.0)


def pos(a):
    return np.maximum(a, 0)


def neg(a):
    return np.minimum(a, 0)


def ref_epsilon(x, W, b, R, eps):
    z = x[:, None] * W
    return (z / stab(z.sum(0) + b, eps) * R).sum(1)


def ref_alpha_beta(x, W, b, R, alpha, beta):
    zp = pos(x)[:, None] * pos(W) + neg(x)[:, None] * neg(W)
    zn = pos(x)[:, None] * neg(W) + neg(x)[:, None] * pos(W)
    share = alpha * zp / stab(zp.sum(0) + pos(b)) - beta * zn / stab(zn.sum(0) + neg(b))
    return (share * R).sum(1)


def ref_flat(connected, R):
    return (connected / stab(connected.sum(0)) * R).sum(1)


def ref_wsquare(W, R):
    return (W**2 / stab((W**2).sum(0)) * R).sum(1)


def ref_zbox(x, W, low, high, R):
    z = x[:, None] * W - low[:, None] * pos(W) - high[:, None] * neg(W)
    return (z / stab(z.sum(0)) * R).sum(1)


def ref_gamma(x, W, b, R, gamma):
    up, down = W + gamma * pos(W), W + gamma * neg(W)
    out = x @ W + b
    z_up = pos(x)[:, None] * up + neg(x)[:, None] * down
    z_down = pos(x)[:, None] * down + neg(x)[:, None] * up
    share_up = z_up / stab(z_up.sum(0) + b + gamma * pos(b))
    share_down = z_down / stab(z_down.sum(0) + b + gamma * neg(b))
    share = np.where(out > 0, share_up, 0.0) + np.where(out < 0, share_down, 0.0)
    return (share * R).sum(1)


def dense(layer, in_shape):
    """(W, b, connected) of a Linear or Conv2d as a dense map from flat input to flat output."""
    if isinstance(layer, nn.Linear):
        W = layer.weight.detach().double().numpy().T
        b = layer.bias.detach().double().numpy() if layer.bias is not None else 0 * W[0]
        return W, b, np.ones_like(W)
    n_in = int(np.prod(in_shape))
    basis = torch.eye(n_in, dtype=torch.float64).view(n_in, *in_shape)
    args = (layer.stride, layer.padding, layer.dilation, layer.groups)
    W = F.conv2d(basis, layer.weight.detach().double(), None, *args).reshape(n_in, -1).numpy()
    ones = torch.ones_like(layer.weight, dtype=torch.float64)
    connected = F.conv2d(basis, ones, None, *args).reshape(n_in, -1).numpy()
    out_shape = F.conv2d(basis[:1], ones, None, *args).shape[1:]
    bias = layer.bias if layer.bias is not None else torch.zeros(out_shape[0])
    b = bias.detach().double()[:, None, None].expand(out_shape).reshape(-1).numpy()
    return W, b, connected


def run_rule(rule, layer, x, R, signs=UNKNOWN):
    bound = rule.bind(layer, signs=signs)
    return bound.relevance(x, bound.forward(x), R)


def assert_close(ours, ref, rtol=1e-4):
    ours = ours.detach().double().numpy()
    scale = np.abs(ref).max()
    np.testing.assert_allclose(ours, ref, rtol=rtol, atol=rtol * scale)


# ---- single layers ---------------------------------------------------------------------------


def layers():
    torch.manual_seed(0)
    linear = nn.Linear(6, 4)
    conv = nn.Conv2d(2, 3, 3, stride=2, padding=1)
    with torch.no_grad():
        linear.bias.normal_(0, 0.5)
        conv.bias.normal_(0, 0.5)
    return [(linear, (2, 6)), (conv, (2, 2, 5, 5))]


LAYERS = layers()
LAYER_IDS = ["linear", "conv"]


def per_sample(layer, shape, x, R, formula):
    """Apply a numpy formula to each sample, with the layer as a dense matrix."""
    W, b, connected = dense(layer, shape[1:])
    x64, R64 = x.double().numpy(), R.double().numpy()
    rows = [
        formula(xs.reshape(-1), W, b, connected, Rs.reshape(-1))
        for xs, Rs in zip(x64, R64, strict=True)
    ]
    return np.stack(rows).reshape(shape)


@pytest.mark.parametrize(("layer", "shape"), LAYERS, ids=LAYER_IDS)
@pytest.mark.parametrize(
    ("rule", "formula"),
    [
        (Z(), lambda x, W, b, c, R: ref_epsilon(x, W, b, R, EPS)),
        (Epsilon(0.1), lambda x, W, b, c, R: ref_epsilon(x, W, b, R, 0.1)),
        (AlphaBeta(1, 0), lambda x, W, b, c, R: ref_alpha_beta(x, W, b, R, 1, 0)),
        (AlphaBeta(2, 1), lambda x, W, b, c, R: ref_alpha_beta(x, W, b, R, 2, 1)),
        (Flat(), lambda x, W, b, c, R: ref_flat(c, R)),
        (WSquare(), lambda x, W, b, c, R: ref_wsquare(W, R)),
        (Gamma(0.25), lambda x, W, b, c, R: ref_gamma(x, W, b, R, 0.25)),
    ],
    ids=["z", "epsilon", "alpha1beta0", "alpha2beta1", "flat", "wsquare", "gamma"],
)
def test_rule_matches_formula(layer, shape, rule, formula):
    torch.manual_seed(1)
    x = torch.randn(shape)
    R = torch.randn(layer(x).shape)
    assert_close(run_rule(rule, layer, x, R), per_sample(layer, shape, x, R, formula))


@pytest.mark.parametrize(("layer", "shape"), LAYERS, ids=LAYER_IDS)
@pytest.mark.parametrize(
    ("rule", "formula"),
    [
        (Epsilon(0.1), lambda x, W, b, c, R: ref_epsilon(x, W, b, R, 0.1)),
        (AlphaBeta(1, 0), lambda x, W, b, c, R: ref_alpha_beta(x, W, b, R, 1, 0)),
        (AlphaBeta(2, 1), lambda x, W, b, c, R: ref_alpha_beta(x, W, b, R, 2, 1)),
        (Gamma(0.25), lambda x, W, b, c, R: ref_gamma(x, W, b, R, 0.25)),
    ],
    ids=["epsilon", "alpha1beta0", "alpha2beta1", "gamma"],
)
def test_rule_matches_formula_behind_relu(layer, shape, rule, formula):
    """Inputs >= 0 (with exact zeros), proven by the graph, take the rules' short path:
    z- = z - z+, no x- terms; gamma's z < 0 half skipped where the output is rectified."""
    torch.manual_seed(7)
    x = torch.relu(torch.randn(shape))
    assert (x == 0).any() and x.min() >= 0
    R = torch.randn(layer(x).shape)
    behind_relu = Signs(input_non_negative=True)
    assert_close(run_rule(rule, layer, x, R, behind_relu), per_sample(layer, shape, x, R, formula))
    if isinstance(rule, Gamma):  # no relevance on outputs z <= 0: the skipped half
        R_up = R * (layer(x) > 0)
        ref = per_sample(layer, shape, x, R_up, formula)
        rectified = Signs(input_non_negative=True, output_rectified=True)
        assert_close(run_rule(rule, layer, x, R_up, rectified), ref)


@pytest.mark.parametrize(("layer", "shape"), LAYERS, ids=LAYER_IDS)
def test_zbox_matches_formula(layer, shape):
    torch.manual_seed(2)
    channels = shape[1] if len(shape) == 4 else 2  # a Linear's 6 inputs: 2 "channels" of 3
    low, high = torch.tensor([-1.0, -2.0]), torch.tensor([1.5, 0.5])
    per_input = shape[1:] if len(shape) == 4 else (channels, shape[1] // channels)
    view = (1, channels) + (1,) * (len(per_input) - 1)
    u = torch.rand(shape[0], *per_input)
    x = (low.view(view) + u * (high - low).view(view)).reshape(shape)
    R = torch.randn(layer(x).shape)
    low_full = low.view(view).expand(1, *per_input).reshape(-1).double().numpy()
    high_full = high.view(view).expand(1, *per_input).reshape(-1).double().numpy()
    ref = per_sample(
        layer, shape, x, R, lambda x, W, b, c, R: ref_zbox(x, W, low_full, high_full, R)
    )
    assert_close(run_rule(ZBox(low, high), layer, x, R), ref)


def test_gamma_is_lrp0_on_boosted_weights_for_positive_inputs():
    torch.manual_seed(3)
    layer = nn.Linear(5, 3, bias=False)
    x = torch.rand(4, 5)
    R = torch.randn(4, 3)
    boosted = nn.Linear(5, 3, bias=False)
    with torch.no_grad():
        layer.weight.abs_()  # all outputs positive
        boosted.weight.copy_(layer.weight + 0.25 * layer.weight.clamp(min=0))
    assert (layer(x) > 0).all()
    expected = run_rule(Z(), boosted, x, R)
    torch.testing.assert_close(run_rule(Gamma(0.25), layer, x, R), expected)


def test_alpha_beta_rejects_non_conserving_parameters():
    with pytest.raises(ValueError, match="alpha - beta = 1"):
        AlphaBeta(1, 1)


# ---- small networks --------------------------------------------------------------------------


def bias_free_net():
    torch.manual_seed(4)
    return nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1, bias=False),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(6, 8, 3, padding=1, bias=False),
        nn.ReLU(inplace=True),
        nn.AdaptiveAvgPool2d(2),
        nn.Flatten(),
        nn.Linear(32, 5, bias=False),
    ).eval()


def images(n=2, size=8, seed=5):
    torch.manual_seed(seed)
    u = torch.rand(n, 3, size, size)
    return (u - torch.tensor(MEAN).float().view(1, 3, 1, 1)) / torch.tensor(STD).float().view(
        1, 3, 1, 1
    )


def test_lrp0_equals_gradient_times_input():
    model, x = bias_free_net(), images()
    targets = torch.tensor([1, 3])
    heatmap, logits = Explainer(model, "lrp-z").explain(x, targets)
    x_req = x.clone().requires_grad_()
    out = model(x_req)
    picked = out[torch.arange(2), targets]
    (grad,) = torch.autograd.grad(picked.sum(), x_req)
    expected = (grad * x).sum(1)
    # the 1e-6 stabiliser of LRP-0 shifts near-zero pre-activations slightly
    torch.testing.assert_close(heatmap, expected, rtol=1e-3, atol=1e-4 * expected.abs().max())
    torch.testing.assert_close(logits, out.detach())
    assert heatmap.shape == (2, 8, 8) and heatmap.dtype == torch.float32


@pytest.mark.parametrize(
    "name", ["lrp-z", "lrp-a1b0", "lrp-a2b1", "lrp-z-flat", "lrp-a2b1-flat", "lrp-a1b0-zb"]
)
def test_conservation_on_bias_free_net(name):
    model, x = bias_free_net(), images()
    targets = torch.tensor([0, 4])
    heatmap, logits = Explainer(model, name).explain(x, targets)
    torch.testing.assert_close(
        heatmap.sum(dim=(1, 2)), logits[torch.arange(2), targets], rtol=1e-4, atol=1e-6
    )


def two_layer_net():
    torch.manual_seed(6)
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(4 * 4 * 4, 3, bias=False),
    ).eval()
    with torch.no_grad():
        model[0].bias.normal_(0, 0.3)
    return model


def relevance_into_first_layer(model, x, target):
    """LRP-0 on the top Linear (no bias): R_a = a * w_t * logit / stab(logit), per sample."""
    with torch.no_grad():
        hidden = model[:3](x)[0].double().numpy()
        logit = model(x)[0, target].double().item()
    w_t = model[3].weight[target].detach().double().numpy()
    return hidden * w_t * logit / stab(np.array(logit))


@pytest.mark.parametrize("variant", ["flat", "zb"])
def test_first_layer_variants(variant):
    model, x, target = two_layer_net(), images(n=1, size=4, seed=7), 2
    heatmap, _ = Explainer(model, f"lrp-z-{variant}").explain(x, torch.tensor([target]))
    R = relevance_into_first_layer(model, x, target)
    W, b, connected = dense(model[0], (3, 4, 4))
    if variant == "flat":
        expected = ref_flat(connected, R)
    else:
        low = np.repeat((0 - MEAN) / STD, 16)
        high = np.repeat((1 - MEAN) / STD, 16)
        expected = ref_zbox(x[0].double().numpy().reshape(-1), W, low, high, R)
    expected = expected.reshape(3, 4, 4).sum(0)
    assert_close(heatmap[0], expected)


def test_zbox_on_linear_first_layer_expands_bounds_per_channel():
    torch.manual_seed(8)
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 4), nn.ReLU(), nn.Linear(4, 2, bias=False))
    model.eval()
    x, target = images(n=1, size=2, seed=9), 1
    heatmap, logits = Explainer(model, "lrp-z-zb").explain(x, torch.tensor([target]))
    with torch.no_grad():
        hidden = model[:3](x)[0].double().numpy()
    w_t = model[3].weight[target].detach().double().numpy()
    logit = logits[0, target].double().item()
    R = hidden * w_t * logit / stab(np.array(logit))
    W, _, _ = dense(model[1], (12,))
    low, high = np.repeat((0 - MEAN) / STD, 4), np.repeat((1 - MEAN) / STD, 4)
    expected = ref_zbox(x[0].double().numpy().reshape(-1), W, low, high, R)
    assert_close(heatmap[0], expected.reshape(3, 2, 2).sum(0))


def test_batch_norm_is_folded_and_standalone_batch_norm_passes():
    torch.manual_seed(10)
    model = nn.Sequential(
        nn.BatchNorm2d(3),  # nothing to fold into: passes relevance through
        nn.Conv2d(3, 4, 3, padding=1, bias=False),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(64, 2, bias=False),
    ).eval()
    for bn in (model[0], model[2]):
        with torch.no_grad():
            bn.weight.uniform_(0.5, 1.5)
            bn.bias.normal_(0, 0.1)
            bn.running_mean.normal_(0, 0.1)
            bn.running_var.uniform_(0.5, 1.5)
    explainer = Explainer(model, "lrp-z")
    kept = [m for m in explainer.model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert len(kept) == 1 and kept[0].num_features == 3
    x = images(n=1, size=4)
    heatmap, logits = explainer.explain(x, torch.tensor([1]))
    torch.testing.assert_close(logits, model(x).detach(), rtol=1e-5, atol=1e-6)
    assert torch.isfinite(heatmap).all()


# ---- composites and errors -------------------------------------------------------------------


def test_composite_names():
    names = composite_names()
    assert names == sorted(names)
    zennit = {"EpsilonPlus", "EpsilonAlpha2Beta1", "EpsilonPlusFlat", "EpsilonAlpha2Beta1Flat"}
    paper = {
        f"{base}{suffix}"
        for base in ("lrp-z", "lrp-eps", "lrp-a1b0", "lrp-a2b1", "cmp-a1b0", "cmp-a2b1")
        for suffix in ("", "-flat", "-zb")
    }
    # LXT's torchvision ViT recipe (test_lrp_vit.py), and with AttnLRP (test_lrp_attnlrp.py)
    transformers = {"cp-lrp", "attnlrp"}
    assert set(names) == zennit | {"EpsilonGammaBox"} | paper | transformers
    assert len(names) == len(set(names))  # one registration per name


def test_describe_composite_is_one_line_per_composite():
    for name in composite_names():
        line = describe_composite(name)
        assert "\n" not in line and "conv: " in line and "linear: " in line, name
    assert describe_composite("EpsilonPlusFlat").startswith(
        "first layer: flat; conv: alpha1-beta0; linear: epsilon(1e-6); avgpool/residual sum: norm"
    )
    assert "first conv: z^B box" in describe_composite("EpsilonGammaBox")
    assert "gamma(0.25)" in describe_composite("EpsilonGammaBox")
    assert describe_composite("cmp-a2b1").startswith("conv: alpha2-beta1; linear: epsilon(0.1)")


def test_unknown_composite_is_a_spec_error():
    with pytest.raises(SpecError, match=r"unknown composite 'Nope'; known: .*EpsilonPlus"):
        Explainer(bias_free_net(), "Nope")
    with pytest.raises(SpecError, match="Nope"):
        describe_composite("Nope")


class Scale(nn.Module):
    def __init__(self):
        super().__init__()
        self.factor = nn.Parameter(torch.tensor(2.0))

    def forward(self, x):
        return x * self.factor


class Gated(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 1)

    def forward(self, x):
        return self.conv(x) * torch.sigmoid(x)


def head():
    return [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(3, 2)]


class Nested(nn.Module):
    def __init__(self, inner):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 3, 3, padding=1), inner)
        self.head = nn.Sequential(*head())

    def forward(self, x):
        return self.head(self.body(x))


@pytest.mark.parametrize(
    ("model", "path", "kind"),
    [
        (nn.Sequential(nn.Conv2d(3, 3, 1), nn.Softplus(), *head()), "'1'", "Softplus"),
        (Nested(Scale()), "'body.1'", "Scale"),
        (Nested(nn.Sequential(nn.Identity(), Gated())), "'body.1.1'", "sigmoid"),
        (Nested(nn.Conv2d(3, 3, 3, padding=1, padding_mode="reflect")), "'body.1'", "Conv2d"),
        (nn.Sequential(nn.Flatten(), nn.LSTM(12, 4)), "'1'", "LSTM"),
    ],
    ids=["softplus", "custom-leaf", "function", "reflect-padding", "lstm"],
)
def test_unsupported_layer_is_named(model, path, kind):
    for build in (ensure_supported, lambda m: Explainer(m, "EpsilonPlus")):
        with pytest.raises(UnsupportedModelError) as info:
            build(model.eval())
        assert path in str(info.value) and kind in str(info.value)


def test_a_supported_nested_model_is_explained_and_conserves():
    model = bias_free_net()
    ensure_supported(model)  # does not raise
    x = images()
    maps, logits = Explainer(model, "lrp-z").explain(x, torch.tensor([1, 3]))
    # bias-free, LRP-0 everywhere: each heatmap sums to its target logit
    torch.testing.assert_close(maps.sum((1, 2)), logits[[0, 1], [1, 3]], rtol=1e-4, atol=1e-5)
    nested = Nested(nn.ReLU()).eval()
    ensure_supported(nested)
    maps, _ = Explainer(nested, "lrp-eps").explain(x, torch.tensor([0, 0]))
    assert maps.shape == (2, 8, 8) and torch.isfinite(maps).all() and maps.abs().sum() > 0
