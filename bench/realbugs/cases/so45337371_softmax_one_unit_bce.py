"""Binary classifier with a softmax over its one output unit (Keras, Stack Overflow 45337371)."""

from __future__ import annotations

import torch
from torch import nn

from realbugs import keras_compat as K
from realbugs.program import Program, classification_error, minibatches

SOURCE = "https://stackoverflow.com/questions/45337371"
TITLE = "Keras: gradient of the model output with respect to the input is all zeros"
BUG = "Dense(1, activation='softmax') outputs exactly 1 for every input, so every gradient is 0."
FIX = "Dense(1, activation='sigmoid')."
KIND = "output_loss_mismatch"
ACTION = "loss"
CHANGES = (
    "the post has no training data: 5 uniform features, label = whether their sum exceeds 2.5; "
    "Keras glorot_uniform init, clipped BCE, Adam (eps 1e-7); 150 steps of batch 32"
)


def build(fixed: bool, seed: int) -> Program:
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(1024, 5, generator=gen)
    y = (x.sum(1, keepdim=True) > 2.5).float()
    torch.manual_seed(seed)
    model = nn.Sequential(
        nn.Linear(5, 60),
        nn.ReLU(),
        nn.Linear(60, 50),
        nn.ReLU(),
        nn.Linear(50, 1),
        nn.Sigmoid() if fixed else nn.Softmax(dim=-1),
    )
    K.init_keras(model)
    return Program(
        model,
        K.adam(model.parameters()),
        minibatches(x, y, 32, seed),
        K.binary_crossentropy,
        steps=150,
        error=classification_error(x, y, lambda p: (p > 0.5).float()),
        error_name="error",
    )
