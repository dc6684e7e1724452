"""gw.check(..., optimizer=): a few real optimizer steps on a copy find what the model alone
cannot show (a learning rate that overshoots, kills units or is too small), and leave the user's
model, optimizer and RNG exactly as they were."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import gradwatch as gw
from gradwatch.checks.rehearsal import copy_optimizer
from gradwatch.errors import CheckError


def he_mlp(depth=10, width=128, seed=0):
    torch.manual_seed(seed)
    layers, n = [], 64
    for _ in range(depth):
        lin = nn.Linear(n, width)
        nn.init.kaiming_normal_(lin.weight, nonlinearity="relu")
        nn.init.zeros_(lin.bias)
        layers += [lin, nn.ReLU()]
        n = width
    return nn.Sequential(*layers, nn.Linear(n, 10))


def batch(seed=1):
    g = torch.Generator().manual_seed(seed)
    # Ten separable classes, so a sane learning rate makes the loss fall within the rehearsal.
    y = torch.arange(128) % 10
    centres = torch.randn(10, 64, generator=g) * 2
    return centres[y] + torch.randn(128, 64, generator=g), y


X, Y = batch()


def rehearsed(d):
    return {f.kind for f in d.findings if f.evidence.get("rehearsal")}


def test_a_learning_rate_fifty_times_too_high_is_found_before_training_and_a_sane_one_is_not():
    model = he_mlp()
    assert gw.check(model, X, Y, predict=False).findings == []  # the model alone looks healthy
    high = gw.check(
        model, X, Y, predict=False, optimizer=torch.optim.Adam(model.parameters(), lr=0.05)
    )
    assert "unstable_updates" in rehearsed(high) and not high.ok
    f = next(f for f in high.findings if f.kind == "unstable_updates")
    assert f.summary.startswith("In 20 rehearsed Adam steps (lr 0.05) on a copy: ")
    sane = gw.check(
        model, X, Y, predict=False, optimizer=torch.optim.Adam(model.parameters(), lr=1e-3)
    )
    assert sane.ok and sane.findings == []
    rh = sane.summary["rehearsal"]
    assert rh.steps == 20 and rh.lr == (1e-3,) and rh.optimizer == "Adam"
    assert rh.loss_last < rh.loss_first
    assert "rehearsal: 20 Adam steps (lr 0.001)" in str(sane)
    assert sane.to_dict()["summary"]["rehearsal"] == {
        "steps": 20,
        "optimizer": "Adam",
        "lr": [1e-3],
        "loss_first": rh.loss_first,
        "loss_last": rh.loss_last,
        "findings": [],
    }


def test_overflow_and_a_rate_too_small_are_found():
    model = he_mlp()
    boom = gw.check(
        model, X, Y, predict=False, optimizer=torch.optim.SGD(model.parameters(), lr=10.0)
    )
    assert "nonfinite" in rehearsed(boom)
    idle = gw.check(
        model, X, Y, predict=False, optimizer=torch.optim.SGD(model.parameters(), lr=1e-6)
    )
    # The rate is the root cause (far below 1e-3 updates); the plateau is its consequence.
    assert rehearsed(idle) == {"bad_learning_rate", "loss_plateau"}
    assert idle.findings[0].kind == "bad_learning_rate"


def test_model_optimizer_scheduler_and_rng_are_untouched():
    model = nn.Sequential(
        nn.Linear(64, 64), nn.BatchNorm1d(64), nn.ReLU(), nn.Dropout(0.3), nn.Linear(64, 10)
    )
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 10))
    for _ in range(3):  # momentum buffers exist and the schedule has moved
        opt.zero_grad()
        nn.functional.cross_entropy(model(X), Y).backward()
        opt.step()
        sched.step()
    weights = copy.deepcopy(model.state_dict())
    opt_state = copy.deepcopy(opt.state_dict())
    grads = [p.grad.clone() for p in model.parameters()]
    rng = torch.get_rng_state()
    d = gw.check(model, X, Y, predict=False, optimizer=opt)
    assert d.summary["rehearsal"].lr == (pytest.approx(0.1 * 4 / 10),)  # the scheduler's rate
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in weights.items())
    after = opt.state_dict()
    assert after["param_groups"] == opt_state["param_groups"]
    assert all(
        torch.equal(after["state"][i]["momentum_buffer"], s["momentum_buffer"])
        for i, s in opt_state["state"].items()
    )
    assert all(torch.equal(p.grad, g) for p, g in zip(model.parameters(), grads, strict=True))
    assert torch.equal(torch.get_rng_state(), rng)
    assert sched.last_epoch == 3


@pytest.mark.parametrize(
    "make",
    [
        lambda ps: torch.optim.SGD(ps, lr=0.05, momentum=0.9, nesterov=True, weight_decay=1e-3),
        lambda ps: torch.optim.AdamW(ps, lr=3e-3, betas=(0.8, 0.95)),
        lambda ps: torch.optim.RMSprop(ps, lr=1e-3),
    ],
)
def test_the_copied_optimizer_steps_exactly_as_the_original(make):
    """Reference: the user's own optimizer, stepped on the real model after a few steps of
    history.
    """
    model = nn.Sequential(nn.Linear(64, 32), nn.Tanh(), nn.Linear(32, 10))
    opt = make([{"params": model[0].parameters()}, {"params": model[2].parameters(), "lr": 1e-2}])

    def step(m, o):
        o.zero_grad()
        nn.functional.cross_entropy(m(X), Y).backward()
        o.step()

    for _ in range(2):
        step(model, opt)
    clone = copy.deepcopy(model)
    twin = copy_optimizer(opt, model, clone)
    assert [g["lr"] for g in twin.param_groups] == [g["lr"] for g in opt.param_groups]
    for _ in range(3):
        step(model, opt)
        step(clone, twin)
    assert all(
        torch.equal(a, b) for a, b in zip(model.parameters(), clone.parameters(), strict=True)
    )


def test_bad_rehearsals_get_one_sentence():
    model = he_mlp(depth=2)
    other = nn.Linear(3, 3)
    with pytest.raises(CheckError, match="not the model's"):
        gw.check(model, X, Y, predict=False, optimizer=torch.optim.SGD(other.parameters(), lr=0.1))
    with pytest.raises(CheckError, match="needs a training loss"):
        gw.check(model, X, predict=False, optimizer=torch.optim.SGD(model.parameters(), lr=0.1))
    with pytest.raises(CheckError, match="rehearsal_steps must be a positive integer"):
        gw.check(
            model, X, Y, optimizer=torch.optim.SGD(model.parameters(), lr=0.1), rehearsal_steps=0
        )


# The scenario suite's "init twins": broken cases identical at init to a healthy case, which go
# wrong only through their optimizer. The rehearsal must tell each from its healthy twin.
TWINS = {
    "mlp-relu-10-sgd-lr-too-high": "mlp-relu-10-he",
    "mlp-relu-10-fp32-overflow": "mlp-relu-10-he",
    "mlp-relu-10-adam-lr-too-high": "mlp-relu-10-adam",
    "mlp-relu-10-dying": "mlp-relu-10-adam",
    "mlp-relu-10-lr-too-small": "mlp-relu-10-he",
    "mlp-naive-bce": "mlp-stable-bce",
    "transformer-postln-6-no-warmup": "transformer-postln-6-warmup",
}


def _scenario_check(name):
    from scenarios.cases import CASES

    setup = next(c for c in CASES if c.name == name).build(0)
    return gw.check(
        setup.model, *setup.check_args(), optimizer=setup.first_optimizer(), predict=False
    )


@pytest.mark.parametrize("broken", sorted(TWINS))
def test_the_rehearsal_tells_each_init_twin_from_its_healthy_twin(broken):
    from scenarios.cases import CASES

    labels = next(c for c in CASES if c.name == broken).kinds
    found = {f.kind for f in _scenario_check(broken).findings if f.severity != "info"}
    assert labels <= found, (labels, found)
    assert _scenario_check(TWINS[broken]).findings == []


@pytest.mark.parametrize("clears", [False, True])
def test_the_rehearsal_runs_the_users_loop_body_and_sees_its_bug(clears):
    """With train_step= the copy is trained by the user's own loop body, so a loop that never
    clears its gradients is found by check() before training, and a loop that does is not."""
    model = he_mlp(depth=3, width=32)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)

    def train_step(m, o, b):
        if clears:
            o.zero_grad()
        loss = nn.functional.cross_entropy(m(b[0]), b[1])
        loss.backward()
        o.step()
        return loss

    before = copy.deepcopy(model.state_dict())
    d = gw.check(model, X, Y, nn.CrossEntropyLoss(), optimizer=opt, train_step=train_step)
    assert ("uncleared_gradients" in d.kinds()) is not clears, d.kinds()
    if not clears:
        first = next(f for f in d.findings if f.severity != "info")
        assert first.kind == "uncleared_gradients" and first.remedies[0].action == "loop"
    for k, v in model.state_dict().items():  # the user's model is untouched
        assert torch.equal(v, before[k])
