"""Occlusion: zennit 0.5.1's Occlusion attributor with its defaults' convention.

A `window` x `window` patch (all colour channels) slides over the image with `stride`,
wrapping around the edges as zennit's rolled mask does. As zennit's default occlusion
function does, everything but the patch is set to zero (in the normalised input space), and
the model's target logit on that image is added to every input value under the patch
(zennit with `attr_output = lambda out: onehot * out`: the score is the logit of the patch
alone, not a drop). Summed over the
colour channels like every heatmap. One forward pass per patch position over the batch's
images serves all their targets; no gradient is taken.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from heatjob.attribution.gradient import frozen_copy
from heatjob.attribution.registry import register_method
from heatjob.attribution.rows import PRECISIONS, check_rows


class OcclusionExplainer:
    needs_samples = False

    def __init__(self, model: nn.Module, precision: str, window: int, stride: int) -> None:
        self.dtype = PRECISIONS[precision]
        self.model = frozen_copy(model, precision)
        self.window, self.stride = window, stride

    def explain_rows(self, x: Tensor, images: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
        images, targets = check_rows(x, images, targets)
        x = x.detach().to(self.dtype)
        height, width = x.shape[2:]
        # zennit clips the window and stride to the input's size
        wy, wx = min(self.window, height), min(self.window, width)
        sy, sx = min(self.stride, height), min(self.stride, width)
        root = torch.zeros(height, width, dtype=torch.bool, device=x.device)
        root[:wy, :wx] = True
        result = torch.zeros(len(images), height, width, device=x.device)
        with torch.no_grad():
            for oy in range(0, height, sy):
                for ox in range(0, width, sx):
                    mask = root.roll((oy, ox), (0, 1))
                    scores = self.model(x * mask).float()[images, targets]
                    result += mask * scores[:, None, None]
            logits = self.model(x).float()
        # every colour channel is occluded alike, so the channel sum is channels x the map
        return result * x.shape[1], logits


@register_method("occlusion")
@dataclass(frozen=True)
class OcclusionOptions:
    """zennit's Occlusion: the target logit of each window x window patch alone, per patch."""

    window: int = 8  # patch side in pixels (zennit's window)
    stride: int = 8  # step between patches in pixels (zennit's stride)

    def check(self, fail) -> None:
        for key in ("window", "stride"):
            value = getattr(self, key)
            if not 1 <= value <= 4096:
                fail(key, f"must be 1 to 4096, got {value}")

    def build(self, model: nn.Module, *, mean, std, precision: str = "float32"):
        return OcclusionExplainer(model, precision, self.window, self.stride)
