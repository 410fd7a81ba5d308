"""Squeeze-excitation gates built from nn.Sigmoid / nn.Hardsigmoid modules (as torchvision's
SqueezeExcitation is): the features get all the relevance, the gate's branch none.

The truth each heatmap is checked against is computed without the gate: the same network with the
gate's forward value, a per-image constant c >= 0, folded into the next convolution's weights
(w_ij c_i). Every rule used here sees the same contributions x_i c_i w_ij in both, so the
heatmaps must agree to round-off.
"""

import pytest
import torch
from torch import nn

from heatjob.attribution.lrp import Explainer, ensure_supported
from heatjob.errors import UnsupportedModelError

MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)


class SqueezeExcite(nn.Module):
    def __init__(self, channels: int, squeezed: int, gate: nn.Module, gate_first: bool) -> None:
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(channels, squeezed, 1)
        self.relu = nn.ReLU()
        self.fc2 = nn.Conv2d(squeezed, channels, 1)
        self.gate = gate
        self.gate_first = gate_first

    def scale(self, x):
        return self.gate(self.fc2(self.relu(self.fc1(self.pool(x)))))

    def forward(self, x):
        s = self.scale(x)
        return s * x if self.gate_first else x * s


class Net(nn.Module):
    """conv, ReLU, [squeeze-excitation], conv, ReLU, pool, linear; bias-free outside the gate."""

    def __init__(self, se: nn.Module | None) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 6, 3, padding=1, bias=False)
        self.relu1 = nn.ReLU()
        self.se = se if se is not None else nn.Identity()
        self.conv2 = nn.Conv2d(6, 8, 3, padding=1, bias=False)
        self.relu2 = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(8, 5, bias=False)

    def forward(self, x):
        x = self.se(self.relu1(self.conv1(x)))
        return self.fc(self.flatten(self.pool(self.relu2(self.conv2(x)))))


def gated_net(gate: nn.Module, gate_first: bool) -> Net:
    torch.manual_seed(7)
    net = Net(SqueezeExcite(6, 3, gate, gate_first))
    with torch.no_grad():  # gates spread over (0, 1), not saturated
        net.se.fc2.weight.mul_(4)
    return net.eval()


def images(n: int = 2, size: int = 8) -> torch.Tensor:
    torch.manual_seed(8)
    return (torch.rand(n, 3, size, size) - MEAN) / STD


def constant_gate_copy(net: Net, gate_value: torch.Tensor) -> Net:
    """`net` without its gate: `gate_value` (channels,) folded into conv2's input channels."""
    plain = Net(None)
    state = {k: v for k, v in net.state_dict().items() if not k.startswith("se.")}
    state["conv2.weight"] = net.conv2.weight.detach() * gate_value.view(1, -1, 1, 1)
    plain.load_state_dict(state)
    return plain.eval()


GATES = {"sigmoid": nn.Sigmoid, "hardsigmoid": nn.Hardsigmoid}
COMPOSITES = ["lrp-z", "lrp-a1b0", "lrp-a2b1", "lrp-eps", "EpsilonGammaBox"]


@pytest.mark.parametrize("composite", COMPOSITES)
@pytest.mark.parametrize("gate_first", [True, False], ids=["gate*x", "x*gate"])
@pytest.mark.parametrize("gate", list(GATES))
def test_gate_module_gives_all_relevance_to_the_features(gate, gate_first, composite):
    net, x = gated_net(GATES[gate](), gate_first), images()
    targets = torch.tensor([1, 3])
    with torch.no_grad():
        gate_value = net.se.scale(net.relu1(net.conv1(x)))[:, :, 0, 0]  # (n, channels)
    assert ((gate_value > 0.05) & (gate_value < 0.95)).float().mean() > 0.5

    explainer = Explainer(net, composite)
    into_gate: dict[str, list[torch.Tensor]] = {"se.gate": [], "se.pool": []}

    def capture(name):
        def hook(module, inputs, output):
            output.register_hook(lambda grad: into_gate[name].append(grad.detach().clone()))

        return hook

    for name in into_gate:
        explainer.model.get_submodule(name).register_forward_hook(capture(name))
    heatmap, logits = explainer.explain(x, targets)
    torch.testing.assert_close(logits, net(x).detach(), rtol=1e-5, atol=1e-6)

    # relevance into the gate branch: exactly zero, at the gate and at the branch's start
    for name, grads in into_gate.items():
        assert len(grads) == 1, name
        assert grads[0].shape[2:] == (1, 1) and torch.count_nonzero(grads[0]) == 0, name

    # the features get what the gate-free network with the gate's value as a constant gives
    for n in range(len(x)):
        plain = constant_gate_copy(net, gate_value[n])
        expected, plain_logits = Explainer(plain, composite).explain(
            x[n : n + 1], targets[n : n + 1]
        )
        torch.testing.assert_close(plain_logits[0], logits[n], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(heatmap[n], expected[0], rtol=1e-5, atol=1e-6)
        if composite == "lrp-z":  # bias-free outside the gate: LRP-0 conserves
            torch.testing.assert_close(
                heatmap[n].sum(), logits[n, targets[n]], rtol=1e-4, atol=1e-6
            )


class Square(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(4, 4, 1)

    def forward(self, x):
        y = self.conv(x)
        return y * y


class TwoGates(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Sigmoid()
        self.b = nn.Sigmoid()

    def forward(self, x):
        return self.a(x) * self.b(x)


@pytest.mark.parametrize(
    ("product", "why"),
    [(Square, "neither operand is a gate"), (TwoGates, "both operands are gates")],
)
def test_a_product_without_one_clear_gate_is_refused_by_path_and_type(product, why):
    """A product of two feature maps, or of two gates, has no operand the rule could call the
    features: refused, naming the product's module path and type, before any pass runs."""
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3), nn.Sequential(nn.ReLU(), product()), nn.Flatten()
    ).eval()
    for build in (ensure_supported, lambda m: Explainer(m, "lrp-z")):
        with pytest.raises(UnsupportedModelError) as info:
            build(model)
        message = str(info.value)
        assert f"'1.1' (_operator.mul in {product.__name__})" in message, message
        assert why in message, message


class BroadcastGate(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.gate = nn.Sigmoid()

    def forward(self, x):
        return self.pool(x) * self.gate(x)  # features (n, c, 1, 1) spread by a full-size gate


def test_a_gate_that_would_broadcast_the_features_is_refused():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), BroadcastGate(), nn.Flatten()).eval()
    ensure_supported(model)  # the graph is fine; the shapes show in the forward pass
    with pytest.raises(UnsupportedModelError, match=r"'1' .*would broadcast the features"):
        Explainer(model, "lrp-z").explain(images(1), torch.tensor([0]))
