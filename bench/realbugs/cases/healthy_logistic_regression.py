"""Healthy: logistic regression on scikit-learn's breast-cancer data (standardised)."""

from __future__ import annotations

import torch
from sklearn.datasets import load_breast_cancer
from torch import nn

from realbugs.data import standardize
from realbugs.program import Program, classification_error, minibatches

SOURCE = "(healthy program, written for this benchmark)"
TITLE = "Logistic regression (one Linear, BCEWithLogitsLoss) on breast cancer"
BUG = ""
FIX = ""
KIND = "healthy"
ACTION = None
CHANGES = "standard practice: standardised inputs, logits into BCEWithLogitsLoss, SGD lr 0.1"


def build(fixed: bool, seed: int) -> Program:
    x, y = load_breast_cancer(return_X_y=True)
    x = standardize(torch.tensor(x, dtype=torch.float32))
    y = torch.tensor(y, dtype=torch.float32).unsqueeze(1)
    torch.manual_seed(seed)
    model = nn.Linear(30, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    return Program(
        model,
        opt,
        minibatches(x, y, 64, seed),
        nn.BCEWithLogitsLoss(),
        steps=150,
        error=classification_error(x, y, lambda out: (out > 0).float()),
        error_name="error",
    )
