"""torchvision models with random, non-trivial weights and ImageNet's normalisation: the CNNs
the zennit comparisons (test_lrp_zennit, test_methods_lrp, test_methods_oracle) share, and the
ViT randomisation of the LXT comparisons (test_lrp_vit, test_lrp_attnlrp)."""

import torch
import torchvision
from torch import nn

NUM_CLASSES = 10
MEAN = torch.tensor([0.485, 0.456, 0.406])
STD = torch.tensor([0.229, 0.224, 0.225])
LOW = ((0 - MEAN) / STD).view(1, 3, 1, 1)
HIGH = ((1 - MEAN) / STD).view(1, 3, 1, 1)
# float32 round-off: the engine groups sums differently from zennit (z- = z - z+ behind a ReLU,
# gamma denominators from one conv); measured up to ~2e-6 of the heatmap maximum on CPU.
STRICT = 1e-5


def randomize(model: nn.Module) -> nn.Module:
    """Non-trivial biases and batch-norm statistics, so folding and bias terms are exercised."""
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.weight.uniform_(0.5, 1.5)
                module.bias.normal_(0, 0.1)
                module.running_mean.normal_(0, 0.1)
                module.running_var.uniform_(0.5, 1.5)
            elif isinstance(module, (nn.Conv2d, nn.Linear)) and module.bias is not None:
                module.bias.normal_(0, 0.05)
    return model.eval()


def build(name: str, small_classifier: bool = False) -> nn.Module:
    """torchvision's model; `small_classifier` swaps VGG's 4096-unit dense layers for 64-unit ones
    (same layer types) where a test builds many explainers and only needs the structure."""
    model = getattr(torchvision.models, name)(num_classes=NUM_CLASSES)
    if small_classifier and name.startswith("vgg"):
        model.classifier = nn.Sequential(
            nn.Linear(512 * 7 * 7, 64),
            nn.ReLU(inplace=True),
            nn.Dropout(),
            nn.Linear(64, 64),
            nn.ReLU(inplace=True),
            nn.Dropout(),
            nn.Linear(64, NUM_CLASSES),
        )
    return randomize(model)


def randomize_vit(model: nn.Module, head_std: float) -> nn.Module:
    """Head, class token and norms randomised: torchvision starts the head and the class token
    at zero and the norms at identity, which would hide their rules."""
    with torch.no_grad():
        nn.init.normal_(model.heads.head.weight, std=head_std)
        nn.init.normal_(model.class_token, std=0.5)
        for module in model.modules():
            if isinstance(module, nn.LayerNorm):
                module.weight.normal_(1.0, 0.3)
                module.bias.normal_(0.0, 0.1)
    return model.eval()
