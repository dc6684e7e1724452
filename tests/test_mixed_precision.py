"""GradScaler, closure-based optimizers and gradient accumulation: one record per optimizer step,
statistics of the unscaled gradients, skipped steps recorded as `skipped`, not as explosions."""

from __future__ import annotations

import copy
import os
import sys

import pandas as pd
import pytest
import torch
from torch import nn
from torch.utils import _pytree as pytree
from torch.utils._python_dispatch import TorchDispatchMode

import gradwatch as gw
from conftest import mlp

PARAM_METRICS = ["grad_norm", "weight_norm", "update_ratio", "backflow_norm"]


def _data(steps: int, batch: int = 8):
    g = torch.Generator().manual_seed(1)
    return [
        (torch.randn(batch, 5, generator=g), torch.randn(batch, 2, generator=g))
        for _ in range(steps)
    ]


def _param_stats(stats: pd.DataFrame) -> pd.Series:
    rows = stats[stats["metric"].isin(PARAM_METRICS)]
    return rows.set_index(["step", "layer", "metric"])["value"].sort_index()


def _plain_run(steps: int = 4, opt_cls=torch.optim.SGD, **kw) -> pd.DataFrame:
    torch.manual_seed(0)
    model = mlp([5, 16, 16, 2])
    opt = opt_cls(model.parameters(), lr=0.05)
    with gw.watch(model, opt, backflow=True, **kw) as w:
        for x, y in _data(steps):
            opt.zero_grad()
            nn.functional.mse_loss(model(x), y).backward()
            opt.step()
    return w.stats()


def test_scaled_training_records_the_unscaled_gradients():
    torch.manual_seed(0)
    model = mlp([5, 16, 16, 2])
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**12)
    with gw.watch(model, opt, scaler=scaler, backflow=True) as w:
        for x, y in _data(4):
            opt.zero_grad()
            scaler.scale(nn.functional.mse_loss(model(x), y)).backward()
            scaler.step(opt)
            scaler.update()
    scaled = w.stats()
    pd.testing.assert_series_equal(_param_stats(scaled), _param_stats(_plain_run()), rtol=1e-9)
    skipped = scaled[scaled["metric"] == "skipped"]
    assert list(skipped["value"]) == [0.0] * 4
    assert "step" not in vars(scaler), "closing the watch restores the scaler's own step"


def test_a_step_the_scaler_skips_is_recorded_as_skipped_not_as_exploding():
    torch.manual_seed(0)
    model = mlp([5, 16, 16, 2])
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**12)
    with gw.watch(model, opt, scaler=scaler, flush_every=2) as w:
        for i, (x, y) in enumerate(_data(5)):
            opt.zero_grad()
            scaler.scale(nn.functional.mse_loss(model(x), y)).backward()
            if i in (0, 2):  # an overflow in the scaled backward, as float16 would have
                model[0].weight.grad[0, 0] = float("inf")
            scaler.step(opt)
            scaler.update()
    stats = w.stats()
    skipped = stats[stats["metric"] == "skipped"].set_index("step")["value"]
    assert skipped.to_dict() == {0: 1.0, 1: 0.0, 2: 1.0, 3: 0.0, 4: 0.0}
    grads = stats[stats["metric"] == "grad_norm"]
    assert set(grads["step"]) == {1, 3, 4}
    assert (grads["value"] < 1e3).all()
    # the weight norms of every layer are read although a skipped step holds the flush's first slot
    weights = stats[stats["metric"] == "weight_norm"]
    assert set(weights[weights["step"] == 1]["layer"]) == {"0", "2", "4"}
    kinds = {f.kind for f in w.diagnose().findings}
    assert not kinds & {"exploding_gradient", "nonfinite"}


def test_a_closure_optimizer_is_recorded_after_its_closure_ran():
    torch.manual_seed(0)
    model = mlp([5, 16, 16, 2])
    opt = torch.optim.LBFGS(model.parameters(), lr=0.1, max_iter=3)
    data = _data(3)
    reference = []
    with gw.watch(model, opt, backflow=False) as w:
        for x, y in data:

            def closure(x=x, y=y):
                opt.zero_grad()
                loss = nn.functional.mse_loss(model(x), y)
                loss.backward()
                return loss

            # the gradient at the weights this step starts from, computed the obvious way on a copy
            # (before the step the model holds the gradient of LBFGS's last evaluation, or none)
            twin = copy.deepcopy(model)
            nn.functional.mse_loss(twin(x), y).backward()
            reference.append(
                torch.cat([p.grad.flatten() for p in twin[0].parameters()]).norm().item()
            )
            opt.step(closure)
    grads = w.stats().query("metric == 'grad_norm' and layer == '0'").sort_values("step")
    assert list(grads["step"]) == [0, 1, 2]
    assert grads["value"].tolist() == pytest.approx(reference, rel=1e-6)


def test_gradient_accumulation_gives_one_record_per_optimizer_step():
    torch.manual_seed(0)
    model = mlp([5, 16, 16, 2])
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    with gw.watch(model, opt) as w:
        for x, y in _data(4, batch=16):
            opt.zero_grad()
            for xs, ys in zip(x.chunk(4), y.chunk(4), strict=True):
                (nn.functional.mse_loss(model(xs), ys) / 4).backward()
            opt.step()
    accumulated = w.stats()
    grads = accumulated[accumulated["metric"] == "grad_norm"]
    assert sorted(set(grads["step"])) == [0, 1, 2, 3]
    torch.manual_seed(0)
    model = mlp([5, 16, 16, 2])
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    with gw.watch(model, opt) as w2:
        for x, y in _data(4, batch=16):
            opt.zero_grad()
            nn.functional.mse_loss(model(x), y).backward()
            opt.step()
    ref = w2.stats()
    key = ["step", "layer"]
    a = grads.set_index(key)["value"].sort_index()
    b = ref[ref["metric"] == "grad_norm"].set_index(key)["value"].sort_index()
    pd.testing.assert_series_equal(a, b, rtol=1e-6)


class _Float64Conversions(TorchDispatchMode):
    """Records every operation gradwatch's own code issues that turns a float32 tensor into float64
    (torch's, such as GradScaler's unscale_, check the device themselves)."""

    def __init__(self):
        super().__init__()
        self.seen: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        ins = [t for t in pytree.tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)]
        outs = [t for t in pytree.tree_leaves(out) if isinstance(t, torch.Tensor)]
        if any(t.dtype == torch.float32 for t in ins) and any(
            t.dtype == torch.float64 for t in outs
        ):
            caller = sys._getframe(1)
            while caller is not None and caller.f_code.co_filename.startswith(_DISPATCH):
                caller = caller.f_back
            if caller is not None and caller.f_code.co_filename.startswith(_GRADWATCH):
                self.seen.append(f"{func} at {caller.f_code.co_filename}:{caller.f_lineno}")
        return out


_TORCH = os.path.dirname(torch.__file__)
# The frames between a call in Python and the dispatch mode; the first other frame issued the call.
_DISPATCH = tuple(
    os.path.join(_TORCH, *f)
    for f in (
        ("_dynamo", ""),
        ("_compile.py",),
        ("utils", "_python_dispatch.py"),
        ("_ops.py",),
        ("_tensor.py",),
        ("functional.py",),
        ("overrides.py",),
    )
)
_GRADWATCH = os.path.dirname(gw.__file__)


def test_on_a_device_without_float64_every_statistic_stays_in_float32(monkeypatch):
    # Apple's MPS has no float64. Pretend the CPU is such a device: a watch with every probe and
    # a GradScaler, check(), the Jacobian spectrum and LSUV must then make no float64 tensor from
    # the model's float32 ones, and give the float64 run's numbers to float32 precision.
    from gradwatch import _tensor as base

    def run():
        torch.manual_seed(0)
        model = nn.Sequential(
            nn.Linear(5, 16), nn.Tanh(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 2)
        )
        rnn = nn.GRU(2, 3, batch_first=True)
        opt = torch.optim.Adam([*model.parameters(), *rnn.parameters()], lr=0.05)
        scaler = torch.amp.GradScaler("cpu", init_scale=2.0**8)
        both = nn.ModuleDict({"mlp": model, "rnn": rnn})
        with gw.watch(
            both,
            opt,
            scaler=scaler,
            activations=True,
            backflow=True,
            through_time=True,
            flush_every=3,
        ) as w:
            for x, y in _data(5):
                opt.zero_grad()
                out, _ = rnn(model(x)[:, None, :].expand(-1, 4, -1))
                loss = nn.functional.mse_loss(out[:, -1, :2], y)
                scaler.scale(loss).backward()
                w.log_loss(loss)
                scaler.step(opt)
                scaler.update()
        finding_kinds = [f.kind for f in gw.check(model, torch.randn(8, 5)).findings]
        spectra = [
            gw.theory.jacobian_spectrum(model, torch.randn(8, 5), exact=e).singular_values[:3]
            for e in (True, False)
        ]
        gw.remedies.lsuv_init(
            copy.deepcopy(model), torch.randn(32, 5), generator=torch.Generator().manual_seed(0)
        )
        return w.stats(), (finding_kinds, spectra)

    wide, (wide_kinds, wide_spectra) = run()
    monkeypatch.setattr(base, "NO_FLOAT64", {"mps", "cpu"})
    with _Float64Conversions() as mode:
        narrow, (narrow_kinds, narrow_spectra) = run()
    assert mode.seen == []
    assert narrow_kinds == wide_kinds
    for got, expected in zip(narrow_spectra, wide_spectra, strict=True):
        assert got == pytest.approx(expected, rel=1e-4)
    key = ["step", "layer", "metric", "index"]
    a, b = (s.sort_values(key).reset_index(drop=True) for s in (wide, narrow))
    pd.testing.assert_frame_equal(a[key], b[key])
    assert set(b["metric"]) >= {
        "grad_norm",
        "update_ratio",
        "backflow_norm",
        "act_std",
        "time_grad_norm",
        "loss",
    }
    assert b["value"].to_numpy() == pytest.approx(
        a["value"].to_numpy(), rel=1e-5, abs=1e-7, nan_ok=True
    )
