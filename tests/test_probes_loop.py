"""The loop probe's per-step cost and its cleared-gradient check, against what the loop did."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import gradwatch as gw
from gradwatch.probes.loop import WATCHED_PASSES


def _model() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))


def _hooks(model: nn.Module) -> int:
    """Every forward/backward hook of every module, and every gradient hook of a parameter."""
    n = 0
    for m in model.modules():
        n += len(m._forward_pre_hooks) + len(m._forward_hooks)
        n += len(m._backward_pre_hooks) + len(m._backward_hooks)
    return n + sum(len(p._backward_hooks or {}) for p in model.parameters())


def _step(model, opt, x, y, clear: str) -> None:
    if clear == "none":
        opt.zero_grad(set_to_none=True)
    elif clear == "zero":
        opt.zero_grad(set_to_none=False)
    nn.functional.cross_entropy(model(x), y).backward()
    opt.step()


def test_a_settled_default_watch_adds_no_hook_to_forward_or_backward():
    """After the first WATCHED_PASSES forward passes, on a step no forward probe measures, the
    training loop runs no hook of gradwatch's in the forward or the backward pass (each is a
    Python call per step, a point of a small model's step)."""
    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=1e-2)
    x, y = torch.randn(32, 8), torch.randint(0, 3, (32,))
    with gw.watch(model, opt) as w:
        for _ in range(WATCHED_PASSES + 2):  # step 5's forward probes are off (1 in 10)
            _step(model, opt, x, y, "none")
        assert _hooks(model) == 0
        assert w.meta()["probes"]["loop"]["inputs"] is not None  # measured before the hooks went


@pytest.mark.parametrize(
    "clear, stale",
    [("none", False), ("zero", False), ("never", True)],
    ids=["zero_grad", "zero_grad(set_to_none=False)", "no zero_grad"],
)
def test_cleared_gradients_are_counted_as_the_loop_cleared_them(clear, stale):
    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    x, y = torch.randn(32, 8), torch.randint(0, 3, (32,))
    steps = 12
    with gw.watch(model, opt) as w:
        for _ in range(steps):
            _step(model, opt, x, y, clear)
        if clear == "none":  # a new .grad at every step tells it all: no gradient hook
            assert _hooks(model) == 0
    loop = w.meta()["probes"]["loop"]
    # Every step after the first is checked but one: the step whose .grad is first seen kept
    # (in place, or not cleared) tells only from the next gradient on.
    assert loop["optimizer_steps_checked"] == (steps - 1 if clear == "none" else steps - 2)
    assert loop["uncleared_steps"] == (loop["optimizer_steps_checked"] if stale else 0)


def test_a_loop_that_stops_clearing_is_counted_from_then_on():
    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    x, y = torch.randn(32, 8), torch.randint(0, 3, (32,))
    with gw.watch(model, opt) as w:
        for clear in ["none"] * 6 + ["never"] * 6 + ["none"] * 4:
            _step(model, opt, x, y, clear)
    loop = w.meta()["probes"]["loop"]
    # Steps 1-5 cleared (new tensors); step 6 is the first kept one (not counted); from then on
    # the gradient hook counts: steps 7-11 stale, 12-15 cleared.
    assert loop["optimizer_steps_checked"] == 5 + 5 + 4
    assert loop["uncleared_steps"] == 5
