"""Watching never changes training, a closed watch leaves the model as it found it, and order is
the forward pass's."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import gradwatch as gw
from conftest import FAMILIES, family
from gradwatch.errors import WatchError


def _hook_counts(model: nn.Module, opt: torch.optim.Optimizer) -> dict:
    counts = {}
    for name, m in model.named_modules():
        for attr in (
            "_forward_pre_hooks",
            "_forward_hooks",
            "_backward_pre_hooks",
            "_backward_hooks",
            "_state_dict_hooks",
        ):
            counts[(name, attr)] = len(getattr(m, attr))
    for p in model.parameters():
        counts[("param", id(p))] = len(getattr(p, "_backward_hooks", None) or {})
    counts["opt_pre"] = len(opt._optimizer_step_pre_hooks)
    counts["opt_post"] = len(opt._optimizer_step_post_hooks)
    return counts


def _train(kind: str, watched: bool, steps: int = 4, **kw):
    model, x, loss_fn = family(kind, 5, seed=3)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    torch.manual_seed(7)  # dropout-free models, but the RNG must line up anyway
    w = gw.watch(model, opt, **kw) if watched else None
    for _ in range(steps):
        opt.zero_grad()
        loss = loss_fn(model(x))
        loss.backward()
        opt.step()
        losses.append(loss.detach().clone())
    if w is not None:
        w.close()
    return losses, [p.detach().clone() for p in model.parameters()], torch.get_rng_state()


@pytest.mark.parametrize("kind", FAMILIES)
def test_training_is_bit_identical_with_and_without_watch(kind):
    plain = _train(kind, watched=False)
    watched = _train(kind, watched=True, every=1, update_memory=1.0)
    for a, b in zip(plain[0] + plain[1], watched[0] + watched[1], strict=True):
        assert torch.equal(a, b)
    assert torch.equal(plain[2], watched[2])


@pytest.mark.parametrize("kind", FAMILIES)
def test_closed_watch_leaves_no_hooks(kind):
    model, x, loss_fn = family(kind, 4)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    before = _hook_counts(model, opt)
    with gw.watch(model, opt):
        assert _hook_counts(model, opt) != before
        loss_fn(model(x)).backward()
        opt.step()
    assert _hook_counts(model, opt) == before


def test_closing_twice_is_harmless_and_a_closed_watch_refuses_steps():
    model = nn.Linear(2, 1)
    w = gw.watch(model)
    w.close()
    w.close()
    with pytest.raises(WatchError, match="closed"):
        w.step()


def test_a_closed_watch_runs_the_detectors_once_for_every_listener(monkeypatch):
    import gradwatch.monitor.watcher as monitor

    calls = []
    real = monitor.diagnose
    monkeypatch.setattr(monitor, "diagnose", lambda *a: calls.append(1) or real(*a))

    class Listener:  # what each integration does at close
        def rows(self, rows):
            pass

        def close(self, watch):
            seen.append(watch.diagnose())

    seen = []
    model, x, loss_fn = family("mlp", 5, seed=3)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    w = gw.watch(model, opt)
    w.add_listener(Listener())
    w.add_listener(Listener())
    for _ in range(3):
        opt.zero_grad()
        loss_fn(model(x)).backward()
        opt.step()
    live = w.diagnose()  # while open: a fresh diagnosis each time
    assert len(calls) == 1
    w.close()
    assert len(calls) == 2 and seen[0] is seen[1] is w.diagnose()
    assert seen[0].summary["steps"] == live.summary["steps"] == 3


def test_layers_come_in_forward_order_not_registration_order():
    class Backwards(nn.Module):
        def __init__(self):
            super().__init__()
            self.last = nn.Linear(4, 1)
            self.middle = nn.Linear(4, 4)
            self.first = nn.Linear(3, 4)

        def forward(self, x):
            return self.last(torch.relu(self.middle(torch.relu(self.first(x)))))

    model = Backwards()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with gw.watch(model, opt) as w:
        assert w.layers() == ["last", "middle", "first"]  # nothing has run yet
        model(torch.randn(2, 3)).sum().backward()
        opt.step()
    assert w.layers() == ["(root)", "first", "middle", "last"]  # the root calls torch.relu


def test_attention_projection_sits_inside_its_attention_block():
    model, x, loss_fn = family("transformer", 4)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with gw.watch(model, opt) as w:
        loss_fn(model(x)).backward()
        opt.step()
    order = w.layers()
    assert order[0] == "embed" and order[-1] == "head"
    i = order.index("encoder.layers.0.self_attn")
    assert order[i + 1] == "encoder.layers.0.self_attn.out_proj"
    assert order.index("encoder.layers.0.linear1") < order.index("encoder.layers.1.self_attn")


def test_watching_a_compiled_model_reports_the_users_layer_names():
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 1))
    compiled = torch.compile(model, backend="eager")
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.warns(UserWarning, match="forward pass"), gw.watch(compiled, opt) as w:
        for _ in range(2):
            opt.zero_grad()
            compiled(torch.randn(2, 3)).sum().backward()
            opt.step()
    stats = w.stats()
    assert set(stats.layer) == {"0", "2"}
    assert set(stats.metric) == {"grad_norm", "weight_norm", "nonfinite", "update_ratio"}
    assert sorted(stats.step.unique()) == [0, 1]


def test_bad_arguments_get_one_sentence():
    with pytest.raises(WatchError, match="torch.nn.Module"):
        gw.watch("not a model")
    with pytest.raises(WatchError, match="positive integer"):
        gw.watch(nn.Linear(2, 2), every=0)
    with pytest.raises(WatchError, match="no parameters"):
        gw.watch(nn.ReLU())
    w = gw.watch(nn.Linear(2, 2), torch.optim.SGD(nn.Linear(2, 2).parameters(), lr=0.1))
    with pytest.raises(WatchError, match="remove the call"):
        w.step()
    w.close()


def test_an_optimizer_step_that_raises_leaves_the_watch_consistent():
    class Flaky(torch.optim.SGD):
        fail = True

        def step(self, closure=None):
            if Flaky.fail:
                Flaky.fail = False
                raise RuntimeError("optimizer failed")
            return super().step(closure)

    model = nn.Linear(3, 1)
    opt = Flaky(model.parameters(), lr=0.1)
    with gw.watch(model, opt) as w:
        model(torch.randn(2, 3)).sum().backward()
        with pytest.raises(RuntimeError, match="optimizer failed"):
            opt.step()
        opt.step()
    stats = w.stats()
    assert sorted(stats.step.unique()) == [0]
    assert len(stats.query("metric == 'grad_norm'")) == 1


def test_a_subclass_step_calling_its_parents_is_one_step():
    # torch patches each optimizer class's step() with the hook-calling wrapper on its first
    # instance; once the parent has one, a subclass's super().step() runs the hooks a second time.
    class Scaled(torch.optim.SGD):
        def step(self, closure=None):
            return super().step(closure)

    torch.optim.SGD(nn.Linear(1, 1).parameters(), lr=0.1)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 1))
    opt = Scaled(model.parameters(), lr=0.1)
    fired = []
    opt.register_step_post_hook(lambda *a: fired.append(1))
    with gw.watch(model, opt, update_memory=1.0) as w:
        for _ in range(3):
            opt.zero_grad()
            model(torch.randn(5, 3)).pow(2).sum().backward()
            opt.step()
    assert len(fired) == 6  # the premise: the hooks did run twice per step
    stats = w.stats()
    assert sorted(stats.step.unique()) == [0, 1, 2]
    assert stats.query("metric == 'update_ratio'").groupby("step").size().tolist() == [2, 2, 2]


def test_a_retried_step_is_recorded_from_the_retry_only(reads):
    # The failed attempt at step 1 takes the parameter probe's usual path (every gradient there,
    # weights read at step 0); the retry, with one layer's gradients gone, takes the general one.
    class Flaky(torch.optim.SGD):
        calls = 0

        def step(self, closure=None):
            Flaky.calls += 1
            if Flaky.calls == 2:
                raise RuntimeError("optimizer failed")
            return super().step(closure)

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 1))
    opt = Flaky(model.parameters(), lr=0.1)
    with gw.watch(model, opt) as w:
        for _ in range(2):
            opt.zero_grad()
            model(torch.randn(5, 3)).pow(2).sum().backward()
            try:
                opt.step()
            except RuntimeError:
                model[0].weight.grad = model[0].bias.grad = None
                model[2].weight.grad.mul_(3.0)
                expected = math.hypot(
                    model[2].weight.grad.norm().item(), model[2].bias.grad.norm().item()
                )
                opt.step()
    step1 = w.stats().query("step == 1 and metric == 'grad_norm'").set_index("layer")["value"]
    assert list(step1.index) == ["2"]
    assert step1["2"] == pytest.approx(expected, rel=1e-6)


def test_losses_logged_within_a_step_are_averaged_as_they_were_when_logged():
    model = nn.Linear(3, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    running = torch.zeros(())
    with gw.watch(model, opt) as w:
        for step in range(2):
            for micro in (1.0, 2.0, 4.5):
                model(torch.randn(4, 3)).sum().backward()
                running += micro + step
                w.log_loss(
                    running if micro != 2.0 else float(running)
                )  # changed in place afterwards
            opt.step()
        with pytest.raises(WatchError, match="scalar loss"):
            w.log_loss(torch.ones(3))
    loss = w.stats().query("metric == 'loss'").sort_values("step")["value"].tolist()
    assert loss == pytest.approx([(1.0 + 3.0 + 7.5) / 3, (9.5 + 12.5 + 18.0) / 3])


def test_every_logged_loss_is_kept_negative_zero_and_nan_included(tmp_path):
    # A log-likelihood or a critic's loss is negative; the absent marker must not swallow it.
    model = nn.Linear(3, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    logged = [-2.5, 0.0, 1.5, float("nan"), -1e-9]
    with gw.watch(model, opt, flush_every=2, log_dir=tmp_path / "run") as w:
        for value in logged:
            model(torch.randn(4, 3)).sum().backward()
            w.log_loss(torch.tensor(value))
            opt.step()
        model(torch.randn(4, 3)).sum().backward()
        opt.step()  # a step without a logged loss has no loss row
    for stats in (w.stats(), gw.load(tmp_path / "run").stats):
        loss = stats.query("metric == 'loss'").sort_values("step")
        assert list(loss["step"]) == [0, 1, 2, 3, 4]
        got = loss["value"].to_numpy()
        assert got[[0, 1, 2, 4]].tolist() == pytest.approx(
            [-2.5, 0.0, 1.5, -1e-9], rel=1e-7
        ) and math.isnan(got[3])


def _steps_with(stats, metric: str) -> set[int]:
    return set(stats.loc[stats.metric == metric, "step"].astype(int))


@pytest.mark.parametrize("every", [1, 3])
def test_default_schedule_is_dense_while_young_and_sparse_once_settled(every):
    """ "auto": forward probes on one recorded step in 10 during the first flush window, one in 50
    after; the update ratio's snapshot on every recorded step, then every other one. An explicit
    cadence holds throughout."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    x = torch.randn(16, 4)
    with (
        gw.watch(model, opt, every=every, flush_every=20) as auto,
        gw.watch(model, opt, every=every, flush_every=20, activations=10, backflow=10) as fixed,
    ):
        for _ in range(120 * every):
            opt.zero_grad()
            model(x).pow(2).mean().backward()
            opt.step()
    recorded = [k * every for k in range(120)]
    young = [s for s in recorded if s < 20 * every]
    assert _steps_with(auto.stats(), "act_std") == {0, 10 * every, 50 * every, 100 * every}
    assert _steps_with(auto.stats(), "backflow_norm") == {0, 10 * every, 50 * every, 100 * every}
    assert _steps_with(fixed.stats(), "act_std") == {s for s in recorded if (s // every) % 10 == 0}
    settled_updates = {s for s in recorded if s >= 20 * every and (s // every) % 2 == 0}
    for w in (auto, fixed):
        assert _steps_with(w.stats(), "update_ratio") == set(young) | settled_updates
        assert _steps_with(w.stats(), "grad_norm") == set(
            recorded
        )  # gradient norms: every recorded step
    assert auto.meta()["settings"]["settled"] == {
        "activations": 50,
        "backflow": 50,
        "through_time": 50,
        "update": 2,
    }
    assert fixed.meta()["settings"]["settled"]["activations"] == 10
