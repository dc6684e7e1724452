"""Softmax in forward() before nn.CrossEntropyLoss (PyTorch forum, thread 43814)."""

from __future__ import annotations

import torch
from torch import nn

from realbugs.data import digits
from realbugs.program import Program, classification_error, minibatches

SOURCE = "https://discuss.pytorch.org/t/cross-entropy-loss-is-not-decreasing/43814"
TITLE = "Cross Entropy loss is not decreasing (stays at 2.30 on 10 classes)"
BUG = (
    "forward() ends in a softmax and nn.CrossEntropyLoss applies log-softmax again: the loss is "
    "bounded away from 0 and its gradients shrink as the softmax saturates."
)
FIX = "Return the logits from forward(); CrossEntropyLoss does the softmax."
KIND = "output_loss_mismatch"
ACTION = "loss"
CHANGES = (
    "the thread's CNN on 28x28 images -> an MLP (64-128-64-10, ReLU) on 8x8 digits; softmax "
    "before CrossEntropyLoss as in the post that the answers (rasbt; the summary in post 16) "
    "diagnose; Adam lr 1e-3, 200 steps of batch 64"
)


class Net(nn.Module):
    def __init__(self, softmax: bool):
        super().__init__()
        self.softmax = softmax
        self.body = nn.Sequential(
            nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 64), nn.ReLU(), nn.Linear(64, 10)
        )

    def forward(self, x):
        out = self.body(x)
        return torch.softmax(out, dim=1) if self.softmax else out


def build(fixed: bool, seed: int) -> Program:
    x, y = digits()
    x = x / 16
    torch.manual_seed(seed)
    model = Net(softmax=not fixed)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    return Program(
        model,
        opt,
        minibatches(x, y, 64, seed),
        nn.CrossEntropyLoss(),
        steps=200,
        error=classification_error(x, y, lambda out: out.argmax(-1)),
        error_name="error",
    )
