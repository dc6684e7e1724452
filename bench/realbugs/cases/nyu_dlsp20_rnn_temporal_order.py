"""Vanilla RNN on a temporal-order task with a 20-step lag (NYU-DLSP20 week 6 notes, PR #109)."""

from __future__ import annotations

import torch
from torch import nn

from realbugs.program import Program, classification_error, minibatches

SOURCE = "https://github.com/Atcold/NYU-DLSP20/pull/109"
TITLE = "Sequence classification: with longer sequences the RNN fails while the LSTM keeps working"
BUG = (
    "A vanilla (tanh) RNN must carry two symbols seen at steps 5-10 and 15-20 to the end of a "
    "30-step sequence: the gradient from the output fades through time and it stays at chance."
)
FIX = "nn.LSTM instead of nn.RNN (the gated cell), same size and training."
KIND = "vanishing_through_time"
ACTION = "gating"
CHANGES = (
    "a course demonstration (the notebook 08-seq_classification and its notes), not a user's "
    "report; the temporal-order task (Hochreiter & Schmidhuber's 6a) rebuilt in code: 8 symbols, "
    "length 30, class from the order of X/Y at the two marked positions; hidden 32, Adam lr 1e-2, "
    "200 steps of batch 32"
)

LENGTH, SYMBOLS = 30, 8


def _data(seed: int, n: int = 1024):
    g = torch.Generator().manual_seed(seed)
    seq = torch.randint(0, 4, (n, LENGTH), generator=g)  # distractors
    a, b = torch.randint(0, 2, (n,), generator=g), torch.randint(0, 2, (n,), generator=g)
    p1, p2 = torch.randint(5, 10, (n,), generator=g), torch.randint(15, 20, (n,), generator=g)
    seq[torch.arange(n), p1] = 4 + a
    seq[torch.arange(n), p2] = 4 + b
    seq[:, 0], seq[:, -1] = 6, 7  # start and end symbols
    return nn.functional.one_hot(seq, SYMBOLS).float(), 2 * a + b


class SequenceClassifier(nn.Module):
    def __init__(self, cell: str, hidden: int = 32):
        super().__init__()
        self.rnn = getattr(nn, cell)(SYMBOLS, hidden, batch_first=True)
        self.out = nn.Linear(hidden, 4)

    def forward(self, x):
        return self.out(self.rnn(x)[0][:, -1])


def build(fixed: bool, seed: int) -> Program:
    x, y = _data(seed)
    torch.manual_seed(seed)
    model = SequenceClassifier("LSTM" if fixed else "RNN")
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    return Program(
        model,
        opt,
        minibatches(x, y, 32, seed),
        nn.CrossEntropyLoss(),
        steps=200,
        error=classification_error(x, y, lambda out: out.argmax(-1)),
        error_name="error",
    )
