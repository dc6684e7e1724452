"""NLLLoss on torch.log(y_pred) of a softmax module: -inf then NaN with Adam (skorch #481)."""

from __future__ import annotations

import torch
from torch import nn

from realbugs.data import digits
from realbugs.program import Program, classification_error, minibatches

SOURCE = "https://github.com/skorch-dev/skorch/issues/481"
TITLE = "torch.log(y_pred) in NeuralNetClassifier.get_loss may cause NaN"
BUG = (
    "The module returns softmax probabilities and the classifier's loss is "
    "NLLLoss(torch.log(y_pred)): once a probability underflows to 0 the log is -inf and the "
    "gradient NaN (seen in the MNIST notebook after switching to Adam)."
)
FIX = "An epsilon in the log, torch.log(y_pred + 1e-8) (the fix proposed in the issue)."
KIND = "nonfinite"
ACTION = "loss"
CHANGES = (
    "the MNIST notebook's ClassifierModule (784-98 ReLU, dropout 0.5, 98-10 softmax) -> 64-98-10 "
    "on 8x8 digits (0..16, unscaled as the notebook's 0..255 inputs were only /255); "
    "optimizer switched to Adam (lr 0.02) as in the report's trial; 150 steps of batch 128"
)


class ClassifierModule(nn.Module):
    def __init__(self):
        super().__init__()
        self.dense0 = nn.Linear(64, 98)
        self.dropout = nn.Dropout(0.5)
        self.output = nn.Linear(98, 10)

    def forward(self, x):
        return torch.softmax(self.output(self.dropout(torch.relu(self.dense0(x)))), dim=-1)


def _loss(eps: float):
    nll = nn.NLLLoss()
    return lambda y_pred, y: nll(torch.log(y_pred + eps), y)


def build(fixed: bool, seed: int) -> Program:
    x, y = digits()
    torch.manual_seed(seed)
    model = ClassifierModule()
    opt = torch.optim.Adam(model.parameters(), lr=0.02)
    return Program(
        model,
        opt,
        minibatches(x, y, 128, seed),
        _loss(1e-8 if fixed else 0.0),
        steps=150,
        error=classification_error(x, y, lambda out: out.argmax(-1)),
        error_name="error",
    )
