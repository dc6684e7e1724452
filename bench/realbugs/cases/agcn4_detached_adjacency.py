"""Adaptive label graph whose adjacency is detached: its projections never learn (A-GCN #4)."""

from __future__ import annotations

import torch
from torch import nn

from realbugs.program import Program, classification_error, minibatches

SOURCE = "https://github.com/queenie88/A-GCN/issues/4"
TITLE = "Question about gradient flow (adj is detached, so W_phi and W_theta cannot be updated)"
BUG = "adj = softmax(phi(E) theta(E)^T).detach(): W_phi and W_theta receive no gradient."
FIX = "Drop the .detach() (the authors' fix)."
KIND = "no_gradient"
ACTION = "loop"
CHANGES = (
    "the CNN image features -> 32 synthetic features; 8 labels whose classifiers come from a "
    "2-layer GCN over label embeddings with the adaptive adjacency; labels 4-7 copy labels 0-3 "
    "(a label correlation for the adjacency to learn); multi-label soft-margin loss, Adam lr "
    "1e-2, 200 steps of batch 64"
)

LABELS, FEATS, DIM = 8, 32, 16


class AdaptiveGCN(nn.Module):
    def __init__(self, detach: bool):
        super().__init__()
        self.detach = detach
        self.embedding = nn.Parameter(torch.randn(LABELS, DIM) * 0.5)
        self.phi = nn.Linear(DIM, DIM, bias=False)  # W_phi
        self.theta = nn.Linear(DIM, DIM, bias=False)  # W_theta
        self.gc1 = nn.Linear(DIM, 32)
        self.gc2 = nn.Linear(32, FEATS)

    def forward(self, x):
        e = self.embedding
        adj = torch.softmax(self.phi(e) @ self.theta(e).T, dim=1)
        if self.detach:
            adj = adj.detach()
        h = torch.relu(adj @ self.gc1(e))
        classifiers = adj @ self.gc2(h)  # (labels, feats)
        return x @ classifiers.T


def _data(seed: int, n: int = 1024):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, FEATS, generator=gen)
    w = torch.randn(4, FEATS, generator=gen)
    y4 = (x @ w.T > 0).float()
    return x, torch.cat([y4, y4], 1)


def build(fixed: bool, seed: int) -> Program:
    x, y = _data(seed)
    torch.manual_seed(seed)
    model = AdaptiveGCN(detach=not fixed)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    return Program(
        model,
        opt,
        minibatches(x, y, 64, seed),
        nn.MultiLabelSoftMarginLoss(),
        steps=200,
        error=classification_error(x, y, lambda out: (out > 0).float()),
        error_name="label error",
    )
