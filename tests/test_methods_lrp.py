"""`kind = "lrp"` methods against zennit 0.5.1 with the same parameters: a preset with one
role's rule changed (EpsilonGammaBox with gamma = 0.5), rules by role without a preset
(a SpecialFirstLayerMapComposite with epsilon = 0.25 and flat on the first layer), and a
per-module override (zennit's NameMapComposite before a preset); and each mistake in an
lrp table one line naming its key."""

from __future__ import annotations

import copy

import pytest
import torch
from zennit.attribution import Gradient
from zennit.composites import (
    EpsilonGammaBox,
    EpsilonPlus,
    MixedComposite,
    NameMapComposite,
    SpecialFirstLayerMapComposite,
    layer_map_base,
)
from zennit.rules import Epsilon, Flat, Gamma
from zennit.torchvision import ResNetCanonizer, VGGCanonizer
from zennit.types import Convolution, Linear
from zennit_models import HIGH, LOW, MEAN, NUM_CLASSES, STD, STRICT, build

from heatjob.attribution.registry import build_method
from heatjob.errors import SpecError
from heatjob.job.prepare import prepare
from heatjob.spec import parse_spec

SIZE = 64
IMAGES = torch.tensor([0, 0, 1])
TARGETS = torch.tensor([1, 3, 0])


@pytest.fixture(scope="module", params=["vgg11", "resnet18"])
def case(request):
    torch.manual_seed(0)
    model = build(request.param, small_classifier=True)
    x = torch.randn(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(1))
    canonizer = VGGCanonizer() if request.param.startswith("vgg") else ResNetCanonizer()
    return request.param, model, x, canonizer


def ours(model, x, **table):
    method = build_method({"kind": "lrp", **table}, model, mean=MEAN.tolist(), std=STD.tolist())
    return method.explain_rows(x, IMAGES, TARGETS)[0]


def zennit(model, x, composite):
    xr = x[IMAGES].clone()
    onehot = torch.nn.functional.one_hot(TARGETS, NUM_CLASSES).float()
    with Gradient(copy.deepcopy(model), composite) as attributor:
        _, relevance = attributor(xr, lambda out: onehot * out)
    return relevance.sum(1)


def relative(a, b):
    return ((a - b).abs().max() / b.abs().max()).item()


def resolved(table):
    raw = {
        "dataset": {"kind": "synthetic"},
        "model": {"arch": "small_cnn"},
        "attribution": {"methods": {"m": {"kind": "lrp", **table}}},
        "store": {"path": "x"},
    }
    return parse_spec(raw).attribution.methods["m"]


def test_a_preset_with_gamma_half_equals_zennit_epsilon_gamma_box(case):
    name, model, x, canonizer = case
    table = resolved({"preset": "EpsilonGammaBox", "conv": {"rule": "gamma", "gamma": 0.5}})
    maps = ours(model, x, **{k: v for k, v in table.items() if k != "kind"})
    reference = zennit(model, x, EpsilonGammaBox(LOW, HIGH, gamma=0.5, canonizers=[canonizer]))
    diff = relative(maps, reference)
    print(f"lrp EpsilonGammaBox gamma 0.5 on {name}: {diff:.2e}")
    assert diff < STRICT


def test_rules_by_role_equal_zennit_special_first_layer_map():
    torch.manual_seed(0)
    model = build("vgg11", small_classifier=True)  # no batch norm: exact folding is zennit's
    x = torch.randn(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(1))
    eps = {"rule": "epsilon", "epsilon": 0.25}
    table = resolved({"conv": eps, "linear": eps, "first": {"rule": "flat"}})
    maps = ours(model, x, **{k: v for k, v in table.items() if k != "kind"})
    composite = SpecialFirstLayerMapComposite(
        layer_map=[*layer_map_base(), (Convolution, Epsilon(0.25)), (Linear, Epsilon(0.25))],
        first_map=[(Linear, Flat())],
    )
    diff = relative(maps, zennit(model, x, composite))
    print(f"lrp epsilon 0.25 + flat first on vgg11: {diff:.2e}")
    assert diff < STRICT


def test_a_layer_override_equals_zennit_name_map_before_the_preset(case):
    name, model, x, canonizer = case
    path = "features.3" if name == "vgg11" else "layer1.0.conv1"
    table = resolved({"preset": "EpsilonPlus", "layers": {path: {"rule": "gamma", "gamma": 0.5}}})
    maps = ours(model, x, **{k: v for k, v in table.items() if k != "kind"})
    composite = MixedComposite(
        [NameMapComposite([((path,), Gamma(0.5))]), EpsilonPlus()], canonizers=[canonizer]
    )
    diff = relative(maps, zennit(model, x, composite))
    print(f"lrp EpsilonPlus + {path} gamma 0.5 on {name}: {diff:.2e}")
    assert diff < STRICT
    # and the override does something
    plain = ours(model, x, preset="EpsilonPlus")
    assert relative(plain, maps) > 1e-3


def test_zbox_bounds_default_to_the_normalised_pixel_values_0_and_1():
    table = resolved({"preset": "EpsilonPlus", "first": {"rule": "zbox"}})
    assert table["first"]["low"] == pytest.approx(LOW.flatten().tolist())
    assert table["first"]["high"] == pytest.approx(HIGH.flatten().tolist())
    # a default box is the preset EpsilonGammaBox's: the same maps (the bounds are computed
    # in float64 here, in float32 by the engine, so equal to round-off)
    torch.manual_seed(0)
    model = build("vgg11", small_classifier=True)
    x = torch.randn(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(1))
    box = resolved({"preset": "EpsilonGammaBox", "first": {"rule": "zbox"}})
    maps = ours(model, x, **{k: v for k, v in box.items() if k != "kind"})
    assert relative(maps, ours(model, x, preset="EpsilonGammaBox")) < STRICT


@pytest.mark.parametrize(
    ("low", "high"),
    [(-3.0, 3.0), ([-2.5, -2.0, -1.5], [1.0, 2.0, 3.0]), (-1.0, [1.5, 2.5, 3.5])],
    ids=["scalar", "per-channel", "mixed"],
)
def test_zbox_bounds_equal_zennit_zbox_with_the_same_bounds(case, low, high):
    name, model, x, canonizer = case
    table = resolved(
        {"preset": "EpsilonGammaBox", "first": {"rule": "zbox", "low": low, "high": high}}
    )
    maps = ours(model, x, **{k: v for k, v in table.items() if k != "kind"})

    def bound(value):
        return torch.tensor(value).view(1, 3, 1, 1) if isinstance(value, list) else value

    reference = zennit(model, x, EpsilonGammaBox(bound(low), bound(high), canonizers=[canonizer]))
    diff = relative(maps, reference)
    print(f"lrp zbox low {low} high {high} on {name}: {diff:.2e}")
    assert diff < STRICT
    # and the bounds matter: the default box gives other maps
    assert relative(ours(model, x, preset="EpsilonGammaBox"), maps) > 1e-3


@pytest.mark.parametrize(
    ("table", "expected"),
    [
        ({"preset": "EpsilonMinus"}, "[attribution.methods.m] preset is not a composite"),
        ({"conv": {"rule": "z"}}, "[attribution.methods.m] linear is required"),
        (
            {"preset": "EpsilonPlus", "conv": {"rule": "zz"}},
            "[attribution.methods.m] conv.rule must be one of",
        ),
        (
            {"preset": "EpsilonPlus", "conv": {"rule": "alpha-beta", "alpha": 2, "beta": 2}},
            "[attribution.methods.m] conv alpha - beta must be 1",
        ),
        (
            {"preset": "EpsilonPlus", "linear": {"rule": "epsilon", "epsilon": -0.1}},
            "[attribution.methods.m] linear.epsilon must be 0 or positive",
        ),
        (
            {"preset": "EpsilonPlus", "first": {"rule": "flat", "gamma": 1}},
            "[attribution.methods.m] first.gamma is not a parameter of rule 'flat'",
        ),
        (
            {"preset": "EpsilonPlus", "layers": {"features.0": "flat"}},
            "[attribution.methods.m] layers.features.0 must be a table",
        ),
        (
            {"preset": "EpsilonPlus", "first": {"rule": "zbox", "low": 1.0, "high": -1.0}},
            "[attribution.methods.m] first low must be below high in every channel",
        ),
        (
            {"preset": "EpsilonPlus", "first": {"rule": "zbox", "low": [0.0, 1.0]}},
            "[attribution.methods.m] first.low must be a number or 3 numbers",
        ),
        (
            {"preset": "EpsilonPlus", "first": {"rule": "zbox", "high": "1"}},
            "[attribution.methods.m] first.high must be a number or 3 numbers",
        ),
        (
            # a low above the default high (the normalised pixel value 1: 2.25 for red)
            {"preset": "EpsilonPlus", "first": {"rule": "zbox", "low": 2.5}},
            "[attribution.methods.m] first low must be below high in every channel",
        ),
        ({"preset": "EpsilonPlus", "rules": {}}, "[attribution.methods.m] unknown key 'rules'"),
        ({"preset": "EpsilonPlus", "conv": "gamma"}, "[attribution.methods.m] conv must be a"),
    ],
)
def test_each_lrp_mistake_names_its_key(table, expected):
    with pytest.raises(SpecError) as info:
        resolved(table)
    assert expected in str(info.value) and "\n" not in str(info.value)


def test_a_layer_path_the_model_does_not_have_is_refused_at_prepare():
    raw = {
        "dataset": {"kind": "synthetic", "num_samples": 4, "image_size": 32},
        "model": {"arch": "small_cnn"},
        "attribution": {
            "methods": {
                "m": {
                    "kind": "lrp",
                    "preset": "EpsilonPlus",
                    "layers": {"features.1": {"rule": "flat"}},
                }
            }
        },
        "store": {"path": "x"},
    }
    with pytest.raises(SpecError) as info:
        prepare(parse_spec(raw, source="x.toml"), progress=False)
    assert "[attribution.methods.m] layers: 'features.1' is not a Conv2d or Linear" in str(
        info.value
    )
