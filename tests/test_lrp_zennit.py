"""Heatmaps on torchvision models against zennit 0.5.1, the independent reference.

zennit folds a batch norm into the conv before it and then leaves the batch norm as "identity"
with running_var = 1 but its eps unchanged, so its canonized model still divides by
sqrt(1 + eps) after every folded batch norm (about 5e-6 each, ~1e-4 relative on resnet50).
heatjob's zennit-named composites reproduce that leftover, so they equal stock zennit; the
paper's composites fold exactly (their logits equal the model's).
"""

import copy

import pytest
import torch
from torch import nn
from zennit.attribution import Gradient
from zennit.composites import (
    EpsilonAlpha2Beta1,
    EpsilonAlpha2Beta1Flat,
    EpsilonGammaBox,
    EpsilonPlus,
    EpsilonPlusFlat,
)
from zennit.torchvision import ResNetCanonizer, VGGCanonizer
from zennit_models import HIGH, LOW, MEAN, NUM_CLASSES, STD, STRICT, build

from heatjob.attribution.lrp import Explainer, composite_names, explainers_for
from heatjob.attribution.lrp.engine import RuleLayer

ZENNIT = {
    "EpsilonPlus": lambda canonizers: EpsilonPlus(canonizers=canonizers),
    "EpsilonAlpha2Beta1": lambda canonizers: EpsilonAlpha2Beta1(canonizers=canonizers),
    "EpsilonPlusFlat": lambda canonizers: EpsilonPlusFlat(canonizers=canonizers),
    "EpsilonAlpha2Beta1Flat": lambda canonizers: EpsilonAlpha2Beta1Flat(canonizers=canonizers),
    "EpsilonGammaBox": lambda canonizers: EpsilonGammaBox(LOW, HIGH, canonizers=canonizers),
}
MODELS = ["vgg11", "vgg11_bn", "resnet18"]


@pytest.fixture(scope="module")
def models() -> dict[str, nn.Module]:
    torch.manual_seed(0)
    return {name: build(name) for name in MODELS}


@pytest.fixture(scope="module")
def small_models() -> dict[str, nn.Module]:
    torch.manual_seed(0)
    return {name: build(name, small_classifier=True) for name in MODELS}


@pytest.fixture(scope="module")
def batch() -> tuple[torch.Tensor, torch.Tensor]:
    torch.manual_seed(1)
    pixels = torch.rand(2, 3, 32, 32)
    return (pixels - MEAN.view(1, 3, 1, 1)) / STD.view(1, 3, 1, 1), torch.tensor([3, 7])


def zennit_heatmap(model, name, composite, x, targets):
    model = copy.deepcopy(model)
    canonizers = [ResNetCanonizer()] if name.startswith("resnet") else [VGGCanonizer()]
    with Gradient(model, ZENNIT[composite](canonizers)) as attributor:
        seed = torch.eye(NUM_CLASSES)[targets]
        _, relevance = attributor(x.clone(), lambda output: seed * output)
    return relevance.sum(1)


@pytest.mark.parametrize("composite", list(ZENNIT))
@pytest.mark.parametrize("name", MODELS)
def test_matches_zennit(models, batch, name, composite):
    x, targets = batch
    ours, logits = Explainer(models[name], composite).explain(x, targets)
    assert ours.shape == (2, 32, 32) and logits.shape == (2, NUM_CLASSES)

    reference = zennit_heatmap(models[name], name, composite, x, targets)
    scale = reference.abs().max()
    assert scale > 0
    assert (ours - reference).abs().max() <= STRICT * scale


@pytest.mark.parametrize("name", MODELS)
def test_paper_composites_fold_batch_norm_exactly(models, batch, name):
    x, targets = batch
    _, logits = Explainer(models[name], "cmp-a2b1-flat").explain(x, targets)
    with torch.no_grad():
        expected = models[name](x)
    torch.testing.assert_close(logits, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", ["vgg11_bn", "resnet18"])
def test_every_composite_runs(small_models, batch, name):
    x, targets = batch
    with torch.no_grad():
        expected_logits = small_models[name](x)
    for composite in composite_names():
        explainer = Explainer(small_models[name], composite)
        heatmap, logits = explainer.explain(x, targets)
        assert heatmap.shape == (2, 32, 32) and heatmap.dtype == torch.float32, composite
        assert torch.isfinite(heatmap).all() and heatmap.abs().sum() > 0, composite
        # zennit-named composites keep zennit's batch-norm leftovers (module docstring)
        tolerance = 1e-3 if explainer.composite.zennit_compatible else 1e-5
        torch.testing.assert_close(logits, expected_logits, rtol=tolerance, atol=1e-5)


@pytest.mark.parametrize("name", ["vgg11_bn", "resnet18"])
def test_callers_model_is_untouched(small_models, batch, name):
    model = small_models[name]
    before = {key: value.clone() for key, value in model.state_dict().items()}
    kinds = [type(module) for module in model.modules()]
    Explainer(model, "EpsilonGammaBox").explain(*batch)
    after = model.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[key], after[key]) for key in before)
    assert [type(module) for module in model.modules()] == kinds
    assert any(isinstance(module, nn.BatchNorm2d) for module in model.modules())
    assert all(param.requires_grad for param in model.parameters())
    assert all(param.grad is None for param in model.parameters())


@pytest.mark.parametrize("name", ["vgg11_bn", "resnet18"])
def test_explainers_for_shares_weights_and_gives_the_same_heatmaps(small_models, batch, name):
    x, targets = batch
    names = ["EpsilonPlusFlat", "EpsilonGammaBox", "cmp-a2b1-flat", "lrp-z"]
    shared = explainers_for(small_models[name], names)
    for composite in names:
        alone, _ = Explainer(small_models[name], composite).explain(x, targets)
        together, _ = shared[composite].explain(x, targets)
        assert torch.equal(alone, together), composite
    weights = [
        [m.bound.affine.weight.data_ptr() for m in ex.model.modules() if isinstance(m, RuleLayer)]
        for ex in (shared["cmp-a2b1-flat"], shared["lrp-z"])
    ]
    assert len(weights[0]) > 5
    assert weights[0] == weights[1]  # one copy of the weights, not one per composite
