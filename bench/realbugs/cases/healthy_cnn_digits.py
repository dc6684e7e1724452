"""Healthy: a small CNN on 8x8 digits."""

from __future__ import annotations

import torch
from torch import nn

from realbugs.data import digit_images
from realbugs.program import Program, classification_error, minibatches

SOURCE = "(healthy program, written for this benchmark)"
TITLE = "CNN (conv 16, conv 32, max-pool, fc 64, fc 10) on 8x8 digits"
BUG = ""
FIX = ""
KIND = "healthy"
ACTION = None
CHANGES = "standard practice: inputs in [0, 1], ReLU, PyTorch default init, Adam lr 1e-3"


def build(fixed: bool, seed: int) -> Program:
    x, y = digit_images()
    torch.manual_seed(seed)
    model = nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(16, 32, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(32 * 4 * 4, 64),
        nn.ReLU(),
        nn.Linear(64, 10),
    )
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    return Program(
        model,
        opt,
        minibatches(x, y, 64, seed),
        nn.CrossEntropyLoss(),
        steps=150,
        error=classification_error(x, y, lambda out: out.argmax(-1)),
        error_name="error",
    )
