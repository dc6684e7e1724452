"""Healthy: a GRU regressing the running mean of a noisy sequence."""

from __future__ import annotations

import torch
from torch import nn

from realbugs.program import Program, minibatches, regression_error

SOURCE = "(healthy program, written for this benchmark)"
TITLE = "GRU (hidden 32) predicting the mean of the last 5 of 20 inputs"
BUG = ""
FIX = ""
KIND = "healthy"
ACTION = None
CHANGES = "standard practice: unit-scale inputs and target, GRU, linear head, Adam lr 3e-3"


class GRURegressor(nn.Module):
    def __init__(self):
        super().__init__()
        self.rnn = nn.GRU(1, 32, batch_first=True)
        self.out = nn.Linear(32, 1)

    def forward(self, x):
        return self.out(self.rnn(x)[0][:, -1])


def build(fixed: bool, seed: int) -> Program:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(1024, 20, 1, generator=gen)
    y = x[:, -5:, 0].mean(1, keepdim=True) * 2
    torch.manual_seed(seed)
    model = GRURegressor()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    return Program(
        model,
        opt,
        minibatches(x, y, 64, seed),
        nn.functional.mse_loss,
        steps=150,
        error=regression_error(x, y),
        error_name="mse",
    )
