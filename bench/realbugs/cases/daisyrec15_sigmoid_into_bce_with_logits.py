"""Recommender that applies sigmoid before BCEWithLogitsLoss (yudi-mars/daisyRec PR #15)."""

from __future__ import annotations

import torch
from torch import nn

from realbugs.program import Program, minibatches

SOURCE = "https://github.com/yudi-mars/daisyRec/pull/15"
TITLE = "Do not need sigmoid because there is sigmoid in BCEWithLogitsLoss (loss does not converge)"
BUG = (
    "The model returns sigmoid(score) and the loss is BCEWithLogitsLoss, which applies a second "
    "sigmoid: the loss sees probabilities in [0.5, 0.73] and cannot approach 0."
)
FIX = "Return the raw score; BCEWithLogitsLoss applies the sigmoid."
KIND = "output_loss_mismatch"
ACTION = "loss"
CHANGES = (
    "daisyRec's point-wise matrix factorisation on implicit feedback: 200 users x 100 items, "
    "embedding 16, positives from a rank-4 ground truth plus as many sampled negatives; Adam lr "
    "1e-2, 200 steps of batch 256"
)


class MF(nn.Module):
    def __init__(self, sigmoid: bool, users: int = 200, items: int = 100, dim: int = 16):
        super().__init__()
        self.sigmoid = sigmoid
        self.user = nn.Embedding(users, dim)
        self.item = nn.Embedding(items, dim)
        nn.init.normal_(self.user.weight, std=0.01)
        nn.init.normal_(self.item.weight, std=0.01)

    def forward(self, pairs):
        score = (self.user(pairs[:, 0]) * self.item(pairs[:, 1])).sum(-1)
        return torch.sigmoid(score) if self.sigmoid else score


def _interactions(seed: int):
    gen = torch.Generator().manual_seed(seed)
    u, v = torch.randn(200, 4, generator=gen), torch.randn(100, 4, generator=gen)
    liked = (u @ v.T) > 1.0
    pos = liked.nonzero()
    neg = (~liked).nonzero()
    neg = neg[torch.randperm(len(neg), generator=gen)[: len(pos)]]
    pairs = torch.cat([pos, neg])
    label = torch.cat([torch.ones(len(pos)), torch.zeros(len(neg))])
    return pairs, label


def build(fixed: bool, seed: int) -> Program:
    pairs, label = _interactions(seed)
    torch.manual_seed(seed)
    model = MF(sigmoid=not fixed)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    return Program(
        model,
        opt,
        minibatches(pairs, label, 256, seed),
        nn.BCEWithLogitsLoss(),
        steps=200,
    )
