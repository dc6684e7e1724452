"""Healthy: an MLP classifier on digits (ReLU, Adam, cross-entropy on logits)."""

from __future__ import annotations

import torch
from torch import nn

from realbugs.data import digits
from realbugs.program import Program, classification_error, minibatches

SOURCE = "(healthy program, written for this benchmark)"
TITLE = "MLP 64-128-64-10 on scikit-learn digits"
BUG = ""
FIX = ""
KIND = "healthy"
ACTION = None
CHANGES = "standard practice: inputs in [0, 1], ReLU, logits into CrossEntropyLoss, Adam lr 1e-3"


def build(fixed: bool, seed: int) -> Program:
    x, y = digits()
    x = x / 16
    torch.manual_seed(seed)
    model = nn.Sequential(
        nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 64), nn.ReLU(), nn.Linear(64, 10)
    )
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    return Program(
        model,
        opt,
        minibatches(x, y, 64, seed),
        nn.CrossEntropyLoss(),
        steps=200,
        error=classification_error(x, y, lambda out: out.argmax(-1)),
        error_name="error",
    )
