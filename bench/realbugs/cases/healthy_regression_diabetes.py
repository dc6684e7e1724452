"""Healthy: MLP regression on scikit-learn's diabetes data, inputs and target standardised."""

from __future__ import annotations

import torch
from sklearn.datasets import load_diabetes
from torch import nn

from realbugs.data import standardize
from realbugs.program import Program, minibatches, regression_error

SOURCE = "(healthy program, written for this benchmark)"
TITLE = "MLP 10-64-64-1 regression on diabetes (standardised X and y)"
BUG = ""
FIX = ""
KIND = "healthy"
ACTION = None
CHANGES = "standard practice: standardised inputs and target, ReLU, linear output, MSE, Adam 1e-3"


def build(fixed: bool, seed: int) -> Program:
    x, y = load_diabetes(return_X_y=True)
    x = standardize(torch.tensor(x, dtype=torch.float32))
    y = standardize(torch.tensor(y, dtype=torch.float32)).unsqueeze(1)
    torch.manual_seed(seed)
    model = nn.Sequential(
        nn.Linear(10, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 1)
    )
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    return Program(
        model,
        opt,
        minibatches(x, y, 32, seed),
        nn.functional.mse_loss,
        steps=200,
        error=regression_error(x, y),
        error_name="mse",
    )
