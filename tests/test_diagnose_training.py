"""Diagnosis while training: streaming findings, raise_on, and the same answer from disk."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

import gradwatch as gw
from gradwatch.diagnose import diagnose
from gradwatch.errors import NonFiniteGradientError, TrainingStoppedError


def _sigmoid_net(depth=12, width=64):
    layers = []
    for _ in range(depth):
        layers += [nn.Linear(width, width), nn.Sigmoid()]
    return nn.Sequential(*layers, nn.Linear(width, 10))


def _train(model, opt, w, steps, x, y, on_step=None):
    for step in range(steps):
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        w.log_loss(loss)
        if on_step:
            on_step(step, model)
        opt.step()


def test_a_clear_case_is_reported_through_on_finding_within_50_steps():
    torch.manual_seed(0)
    model = _sigmoid_net()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    found = []
    x, y = torch.randn(64, 64), torch.randint(0, 10, (64,))
    with gw.watch(model, opt, on_finding=lambda f: found.append((f.kind, f.step, f.severity))) as w:
        _train(model, opt, w, 50, x, y)
        assert ("vanishing_gradient", 0, "error") in found  # reported by the flush at step 50
    assert [k for k, _, _ in found].count("vanishing_gradient") == 1  # reported once, not per flush


def test_raise_on_nonfinite_stops_before_the_update_and_names_the_layer(reads):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 1))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = torch.randn(16, 4), torch.randn(16, 1)

    def poison(step, m):
        if step == 3:
            m[2].weight.grad[0, 0] = float("inf")

    w = gw.watch(model, opt, raise_on=("nonfinite",))
    with pytest.raises(NonFiniteGradientError, match=r"step 3 in layer\(s\) '2'"):
        for step in range(6):
            opt.zero_grad()
            nn.functional.mse_loss(model(x), y).backward()
            poison(step, model)
            before = model[2].weight.detach().clone()
            opt.step()
    w.close()
    assert torch.equal(model[2].weight, before)  # the poisoned update was never applied
    stats = w.stats()
    assert sorted(stats.step.unique()) == [0, 1, 2, 3]  # nothing recorded before is lost
    assert stats.query("step == 3 and layer == '2' and metric == 'nonfinite'").value.item() == 1


def test_raise_on_a_detected_kind_stops_at_the_flush():
    torch.manual_seed(0)
    model = _sigmoid_net()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    x, y = torch.randn(64, 64), torch.randint(0, 10, (64,))
    w = gw.watch(model, opt, flush_every=10, raise_on=("vanishing_gradient",))
    with pytest.raises(TrainingStoppedError, match="vanishing_gradient"):
        _train(model, opt, w, 50, x, y)
    assert w.steps_seen == 10
    w.close()


def test_stored_run_gives_the_same_diagnosis_as_the_live_watch(tmp_path):
    torch.manual_seed(0)
    model = _sigmoid_net()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    x, y = torch.randn(64, 64), torch.randint(0, 10, (64,))
    with gw.watch(model, opt, log_dir=tmp_path / "run") as w:
        _train(model, opt, w, 60, x, y)
    live = w.diagnose().to_dict()
    run = gw.load(tmp_path / "run")
    assert diagnose(run.stats, run.meta).to_dict() == live
    assert [f["kind"] for f in run.findings] == [f["kind"] for f in live["findings"]]


def test_loss_plateau_needs_a_flat_loss_and_not_a_converged_one():
    def table(losses):
        return pd.DataFrame(
            {
                "step": np.arange(len(losses)),
                "layer": "(model)",
                "metric": "loss",
                "value": losses,
                "index": -1,
            }
        )

    flat = diagnose(table(2.3 + 0.001 * np.sin(np.arange(120))))
    assert flat.kinds() == {"loss_plateau"}
    learning = diagnose(table(np.exp(-np.arange(120) / 20)))
    assert learning.kinds() == set()


def test_unstable_updates_from_a_learning_rate_far_too_high():
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10)
    )
    opt = torch.optim.Adam(model.parameters(), lr=1.0)
    x, y = torch.randn(64, 32), torch.randint(0, 10, (64,))
    with gw.watch(model, opt, update_memory=1.0) as w:
        _train(model, opt, w, 20, x, y)
    d = w.diagnose()
    f = next(f for f in d.findings if f.kind == "unstable_updates")
    assert f.severity == "error" and f.evidence["max_median_update_ratio"] > 1
    assert f.remedies[0].action == "lr" and "1" in f.remedies[0].detail


def test_vanishing_through_time_in_a_vanilla_rnn_and_not_in_an_lstm_on_short_sequences():
    class Seq(nn.Module):
        def __init__(self, cell):
            super().__init__()
            self.rnn = cell(1, 32, batch_first=True)
            self.head = nn.Linear(32, 1)

        def forward(self, x):
            return self.head(self.rnn(x)[0][:, -1])

    torch.manual_seed(0)
    x = torch.randn(32, 200, 1)
    d = gw.check(Seq(nn.RNN), x, torch.randn(32, 1))
    f = next(f for f in d.findings if f.kind == "vanishing_through_time")
    assert f.layers == ("rnn",) and f.remedies[0].action == "gating"
    lstm = gw.remedies.lstm_forget_bias(Seq(nn.LSTM), 1.0)
    assert "vanishing_through_time" not in gw.check(lstm, x[:, :20], torch.randn(32, 1)).kinds()
