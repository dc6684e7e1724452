"""Rehearsed what-if (`gw.check(..., what_if="train")`, `Watch.what_if`): each change trained on
copies; the change that fixes a small buggy program ranks first, and nothing else is touched."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from torch import nn

import gradwatch as gw
from gradwatch.checks.rehearsed import RehearsedWhatIf

STEPS = 30


def _blobs(n=128, d=8, seed=0, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 3, (n,), generator=g)
    centres = torch.randn(3, d, generator=g) * 2
    x = (centres[y] + torch.randn(n, d, generator=g)) * scale
    return x, y


def _rehearse(model, opt, x, y, loss_fn=None, **kw) -> RehearsedWhatIf:
    d = gw.check(
        model, x, y, loss_fn, optimizer=opt, what_if="train", steps=STEPS, predict=False, **kw
    )
    return d.summary["rehearsed_what_if"]


def test_learning_rate_too_high_ranks_a_smaller_rate_first():
    torch.manual_seed(0)
    x, y = _blobs()
    model = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 3))
    r = _rehearse(model, torch.optim.SGD(model.parameters(), lr=20.0), x, y)
    # The baseline diverges, so clipping is rehearsed too; AGC measurably rescues it as well.
    assert r.top is not None and r.top.action in ("lr", "clipping"), str(r)
    assert any(c.name == "lr x0.1" and c.verdict == "better" for c in r.changes), str(r)


def test_softmax_before_cross_entropy_ranks_dropping_it_first():
    torch.manual_seed(0)
    x, y = _blobs()
    model = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 3), nn.Softmax(dim=-1))
    r = _rehearse(model, torch.optim.Adam(model.parameters(), lr=1e-2), x, y)
    assert r.top is not None and r.top.action == "loss", str(r)
    assert "Softmax" in r.top.name


def test_missing_zero_grad_in_the_users_loop_ranks_clearing_first():
    torch.manual_seed(0)
    x = torch.randn(64, 4)
    y = x @ torch.randn(4, 1)
    model = nn.Linear(4, 1)

    def step(m, o, batch):  # the user's loop body, without zero_grad
        loss = nn.functional.mse_loss(m(batch[0]), batch[1])
        loss.backward()
        o.step()
        return loss

    r = _rehearse(model, torch.optim.SGD(model.parameters(), lr=0.05), x, y, train_step=step)
    assert r.top is not None and r.top.action == "loop", str(r)


def test_unscaled_inputs_rank_standardising_them_first():
    torch.manual_seed(0)
    x, y = _blobs(scale=1.0)
    x = x * torch.logspace(0, 3, 8) + 500.0  # features of wildly different scales and means
    model = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 3))
    r = _rehearse(model, torch.optim.Adam(model.parameters(), lr=1e-3), x, y)
    # LSUV rescales the first layer's output to unit variance: it answers the same scale problem.
    assert r.top is not None and r.top.action in ("data", "init"), str(r)
    assert any(c.action == "data" and c.verdict == "better" for c in r.changes), str(r)


def test_deep_sigmoid_mlp_ranks_a_model_change_first():
    torch.manual_seed(0)
    x, y = _blobs(d=16)
    layers = [nn.Linear(16, 32), nn.Sigmoid()]
    for _ in range(8):
        layers += [nn.Linear(32, 32), nn.Sigmoid()]
    model = nn.Sequential(*layers, nn.Linear(32, 3))
    r = _rehearse(model, torch.optim.SGD(model.parameters(), lr=0.1), x, y)
    assert r.top is not None
    assert r.top.action in ("activation", "normalization", "init", "optimizer"), str(r)


def test_users_model_optimizer_rng_and_data_are_untouched():
    torch.manual_seed(0)
    x, y = _blobs()
    model = nn.Sequential(nn.Linear(8, 16), nn.Dropout(0.2), nn.ReLU(), nn.Linear(16, 3))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    model(x).sum().backward()
    opt.step()  # the optimizer has state
    opt.zero_grad()
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    state = json.dumps(opt.state_dict(), default=lambda t: t.tolist())
    x0, rng = x.clone(), torch.get_rng_state()
    _rehearse(model, opt, x, y, seeds=(0, 1))
    assert all(torch.equal(weights[k], v) for k, v in model.state_dict().items())
    assert json.dumps(opt.state_dict(), default=lambda t: t.tolist()) == state
    assert torch.equal(torch.get_rng_state(), rng) and torch.equal(x, x0)
    assert all(p.grad is None for p in model.parameters())
    assert not model._forward_hooks and opt.param_groups[0]["lr"] == 1e-2


def test_budget_stops_early_and_says_so():
    torch.manual_seed(0)
    x, y = _blobs()
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))
    r = _rehearse(model, torch.optim.SGD(model.parameters(), lr=0.1), x, y, max_seconds=0.0)
    assert r.stopped_early and r.not_run and not r.changes
    assert "stopped early" in str(r)
    assert r.to_dict()["stopped_early"] is True


def test_healthy_program_has_no_change_beyond_seed_noise():
    torch.manual_seed(0)
    x, y = _blobs()
    model = nn.Sequential(nn.Linear(8, 3))
    r = _rehearse(model, torch.optim.Adam(model.parameters(), lr=0.05), x, y)
    assert r.top is None, str(r)


def test_live_watch_rehearses_without_touching_training():
    torch.manual_seed(0)
    x, y = _blobs()
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3), nn.Softmax(dim=-1))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    with gw.watch(model, opt) as w:
        for _ in range(5):
            opt.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
        weights = {k: v.clone() for k, v in model.state_dict().items()}
        steps_before = len(w.stats())
        r = w.what_if([(x, y)], steps=30)
        assert len(w.stats()) == steps_before  # the copies' steps are not recorded
        assert all(torch.equal(weights[k], v) for k, v in model.state_dict().items())
    assert r.top is not None and r.top.action == "loss"
    assert json.loads(json.dumps(gw._json.jsonable(r)))["baseline"]["name"] == "baseline"


FACTORY = """
import torch
from torch import nn

def make():
    torch.manual_seed(0)
    x = torch.randn(64, 8)
    y = (x[:, 0] > 0).long()
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 2), nn.Softmax(dim=-1))
    return {"model": model, "inputs": x, "target": y,
            "optimizer": torch.optim.Adam(model.parameters(), lr=1e-2)}
"""


@pytest.mark.parametrize("as_json", [True, False])
def test_cli_what_if_steps(tmp_path, as_json):
    f = tmp_path / "factory.py"
    f.write_text(FACTORY)
    args = [sys.executable, "-m", "gradwatch", "check", f"{f}:make", "--what-if", "--steps", "20"]
    out = subprocess.run(args + (["--json"] if as_json else []), capture_output=True, text=True)
    assert out.returncode in (0, 1), out.stderr
    if as_json:
        rw = json.loads(out.stdout)["summary"]["rehearsed_what_if"]
        assert rw["steps"] == 20 and rw["changes"]
    else:
        assert "rehearsed what-if" in out.stdout


def test_cli_steps_without_what_if_is_a_usage_error(tmp_path):
    f = tmp_path / "factory.py"
    f.write_text(FACTORY)
    args = [sys.executable, "-m", "gradwatch", "check", f"{f}:make", "--steps", "20"]
    out = subprocess.run(args, capture_output=True, text=True)
    assert out.returncode == 2 and "--what-if" in out.stderr
