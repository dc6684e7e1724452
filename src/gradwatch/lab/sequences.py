"""Sequence tasks made in code: the adding problem (Hochreiter & Schmidhuber 1997).

Each sequence is T pairs (value in U[-1, 1], marker); exactly two markers are 1, one in the first
half and one in the second, so the first value to add lies more than T/2 steps before the end.
The target is 0.5 + (X₁ + X₂)/4, in [0, 1]; a prediction is correct when |error| < 0.04.
Predicting 0.5 always gives the baseline mean squared error E[((X₁+X₂)/4)²] = 1/24.
"""

from __future__ import annotations

import torch

BASELINE_MSE = 1.0 / 24.0
TOLERANCE = 0.04


def adding(
    n: int, length: int, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(inputs of shape (n, length, 2), targets of shape (n,)) for the adding problem."""
    if length < 2:
        raise ValueError(f"the adding problem needs length ≥ 2, not {length}.")
    values = torch.rand(n, length, generator=generator) * 2 - 1
    half = length // 2
    first = torch.randint(0, half, (n,), generator=generator)
    second = torch.randint(half, length, (n,), generator=generator)
    markers = torch.zeros(n, length)
    rows = torch.arange(n)
    markers[rows, first] = 1.0
    markers[rows, second] = 1.0
    target = 0.5 + (values[rows, first] + values[rows, second]) / 4
    return torch.stack([values, markers], dim=-1), target


def accuracy(prediction: torch.Tensor, target: torch.Tensor) -> float:
    """Fraction of sequences with |prediction - target| < 0.04 (the adding problem's criterion)."""
    return float(((prediction.reshape(-1) - target.reshape(-1)).abs() < TOLERANCE).float().mean())
