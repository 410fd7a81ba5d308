"""CP-LRP heatmaps of a torchvision ViT by LXT 2.1, the oracle of tests/test_lrp_vit.py.

Run in a process of its own: LXT patches torchvision's (and so torch's) LayerNorm, GELU and
MultiheadAttention classes and zennit's hooks globally.

    python tests/oracle/lxt_vit.py ARCH IMAGE_SIZE STATE_DICT INPUTS TARGETS OUT [ARCH ...]

Each group of six arguments is one model: its state_dict, inputs and targets (.npy) in, the
heatmaps (n, H, W) out, x * grad summed over colour channels, the target logit's gradient 1.
"""

import sys

import numpy as np
import torch
import torchvision
import zennit.rules as z_rules
from lxt.efficient import monkey_patch, monkey_patch_zennit
from torchvision.models import vision_transformer
from zennit.composites import LayerMapComposite


def explain(arch: str, image_size: str, state: str, inputs: str, targets: str, out: str) -> None:
    model = torchvision.models.get_model(arch, image_size=int(image_size), num_classes=10)
    gamma_heatmaps(model, state, inputs, targets, out)


def gamma_heatmaps(model: torch.nn.Module, state: str, inputs: str, targets: str, out: str):
    """The model's weights from `state`, then x * grad under the patched rules; LXT's
    torchvision ViT example, its grid cell conv gamma 0.25, linear gamma 0.05."""
    model.load_state_dict(torch.load(state, weights_only=True))
    model.eval()
    for param in model.parameters():
        param.requires_grad_(False)
    composite = LayerMapComposite(
        [(torch.nn.Conv2d, z_rules.Gamma(0.25)), (torch.nn.Linear, z_rules.Gamma(0.05))]
    )
    x = torch.from_numpy(np.load(inputs)).requires_grad_(True)
    target = torch.from_numpy(np.load(targets))
    with composite.context(model) as modified:
        logits = modified(x)
        seed = torch.zeros_like(logits)
        seed[torch.arange(len(target)), target] = 1.0
        (grad,) = torch.autograd.grad(logits, x, seed)
    np.save(out, (x * grad).sum(1).detach().numpy())


def main(args: list[str]) -> None:
    monkey_patch(vision_transformer, verbose=False)
    monkey_patch_zennit(verbose=False)
    for k in range(0, len(args), 6):
        explain(*args[k : k + 6])


if __name__ == "__main__":
    main(sys.argv[1:])
