"""Reentrant checkpoint of a block whose input does not require grad (pytorch/pytorch #7617)."""

from __future__ import annotations

import warnings

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from realbugs.data import digits
from realbugs.program import Program, classification_error, minibatches

SOURCE = "https://github.com/pytorch/pytorch/issues/7617"
TITLE = "checkpoint(function, *args) should has the same requires_grad as function(*args)"
BUG = (
    "The first block runs under torch.utils.checkpoint (reentrant) on the raw input, which does "
    "not require grad: the block's output does not either, so its weights never get a gradient."
)
FIX = "checkpoint(..., use_reentrant=False) (the non-reentrant variant tracks the parameters)."
KIND = "no_gradient"
ACTION = "loop"
CHANGES = (
    "the issue's Linear under checkpoint, made the first block of a digits MLP (64 -> 16 tanh, "
    "then 32 relu, 10); torch 2's explicit use_reentrant=True for the 2018 default; Adam lr 1e-2, "
    "150 steps of batch 64"
)


class CheckpointedMLP(nn.Module):
    def __init__(self, reentrant: bool):
        super().__init__()
        self.reentrant = reentrant
        self.block = nn.Sequential(nn.Linear(64, 16), nn.Tanh())
        self.head = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 10))

    def forward(self, x):
        with warnings.catch_warnings():  # "None of the inputs have requires_grad=True"
            warnings.simplefilter("ignore", UserWarning)
            h = checkpoint(self.block, x, use_reentrant=self.reentrant)
        return self.head(h)


def build(fixed: bool, seed: int) -> Program:
    x, y = digits()
    x = x / 16
    torch.manual_seed(seed)
    model = CheckpointedMLP(reentrant=not fixed)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    return Program(
        model,
        opt,
        minibatches(x, y, 64, seed),
        nn.CrossEntropyLoss(),
        steps=150,
        error=classification_error(x, y, lambda out: out.argmax(-1)),
        error_name="error",
    )
