"""Classifier models by name: torchvision architectures and heatjob's own small CNN and ViT.

A model comes from an architecture name plus either torchvision weights (by
name) or a state_dict checkpoint; it is returned in eval mode on the CPU.
"""

from __future__ import annotations

import difflib
import hashlib
from collections.abc import Callable
from pathlib import Path

import torch
import torchvision
from torch import nn

from heatjob.errors import SpecError


class SmallCNN(nn.Module):
    """A VGG-shaped CNN small enough to train on a laptop CPU in minutes.

    `features` / `avgpool` / `classifier` mirror torchvision's VGG so tools that
    know VGG (canonizers, LRP composites) treat it alike.
    """

    def __init__(self, num_classes: int = 6, width: int = 32) -> None:
        super().__init__()
        channels = [3, width, 2 * width, 4 * width, 4 * width]
        layers: list[nn.Module] = []
        for i, (c_in, c_out) in enumerate(zip(channels, channels[1:], strict=False)):
            layers += [nn.Conv2d(c_in, c_out, 3, padding=1), nn.BatchNorm2d(c_out), nn.ReLU()]
            if i < 3:
                layers.append(nn.MaxPool2d(2))
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(4)
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(4 * width * 16, 128),
            nn.ReLU(),
            nn.Dropout(0.3),
            nn.Linear(128, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.avgpool(self.features(x)))


def small_vit(
    num_classes: int = 6,
    image_size: int = 32,
    patch_size: int = 4,
    num_layers: int = 4,
    num_heads: int = 4,
    hidden_dim: int = 64,
    mlp_dim: int = 128,
) -> nn.Module:
    """torchvision's VisionTransformer, small enough to train on a laptop CPU in minutes.

    The class itself, not a copy, so the transformer rules (cp-lrp) explain it as they do
    vit_b_16.
    """
    return torchvision.models.vision_transformer.VisionTransformer(
        image_size=image_size,
        patch_size=patch_size,
        num_layers=num_layers,
        num_heads=num_heads,
        hidden_dim=hidden_dim,
        mlp_dim=mlp_dim,
        num_classes=num_classes,
    )


# heatjob's own architectures, beside torchvision's.
OWN_ARCHITECTURES: dict[str, Callable[..., nn.Module]] = {
    "small_cnn": SmallCNN,
    "small_vit": small_vit,
}


def known_architectures() -> list[str]:
    return sorted(
        set(torchvision.models.list_models(module=torchvision.models)) | set(OWN_ARCHITECTURES)
    )


def check_architecture(arch: str, source: str = "spec") -> None:
    """Fail with the closest names if `arch` is not a classification architecture."""
    known = known_architectures()
    if arch not in known:
        close = difflib.get_close_matches(arch, known, n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise SpecError(
            f"{source}: [model] arch {arch!r} is not a known classification model{hint}"
        )


def check_weights_name(arch: str, weights: str, source: str = "spec") -> None:
    if arch in OWN_ARCHITECTURES:
        raise SpecError(
            f"{source}: [model] weights: {arch} has no torchvision weights; use checkpoint"
        )
    names = [w.name for w in torchvision.models.get_model_weights(arch)]
    if weights not in names and weights != "DEFAULT":
        raise SpecError(
            f"{source}: [model] weights {weights!r} unknown for {arch}; known: {', '.join(names)}"
        )


def build_model(
    arch: str,
    num_classes: int,
    weights: str = "",
    checkpoint: str = "",
    source: str = "spec",
    options: dict | None = None,
) -> nn.Module:
    """An eval-mode model on the CPU, with weights or checkpoint loaded. `options`: keyword
    arguments for the builder ([model] options, e.g. image_size for a ViT)."""
    check_architecture(arch, source)
    options = dict(options or {})
    if weights:
        check_weights_name(arch, weights, source)
        try:
            model = _call_builder(arch, source, options, weights=weights)
        except SpecError:
            raise
        except Exception as exc:  # no network, missing cache: say what to do
            raise SpecError(
                f"{source}: [model] weights {weights!r} for {arch} could not be loaded ({exc}); "
                "place them in $TORCH_HOME/hub/checkpoints or use [model] checkpoint"
            ) from None
        out_features = _num_outputs(model)
        if num_classes and out_features != num_classes:
            raise SpecError(
                f"{source}: [model] num_classes = {num_classes} but weights {weights!r} "
                f"have {out_features} outputs"
            )
        return model.eval()
    # Without weights or a checkpoint the weights are random: seeded, so that every worker
    # (and every run) explains the same model, as resume and determinism need.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        if arch in OWN_ARCHITECTURES:
            model = _call_builder(arch, source, options, num_classes=num_classes)
        else:
            model = _call_builder(arch, source, options, weights=None, num_classes=num_classes)
    if checkpoint:
        load_checkpoint(model, checkpoint, arch, source)
    return model.eval()


def _call_builder(arch: str, source: str, options: dict, **fixed: object) -> nn.Module:
    """The architecture's builder with [model] options; a key it does not take, or a value it
    refuses, is one line naming the key."""
    builder = OWN_ARCHITECTURES.get(arch) or torchvision.models.get_model_builder(arch)
    try:
        return builder(**fixed, **options)
    except (TypeError, ValueError, AssertionError) as exc:
        if not options:
            raise
        message = " ".join(str(exc).split())[:200]
        given = ", ".join(f"{k} = {v!r}" for k, v in options.items())
        raise SpecError(
            f"{source}: [model] options {{ {given} }} rejected by {arch}: {message}"
        ) from None


def load_checkpoint(model: nn.Module, checkpoint: str, arch: str, source: str = "spec") -> None:
    """Load a state_dict (bare, or under 'state_dict'/'model', DataParallel prefixes removed)."""
    path = Path(checkpoint)
    if not path.is_file():
        raise SpecError(f"{source}: [model] checkpoint file not found: {checkpoint}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        first_line = next((line for line in str(exc).splitlines() if line.strip()), "")
        raise SpecError(
            f"{source}: [model] checkpoint {checkpoint} is not a torch state_dict file: "
            f"{type(exc).__name__}: {first_line[:200]}"
        ) from None
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict):
        raise SpecError(f"{source}: [model] checkpoint {checkpoint} holds no state_dict")
    state = {k.removeprefix("module."): v for k, v in state.items()}
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    mismatched = [
        f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state and hasattr(state[k], "shape") and state[k].shape != v.shape
    ]
    problems = []
    if missing:
        problems.append(f"missing {', '.join(missing[:3])}{' ...' if len(missing) > 3 else ''}")
    if unexpected:
        problems.append(
            f"unexpected {', '.join(unexpected[:3])}{' ...' if len(unexpected) > 3 else ''}"
        )
    if mismatched:
        problems.append(f"shape of {mismatched[0]}")
    if problems:
        raise SpecError(
            f"{source}: [model] checkpoint {checkpoint} does not fit {arch} "
            f"with num_classes: {'; '.join(problems)}"
        )
    model.load_state_dict(state)


def file_sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _num_outputs(model: nn.Module) -> int:
    last_linear = [m for m in model.modules() if isinstance(m, nn.Linear)]
    return last_linear[-1].out_features if last_linear else -1
