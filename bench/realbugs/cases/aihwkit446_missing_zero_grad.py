"""A one-layer regression example whose loop never clears the gradients (IBM/aihwkit #446)."""

from __future__ import annotations

import torch
from torch import nn

from realbugs.program import Program, call_model

SOURCE = "https://github.com/IBM/aihwkit/issues/446"
TITLE = "Missing zero_grad() call in examples/01_simple_layer.py"
BUG = "The loop calls backward() and step() but never zero_grad(): gradients add up over steps."
FIX = "opt.zero_grad() at the start of every iteration."
KIND = "uncleared_gradients"
ACTION = "loop"
CHANGES = (
    "AnalogLinear(4, 2) with AnalogSGD -> nn.Linear(4, 2) with torch.optim.SGD, lr 0.1, MSE, "
    "the issue's two samples; 100 iterations as in the example"
)


def _step_without_zero_grad(program: Program, batch) -> torch.Tensor:
    x, y = batch
    loss = program.loss_fn(call_model(program.model, x), y)
    loss.backward()
    program.report(loss)
    program.optimizer.step()
    return loss


def build(fixed: bool, seed: int) -> Program:
    torch.manual_seed(seed)
    x = torch.tensor([[0.1, 0.2, 0.4, 0.3], [0.2, 0.1, 0.1, 0.3]])
    y = torch.tensor([[1.0, 0.5], [0.7, 0.3]])
    model = nn.Linear(4, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    program = Program(model, opt, [(x, y)], nn.functional.mse_loss, steps=100)
    if not fixed:
        program.train_step = _step_without_zero_grad
    return program
