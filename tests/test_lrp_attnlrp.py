"""The attnlrp composite (AttnLRP, Achtibat et al. 2024): one attention layer against LXT 2.1's
explicit rule functions, torchvision ViTs against LXT's efficient AttnLRP, Swin's window
attention against the gradient x input of the network whose matmul operands take half the
gradient, and attnlrp neither cp-lrp under another name nor anything but finite. LXT runs in a
process of its own (tests/oracle/lxt_attnlrp.py): it patches torch and zennit globally."""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from detached import bias_free, detached_rules, gradient_x_input
from torch import nn
from torchvision.models.swin_transformer import SwinTransformer
from torchvision.models.vision_transformer import VisionTransformer
from zennit_models import randomize_vit

from heatjob.attribution.lrp import Explainer, describe_composite
from heatjob.attribution.lrp.composites import Composite, get_composite
from heatjob.attribution.lrp.rules import Z
from heatjob.attribution.lrp.transformer import AttentionLayer
from heatjob.attribution.lrp_method import LrpOptions

ORACLE = Path(__file__).parent / "oracle" / "lxt_attnlrp.py"
TINY_VIT = {
    "image_size": 32,
    "patch_size": 8,
    "num_layers": 2,
    "num_heads": 2,
    "hidden_dim": 32,
    "mlp_dim": 64,
    "num_classes": 5,
}
VIT_B_16 = {
    "image_size": 64,
    "patch_size": 16,
    "num_layers": 12,
    "num_heads": 12,
    "hidden_dim": 768,
    "mlp_dim": 3072,
    "num_classes": 10,
}
# LRP-0 with no stabiliser to speak of, and AttnLRP in the attention
EXACT_ATTNLRP = Composite("z-attnlrp", conv=Z(1e-30), linear=Z(1e-30), attention="attnlrp")


def _oracle(*args: object) -> None:
    result = subprocess.run(
        [sys.executable, str(ORACLE), *map(str, args)],
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert result.returncode == 0, result.stderr[-3000:]


def _relative_error(ours: np.ndarray, expected: np.ndarray) -> float:
    scale = np.abs(expected).max()
    assert scale > 0
    return float(np.abs(ours - expected).max() / scale)


def test_one_attention_layer_equals_lxt_explicit_rules(tmp_path):
    """heatjob's AttnLRP attention hands the same relevance to its input as LXT's linear_epsilon,
    matmul and softmax composed the same way, to float32 round-off (1e-6 of the largest)."""
    torch.manual_seed(0)
    attention = nn.MultiheadAttention(16, 4, batch_first=True).eval()
    with torch.no_grad():
        attention.in_proj_bias.normal_(0.0, 0.1)
        attention.out_proj.bias.normal_(0.0, 0.1)
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(2, 7, 16, generator=generator)
    relevance = torch.randn(2, 7, 16, generator=generator)
    paths = [tmp_path / name for name in ("state.pt", "x.npy", "r.npy", "out.npy")]
    torch.save(attention.state_dict(), paths[0])
    np.save(paths[1], x.numpy())
    np.save(paths[2], relevance.numpy())
    _oracle("layer", *paths, attention.num_heads)
    expected = np.load(paths[3])

    layer = AttentionLayer(attention, "attnlrp")
    inputs = x.clone().requires_grad_(True)
    output, _ = layer(inputs, inputs, inputs)
    torch.testing.assert_close(output, attention(x, x, x, need_weights=False)[0])
    (ours,) = torch.autograd.grad(output, inputs, relevance)
    assert _relative_error(ours.numpy(), expected) <= 1e-6
    # relevance reaches the input through queries and keys too: not the CP-LRP answer
    cp = AttentionLayer(attention, "cp")
    (cp_relevance,) = torch.autograd.grad(cp(inputs, inputs, inputs)[0], inputs, relevance)
    assert _relative_error(cp_relevance.numpy(), expected) > 1e-2


def _vit(config: dict, seed: int = 0) -> VisionTransformer:
    """torchvision's ViT with random weights; head, class token and norms randomised
    (torchvision starts the head and the class token at zero)."""
    torch.manual_seed(seed)
    return randomize_vit(VisionTransformer(**config), head_std=0.05)


def _against_lxt(tmp_path, config: dict) -> float:
    model = _vit(config)
    size = config["image_size"]
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(2))
    targets = torch.tensor([1, 4])
    paths = [tmp_path / name for name in ("state.pt", "x.npy", "t.npy", "out.npy")]
    torch.save(model.state_dict(), paths[0])
    np.save(paths[1], x.numpy())
    np.save(paths[2], targets.numpy())
    ours = Explainer(model, "attnlrp").explain(x, targets)[0].numpy()
    _oracle("vit", json.dumps(config), *paths)
    return _relative_error(ours, np.load(paths[3]))


def test_small_vit_equals_lxt_attnlrp(tmp_path):
    """attnlrp against LXT 2.1's efficient rules with its AttnLRP attention wrapper (the oracle's
    docstring), gamma 0.25 on the conv and 0.05 on linear layers, torchvision's ViT class, to
    float32 round-off (1e-5 of the heatmaps' maximum)."""
    assert _against_lxt(tmp_path, TINY_VIT) <= 1e-5


@pytest.mark.slow  # 40-60 s on two shared cores
def test_vit_b_16_equals_lxt_attnlrp(tmp_path):
    """As above on vit_b_16's configuration at 64 px, random weights."""
    assert _against_lxt(tmp_path, VIT_B_16) <= 1e-5


def _small_swin() -> nn.Module:
    """48 px: 12x12 tokens in 4x4 windows (shifted by 2), then 6x6 padded to 8x8; random weights
    with a relative position bias that does something."""
    torch.manual_seed(0)
    model = SwinTransformer([4, 4], 16, [2, 2], [2, 4], [4, 4], num_classes=5)
    with torch.no_grad():
        for path, param in model.named_parameters():
            if path.endswith("relative_position_bias_table"):
                param.normal_(0.0, 1.0)
        for module in model.modules():
            if isinstance(module, nn.Linear | nn.Conv2d):
                module.reset_parameters()
    return model.eval()


_MATMUL = torch.Tensor.matmul


def _halved_matmul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a @ b whose operands each get half the gradient: AttnLRP's uniform rule in gradient form."""

    def half(t: torch.Tensor) -> torch.Tensor:
        return 0.5 * t + (0.5 * t).detach()

    return _MATMUL(half(a), half(b))


@contextlib.contextmanager
def _halved_matmuls():
    torch.Tensor.matmul = _halved_matmul  # Swin's q.matmul(k^T) and attn.matmul(v)
    try:
        yield
    finally:
        torch.Tensor.matmul = _MATMUL


def test_swin_window_attention_is_gradient_x_input_with_halved_matmuls():
    """LRP-0 with AttnLRP attention on a bias-free Swin is the gradient x input of the network
    with LayerNorm stds and GELU ratios detached, the softmax keeping its gradient (its Taylor
    rule) and each matmul operand half the gradient (the uniform rule)."""
    model = bias_free(_small_swin())
    x = torch.randn(2, 3, 48, 48, generator=torch.Generator().manual_seed(1))
    targets = torch.tensor([1, 3])
    heatmaps, _ = Explainer(model, EXACT_ATTNLRP).explain(x, targets)
    with detached_rules(constant_softmax=False), _halved_matmuls():
        expected = gradient_x_input(model, x, targets)
    assert (heatmaps - expected).abs().max() <= 1e-5 * expected.abs().max()
    cp = Explainer(model, Composite("z-cp", conv=Z(1e-30), linear=Z(1e-30)))
    assert (cp.explain(x, targets)[0] - expected).abs().max() > 1e-2 * expected.abs().max()


@pytest.mark.parametrize("name", ["vit", "swin"])
def test_attnlrp_is_finite_and_not_cp_lrp(name):
    model = _vit(TINY_VIT) if name == "vit" else _small_swin()
    size = 32 if name == "vit" else 48
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(3))
    targets = torch.tensor([0, 2])
    attnlrp, logits = Explainer(model, "attnlrp").explain(x, targets)
    cp_lrp, _ = Explainer(model, "cp-lrp").explain(x, targets)
    assert torch.isfinite(attnlrp).all() and attnlrp.abs().sum() > 0
    torch.testing.assert_close(logits, model(x), rtol=1e-5, atol=1e-5)
    assert (attnlrp - cp_lrp).abs().max() > 1e-2 * cp_lrp.abs().max()


def test_attnlrp_preset_reaches_lrp_methods_and_describe():
    assert get_composite("attnlrp").attention == "attnlrp"
    assert get_composite("cp-lrp").attention == "cp"
    assert describe_composite("attnlrp").startswith("conv: gamma(0.25); linear: gamma(0.05)")
    assert "attention: AttnLRP" in describe_composite("attnlrp")
    assert "attention" not in describe_composite("cp-lrp")
    options = LrpOptions(preset="attnlrp", linear={"rule": "epsilon", "epsilon": 1e-6})
    options.check(lambda key, why: pytest.fail(f"{key}: {why}"))
    assert options.composite().attention == "attnlrp"
    with pytest.raises(ValueError, match="attention 'softmax'"):
        Composite("x", conv=Z(), linear=Z(), attention="softmax")
