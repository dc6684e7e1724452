"""Each finding the diagnosis work added, on a small buggy program and on its fix: the buggy
program gets the finding (first, as the root cause), the fix does not."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

import gradwatch as gw


def _data(n=128, d=8, classes=3, seed=0, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g) * scale
    y = (x[:, 0] > 0).long() + (x[:, 1] > 0).long() if classes == 3 else (x[:, 0] > 0).float()
    return x, y


def _train(model, loss_fn, x, y, steps=40, lr=1e-2, opt=None, zero_grad=True, forward=None):
    torch.manual_seed(0)
    opt = opt or torch.optim.Adam(model.parameters(), lr=lr)
    with gw.watch(model, opt) as w:
        for _ in range(steps):
            if zero_grad:
                opt.zero_grad()
            out = forward(x) if forward else model(x)
            loss = loss_fn(out, y)
            loss.backward()
            w.log_loss(loss)
            opt.step()
    return w.diagnose()


def _first(d):
    severe = [f for f in d.findings if f.severity in ("warning", "error")]
    return severe[0].kind if severe else None


def _mlp(out=3, last=None):
    torch.manual_seed(0)
    layers = [nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, out)]
    return nn.Sequential(*layers, *([last] if last is not None else []))


@pytest.mark.parametrize("buggy", [True, False])
def test_softmax_before_cross_entropy_is_an_output_loss_mismatch(buggy):
    x, y = _data()
    d = _train(_mlp(last=nn.Softmax(dim=1) if buggy else None), nn.CrossEntropyLoss(), x, y)
    assert (_first(d) == "output_loss_mismatch") is buggy
    assert ("output_loss_mismatch" in d.kinds()) is buggy
    if buggy:
        assert d.findings[0].remedies[0].action == "loss"


@pytest.mark.parametrize("buggy", [True, False])
def test_softmax_over_one_unit_explains_no_gradient(buggy):
    x, y = _data(classes=2)
    model = _mlp(out=1, last=nn.Softmax(dim=1) if buggy else nn.Sigmoid())
    d = _train(model, lambda o, t: nn.functional.binary_cross_entropy(o.squeeze(1), t), x, y)
    assert (_first(d) == "output_loss_mismatch") is buggy
    if buggy:
        nograd = next(f for f in d.findings if f.kind == "no_gradient")
        assert nograd.caused_by == "output_loss_mismatch"
    else:
        assert not d.kinds() & {"no_gradient", "output_loss_mismatch"}


@pytest.mark.parametrize("buggy", [True, False])
def test_missing_zero_grad_is_uncleared_gradients(buggy):
    x, y = _data()
    d = _train(_mlp(), nn.CrossEntropyLoss(), x, y, zero_grad=not buggy, opt=None, lr=1e-3)
    assert (_first(d) == "uncleared_gradients") is buggy
    assert ("uncleared_gradients" in d.kinds()) is buggy


def test_gradient_accumulation_is_not_uncleared_gradients():
    x, y = _data()
    model = _mlp()
    opt = torch.optim.SGD(model.parameters(), lr=1e-2)
    with gw.watch(model, opt) as w:
        for _ in range(10):
            for half in (x[:64], x[64:]):  # two micro-batches per step, cleared after the step
                nn.functional.cross_entropy(model(half), y[: len(half)]).backward()
            opt.step()
            opt.zero_grad()
    assert "uncleared_gradients" not in w.diagnose().kinds()


@pytest.mark.parametrize("buggy", [True, False])
def test_reentrant_checkpoint_without_grad_input_is_no_gradient(buggy):
    x, y = _data()
    torch.manual_seed(0)
    block, head = nn.Sequential(nn.Linear(8, 16), nn.Tanh()), nn.Linear(16, 3)
    model = nn.ModuleDict({"block": block, "head": head})

    def forward(inp):
        return head(checkpoint(block, inp, use_reentrant=buggy))

    d = _train(model, nn.CrossEntropyLoss(), x, y, forward=forward)
    assert (_first(d) == "no_gradient") is buggy
    if buggy:
        f = d.findings[0]
        assert "block.0" in f.layers and f.remedies[0].action == "loop"


@pytest.mark.parametrize("buggy", [True, False])
def test_detached_branch_is_no_gradient(buggy):
    x, y = _data()
    torch.manual_seed(0)
    a, b = nn.Linear(8, 16), nn.Linear(16, 3)
    model = nn.ModuleDict({"a": a, "b": b})

    def forward(inp):
        h = torch.tanh(a(inp))
        return b(h.detach() if buggy else h)

    d = _train(model, nn.CrossEntropyLoss(), x, y, forward=forward)
    assert (_first(d) == "no_gradient") is buggy


@pytest.mark.parametrize("buggy", [True, False])
def test_unscaled_inputs_are_unscaled_data(buggy):
    x, y = _data(scale=1e4 if buggy else 1.0)
    d = _train(_mlp(), nn.CrossEntropyLoss(), x, y)
    assert (_first(d) == "unscaled_data") is buggy
    if buggy:
        assert d.findings[0].remedies[0].action == "data"


@pytest.mark.parametrize("buggy", [True, False])
def test_learning_rate_far_too_high_is_bad_learning_rate(buggy):
    x, y = _data()
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Linear(8, 32), nn.Tanh(), nn.Linear(32, 32), nn.Tanh(), nn.Linear(32, 3)
    )
    opt = torch.optim.SGD(model.parameters(), lr=20.0 if buggy else 0.5)
    d = _train(model, nn.CrossEntropyLoss(), x, y, opt=opt)
    assert (_first(d) == "bad_learning_rate") is buggy
    if buggy:
        r = d.findings[0].remedies[0]
        assert r.action == "lr" and "to " in r.detail


def test_check_sees_the_output_loss_mismatch_and_the_target_range():
    x, y = _data(classes=3)
    model = _mlp(out=1, last=nn.Sigmoid())
    d = gw.check(model, x, y.float()[:, None], nn.functional.mse_loss, predict=False)
    assert "output_loss_mismatch" in d.kinds()
    fixed = gw.check(_mlp(), x, y, nn.CrossEntropyLoss(), predict=False)
    assert "output_loss_mismatch" not in fixed.kinds()


def test_findings_name_their_cause_and_print_the_root_first():
    x, y = _data(classes=2)
    model = _mlp(out=1, last=nn.Softmax(dim=1))
    d = _train(model, lambda o, t: nn.functional.binary_cross_entropy(o.squeeze(1), t), x, y)
    text = str(d)
    assert "Root cause: output_loss_mismatch -> leads to" in text
    assert "First thing to change (loss)" in text
    assert d.to_dict()["findings"][0]["explains"]


def test_every_kind_has_a_remedy_vocabulary():
    from gradwatch.diagnose.finding import ACTIONS, KINDS

    for kind in ("no_gradient", "output_loss_mismatch", "uncleared_gradients", "unscaled_data"):
        assert kind in KINDS
    assert "bad_learning_rate" in KINDS and {"loss", "data", "loop"} <= set(ACTIONS)


def _multilabel(n=128, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 8, generator=g)
    y = torch.stack([x[:, 0] > 0, x[:, 1] > 0, x[:, 2] > 0], 1).float()  # rows sum to 0..3
    return x, y


@pytest.mark.parametrize("buggy", [True, False])
def test_softmax_for_several_labels_under_a_written_out_mse_logged_after_backward(buggy):
    """The loss `((p - y) ** 2).mean()` keeps no target in its graph, and backward frees the graph
    before `log_loss`: the target is read back from the gradient at the output."""
    x, y = _multilabel()
    model = _mlp(last=nn.Softmax(dim=1) if buggy else nn.Sigmoid())

    def written_out_mse(p, t):
        return ((p - t) ** 2).mean()

    loss_fn = written_out_mse if buggy else nn.functional.binary_cross_entropy
    d = _train(model, loss_fn, x, y, opt=torch.optim.SGD(model.parameters(), lr=1e-2))
    assert (_first(d) == "output_loss_mismatch") is buggy
    assert ("output_loss_mismatch" in d.kinds()) is buggy
    if buggy:
        f = d.findings[0]
        assert f.evidence["problem"] == "multilabel" and f.remedies[0].action == "loss"
        assert abs(f.evidence["target_row_sum_max"] - float(y.sum(1).max())) < 1e-4
    # check() reads it the same way
    c = gw.check(model, x, y, loss_fn, predict=False)
    assert ("output_loss_mismatch" in c.kinds()) is buggy


def test_implied_target_is_the_target_and_refuses_other_losses():
    from gradwatch.probes.loop import implied_target

    g = torch.Generator().manual_seed(1)
    p = torch.randn(16, 4, generator=g, requires_grad=True)
    t = torch.randn(16, 4, generator=g) * 3
    for reduction in ("mean", "sum"):
        loss = nn.functional.mse_loss(p, t, reduction=reduction)
        (grad,) = torch.autograd.grad(loss, p)
        got = implied_target(p.detach(), grad, loss.detach())
        assert got is not None
        assert abs(got["max"] - float(t.max())) < 1e-4 and abs(got["min"] - float(t.min())) < 1e-4
        assert abs(got["rms"] - float(t.pow(2).mean().sqrt())) < 1e-4
    loss = nn.functional.l1_loss(p, t)  # not a squared error: the identity fails
    (grad,) = torch.autograd.grad(loss, p)
    assert implied_target(p.detach(), grad, loss.detach()) is None
    loss = nn.functional.mse_loss(p, t) + 0.1 * p.pow(2).sum()  # a penalty added: refused
    (grad,) = torch.autograd.grad(loss, p)
    assert implied_target(p.detach(), grad, loss.detach()) is None


def test_gradients_of_parameters_another_optimizer_steps_are_not_uncleared():
    """A GAN's generator step back-propagates through the discriminator, whose gradients the
    generator's optimizer neither steps nor clears: only the optimizer's own are judged."""
    torch.manual_seed(0)
    gen, disc = nn.Linear(4, 2), nn.Linear(2, 1)
    model = nn.Sequential(gen, disc)
    opt = torch.optim.SGD(gen.parameters(), lr=1e-2)
    z = torch.randn(32, 4)
    for clear in (True, False):
        with gw.watch(model, opt) as w:
            for _ in range(10):
                if clear:
                    opt.zero_grad()
                nn.functional.softplus(-model(z)).mean().backward()
                w.log_loss(torch.tensor(0.5))
                opt.step()
        assert ("uncleared_gradients" in w.diagnose().kinds()) is (not clear)


@pytest.mark.parametrize("buggy", [True, False])
def test_rate_too_low_whose_steps_agree_is_a_warning(buggy):
    """Adam at 1e-3 on a small sigmoid net: updates of the healthy size (~1e-3 of the weights)
    that all walk one way while the loss creeps down: too low. At 1e-2 it trains, unflagged."""
    g = torch.Generator().manual_seed(0)
    x = torch.cat(
        [torch.rand(100, 2, generator=g) * 0.2 + 0.2, torch.rand(100, 2, generator=g) * 0.2 + 0.5]
    )
    y = torch.cat([torch.zeros(100), torch.ones(100)]).long()
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(2, 2), nn.Sigmoid(), nn.Linear(2, 2))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3 if buggy else 1e-2)
    d = _train(model, nn.CrossEntropyLoss(), x, y, steps=100, opt=opt)
    assert (_first(d) == "bad_learning_rate") is buggy
    if buggy:
        f = d.findings[0]
        assert f.evidence["coherence"] >= 0.5 and f.remedies[0].action == "lr"
        assert "to 0.01" in f.remedies[0].detail or "to 0.02" in f.remedies[0].detail


def _normal_init(model, std):
    with torch.no_grad():
        for m in model:
            if isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0.0, std)
                nn.init.normal_(m.bias, 0.0, std)
    return model


def _one_hot_data(n=200, d=32, classes=10, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, d, generator=g)
    y = (x[:, :classes] * torch.arange(1, classes + 1)).argmax(1)
    return x, y, nn.functional.one_hot(y, classes).float()


@pytest.mark.parametrize("buggy", [True, False])
def test_units_killed_by_first_steps_of_a_large_init_point_at_the_init(buggy):
    """N(0,1) weights (x5 He for fan-in 32) under MSE and SGD lr 3: before any update the
    gradients dwarf the weights, the first steps rewrite them and kill the ReLUs. The dead units
    are the root (not the step size, which only carried the init's gradient), init first. With
    the init x0.1 (the fix) it trains."""
    x, _, t = _one_hot_data()
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(32, 30), nn.ReLU(), nn.Linear(30, 10), nn.ReLU())
    _normal_init(model, 0.1 if not buggy else 1.0)
    opt = torch.optim.SGD(model.parameters(), lr=3.0)
    d = _train(model, nn.functional.mse_loss, x, t, steps=60, opt=opt)
    assert (_first(d) == "dead_units") is buggy
    if buggy:
        f = d.findings[0]
        assert f.caused_by is None and f.remedies[0].action == "init"
        unstable = next(g for g in d.findings if g.kind == "unstable_updates")
        assert unstable.evidence["gradient_at_init"] > 1
    else:
        assert not d.kinds() & {"dead_units", "unstable_updates", "bad_learning_rate"}


@pytest.mark.parametrize("buggy", [True, False])
def test_class_targets_under_a_squared_error_explode_from_step_0(buggy):
    """A linear net with N(0,1) weights fits one-hot targets by MSE at SGD lr 3: the output starts
    ~20x off the targets, the gradient before any update is several times the weights and the
    run overflows. The explosion held from step 0 and explains the learning-rate verdict; the
    first remedy is the loss. Softmax + cross-entropy (the fix) keeps it finite."""
    x, y, t = _one_hot_data()
    torch.manual_seed(0)
    model = _normal_init(nn.Sequential(nn.Linear(32, 30), nn.Linear(30, 10)), 1.0)
    opt = torch.optim.SGD(model.parameters(), lr=3.0)

    def written_out_mse(p, target):
        return ((p - target) ** 2).mean()

    if buggy:
        d = _train(model, written_out_mse, x, t, steps=30, opt=opt)
    else:
        model.insert(1, nn.Sigmoid())
        d = _train(model, nn.functional.cross_entropy, x, y, steps=30, opt=opt)
    assert (_first(d) == "exploding_gradient") is buggy
    if buggy:
        f = d.findings[0]
        assert f.step == 0 and f.remedies[0].action == "loss"
        assert "bad_learning_rate" in f.explains
    else:
        assert not d.kinds() & {"exploding_gradient", "nonfinite"}
