"""Vision transformers: the shared transformer rules, the cp-lrp composite against LXT 2.1, the
refusals by module path and type, and [model] options."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import detached
import numpy as np
import pytest
import torch
import torchvision
from torch import nn
from torchvision.models.vision_transformer import VisionTransformer
from zennit_models import randomize_vit

from heatjob.attribution.lrp import Explainer, composite_names, ensure_supported
from heatjob.attribution.lrp.canonizers import trace
from heatjob.attribution.lrp.composites import Composite
from heatjob.attribution.lrp.handlers import plan
from heatjob.attribution.lrp.rules import Z
from heatjob.errors import SpecError, UnsupportedModelError
from heatjob.models import build_model
from heatjob.spec import parse_spec

ORACLE = Path(__file__).parent / "oracle" / "lxt_vit.py"


def tiny_vit(seed: int = 0) -> VisionTransformer:
    """torchvision's ViT class, small; head, class token and norms randomised (torchvision
    starts the head at zero and the class token at zero)."""
    torch.manual_seed(seed)
    model = VisionTransformer(
        image_size=32,
        patch_size=8,
        num_layers=2,
        num_heads=2,
        hidden_dim=32,
        mlp_dim=64,
        num_classes=5,
    )
    return randomize_vit(model, head_std=0.5)


def bias_free(model: VisionTransformer) -> VisionTransformer:
    """No bias anywhere and zero class token and position embedding: nothing absorbs relevance."""
    return detached.bias_free(model, zero=("class_token", "encoder.pos_embedding"))


def _norm_constant_std(norm: nn.LayerNorm, x: torch.Tensor) -> torch.Tensor:
    return detached.constant_std_layer_norm(
        x, norm.normalized_shape, norm.weight, norm.bias, norm.eps
    )


def detached_forward(model: VisionTransformer, x: torch.Tensor) -> torch.Tensor:
    """The ViT's forward with the LayerNorm stds, the attention's queries and keys, and the GELU
    ratios gelu(z)/z detached: its gradient x input is what LRP-0 must give."""
    n = x.shape[0]
    tokens = model.conv_proj(x).flatten(2).transpose(1, 2)
    tokens = torch.cat([model.class_token.expand(n, -1, -1), tokens], 1)
    tokens = tokens + model.encoder.pos_embedding
    for block in model.encoder.layers:
        h = _norm_constant_std(block.ln_1, tokens)
        h, _ = block.self_attention(h.detach(), h.detach(), h, need_weights=False)
        tokens = tokens + h
        z = block.mlp[0](_norm_constant_std(block.ln_2, tokens))
        z = z * (block.mlp[1](z) / z).detach()
        tokens = tokens + block.mlp[3](z)
    tokens = _norm_constant_std(model.encoder.ln, tokens)
    return model.heads(tokens[:, 0])


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))


TARGETS = torch.tensor([0, 3, 4])


@pytest.mark.parametrize("composite", ["cp-lrp", "lrp-z", "EpsilonPlus", "EpsilonGammaBox"])
def test_relevance_is_conserved_without_biases(images, composite):
    model = bias_free(tiny_vit())
    heatmaps, logits = Explainer(model, composite).explain(images, TARGETS)
    target_logits = logits[torch.arange(3), TARGETS]
    assert target_logits.abs().min() > 0.05  # a real signal to conserve
    torch.testing.assert_close(heatmaps.sum((1, 2)), target_logits, rtol=1e-4, atol=1e-5)


def test_lrp0_is_gradient_x_input_of_the_detached_network(images):
    model = bias_free(tiny_vit())
    x = images.clone().requires_grad_(True)
    logits = detached_forward(model, x)
    seed = torch.zeros_like(logits)
    seed[torch.arange(3), TARGETS] = 1.0  # gradient x input of the logit is its relevance
    (grad,) = torch.autograd.grad(logits, x, seed)
    expected = (x * grad).sum(1).detach()
    # LRP-0 with no stabilizer to speak of, so that the identity is exact up to round-off
    exact_z = Composite("z-exact", conv=Z(1e-30), linear=Z(1e-30))
    heatmaps, _ = Explainer(model, exact_z).explain(images, TARGETS)
    scale = expected.abs().max()
    assert (heatmaps - expected).abs().max() <= 1e-5 * scale


def test_biases_and_tokens_absorb_relevance(images):
    """With biases, a class token and a position embedding, part of the logit stays there: the
    heatmap differs from the logit, and the bias-free copy conserves it (test above)."""
    model = tiny_vit()
    heatmaps, logits = Explainer(model, "lrp-z").explain(images, TARGETS)
    target_logits = logits[torch.arange(3), TARGETS]
    assert not torch.allclose(heatmaps.sum((1, 2)), target_logits, rtol=1e-2)


@pytest.mark.parametrize("composite", composite_names())
def test_every_composite_explains_a_vit(images, composite):
    model = tiny_vit()
    heatmaps, logits = Explainer(model, composite).explain(images, TARGETS)
    assert heatmaps.shape == (3, 32, 32)
    assert torch.isfinite(heatmaps).all() and heatmaps.abs().sum() > 0
    torch.testing.assert_close(logits, model(images), rtol=1e-5, atol=1e-5)


def test_plan_gives_each_vit_layer_its_transformer_handler():
    steps = {str(s.node.target): s.handler.name for s in plan(trace(tiny_vit()))}
    assert steps["encoder.layers.encoder_layer_0.self_attention"] == "self-attention"
    assert steps["encoder.layers.encoder_layer_1.ln_2"] == "layer norm"
    assert steps["encoder.layers.encoder_layer_0.mlp.1"] == "gelu"
    assert steps["conv_proj"] == "conv/linear"


class _CrossAttention(nn.Module):
    def __init__(self, batch_first: bool = True) -> None:
        super().__init__()
        self.proj = nn.Linear(8, 8)
        self.self_attention = nn.MultiheadAttention(8, 2, batch_first=batch_first)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        keys = self.proj(x)
        return self.self_attention(x, keys, keys, need_weights=False)[0].sum(1)


class _Block(nn.Module):
    def __init__(self, norm: nn.Module) -> None:
        super().__init__()
        self.norm = norm

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(x).flatten(1)


class _Encoder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.layers = nn.Sequential()
        self.layers.add_module("encoder_layer_0", _CrossAttention(batch_first=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        attention = self.layers.encoder_layer_0.self_attention
        return attention(x, x, x, need_weights=False)[0]


@pytest.mark.parametrize(
    ("model", "fragments"),
    [
        (_CrossAttention(), ["'self_attention' (MultiheadAttention)", "self-attention"]),
        (
            _Encoder(),
            ["'layers.encoder_layer_0.self_attention' (MultiheadAttention)", "batch_first"],
        ),
        (_Block(nn.LayerNorm([4, 8])), ["'norm' (LayerNorm)", "last dimension"]),
        (_Block(nn.RMSNorm(8)), ["'norm' (RMSNorm)", "no LRP rule"]),
    ],
    ids=["cross-attention", "not-batch-first", "layernorm-2d", "rmsnorm"],
)
def test_unexplainable_layers_are_refused_by_path_and_type(model, fragments):
    with pytest.raises(UnsupportedModelError) as error:
        ensure_supported(model)
    message = str(error.value)
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message


def test_model_options_reach_the_builder_and_the_job():
    model = build_model("vit_b_32", 4, options={"image_size": 64})
    assert model.image_size == 64 and model.heads.head.out_features == 4
    base = {
        "dataset": {"kind": "synthetic", "num_samples": 4, "image_size": 64},
        "model": {"arch": "vit_b_32", "options": {"image_size": 64}},
        "attribution": {"composites": ["cp-lrp"]},
        "store": {"path": "out.zarr"},
    }
    other = {**base, "model": {"arch": "vit_b_32", "options": {"image_size": 96}}}
    first, second = parse_spec(base).content_dict(), parse_spec(other).content_dict()
    assert first["model"]["options"] == {"image_size": 64}
    assert first != second  # resume treats a change of options as another job


@pytest.mark.parametrize(
    ("options", "fragments"),
    [
        ({"image_sise": 64}, ["[model] options", "image_sise", "vit_b_32"]),
        ({"image_size": 65}, ["[model] options", "image_size = 65"]),
    ],
)
def test_bad_model_options_are_one_line(options, fragments):
    with pytest.raises(SpecError) as error:
        build_model("vit_b_32", 4, options=options)
    assert "\n" not in str(error.value)
    for fragment in fragments:
        assert fragment in str(error.value)


def test_options_set_by_other_keys_are_refused():
    raw = {
        "dataset": {"kind": "synthetic"},
        "model": {"arch": "vit_b_32", "options": {"num_classes": 3}},
        "attribution": {"composites": ["cp-lrp"]},
        "store": {"path": "out.zarr"},
    }
    with pytest.raises(SpecError, match=r"\[model\] options num_classes"):
        parse_spec(raw)


@pytest.mark.parametrize(
    ("options", "fragment"),
    [("{ image_sise = 64 }", "image_sise"), ("{}", "options = { image_size = 64 }")],
    ids=["unknown-key", "size-mismatch"],
)
@pytest.mark.slow  # a real heatjob process building a ViT-B/32
def test_bad_options_exit_2_on_the_command_line(tmp_path, options, fragment):
    spec = tmp_path / "job.toml"
    spec.write_text(
        '[dataset]\nkind = "synthetic"\nnum_samples = 2\nimage_size = 64\n'
        f'[model]\narch = "vit_b_32"\noptions = {options}\n'
        '[attribution]\ncomposites = ["cp-lrp"]\n'
        f'[store]\npath = "{tmp_path / "out.zarr"}"\n'
    )
    result = subprocess.run(
        [sys.executable, "-m", "heatjob.cli", "submit", str(spec)],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and fragment in lines[0] and "Traceback" not in result.stderr
    assert not (tmp_path / "out.zarr").exists()


def _lxt_model(arch: str, size: int) -> nn.Module:
    torch.manual_seed(0)
    model = torchvision.models.get_model(arch, image_size=size, num_classes=10)
    with torch.no_grad():  # torchvision starts the head and the class token at zero
        nn.init.normal_(model.heads.head.weight, std=0.05)
        nn.init.normal_(model.class_token, std=0.5)
    return model.eval()


@pytest.mark.slow
def test_cp_lrp_equals_lxt(tmp_path):
    """heatjob's cp-lrp against LXT 2.1 (monkey_patch of torchvision's vision_transformer, its
    zennit patch, Gamma 0.25 on the conv and 0.05 on linear layers), random weights, in a process
    of LXT's own: vit_b_16 and vit_b_32 at two image sizes each."""
    cases = [("vit_b_16", 64), ("vit_b_16", 96), ("vit_b_32", 64), ("vit_b_32", 96)]
    args, ours = [], []
    for k, (arch, size) in enumerate(cases):
        model = _lxt_model(arch, size)
        x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(k))
        targets = torch.tensor([1, 7])
        paths = [tmp_path / f"{k}.{ext}" for ext in ("pt", "x.npy", "t.npy", "out.npy")]
        torch.save(model.state_dict(), paths[0])
        np.save(paths[1], x.numpy())
        np.save(paths[2], targets.numpy())
        args += [arch, str(size), *map(str, paths)]
        ours.append(Explainer(model, "cp-lrp").explain(x, targets)[0].numpy())
        del model
    result = subprocess.run(
        [sys.executable, str(ORACLE), *args], capture_output=True, text=True, timeout=1200
    )
    assert result.returncode == 0, result.stderr[-3000:]
    for k, heatmaps in enumerate(ours):
        expected = np.load(tmp_path / f"{k}.out.npy")
        scale = np.abs(expected).max()
        assert scale > 0
        assert np.abs(heatmaps - expected).max() <= 1e-4 * scale, cases[k]
