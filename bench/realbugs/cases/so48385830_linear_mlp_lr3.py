"""Nielsen-style MNIST MLP without activations, N(0,1) init, SGD lr 3 and MSE.

Keras, SO 48385830.
"""

from __future__ import annotations

import os

import torch
from torch import nn

from realbugs import keras_compat as K
from realbugs.data import digits
from realbugs.program import Program, classification_error, minibatches

SOURCE = "https://stackoverflow.com/questions/48385830"
TITLE = "Keras: reproducing Nielsen's MNIST network gives loss nan/inf"
BUG = "Dense(30) and Dense(10) without activations, weights N(0,1), MSE at SGD lr 3.0."
FIX = "Sigmoid on the hidden layer, softmax output under categorical cross-entropy."
KIND = "exploding_gradient"
ACTION = "loss"
# The fix is not one change a rehearsal can make by itself (issue 21's denominator).
ONE_CHANGE = False
NOT_ONE_CHANGE = (
    "the fix is two changes at once (a hidden sigmoid and a softmax output under cross-"
    "entropy); the loss change alone, measured, stays at error 0.90"
)
CHANGES = (
    "digits (0..1) instead of MNIST; kernel and bias RandomNormal(stddev=1), SGD lr 3.0, batch 10 "
    "as posted; 150 steps; ablation (REALBUGS_ABLATE=hidden|output) picks the label: the softmax "
    "+ cross-entropy output alone keeps training finite, the hidden sigmoid alone does not"
)


def build(fixed: bool, seed: int) -> Program:
    ablate = os.environ.get("REALBUGS_ABLATE", "")
    hidden_sigmoid = fixed and ablate != "output"
    softmax_ce = fixed and ablate != "hidden"
    x, y = digits()
    x = x / 16
    torch.manual_seed(seed)
    layers = [nn.Linear(64, 30)]
    if hidden_sigmoid:
        layers.append(nn.Sigmoid())
    layers.append(nn.Linear(30, 10))
    if softmax_ce:
        layers.append(nn.Softmax(dim=-1))
    model = nn.Sequential(*layers)
    for m in model.modules():
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0, 1)
            nn.init.normal_(m.bias, 0, 1)
    loss = K.categorical_crossentropy if softmax_ce else K.mean_squared_error
    return Program(
        model,
        K.sgd(model.parameters(), lr=3.0),
        minibatches(x, K.one_hot(y, 10), 10, seed),
        loss,
        steps=150,
        error=classification_error(x, y, lambda p: p.argmax(-1)),
        error_name="error",
    )
