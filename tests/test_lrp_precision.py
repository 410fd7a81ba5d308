"""The engine in bfloat16 against float32, and the `[run] precision` spec key."""

import copy

import pytest
import torch
import torchvision
from torch import nn

from heatjob.attribution.lrp import Explainer, explainers_for
from heatjob.errors import SpecError
from heatjob.spec import parse_spec


@pytest.fixture(scope="module")
def model() -> nn.Module:
    torch.manual_seed(0)
    return torchvision.models.vgg11_bn(num_classes=5).eval()


def test_bfloat16_heatmaps_are_close_to_float32(model):
    torch.manual_seed(1)
    x, targets = torch.randn(2, 3, 32, 32), torch.tensor([1, 4])
    for composite in ("EpsilonGammaBox", "cmp-a2b1-flat"):
        reference, ref_logits = Explainer(model, composite).explain(x, targets)
        ours, logits = explainers_for(model, [composite], precision="bfloat16")[composite].explain(
            x, targets
        )
        assert ours.dtype == torch.float32 and logits.dtype == torch.float32
        assert torch.isfinite(ours).all()
        assert not torch.equal(ours, reference)  # it really ran in bfloat16
        for a, b in zip(ours, reference, strict=True):
            assert torch.corrcoef(torch.stack([a.flatten(), b.flatten()]))[0, 1] > 0.95
        torch.testing.assert_close(logits, ref_logits, rtol=0.05, atol=0.05)


def test_unknown_precision_is_rejected(model):
    with pytest.raises(ValueError, match="precision must be one of"):
        Explainer(model, "lrp-z", precision="float64")


def spec(precision: str) -> dict:
    return {
        "dataset": {"kind": "synthetic"},
        "model": {"arch": "small_cnn"},
        "attribution": {"composites": ["lrp-z"]},
        "store": {"path": "out.zarr"},
        "run": {"precision": precision},
    }


def test_precision_spec_key():
    assert parse_spec(copy.deepcopy(spec("bfloat16"))).run.precision == "bfloat16"
    default = spec("float32")
    del default["run"]
    assert parse_spec(default).run.precision == "float32"
    with pytest.raises(SpecError, match=r"\[run\] precision must be one of"):
        parse_spec(spec("float64"))
