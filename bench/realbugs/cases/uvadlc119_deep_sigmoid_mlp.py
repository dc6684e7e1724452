"""Four-hidden-layer sigmoid MLP that does not start learning (phlippe/uvadlc_notebooks #119)."""

from __future__ import annotations

import torch
from torch import nn

from realbugs.data import digits, standardize
from realbugs.program import Program, classification_error, minibatches

SOURCE = "https://github.com/phlippe/uvadlc_notebooks/issues/119"
TITLE = "Tutorial 3: test accuracy of the model with sigmoid activation (many runs fail to train)"
BUG = (
    "Sigmoid after each of the four hidden layers (512-256-256-128): the gradient shrinks by "
    "about 4x per layer (sigmoid' <= 1/4) and the first layers barely move; the loss stays near "
    "chance."
)
FIX = "ReLU instead of sigmoid (the tutorial's comparison), same network and training."
KIND = "vanishing_gradient"
ACTION = "activation"
CHANGES = (
    "the tutorial's BaseNetwork (hidden 512, 256, 256, 128, PyTorch default init) and SGD lr 1e-2 "
    "momentum 0.9 on standardised 8x8 digits instead of FashionMNIST; 150 steps of batch 256"
)


def build(fixed: bool, seed: int) -> Program:
    x, y = digits()
    x = standardize(x)
    torch.manual_seed(seed)
    act = nn.ReLU if fixed else nn.Sigmoid
    sizes = [64, 512, 256, 256, 128]
    layers = []
    for a, b in zip(sizes[:-1], sizes[1:], strict=True):
        layers += [nn.Linear(a, b), act()]
    model = nn.Sequential(*layers, nn.Linear(128, 10))
    opt = torch.optim.SGD(model.parameters(), lr=1e-2, momentum=0.9)
    return Program(
        model,
        opt,
        minibatches(x, y, 256, seed),
        nn.CrossEntropyLoss(),
        steps=150,
        error=classification_error(x, y, lambda out: out.argmax(-1)),
        error_name="error",
    )
