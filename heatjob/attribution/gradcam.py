"""Grad-CAM: Captum 0.9's LayerGradCam on one layer's output, then bilinear upsampling.

Per row: the gradient of the target logit (seeded with 1, Captum's convention) with
respect to the layer's output A (n, K, h, w), averaged over h and w per channel, weighs
A's channels; their sum, through a ReLU (relu_attributions=True), is upsampled to the
image size by `F.interpolate(mode="bilinear", align_corners=False)`, as
`captum.attr.LayerAttribution.interpolate` does.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from heatjob.attribution.gradient import frozen_copy
from heatjob.attribution.registry import register_method
from heatjob.attribution.rows import PRECISIONS, check_rows, rounds
from heatjob.errors import SpecError

ACTIVATION_AND_NORM = (nn.ReLU, nn.BatchNorm2d, nn.LeakyReLU, nn.ELU, nn.GELU, nn.SiLU)
CONTAINERS = (nn.Sequential, nn.ModuleList, nn.ModuleDict)


def default_layer(model: nn.Module) -> str:
    """The output of the last convolution block: find the last nn.Conv2d (in module
    order); if it sits inside a block that is not a plain container (a residual block),
    the outermost such block below the model; else the conv together with the batch norm
    and activation modules that follow it in its container (VGG: features.<conv + 1>,
    its ReLU)."""
    convs = [name for name, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    if not convs:
        raise SpecError("gradcam needs a layer: the model has no Conv2d")
    path = convs[-1].split(".")
    for depth in range(1, len(path)):
        if not isinstance(model.get_submodule(".".join(path[:depth])), CONTAINERS):
            return ".".join(path[:depth])
    parent = model.get_submodule(".".join(path[:-1])) if len(path) > 1 else model
    names = list(parent._modules)
    position = names.index(path[-1])
    while position + 1 < len(names) and isinstance(
        parent._modules[names[position + 1]], ACTIVATION_AND_NORM
    ):
        position += 1
    return ".".join([*path[:-1], names[position]])


def has_layer(model: nn.Module, layer: str) -> bool:
    try:
        model.get_submodule(layer)
    except AttributeError:
        return False
    return bool(layer)


class GradCamExplainer:
    needs_samples = False

    def __init__(self, model: nn.Module, precision: str, layer: str) -> None:
        self.dtype = PRECISIONS[precision]
        self.model = frozen_copy(model, precision)
        self.layer = layer or default_layer(self.model)
        if not has_layer(self.model, self.layer):
            raise SpecError(f"gradcam layer {self.layer!r} is not a module of the model")
        self._acts: list[Tensor] = []
        self.model.get_submodule(self.layer).register_forward_hook(self._keep)

    def _keep(self, module: nn.Module, inputs: object, output: Tensor) -> Tensor:
        # keep the layer's output and pass a clone on (as Captum does), so that an in-place
        # activation after the layer (VGG's ReLU(inplace=True)) leaves the kept one alone
        self._acts.append(output)
        return output.clone()

    def explain_rows(self, x: Tensor, images: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
        groups = rounds(images)
        images, targets = check_rows(x, images, targets)
        x = x.detach().to(self.dtype).requires_grad_(True)
        maps = torch.empty(len(images), *x.shape[2:], device=x.device)
        self._acts.clear()
        try:
            with torch.enable_grad():
                logits = self.model(x)
                (acts,) = self._acts
                for k, rows in enumerate(groups):
                    rows_t = torch.as_tensor(rows, device=x.device)
                    image, target = images[rows_t], targets[rows_t]
                    seed = torch.zeros_like(logits)
                    seed[image, target] = 1
                    last = k == len(groups) - 1
                    (g,) = torch.autograd.grad(logits, acts, seed, retain_graph=not last)
                    g, a = g[image], acts.detach()[image]
                    weights = g.mean(dim=tuple(range(2, g.ndim)), keepdim=True)
                    cam = F.relu((weights * a).sum(dim=1, keepdim=True))
                    up = F.interpolate(
                        cam.float(), x.shape[2:], mode="bilinear", align_corners=False
                    )
                    maps[rows_t] = up[:, 0]
        finally:
            self._acts.clear()
        return maps, logits.detach().float()


@register_method("gradcam")
@dataclass(frozen=True)
class GradCamOptions:
    """Captum's LayerGradCam (ReLU on) at `layer`, upsampled bilinearly to S x S."""

    layer: str = ""  # a module path (model.get_submodule); "" = the last conv block's output

    def build(self, model: nn.Module, *, mean, std, precision: str = "float32"):
        return GradCamExplainer(model, precision, self.layer)
