"""Healthy: an LSTM with forget-gate bias 1 on the temporal-order task (length 30)."""

from __future__ import annotations

import torch
from torch import nn

from realbugs.cases.nyu_dlsp20_rnn_temporal_order import SequenceClassifier, _data
from realbugs.program import Program, classification_error, minibatches

SOURCE = "(healthy program, written for this benchmark)"
TITLE = "LSTM (hidden 32, forget-gate bias 1) classifying the order of two symbols in 30 steps"
BUG = ""
FIX = ""
KIND = "healthy"
ACTION = None
CHANGES = "the task of nyu_dlsp20_rnn_temporal_order; forget bias 1 (Jozefowicz et al.), Adam 1e-2"


def build(fixed: bool, seed: int) -> Program:
    x, y = _data(seed)
    torch.manual_seed(seed)
    model = SequenceClassifier("LSTM")
    h = model.rnn.hidden_size
    with torch.no_grad():
        model.rnn.bias_ih_l0[h : 2 * h].fill_(1.0)
        model.rnn.bias_hh_l0[h : 2 * h].zero_()
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
