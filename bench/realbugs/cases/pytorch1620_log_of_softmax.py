"""torch.log(softmax(x)) under NLLLoss turns -inf and NaN (pytorch/pytorch #1620)."""

from __future__ import annotations

import torch
from torch import nn

from realbugs.program import Program, classification_error, minibatches

SOURCE = "https://github.com/pytorch/pytorch/issues/1620"
TITLE = "[Feature Request] nn.Log (or improvement of torch.log): log(softmax) gives nan gradients"
BUG = (
    "The loss is NLLLoss(torch.log(softmax(model(x)))): with inputs like the issue's [0, 50, -50] "
    "the softmax underflows to 0, its log is -inf and the gradient NaN."
)
FIX = "nn.LogSoftmax (log_softmax) instead of log(softmax)."
KIND = "nonfinite"
ACTION = "loss"
CHANGES = (
    "the issue's nn.Linear(3, 3), SGD lr 0.01 and NLLLoss; its one input [0, 50, -50] -> 512 "
    "inputs of that scale (N(0, 50) per feature) labelled by a random linear rule; 150 steps "
    "of batch 64"
)


class LogOfSoftmax(nn.Module):
    def __init__(self, stable: bool):
        super().__init__()
        self.stable = stable
        self.linear = nn.Linear(3, 3, bias=False)

    def forward(self, x):
        out = self.linear(x)
        if self.stable:
            return torch.log_softmax(out, dim=1)
        return torch.log(torch.softmax(out, dim=1))


def build(fixed: bool, seed: int) -> Program:
    gen = torch.Generator().manual_seed(seed)
    x = 50 * torch.randn(512, 3, generator=gen)
    y = (x @ torch.randn(3, 3, generator=gen)).argmax(1)
    torch.manual_seed(seed)
    model = LogOfSoftmax(stable=fixed)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    return Program(
        model,
        opt,
        minibatches(x, y, 64, seed),
        nn.NLLLoss(),
        steps=150,
        error=classification_error(x, y, lambda out: out.argmax(-1)),
        error_name="error",
    )
