"""XOR with a softmax over a single output unit (Keras, Stack Overflow 34311586)."""

from __future__ import annotations

import torch
from torch import nn

from realbugs import keras_compat as K
from realbugs.program import Program, regression_error

SOURCE = "https://stackoverflow.com/questions/34311586"
TITLE = "Keras: XOR network predicts the same value, loss does not change"
BUG = "The output layer is Dense(1) + softmax: a softmax over one unit is the constant 1."
FIX = "Sigmoid on the output unit (the answer's code also raises SGD's lr from 0.001 to 0.1)."
KIND = "output_loss_mismatch"
ACTION = "loss"
CHANGES = (
    "Keras Dense(init='uniform') -> Linear with U(-0.05, 0.05) weights, zero bias; MSE, SGD "
    "momentum 0.9 nesterov as posted; 400 steps of batch 4 (the answer's batch size) instead of "
    "10000 epochs; DeepLocalize/DeepFD benchmark copy of the post's code"
)


def build(fixed: bool, seed: int) -> Program:
    torch.manual_seed(seed)
    x = torch.tensor([[1.0, 1.0], [0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [0.0, 0.0]])
    y = torch.tensor([[0.0], [0.0], [1.0], [1.0], [0.0], [0.0]])
    out = nn.Sigmoid() if fixed else nn.Softmax(dim=-1)
    model = nn.Sequential(
        nn.Linear(2, 2), nn.Sigmoid(), nn.Linear(2, 3), nn.Sigmoid(), nn.Linear(3, 1), out
    )
    K.init_keras(model, "uniform")
    opt = K.sgd(model.parameters(), lr=0.1 if fixed else 0.001, momentum=0.9, nesterov=True)
    batches = [(x[:4], y[:4]), (x[4:], y[4:])]
    return Program(
        model,
        opt,
        batches,
        K.mean_squared_error,
        steps=400,
        error=regression_error(x, y),
        error_name="mse",
    )
