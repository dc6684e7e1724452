"""Healthy: a 2-layer nn.TransformerEncoder classifying token sequences."""

from __future__ import annotations

import torch
from torch import nn

from realbugs.program import Program, classification_error, minibatches

SOURCE = "(healthy program, written for this benchmark)"
TITLE = "nn.TransformerEncoder (2 layers, d 32, 4 heads) + mean pooling on token sequences"
BUG = ""
FIX = ""
KIND = "healthy"
ACTION = None
CHANGES = "standard practice: learned positions, pre-norm layers, Adam lr 1e-3, cross-entropy"

VOCAB, LENGTH = 16, 12


class Encoder(nn.Module):
    def __init__(self, d: int = 32):
        super().__init__()
        self.embed = nn.Embedding(VOCAB, d)
        self.pos = nn.Parameter(torch.randn(LENGTH, d) * 0.02)
        layer = nn.TransformerEncoderLayer(
            d, 4, dim_feedforward=64, dropout=0.0, batch_first=True, norm_first=True
        )
        self.encoder = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.out = nn.Linear(d, 2)

    def forward(self, tokens):
        return self.out(self.encoder(self.embed(tokens) + self.pos).mean(1))


def build(fixed: bool, seed: int) -> Program:
    gen = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, VOCAB, (1024, LENGTH), generator=gen)
    y = ((tokens < 4).sum(1) > (tokens >= 12).sum(1)).long()  # more low than high tokens
    torch.manual_seed(seed)
    model = Encoder()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    return Program(
        model,
        opt,
        minibatches(tokens, y, 64, seed),
        nn.CrossEntropyLoss(),
        steps=150,
        error=classification_error(tokens, y, lambda out: out.argmax(-1)),
        error_name="error",
    )
