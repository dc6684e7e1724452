"""Small model builders the demo and the lab share."""

from __future__ import annotations

from torch import nn


def mlp(
    n_in: int, n_out: int, depth: int, width: int, activation: type[nn.Module]
) -> nn.Sequential:
    """`depth` hidden Linear+activation blocks, then a Linear head; PyTorch's default init."""
    layers: list[nn.Module] = []
    d = n_in
    for _ in range(depth):
        layers += [nn.Linear(d, width), activation()]
        d = width
    layers.append(nn.Linear(d, n_out))
    return nn.Sequential(*layers)


def he_init(model: nn.Module) -> nn.Module:
    """He et al. 2015 normal init (std √(2/fan_in)) for every Linear/Conv, zero biases."""
    for m in model.modules():
        if isinstance(m, nn.Linear | nn.Conv1d | nn.Conv2d | nn.Conv3d):
            nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
    return model
