"""LSTM text classifier whose zero_grad() sits before the loop (TextClassificationBenchmark #20)."""

from __future__ import annotations

import torch
from torch import nn

from realbugs.program import Program, call_model, classification_error

SOURCE = "https://github.com/FreedomIntelligence/TextClassificationBenchmark/issues/20"
TITLE = "why donot use optimizer.zero_grad in each training step?"
BUG = "optimizer.zero_grad() is called once before the loop, so every step adds to old gradients."
FIX = "optimizer.zero_grad() inside the loop, before each backward()."
KIND = "uncleared_gradients"
ACTION = "loop"
CHANGES = (
    "main.py's loop (Adam, NLLLoss on log-softmax, gradients clipped by value at the repo's 0.1) "
    "on an embedding + LSTM classifier; Adam lr 1e-3 instead of the repo's 2e-5 so that 150 "
    "steps of batch 32 train; synthetic token sequences (vocab 30, length 20; class = whether "
    "marker token 0 occurs more often than marker 1) instead of torchtext's IMDB"
)


class LSTMClassifier(nn.Module):
    def __init__(self, vocab: int = 30, dim: int = 16, hidden: int = 32, classes: int = 2):
        super().__init__()
        self.embedding = nn.Embedding(vocab, dim)
        self.lstm = nn.LSTM(dim, hidden, batch_first=True)
        self.out = nn.Linear(hidden, classes)

    def forward(self, tokens):
        h, _ = self.lstm(self.embedding(tokens))
        return torch.log_softmax(self.out(h[:, -1]), dim=-1)


def _data(seed: int, n: int = 640, length: int = 20):
    """Tokens 2..29 with 0-3 copies of marker 0 and a different count of marker 1."""
    gen = torch.Generator().manual_seed(seed)
    tokens = torch.randint(2, 30, (n, length), generator=gen)
    a = torch.randint(0, 4, (n,), generator=gen)
    b = torch.randint(0, 4, (n,), generator=gen)
    b = torch.where(a == b, (b + 1) % 4, b)
    for i in range(n):
        pos = torch.randperm(length, generator=gen)[: int(a[i] + b[i])]
        tokens[i, pos[: a[i]]] = 0
        tokens[i, pos[a[i] :]] = 1
    return tokens, (a > b).long()


def _clip(model: nn.Module, bound: float = 0.1) -> None:
    for p in model.parameters():
        if p.grad is not None:
            p.grad.clamp_(-bound, bound)


def _step(program: Program, batch, zero: bool) -> torch.Tensor:
    x, y = batch
    if zero:
        program.optimizer.zero_grad()
    loss = program.loss_fn(call_model(program.model, x), y)
    loss.backward()
    _clip(program.model)
    program.report(loss)
    program.optimizer.step()
    return loss


def build(fixed: bool, seed: int) -> Program:
    x, y = _data(seed)
    torch.manual_seed(seed)
    model = LSTMClassifier()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    opt.zero_grad()  # the script's only zero_grad, before the loop
    batches = [(x[i : i + 32], y[i : i + 32]) for i in range(0, len(x), 32)]
    return Program(
        model,
        opt,
        batches,
        nn.NLLLoss(),
        steps=150,
        train_step=lambda p, b: _step(p, b, zero=fixed),
        error=classification_error(x, y, lambda out: out.argmax(-1)),
        error_name="error",
    )
