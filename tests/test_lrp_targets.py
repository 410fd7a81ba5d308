"""Several targets per image from one forward pass (Explainer.explain_rows, .forward_pass)
against one target per pass (Explainer.explain), the path the zennit tests pin."""

import numpy as np
import pytest
import torch
import torchvision
from torch import nn

from heatjob.attribution.lrp import Explainer
from heatjob.attribution.rows import rounds as _rounds

NUM_CLASSES = 6


@pytest.fixture(scope="module")
def model() -> nn.Module:
    torch.manual_seed(0)
    net = torchvision.models.resnet18(num_classes=NUM_CLASSES).eval()
    with torch.no_grad():
        for module in net.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.normal_(0, 0.1)
                module.running_var.uniform_(0.5, 1.5)
    return net


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    torch.manual_seed(1)
    return torch.randn(3, 3, 32, 32)


def one_per_pass(explainer, x, images, targets):
    return torch.cat(
        [explainer.explain(x[i : i + 1], [t])[0] for i, t in zip(images, targets, strict=True)]
    )


def test_rounds_put_each_image_once_per_backward_pass():
    assert _rounds([0, 0, 0, 1, 2, 2]) == [[0, 3, 4], [1, 5], [2]]
    assert _rounds([2, 0, 2]) == [[0, 1], [2]]
    assert _rounds([]) == []


@pytest.mark.parametrize("composite", ["EpsilonGammaBox", "EpsilonAlpha2Beta1Flat", "lrp-eps"])
def test_every_class_of_every_image_from_one_forward_pass(model, images, composite):
    explainer = Explainer(model, composite)
    rows_image = np.repeat(np.arange(3), NUM_CLASSES)
    rows_target = np.tile(np.arange(NUM_CLASSES), 3)
    shared, logits = explainer.explain_rows(images, rows_image, rows_target)
    alone = one_per_pass(explainer, images, rows_image, rows_target)
    assert shared.shape == (18, 32, 32)
    scale = alone.abs().max()
    assert (shared - alone).abs().max() <= 1e-5 * scale  # batch composition: round-off only
    # conservation-ish sanity: each heatmap is its own target's, not a mix of several
    assert not torch.allclose(shared[0], shared[1])
    _, single_logits = explainer.explain(images, torch.zeros(3, dtype=torch.long))
    torch.testing.assert_close(logits, single_logits)


def test_uneven_rows_from_a_kept_forward_pass(model, images):
    """Images with 2, 0 and 3 rows through forward_pass then relevance (the worker's path: it
    reads the logits in between) equal one target per pass; the logits are the model's."""
    explainer = Explainer(model, "EpsilonPlusFlat")
    rows_image = np.array([0, 0, 2, 2, 2])
    targets = np.array([4, 1, 0, 5, 2])
    run = explainer.forward_pass(images)
    torch.testing.assert_close(run.logits, model(images).detach(), rtol=1e-4, atol=1e-5)
    maps = run.relevance(rows_image, targets)
    assert maps.shape == (5, 32, 32) and maps.dtype == torch.float32
    expected = one_per_pass(explainer, images, rows_image.tolist(), targets.tolist())
    torch.testing.assert_close(maps, expected, rtol=0, atol=1e-5 * float(expected.abs().max()))


def test_bad_row_indices_are_rejected(model, images):
    explainer = Explainer(model, "lrp-z")
    with pytest.raises(ValueError, match="image indices"):
        explainer.explain_rows(images, [0, 3], [1, 1])
    with pytest.raises(ValueError, match="equal 1-d"):
        explainer.explain_rows(images, [0, 1], [1])
