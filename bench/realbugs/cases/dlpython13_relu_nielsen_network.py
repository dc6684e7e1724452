"""Nielsen's network with sigmoid swapped for ReLU: accuracy stuck at 9.5%.

DeepLearningPython #13.
"""

from __future__ import annotations

import os

import torch
from torch import nn

from realbugs.data import digits
from realbugs.program import Program, classification_error, minibatches

SOURCE = "https://github.com/MichalDanielDobrzanski/DeepLearningPython/issues/13"
TITLE = "replace sigmoid with relu, but useless (accuracy stays at 0.095)"
BUG = (
    "ReLU replaces the sigmoid everywhere in Nielsen's network, kept at N(0,1) weights and "
    "biases and lr 3.0: the first updates kill the ReLUs and the output is constant."
)
FIX = "Initial weights and biases scaled by 0.1 (the answer's second change; see CHANGES)."
KIND = "dead_units"
ACTION = "init"
# The fix is not one change a rehearsal can make by itself (issue 21's denominator).
ONE_CHANGE = False
NOT_ONE_CHANGE = (
    "the fix scales the N(0,1) weights and biases by 0.1; no init remedy draws that scale (He"
    " and LSUV init, measured, stay at error 0.90 at the program's lr 3)"
)
CHANGES = (
    "the numpy network [784, 30, 10] with quadratic cost and mini-batch SGD -> nn.Linear layers "
    "(64, 30, 10) with ReLU after both, N(0,1) init, MSE on one-hot targets, torch SGD, batch 10, "
    "on 8x8 digits (0..1); 300 steps; ablation picks the fix: the answer's init x0.1 alone "
    "trains at lr 3.0 (error 0.90 -> 0.44), its lr 0.01 alone does not (REALBUGS_ABLATE=lr), "
    "and both together learn too slowly to show in 300 steps (REALBUGS_ABLATE=both)"
)


def build(fixed: bool, seed: int) -> Program:
    ablate = os.environ.get("REALBUGS_ABLATE", "")
    small_lr = fixed and ablate in ("lr", "both")
    small_init = fixed and ablate in ("", "both")
    x, y = digits()
    x = x / 16
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(64, 30), nn.ReLU(), nn.Linear(30, 10), nn.ReLU())
    with torch.no_grad():
        for m in (model[0], model[2]):
            nn.init.normal_(m.weight, 0.0, 0.1 if small_init else 1.0)
            nn.init.normal_(m.bias, 0.0, 0.1 if small_init else 1.0)
    opt = torch.optim.SGD(model.parameters(), lr=0.01 if small_lr else 3.0)
    target = nn.functional.one_hot(y, 10).float()
    return Program(
        model,
        opt,
        minibatches(x, target, 10, seed),
        nn.functional.mse_loss,
        steps=300,
        error=classification_error(x, y, lambda out: out.argmax(-1)),
        error_name="error",
    )
