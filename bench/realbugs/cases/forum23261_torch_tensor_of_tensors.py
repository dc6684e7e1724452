"""Features gathered with torch.tensor([...]) lose their gradient (PyTorch forum, thread 23261)."""

from __future__ import annotations

import torch
from torch import nn

from realbugs.program import Program, regression_error

SOURCE = "https://discuss.pytorch.org/t/gradient-is-lost-when-use-torch-tensor-t1-t2/23261"
TITLE = "Gradient is lost when use torch.tensor([t1, t2])"
BUG = (
    "cos(a) and cos(b) are put into a new tensor with torch.tensor([...]), which copies their "
    "values: a and b are cut from the graph and get no gradient; only the matrix after it learns."
)
FIX = "torch.stack([...]) keeps the graph."
KIND = "no_gradient"
ACTION = "loop"
CHANGES = (
    "the thread's two angles a, b and the 2x2 matrix after them, made a model: for each input "
    "x_i the features [cos(a x_i), cos(b x_i)] times a learnable matrix fit targets made with "
    "a=1.3, b=0.4; Adam lr 0.05, 200 steps on 64 points"
)


class Angles(nn.Module):
    def __init__(self, stack: bool):
        super().__init__()
        self.stack = stack
        self.angles = nn.Parameter(torch.tensor([0.3, 1.0]))
        self.mat = nn.Linear(2, 2, bias=False)

    def forward(self, x):
        a, b = self.angles[0], self.angles[1]
        if self.stack:
            feats = torch.stack([torch.cos(a * x), torch.cos(b * x)], dim=1)
        else:  # the thread's torch.tensor([cosa, cosb]), one row per input
            feats = torch.tensor([[torch.cos(a * xi), torch.cos(b * xi)] for xi in x])
        return self.mat(feats)


def build(fixed: bool, seed: int) -> Program:
    gen = torch.Generator().manual_seed(seed)
    x = torch.linspace(-3, 3, 64)
    target = torch.stack([torch.cos(1.3 * x), torch.cos(0.4 * x)], 1) @ torch.tensor(
        [[1.0, 2.0], [3.0, 4.0]]
    )
    target = target + 0.01 * torch.randn(target.shape, generator=gen)
    torch.manual_seed(seed)
    model = Angles(stack=fixed)
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    return Program(
        model,
        opt,
        [(x, target)],
        nn.functional.mse_loss,
        steps=200,
        error=regression_error(x, target),
        error_name="mse",
    )
