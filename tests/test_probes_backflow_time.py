"""Backflow and through-time probes against naive references and against known theory."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence

import gradwatch as gw
from conftest import as_dict
from gradwatch.probes.backflow import BackflowProbe

pytestmark = pytest.mark.usefixtures("cpu_path")  # every test on both CPU paths (numba, torch)


def _watch_one(model, x, loss, **kw):
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    kw = {"backflow": True, "through_time": True, "activations": False, **kw}
    with gw.watch(model, opt, **kw) as w:
        loss(model(x)).backward()
        opt.step()
    return w.stats()


def _assert_backflow_is_retained_gradients(
    got, model: nn.Sequential, x, loss=lambda y: y.pow(2).mean()
):
    """The naive reference: each module's output retained, ‖∂L/∂output‖ / √batch."""
    model.zero_grad()
    outs, h = [], x
    for m in model:
        h = m(h)
        h.retain_grad()
        outs.append(h)
    loss(h).backward()
    for i, out in enumerate(outs):
        assert got[(str(i), "backflow_norm")] == pytest.approx(
            out.grad.norm().item() / math.sqrt(len(x)), rel=1e-6
        )


def test_backflow_equals_retained_output_gradients():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 9), nn.Tanh(), nn.Linear(9, 9), nn.ReLU(), nn.Linear(9, 2))
    x = torch.randn(12, 5)
    got = as_dict(_watch_one(model, x, lambda y: y.pow(2).mean()), 0)
    _assert_backflow_is_retained_gradients(got, model, x)


def test_backflow_of_signals_that_are_not_contiguous():
    # The gradient of a sum reaches the last layer as one value broadcast over its output (a
    # stride-0 tensor), the others as ordinary tensors: both kinds in one step.
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 9), nn.Tanh(), nn.Linear(9, 3))
    x = torch.randn(12, 5)
    got = as_dict(_watch_one(model, x, lambda y: y.sum()), 0)
    _assert_backflow_is_retained_gradients(got, model, x, lambda y: y.sum())


@pytest.mark.filterwarnings("ignore:Using backward\\(\\) with create_graph=True")
def test_backflow_under_create_graph_matches_and_keeps_no_graph():
    """`backward(create_graph=True)` (a gradient penalty, second-order methods): the signals the
    hooks see require grad themselves; the norms are read without building on that graph."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 9), nn.Tanh(), nn.Linear(9, 2))
    x = torch.randn(12, 5)
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    with gw.watch(model, opt, backflow=True, activations=False) as w:
        model(x).pow(2).mean().backward(create_graph=True)
        (probe,) = [p for p in w._probes if isinstance(p, BackflowProbe)]
        assert probe._norms and not any(
            isinstance(norm, torch.Tensor) and norm.requires_grad for _, norm, _ in probe._norms
        )  # nothing holds the graph
        opt.step()
    _assert_backflow_is_retained_gradients(as_dict(w.stats(), 0), model, x)


class _InFloat64(nn.Module):
    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner.double()

    def forward(self, x):
        return self.inner(x.double()).float()


def test_a_float64_layer_among_float32_ones_is_measured_in_its_own_precision():
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Linear(5, 9), nn.Tanh(), _InFloat64(nn.Linear(9, 9)), nn.ReLU(), nn.Linear(9, 2)
    )
    x = torch.randn(12, 5)
    got = as_dict(_watch_one(model, x, lambda y: y.pow(2).mean(), activations=True), 0)
    model.zero_grad()
    outs, h = [], x
    for m in model:
        h = m.inner(h.double()) if isinstance(m, _InFloat64) else m(h)
        h.retain_grad()
        outs.append(h)
        h = h.float()
    h.pow(2).mean().backward()
    assert outs[2].dtype == torch.float64
    for i, out in enumerate(outs):
        name = "2.inner" if i == 2 else str(i)
        assert got[(name, "backflow_norm")] == pytest.approx(
            out.grad.norm().item() / math.sqrt(12), rel=1e-6
        )
    assert got[("2.inner", "grad_norm")] == pytest.approx(
        math.hypot(
            model[2].inner.weight.grad.norm().item(), model[2].inner.bias.grad.norm().item()
        ),
        rel=1e-9,
    )


def test_backflow_accumulates_over_micro_batches_as_a_root_mean_square():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 1))
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    xs = [torch.randn(6, 3), 3 * torch.randn(6, 3)]
    with gw.watch(model, opt, backflow=True) as w:
        for x in xs:
            model(x).pow(2).sum().backward()
        opt.step()
    squares = []
    for x in xs:
        h = model[0](x)
        h.retain_grad()
        model[2](model[1](h)).pow(2).sum().backward()
        squares.append(h.grad.norm().item() ** 2 / 6)
    assert as_dict(w.stats(), 0)[("0", "backflow_norm")] == pytest.approx(
        math.sqrt(np.mean(squares)), rel=1e-6
    )


def test_deep_relu_with_xavier_init_halves_backflow_variance_per_layer():
    """He et al. 2015: with Var(w) = 1/n, each ReLU layer halves the back-propagated variance."""
    torch.manual_seed(0)
    depth, width = 16, 512
    layers = []
    for _ in range(depth):
        lin = nn.Linear(width, width)
        nn.init.xavier_normal_(lin.weight)
        nn.init.zeros_(lin.bias)
        layers += [lin, nn.ReLU()]
    model = nn.Sequential(*layers)
    x = torch.randn(256, width)
    stats = _watch_one(model, x, lambda y: (y * torch.randn_like(y)).sum())
    got = as_dict(stats, 0)
    linear = [str(2 * i) for i in range(depth)]
    first, last = got[(linear[0], "backflow_norm")], got[(linear[-1], "backflow_norm")]
    predicted = 0.5 ** (depth - 1)  # variance ratio from the last Linear back to the first
    measured = (first / last) ** 2
    assert predicted / 2 < measured < predicted * 2
    # Over the first half the weight gradients stay level while the backflow shrinks 11-fold:
    # the weight gradient alone would hide the decay (Glorot & Bengio 2010).
    grads = [got[(n, "grad_norm")] for n in linear[:8]]
    back = [got[(n, "backflow_norm")] for n in linear[:8]]
    assert max(grads) / min(grads) < 1.3
    assert back[-1] / back[0] > 8


def test_tanh_with_huge_weights_reads_saturated_and_xavier_tanh_does_not():
    def net(scale: float | None):
        torch.manual_seed(0)
        layers = []
        for _ in range(6):
            lin = nn.Linear(256, 256)
            if scale is None:
                nn.init.xavier_normal_(lin.weight)
            else:
                nn.init.normal_(lin.weight, std=scale)
            layers += [lin, nn.Tanh()]
        return nn.Sequential(*layers)

    x = torch.randn(64, 256)
    for scale, check in ((1.0, lambda f: f > 0.8), (None, lambda f: f < 0.05)):
        stats = _watch_one(net(scale), x, lambda y: y.sum(), activations=True)
        sat = stats.query("metric == 'saturated_frac'").value
        assert len(sat) == 6 and all(check(f) for f in sat), (scale, list(sat))


def test_relu_with_very_negative_biases_reads_all_dead():
    torch.manual_seed(0)
    lin = nn.Linear(20, 50)
    nn.init.constant_(lin.bias, -100.0)
    model = nn.Sequential(nn.Linear(10, 20), nn.ReLU(), lin, nn.ReLU(), nn.Linear(50, 1))
    stats = _watch_one(
        model,
        torch.randn(32, 10),
        lambda y: y.sum() + sum(p.sum() * 0 for p in model.parameters()),
        activations=True,
    )
    got = as_dict(stats, 0)
    assert got[("3", "dead_frac")] == 1.0
    assert got[("1", "dead_frac")] < 0.5


def _naive_time_grads(rnn, x, loss, batch_first=True):
    xs = x.detach().requires_grad_(True)
    out, _ = rnn(xs)
    loss(out).backward()
    dims = (0, 2) if batch_first else (1, 2)
    batch = x.shape[0] if batch_first else x.shape[1]
    return (xs.grad.norm(dim=dims) / math.sqrt(batch)).numpy()


class Last(nn.Module):
    def __init__(self, rnn):
        super().__init__()
        self.rnn = rnn

    def forward(self, x):
        return self.rnn(x)[0]


@pytest.mark.parametrize("cls", [nn.RNN, nn.LSTM, nn.GRU])
@pytest.mark.parametrize("batch_first", [True, False])
def test_time_grad_norm_equals_input_gradients_per_step(cls, batch_first):
    torch.manual_seed(0)
    rnn = cls(3, 8, num_layers=2, batch_first=batch_first)
    x = torch.randn(4, 11, 3) if batch_first else torch.randn(11, 4, 3)
    loss = (lambda o: o[:, -1].pow(2).sum()) if batch_first else (lambda o: o[-1].pow(2).sum())
    stats = _watch_one(Last(rnn), x, loss)
    series = stats.query("metric == 'time_grad_norm'").sort_values("index")
    assert list(series.layer.unique()) == ["rnn"]
    np.testing.assert_allclose(
        series.value.to_numpy(), _naive_time_grads(rnn, x, loss, batch_first), rtol=1e-5
    )


def test_time_grad_norm_handles_packed_sequences():
    torch.manual_seed(0)
    rnn = nn.GRU(3, 5, batch_first=True)
    x = torch.randn(3, 6, 3)
    lengths = torch.tensor([6, 4, 2])

    class Packed(nn.Module):
        def __init__(self):
            super().__init__()
            self.rnn = rnn

        def forward(self, x):
            out, h = self.rnn(pack_padded_sequence(x, lengths, batch_first=True))
            return h

    stats = _watch_one(Packed(), x, lambda h: h.pow(2).sum())
    series = stats.query("metric == 'time_grad_norm'").sort_values("index").value.to_numpy()
    xs = x.detach().requires_grad_(True)
    _, h = rnn(pack_padded_sequence(xs, lengths, batch_first=True))
    h.pow(2).sum().backward()
    expected = xs.grad.norm(dim=(0, 2)) / math.sqrt(3)  # padded positions have zero gradient
    np.testing.assert_allclose(series, expected.numpy(), rtol=1e-5)


def test_time_grad_norm_for_a_user_loop_over_cells():
    torch.manual_seed(0)

    class Loop(nn.Module):
        def __init__(self):
            super().__init__()
            self.cell = nn.LSTMCell(3, 6)

        def forward(self, x):
            h = c = torch.zeros(x.shape[0], 6)
            for t in range(x.shape[1]):
                h, c = self.cell(x[:, t], (h, c))
            return h

    model = Loop()
    x = torch.randn(5, 9, 3)
    stats = _watch_one(model, x, lambda h: h.sum())
    series = stats.query("metric == 'time_grad_norm'").sort_values("index")
    xs = x.detach().requires_grad_(True)
    model(xs).sum().backward()
    np.testing.assert_allclose(
        series.value.to_numpy(), (xs.grad.norm(dim=(0, 2)) / math.sqrt(5)).numpy(), rtol=1e-5
    )
    assert list(series["index"]) == list(range(9))


def _decay(cls, length, forget_bias=None):
    torch.manual_seed(0)
    rnn = cls(1, 32, batch_first=True)
    if forget_bias is not None:
        for name, p in rnn.named_parameters():
            if name.startswith("bias"):
                with torch.no_grad():
                    p.zero_()
                    p[32:64] = forget_bias / 2  # b_ih + b_hh: the forget gate's slice
    x = torch.randn(16, length, 1)
    stats = _watch_one(Last(rnn), x, lambda o: o[:, -1].sum())
    series = stats.query("metric == 'time_grad_norm'").sort_values("index").value.to_numpy()
    assert len(series) == length and series[-1] > 0 and np.isfinite(series).all()
    return series[0] / series[-1]


def test_vanilla_rnn_gradient_vanishes_through_hundreds_of_steps():
    assert _decay(nn.RNN, 300) < 1e-6


def test_lstm_with_forget_bias_one_decays_far_more_slowly():
    # At 100 steps both are still representable in float32: RNN ~1e-22, LSTM ~1e-6.
    rnn, lstm = _decay(nn.RNN, 100), _decay(nn.LSTM, 100, forget_bias=1.0)
    assert 0 < rnn < 1e-12
    assert lstm > 1e6 * rnn
