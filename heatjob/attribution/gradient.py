"""Gradient baselines: gradient, gradient x input, integrated gradients, SmoothGrad.

Each follows zennit 0.5.1's attributor of that name (zennit.attribution.Gradient,
IntegratedGradients, SmoothGrad) called with `attr_output = lambda out: onehot * out`:
the output is seeded with the target logit's value, re-evaluated at each integration
point and each noisy copy, as the LRP engine seeds it. The heatmap is the attribution
summed over the colour channels, like every heatmap (docs/methods.md).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from heatjob.attribution.registry import register_method
from heatjob.attribution.rows import PRECISIONS, check_rows, on_host, rounds


def frozen_copy(model: nn.Module, precision: str) -> nn.Module:
    """A copy of `model` in eval mode and `precision`, its parameters frozen."""
    copied = copy.deepcopy(model).eval().to(PRECISIONS[precision])
    for p in copied.parameters():
        p.requires_grad_(False)
    return copied


def seeded_gradients(
    model: nn.Module,
    x: Tensor,
    images: Tensor,
    targets: Tensor,
    groups: list[list[int]],
    dtype: torch.dtype,
) -> tuple[Tensor, Tensor]:
    """Input gradients (m, C, H, W) float32 of row k's target logit times its value (zennit's
    Gradient with attr_output = onehot * output), and the logits (n, C), from one forward
    pass over x; `groups`: rounds() of the rows."""
    x = x.detach().to(dtype).requires_grad_(True)
    grads = torch.empty(len(images), *x.shape[1:], device=x.device)
    with torch.enable_grad():
        logits = model(x)
        values = logits.detach()
        for k, rows in enumerate(groups):
            rows_t = torch.as_tensor(rows, device=x.device)
            image, target = images[rows_t], targets[rows_t]
            seed = torch.zeros_like(logits)
            seed[image, target] = values[image, target]
            last = k == len(groups) - 1
            (g,) = torch.autograd.grad(logits, x, seed, retain_graph=not last)
            grads[rows_t] = g[image].float()
    return grads, values.float()


class _GradientMethod:
    needs_samples = False

    def __init__(self, model: nn.Module, precision: str) -> None:
        self.dtype = PRECISIONS[precision]
        self.model = frozen_copy(model, precision)


class GradientExplainer(_GradientMethod):
    def __init__(self, model: nn.Module, precision: str, times_input: bool) -> None:
        super().__init__(model, precision)
        self.times_input = times_input

    def explain_rows(self, x: Tensor, images: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
        groups = rounds(images)
        images, targets = check_rows(x, images, targets)
        grads, logits = seeded_gradients(self.model, x, images, targets, groups, self.dtype)
        if self.times_input:
            grads = grads * x[images].to(self.dtype).float()
        return grads.sum(dim=1), logits


class IntegratedGradientsExplainer(_GradientMethod):
    def __init__(self, model: nn.Module, precision: str, steps: int) -> None:
        super().__init__(model, precision)
        self.steps = steps

    def explain_rows(self, x: Tensor, images: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
        groups = rounds(images)
        images, targets = check_rows(x, images, targets)
        x = x.detach().to(self.dtype)
        baseline = torch.zeros_like(x)
        result = torch.zeros(len(images), *x.shape[1:], device=x.device)
        logits = None
        # zennit's IntegratedGradients: the right Riemann sum over alpha = 1/n ... 1
        for alpha in torch.linspace(1.0 / self.steps, 1.0, self.steps):
            path_step = baseline + alpha * (x - baseline)
            grads, logits = seeded_gradients(
                self.model, path_step, images, targets, groups, self.dtype
            )
            result += grads / self.steps
        result *= (x - baseline)[images].float()
        return result.sum(dim=1), logits


class SmoothGradExplainer(_GradientMethod):
    """zennit's SmoothGrad: the mean gradient over `samples` copies of the image, the last
    one without noise, the others with Gaussian noise of std noise * (max - min) of the
    image. Row k's noise comes from a generator seeded by (seed, sample, target), drawn on
    the CPU, so a retried unit or another worker count gives the same noise."""

    needs_samples = True

    def __init__(self, model: nn.Module, precision: str, samples: int, noise: float, seed: int):
        super().__init__(model, precision)
        self.samples, self.noise, self.seed = samples, noise, seed

    def generator(self, sample: int, target: int) -> torch.Generator:
        state = np.random.SeedSequence([self.seed, sample, target]).generate_state(2, np.uint32)
        return torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))

    def explain_rows(
        self, x: Tensor, images: Tensor, targets: Tensor, samples: Sequence[int] | None = None
    ) -> tuple[Tensor, Tensor]:
        """`samples`: the data set index of each image of x (default: its position), which
        with the target seeds the row's noise."""
        host = list(zip(on_host(images).tolist(), on_host(targets).tolist(), strict=True))
        images, targets = check_rows(x, images, targets)
        if samples is None:
            samples = range(x.shape[0])
        samples = [int(s) for s in samples]
        x = x.detach().to(self.dtype)
        xr = x[images]
        dims = tuple(range(1, xr.ndim))
        std = self.noise * (xr.amax(dims, keepdim=True) - xr.amin(dims, keepdim=True))
        generators = [self.generator(samples[i], t) for i, t in host]
        result = torch.zeros(xr.shape, device=x.device)
        rows = torch.arange(len(images), device=x.device)
        out = None
        for n in range(self.samples):
            if n == self.samples - 1 or not len(generators):
                epsilon = torch.zeros_like(xr)
            else:
                noise = torch.stack([torch.randn(xr.shape[1:], generator=g) for g in generators])
                epsilon = noise.to(device=x.device, dtype=self.dtype) * std
            point = (xr + epsilon).requires_grad_(True)
            with torch.enable_grad():
                out = self.model(point)
                seed = torch.zeros_like(out)
                seed[rows, targets] = out.detach()[rows, targets]
                if len(images):
                    (g,) = torch.autograd.grad(out, point, seed)
                    result += g.float() / self.samples
        logits = torch.full((x.shape[0], out.shape[1]), torch.nan, device=x.device)
        logits[images] = out.detach().float()
        return result.sum(dim=1), logits


@register_method("gradient")
@dataclass(frozen=True)
class GradientOptions:
    """The input gradient of the target logit, seeded with its value."""

    def build(self, model: nn.Module, *, mean, std, precision: str = "float32"):
        return GradientExplainer(model, precision, times_input=False)


@register_method("gradient-x-input")
@dataclass(frozen=True)
class GradientXInputOptions:
    """The seeded input gradient times the (normalised) input."""

    def build(self, model: nn.Module, *, mean, std, precision: str = "float32"):
        return GradientExplainer(model, precision, times_input=True)


@register_method("integrated-gradients")
@dataclass(frozen=True)
class IntegratedGradientsOptions:
    """zennit's IntegratedGradients with a zero baseline (in the normalised input space)."""

    steps: int = 16  # integration points alpha = 1/steps, 2/steps, ..., 1 (zennit's n_iter)

    def check(self, fail) -> None:
        if not 1 <= self.steps <= 4096:
            fail("steps", f"must be 1 to 4096, got {self.steps}")

    def build(self, model: nn.Module, *, mean, std, precision: str = "float32"):
        return IntegratedGradientsExplainer(model, precision, self.steps)


@register_method("smoothgrad")
@dataclass(frozen=True)
class SmoothGradOptions:
    """zennit's SmoothGrad (samples = its n_iter, noise = its noise_level)."""

    samples: int = 20
    noise: float = 0.1
    seed: int = 0

    def check(self, fail) -> None:
        if not 1 <= self.samples <= 4096:
            fail("samples", f"must be 1 to 4096, got {self.samples}")
        if self.noise < 0:
            fail("noise", f"must be 0 or positive, got {self.noise}")
        if not 0 <= self.seed < 2**63:
            fail("seed", f"must be 0 or positive, got {self.seed}")

    def build(self, model: nn.Module, *, mean, std, precision: str = "float32"):
        return SmoothGradExplainer(model, precision, self.samples, self.noise, self.seed)
