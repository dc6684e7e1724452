"""Rehearsed what-if (`gw.check(..., what_if="train")`, `Watch.what_if`): each change trained on
copies; the change that fixes a small buggy program ranks first, and nothing else is touched."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

import gradwatch as gw
from gradwatch.checks.rehearsed import RehearsedWhatIf

STEPS = 30


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models train 3x faster on one thread where other jobs share the cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


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


def test_live_watch_ranks_by_the_users_metric():
    torch.manual_seed(0)
    x, y = _blobs()
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3), nn.Softmax(dim=-1))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    seen = []

    def error(m):
        with torch.no_grad():
            value = float((m(x).argmax(1) != y).float().mean())
        seen.append(value)
        return value

    with gw.watch(model, opt) as w:
        for _ in range(3):
            opt.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
        r = w.what_if([(x, y)], steps=20, metric=error)
    assert seen and r.baseline.metric in seen  # the ranking read the user's metric
    assert r.top is not None and r.top.metric <= r.baseline.metric


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


def test_cli_what_if_steps(tmp_path):
    # In-process (CliRunner), one factory, both outputs: the flags' wiring, not a subprocess.
    from typer.testing import CliRunner

    from gradwatch.cli import app

    f = tmp_path / "factory.py"
    f.write_text(FACTORY)
    args = ["check", f"{f}:make", "--what-if", "--steps", "10"]
    result = CliRunner().invoke(app, [*args, "--json"])
    assert result.exit_code in (0, 1), result.output
    rw = json.loads(result.stdout)["summary"]["rehearsed_what_if"]
    assert rw["steps"] == 10 and rw["changes"] and rw["baseline"]["name"] == "baseline"
    text = CliRunner().invoke(app, args)
    assert text.exit_code in (0, 1) and "rehearsed what-if" in text.stdout


def test_cli_steps_without_what_if_is_a_usage_error(tmp_path):
    from typer.testing import CliRunner

    from gradwatch.cli import app

    f = tmp_path / "factory.py"
    f.write_text(FACTORY)
    out = CliRunner().invoke(app, ["check", f"{f}:make", "--steps", "20"])
    assert out.exit_code == 2 and "--what-if" in out.output


# ---------------------------------------------------------------- changes the loss's graph asks for


class _FunctionalSoftmax(nn.Module):
    def __init__(self, log: bool):
        super().__init__()
        self.log = log
        self.body = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 3))

    def forward(self, x):
        p = torch.softmax(self.body(x), dim=1)
        return torch.log(p) if self.log else p


@pytest.mark.parametrize("log", [False, True])
def test_logits_mode_gives_the_loss_the_softmaxs_input(log):
    from gradwatch.checks.changes import LogitsMode

    torch.manual_seed(0)
    model = _FunctionalSoftmax(log)
    x, y = _blobs()
    loss_fn = nn.NLLLoss() if log else nn.CrossEntropyLoss()
    with LogitsMode():
        got = loss_fn(model(x), y)
    want = nn.functional.cross_entropy(model.body(x), y)  # the naive reference: logits
    assert torch.allclose(got, want, atol=1e-6)
    assert not torch.allclose(loss_fn(model(x), y), want, atol=1e-3) or log  # the bug differs


def test_functional_softmax_before_cross_entropy_ranks_the_logits_change_first():
    torch.manual_seed(0)
    x, y = _blobs()
    model = _FunctionalSoftmax(log=False)
    r = _rehearse(model, torch.optim.Adam(model.parameters(), lr=1e-2), x, y, nn.CrossEntropyLoss())
    assert r.top is not None and r.top.action == "loss" and "logits" in r.top.name, str(r)
    assert not r.manual or all(m.action != "loss" for m in r.manual)


def test_an_output_relu_module_is_found_and_softplus_offered():
    torch.manual_seed(0)
    x = torch.randn(64, 4)
    y = x.sum(1, keepdim=True).abs()
    model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 1), nn.ReLU())
    with torch.no_grad():
        model[2].bias.fill_(-3.0)  # the output starts dead: no gradient reaches anything
    r = _rehearse(model, torch.optim.SGD(model.parameters(), lr=0.3), x, y)
    names = [c.name for c in r.changes]
    assert "activation: output ReLU '3' -> Softplus" in names, names
    softplus = r.changes[names.index("activation: output ReLU '3' -> Softplus")]
    assert softplus.verdict == "better" and "no_gradient" in softplus.cleared, str(r)


def test_standardised_targets_train_standardised_and_show_the_users_units():
    torch.manual_seed(0)
    x = torch.randn(128, 4)
    y = 1000.0 + 300.0 * (x @ torch.randn(4, 1))  # targets far from mean 0, std 1
    model = nn.Sequential(nn.Linear(4, 16), nn.Tanh(), nn.Linear(16, 1))
    start = {k: v.clone() for k, v in model.state_dict().items()}
    r = _rehearse(model, torch.optim.SGD(model.parameters(), lr=1e-3), x, y)
    change = next(c for c in r.changes if c.name == "data: standardise targets")
    # Its first loss, naively: the untrained copy's output mapped back to the targets' units.
    mean, std = y.double().mean(0).float(), y.double().std(0).float()
    ref = nn.Sequential(nn.Linear(4, 16), nn.Tanh(), nn.Linear(16, 1))
    ref.load_state_dict(start)
    with torch.no_grad():
        naive = nn.functional.mse_loss(ref(x) * std + mean, y)
    assert change.losses[0][0] == pytest.approx(float(naive), rel=1e-4)
    assert change.verdict == "better" and change.final < 0.5 * r.baseline.final, str(r)


# ---------------------------------------------------------------- the verdict's rule


def _run(value, spread, final=1.0, action="init"):
    from gradwatch.checks.rehearsed import RehearsedChange

    return RehearsedChange(
        "c", action, "", ((final,),), final, 0.0, None, "within noise", metric=value,
        metric_spread=spread,
    )  # fmt: skip


def test_verdict_needs_two_noise_sigmas_ten_percent_and_the_tasks_scale_unless_asked():
    from gradwatch.checks.rehearsed import _verdict

    base = _run(0.05, 0.004)
    # 0.05 -> 0.003: beyond 2 sigmas (2*hypot(0.004, 0.004) = 0.011) and 10% of 0.05;
    # the gain 0.047 is under 10% of the untrained 0.9: a minor gain unless a finding asks.
    assert _verdict(_run(0.003, 0.004), base, 0.0, 0.9, asked=False) == "minor gain"
    assert _verdict(_run(0.003, 0.004), base, 0.0, 0.9, asked=True) == "better"
    assert _verdict(_run(0.003, 0.004), base, 0.0, 0.3, asked=False) == "better"
    # within 2 sigmas of the noise floor (the median spread of all runs) is noise
    assert _verdict(_run(0.003, 0.0), _run(0.05, 0.0), 0.02, 0.3, asked=True) == "within noise"
    assert _verdict(_run(0.2, 0.004), base, 0.0, 0.9, asked=True) == "worse"
    # a run that stays finite beats a baseline whose loss does not, whatever the metric says
    assert _verdict(_run(0.5, 0.0), _run(0.1, 0.0, final=math.inf), 0.0, 0.9, False) == "better"
    assert _verdict(_run(0.0, 0.0, final=math.inf), base, 0.0, 0.9, True) == "worse"


def test_noise_floor_is_the_median_spread():
    from gradwatch.checks.rehearsed import _noise_floor

    runs = [_run(0.1, s) for s in (0.0, 0.01, 0.03, 0.5)]
    assert _noise_floor(runs, metric=True) == pytest.approx(0.02)
