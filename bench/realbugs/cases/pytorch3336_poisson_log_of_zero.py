"""Poisson NLL on rates (log_input=False) starting at 0: log(0) (pytorch/pytorch PR #3336)."""

from __future__ import annotations

import math

import torch
from torch import nn

from realbugs.program import Program

SOURCE = "https://github.com/pytorch/pytorch/pull/3336"
TITLE = "Prevent numerical issues with poisson_nll_loss when log_input=False"
BUG = (
    "PoissonNLLLoss(log_input=False) computed input - target * log(input): the rate starts at 0, "
    "log(0) = -inf, and the loss and the gradient are inf/NaN from the first step."
)
FIX = "input - target * log(input + eps) (eps 1e-8, what the PR added; torch's loss today)."
KIND = "nonfinite"
ACTION = "loss"
CHANGES = (
    "the PR's reproduction as it stands (one rate parameter initialised at 0, 200 Poisson(4) "
    "samples, full=True, RMSprop lr 0.1) with the parameter in a one-parameter module and the "
    "pre-fix formula written out for the buggy version; 300 steps instead of 5000"
)


class Rate(nn.Module):
    def __init__(self):
        super().__init__()
        self.param = nn.Parameter(torch.zeros(1))

    def forward(self, samples):
        return self.param.expand_as(samples)


def _pre_fix_loss(rate: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """PoissonNLLLoss(log_input=False, full=True) before the PR: no eps inside the log."""
    stirling = target * torch.log(target) - target + 0.5 * torch.log(2 * math.pi * target)
    stirling = torch.where(target > 1, stirling, torch.zeros_like(target))
    return (rate - target * torch.log(rate) + stirling).mean()


def build(fixed: bool, seed: int) -> Program:
    gen = torch.Generator().manual_seed(seed)
    samples = torch.poisson(torch.full((200,), 4.0), generator=gen)
    torch.manual_seed(seed)
    model = Rate()
    opt = torch.optim.RMSprop(model.parameters(), lr=0.1)
    loss = nn.PoissonNLLLoss(log_input=False, full=True) if fixed else _pre_fix_loss
    return Program(model, opt, [(samples, samples)], loss, steps=300)
