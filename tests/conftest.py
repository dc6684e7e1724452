"""Shared models and the naive reference computations the statistics are checked against."""

from __future__ import annotations

import math

import pandas as pd
import pytest
import torch
from torch import nn

from gradwatch.probes import kernels as _cpu_kernels


@pytest.fixture(params=["numba", "torch"])
def cpu_path(request, monkeypatch):
    """The forward probes' two CPU paths: numba's fused kernels, and the torch operations that
    every other device runs."""
    if request.param == "numba":
        if _cpu_kernels.load() is None:
            pytest.skip("numba is not installed (pip install gradwatch[fast])")
    else:
        monkeypatch.setattr(_cpu_kernels, "load", lambda wait=True: None)
    return request.param


def naive_layers(model: nn.Module) -> dict[str, list[nn.Parameter]]:
    """Each module's own parameters; a shared parameter belongs to the first module that has it."""
    seen, out = set(), {}
    for name, module in model.named_modules():
        own = [p for p in module._parameters.values() if p is not None and id(p) not in seen]
        seen.update(id(p) for p in own)
        if own:
            out[name or "(root)"] = own
    return out


def naive_norm(tensors) -> float:
    return math.sqrt(sum(float(t.detach().double().pow(2).sum()) for t in tensors))


def naive_grad_stats(model: nn.Module) -> dict[tuple[str, str], float]:
    """(layer, metric) -> value, computed the slow obvious way, in float64."""
    out = {}
    for name, params in naive_layers(model).items():
        grads = [p.grad for p in params if p.grad is not None]
        out[(name, "weight_norm")] = naive_norm(params)
        if grads:
            out[(name, "grad_norm")] = naive_norm(grads)
            out[(name, "nonfinite")] = float(sum(int((~torch.isfinite(g)).sum()) for g in grads))
    return out


def as_dict(stats: pd.DataFrame, step: int) -> dict[tuple[str, str], float]:
    rows = stats[(stats["step"] == step) & (stats["index"] == -1)]
    return {(r.layer, r.metric): r.value for r in rows.itertuples()}


class TinyCNN(nn.Module):
    def __init__(self, channels: int = 4, classes: int = 3):
        super().__init__()
        self.conv1 = nn.Conv2d(1, channels, 3, padding=1)
        self.bn = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)
        self.head = nn.Linear(channels, classes)

    def forward(self, x):
        x = torch.relu(self.bn(self.conv1(x)))
        x = torch.relu(self.conv2(x))
        return self.head(x.mean((2, 3)))


class SeqModel(nn.Module):
    def __init__(self, kind: str = "lstm", hidden: int = 8, layers: int = 1):
        super().__init__()
        cls = {"rnn": nn.RNN, "lstm": nn.LSTM, "gru": nn.GRU}[kind]
        self.rnn = cls(3, hidden, num_layers=layers, batch_first=True)
        self.head = nn.Linear(hidden, 1)

    def forward(self, x):
        out, _ = self.rnn(x)
        return self.head(out[:, -1])


class TinyTransformer(nn.Module):
    def __init__(self, d: int = 16, heads: int = 2, n_layers: int = 2, vocab: int = 11):
        super().__init__()
        self.embed = nn.Embedding(vocab, d)
        layer = nn.TransformerEncoderLayer(
            d, heads, dim_feedforward=2 * d, dropout=0.0, batch_first=True
        )
        self.encoder = nn.TransformerEncoder(layer, n_layers, enable_nested_tensor=False)
        self.head = nn.Linear(d, vocab)

    def forward(self, tokens):
        return self.head(self.encoder(self.embed(tokens)))


def mlp(widths: list[int], act=nn.Tanh) -> nn.Sequential:
    layers: list[nn.Module] = []
    for a, b in zip(widths[:-1], widths[1:], strict=False):
        layers += [nn.Linear(a, b), act()]
    return nn.Sequential(*layers[:-1])


def family(kind: str, size: int, seed: int = 0):
    """(model, inputs, loss_fn) for one model family at a small size."""
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    if kind == "mlp":
        model = mlp([5] + [size] * 3 + [2])
        x = torch.randn(7, 5, generator=g)
        return model, x, lambda out: out.pow(2).mean()
    if kind == "cnn":
        model = TinyCNN(channels=size)
        x = torch.randn(4, 1, 6, 6, generator=g)
        return model, x, lambda out: nn.functional.cross_entropy(out, torch.tensor([0, 1, 2, 0]))
    if kind in ("rnn", "lstm", "gru"):
        model = SeqModel(kind, hidden=size, layers=2)
        x = torch.randn(3, 5, 3, generator=g)
        return model, x, lambda out: out.pow(2).mean()
    if kind == "transformer":
        model = TinyTransformer(d=2 * size, heads=2)
        x = torch.randint(0, 11, (2, 6), generator=g)
        return model, x, lambda out: out.logsumexp(-1).mean()
    raise ValueError(kind)


FAMILIES = ["mlp", "cnn", "rnn", "lstm", "gru", "transformer"]


# The test models are small: one thread is faster than two, and immune to a busy machine.
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)
    yield


@pytest.fixture
def one_thread():
    """The machine is shared: intra-op threads make tiny ops slower, not faster."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(params=["cpu", "accelerator"])
def reads(request, monkeypatch):
    """Runs a test on both of the parameter probe's usual paths: the CPU's, which looks at the
    norms at once, and an accelerator's, which cannot without a sync and counts on the device."""
    if request.param == "accelerator":
        from gradwatch.probes import params

        monkeypatch.setattr(params, "FREE_READS", set())
    return request.param
