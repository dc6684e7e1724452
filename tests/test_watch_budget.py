"""The cost budget: once the run is past its first flush window, a watch whose own time per
recorded step is more than `budget` of the step records one eligible step in N. N checked against
a naive computation from a fake clock; the schedule, the losses and the switches checked on real
watches with budgets no machine can miss (tiny and huge)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

import gradwatch as gw
from gradwatch.errors import WatchError
from gradwatch.monitor import budget as budget_mod
from gradwatch.monitor.budget import MAX_THIN, THIN_AFTER, CostBudget


class _Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch):
    fake = _Clock()
    monkeypatch.setattr(budget_mod.time, "perf_counter", fake)
    return fake


def _window(b: CostBudget, clock: _Clock, periods, own, recorded_every=1):
    """Steps of the given periods (seconds), the watch spending `own` in each recorded one."""
    for k, period in enumerate(periods):
        recorded = k % recorded_every == 0
        if recorded:
            b.spent(own)
        clock.now += period
        b.step_ended(recorded)


def test_thin_is_the_naive_ratio_of_own_time_to_the_budgeted_step(clock):
    b = CostBudget(0.05, every=1)
    b.step_ended(False)  # the start of the first period
    _window(b, clock, [1.0e-3] * 50, own=0.25e-3)
    b.flushed(0.3, 50)  # the first flush (pandas imported): not a cost per step
    # Naive: the step without the watch is 1.0 - 0.25 = 0.75 ms; 0.25 ms is 5% of 5 ms.
    assert b.retune(50, THIN_AFTER) == math.ceil(0.25 / (0.05 * 0.75)) == 7
    # The second window, one step in 7 recorded, a flush of 50 rows taking 5 ms (0.1 ms a row).
    periods = [0.75e-3 + (0.25e-3 if k % 7 == 0 else 0.0) for k in range(350)]
    _window(b, clock, periods, own=0.25e-3, recorded_every=7)
    b.flushed(5e-3, 50)
    recorded = len(range(0, 350, 7))
    base = float(np.median(periods)) - 0.25e-3 * recorded / 350
    assert b.retune(400, THIN_AFTER + 50) == math.ceil((0.25e-3 + 0.1e-3) / (0.05 * base))
    assert b.changes == [(50, 7), (400, b.thin)]


def test_the_cost_paid_at_every_step_leaves_less_room_for_the_recorded_ones(clock):
    b = CostBudget(0.05, every=1)
    b.step_ended(False)
    for _ in range(40):  # 1 ms steps, 0.25 ms recorded work, 10 us of hooks and log_loss each
        b.spent(0.25e-3)
        b.idle(10e-6)
        clock.now += 1e-3
        b.step_ended(True)
    base = 1e-3 - 0.25e-3 - 10e-6
    assert b.retune(40, THIN_AFTER) == math.ceil(0.25e-3 / (0.05 * base - 10e-6))
    for _ in range(40):  # what every step costs is past the budget by itself: the sparsest
        b.spent(0.25e-3)
        b.idle(60e-6)
        clock.now += 1e-3
        b.step_ended(True)
    assert b.retune(80, THIN_AFTER) == MAX_THIN


def test_what_no_hook_times_is_read_from_the_periods_once_thinned(clock):
    b = CostBudget(0.05, every=1)
    b.step_ended(False)
    # Recorded steps take 1.5 ms, unrecorded ones 1.0 ms, but the hooks report only 0.1 ms
    # (a forward probe's function mode slows every op of the forward, outside any hook).
    for k in range(100):
        recorded = k % 4 == 0
        if recorded:
            b.spent(0.1e-3)
        clock.now += 1.5e-3 if recorded else 1.0e-3
        b.step_ended(recorded)
    assert b.retune(100, THIN_AFTER) == math.ceil(0.5e-3 / (0.05 * 1.0e-3)) == 10


def test_a_pause_is_not_a_step_and_every_counts(clock):
    b = CostBudget(0.05, every=2)
    b.step_ended(False)
    # A validation pass of 10 s in the window changes the mean period, not the median.
    _window(b, clock, [1e-3] * 30 + [10.0] + [1e-3] * 30, own=0.1e-3)
    base = 1e-3 - 0.1e-3
    assert b.retune(61, THIN_AFTER) == math.ceil(0.1e-3 / (0.05 * 2 * base))


def test_a_young_run_is_never_thinned(clock):
    b = CostBudget(1e-6, every=1)
    b.step_ended(False)
    _window(b, clock, [1e-3] * 10, own=0.5e-3)
    assert b.retune(10, THIN_AFTER - 1) == 1 and b.changes == []


def test_thin_is_capped_and_off_without_a_budget(clock):
    b = CostBudget(1e-6, every=1)
    b.step_ended(False)
    _window(b, clock, [1e-3] * 10, own=0.5e-3)
    assert b.retune(10, THIN_AFTER) == MAX_THIN
    off = CostBudget(None, every=1)
    off.step_ended(False)
    _window(off, clock, [1e-3] * 10, own=0.5e-3)
    assert off.retune(10, THIN_AFTER) == 1 and off.changes == []


def _loop(w, model, opt, steps: int, losses: list[float] | None = None) -> None:
    gen = torch.Generator().manual_seed(0)
    for _ in range(steps):
        x = torch.randn(16, 8, generator=gen)
        opt.zero_grad()
        loss = model(x).pow(2).mean()
        loss.backward()
        if losses is not None:
            losses.append(loss.item())
        w.log_loss(loss)
        opt.step()


def _model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 1))


def _steps(df, metric="grad_norm") -> list[int]:
    return sorted(df.loc[df.metric == metric, "step"].unique().tolist())


def test_a_watch_over_budget_records_the_settled_run_thinly():
    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    losses: list[float] = []
    kwargs = {"activations": False, "backflow": False, "through_time": False}
    with gw.watch(model, opt, flush_every=10, budget=1e-9, **kwargs) as w:
        _loop(w, model, opt, THIN_AFTER + 200, losses)
    steps = _steps(w.stats())
    # The young run in full; then one step in MAX_THIN.
    start = -(-THIN_AFTER // MAX_THIN) * MAX_THIN
    assert steps == list(range(THIN_AFTER)) + list(range(start, THIN_AFTER + 200, MAX_THIN))
    assert w.meta()["thinned"] == [[THIN_AFTER, MAX_THIN]]
    # Every step's loss is logged: a recorded step holds the mean of those since the last one.
    df = w.stats()
    kept = df[df.metric == "loss"].set_index("step")["value"]
    for prev, step in zip(steps[THIN_AFTER - 1 :], steps[THIN_AFTER:], strict=False):
        assert kept[step] == pytest.approx(np.mean(losses[prev + 1 : step + 1]), rel=1e-6)
    assert w.diagnose().ok


def test_a_watch_within_budget_or_without_one_records_every_step():
    for kwargs in ({"budget": 1e9}, {"budget": None}, {"budget": 1e-9, "raise_on": "nonfinite"}):
        model = _model()
        opt = torch.optim.SGD(model.parameters(), lr=0.01)
        with gw.watch(model, opt, flush_every=10, **kwargs) as w:
            _loop(w, model, opt, THIN_AFTER + 60)
        assert _steps(w.stats()) == list(range(THIN_AFTER + 60)), kwargs
        assert w.meta()["thinned"] == []


def test_thinning_keeps_every_and_the_forward_probes_cadence():
    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    with gw.watch(
        model,
        opt,
        every=2,
        flush_every=10,
        budget=1e-9,
        activations=True,
        backflow=False,
        through_time=False,
    ) as w:
        _loop(w, model, opt, 2 * THIN_AFTER + 200)
    df = w.stats()
    young = list(range(0, 2 * THIN_AFTER, 2))
    settled = [
        s
        for s in range(2 * THIN_AFTER, 2 * THIN_AFTER + 200)
        if s % 2 == 0 and (s // 2) % MAX_THIN == 0
    ]
    assert _steps(df) == young + settled
    assert _steps(df, "act_std") == young + settled  # activations=True: every recorded step


@pytest.mark.parametrize("thin", [8, MAX_THIN])
def test_a_sparse_forward_probe_measures_the_steps_it_would_unthinned(monkeypatch, thin):
    monkeypatch.setattr(budget_mod, "MAX_THIN", thin)  # a budget of 1e-9 thins to the cap
    measured = {}
    for budget in (None, 1e-9):
        model = _model()
        opt = torch.optim.SGD(model.parameters(), lr=0.01)
        with gw.watch(model, opt, flush_every=10, budget=budget) as w:  # activations "auto"
            _loop(w, model, opt, THIN_AFTER + 400)
        measured[budget] = [s for s in _steps(w.stats(), "act_std") if s >= THIN_AFTER]
        recorded = [s for s in _steps(w.stats()) if s >= THIN_AFTER]
    # Settled, one eligible step in 50 without the budget; thinned up to 8, the same steps;
    # deeper, one in 50 * (thin // 8) of them. Those steps stay recorded.
    every = 50 * max(1, thin // 8)
    assert measured[None] == list(range(THIN_AFTER, 600, 50))
    assert measured[1e-9] == [s for s in measured[None] if s % every == 0]
    first = -(-THIN_AFTER // thin) * thin
    assert recorded == sorted({*range(THIN_AFTER, 600, every), *range(first, 600, thin)})


def test_watching_never_changes_training_when_thinned():
    losses = []
    for budget in (None, 1e-9):
        model = _model()
        opt = torch.optim.Adam(model.parameters(), lr=0.01)
        seen: list[float] = []
        with gw.watch(model, opt, flush_every=5, budget=budget) as w:
            _loop(w, model, opt, THIN_AFTER + 60, seen)
        losses.append(seen)
    assert losses[0] == losses[1]


@pytest.mark.parametrize("bad", [0, -0.1, True, "5%"])
def test_a_bad_budget_is_one_clear_error(bad):
    with pytest.raises(WatchError, match="budget must be"):
        gw.watch(_model(), budget=bad)


def test_the_forward_probes_hooks_count_as_the_watchs_time(monkeypatch):
    calls: list[float] = []
    monkeypatch.setattr(CostBudget, "spent", lambda self, seconds: calls.append(seconds))
    counts = {}
    for name, kwargs in {
        "probes on": {"activations": True, "backflow": True},
        "probes off": {"activations": False, "backflow": False},
        "no budget": {"activations": True, "backflow": True, "budget": None},
    }.items():
        calls.clear()
        model = _model()
        opt = torch.optim.SGD(model.parameters(), lr=0.01)
        with gw.watch(model, opt, **kwargs) as w:
            _loop(w, model, opt, 1)
        counts[name] = len(calls)
        assert all(s >= 0 for s in calls)
    # Off: the step hooks' two timings (record, after the update), the loop probe's hooks.
    # On: each hooked module's forward (and backward) hook besides.
    assert counts["probes on"] >= counts["probes off"] + 3
    assert counts["no budget"] == 0
