"""Data made in code or bundled with scikit-learn: nothing is downloaded."""

from __future__ import annotations

from functools import cache

import numpy as np
import torch


@cache
def _digits():
    from sklearn.datasets import load_digits

    d = load_digits()
    return d.data.astype(np.float32), d.target.astype(np.int64)


def digits() -> tuple[torch.Tensor, torch.Tensor]:
    """scikit-learn's 1797 8x8 digits: pixels 0..16 as float (N, 64), labels 0..9."""
    x, y = _digits()
    return torch.from_numpy(x.copy()), torch.from_numpy(y.copy())


def digit_images(scale: float = 1 / 16) -> tuple[torch.Tensor, torch.Tensor]:
    """Digits as (N, 1, 8, 8) images, pixels times `scale` (default: 0..1)."""
    x, y = digits()
    return (x * scale).reshape(-1, 1, 8, 8), y


def rng(seed: int) -> np.random.RandomState:
    return np.random.RandomState(seed)


def standardize(x: torch.Tensor) -> torch.Tensor:
    return (x - x.mean(0)) / x.std(0).clamp_min(1e-8)
