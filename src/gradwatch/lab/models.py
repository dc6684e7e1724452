"""Small model builders the demo and the lab share (their inits are in gradwatch.remedies)."""

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
