"""Activation probe: act_std, saturated_frac, dead_frac and histograms against naive references."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import gradwatch as gw
from conftest import as_dict, family
from gradwatch.probes import kernels as _cpu_kernels
from gradwatch.probes.activation_specs import HIST_BINS, spec
from gradwatch.probes.activations import HIST_SAMPLE

pytestmark = pytest.mark.usefixtures("cpu_path")  # every test on both CPU paths (numba, torch)


def _one_step(model, x, loss=lambda y: y.pow(2).mean(), **kw):
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    kw.setdefault("activations", True)
    with gw.watch(model, opt, **kw) as w:
        loss(model(x)).backward()
        opt.step()
    return w


def _naive_derivative_flat(fn, x):
    """Elementwise: |φ'(x)| < 5% of max |φ'| (the definition, evaluated the slow way)."""
    xs = x.detach().double().requires_grad_(True)
    (d,) = torch.autograd.grad(fn(xs).sum(), xs)
    grid = torch.linspace(-60, 60, 240_001, dtype=torch.float64, requires_grad=True)
    (dg,) = torch.autograd.grad(fn(grid).sum(), grid)
    return d.abs() < 0.05 * dg.abs().max()


@pytest.mark.parametrize(
    "act, fn",
    [
        (nn.Sigmoid(), torch.sigmoid),
        (nn.Tanh(), torch.tanh),
        (nn.Softsign(), F.softsign),
        (nn.Hardtanh(), F.hardtanh),
    ],
)
def test_saturation_and_std_match_naive_reference(act, fn):
    torch.manual_seed(0)
    lin = nn.Linear(6, 50)
    nn.init.normal_(lin.weight, std=2.0)
    model = nn.Sequential(lin, act, nn.Linear(50, 1))
    x = torch.randn(40, 6)
    w = _one_step(model, x)
    pre = lin(x).detach()
    out = fn(pre)
    got = as_dict(w.stats(), 0)
    assert got[("1", "act_std")] == pytest.approx(out.double().std(unbiased=False).item(), rel=1e-6)
    expected_sat = _naive_derivative_flat(fn, pre).double().mean().item()
    assert got[("1", "saturated_frac")] == pytest.approx(expected_sat, abs=1e-9)
    assert 0.05 < expected_sat < 0.95  # the case is not trivial


def _prelu(slope: float):
    return lambda t: F.prelu(t, torch.full((1,), slope, dtype=t.dtype))


@pytest.mark.parametrize(
    "act, fn",
    [
        (nn.ReLU(), torch.relu),
        (nn.GELU(), F.gelu),
        (nn.SiLU(), F.silu),
        (nn.PReLU(init=0.01), _prelu(0.01)),
    ],
)
def test_dead_units_match_naive_reference(act, fn):
    torch.manual_seed(0)
    lin = nn.Linear(6, 200)
    with torch.no_grad():
        lin.bias.copy_(torch.linspace(-12, 3, 200))
    model = nn.Sequential(lin, act, nn.Linear(200, 1))
    x = torch.randn(30, 6)
    w = _one_step(model, x)
    pre = lin(x).detach()
    lower_flat = _naive_derivative_flat(fn, pre) & (pre < 0)
    expected = lower_flat.all(0).double().mean().item()
    got = as_dict(w.stats(), 0)
    assert got[("1", "dead_frac")] == pytest.approx(expected, abs=1e-9)
    assert 0.1 < expected < 0.95


def test_a_prelu_whose_slope_grows_stops_counting_dead_units():
    """PReLU's slope is learned: at 0.01 its negative side is flat (dead units count), at 0.5 it is
    not, and the next step reads it so."""
    torch.manual_seed(0)
    lin = nn.Linear(6, 50)
    with torch.no_grad():
        lin.bias.fill_(-20.0)
    act = nn.PReLU(init=0.01)
    model = nn.Sequential(lin, act, nn.Linear(50, 1))
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    x = torch.randn(30, 6)
    with gw.watch(model, opt, activations=True) as w:
        for slope in (0.01, 0.5):
            with torch.no_grad():
                act.weight.fill_(slope)
            opt.zero_grad()
            model(x).pow(2).mean().backward()
            opt.step()
    stats = w.stats()
    assert as_dict(stats, 0)[("1", "dead_frac")] == 1.0
    assert as_dict(stats, 1)[("1", "dead_frac")] == 0.0


def test_histogram_matches_numpy_and_sums_to_one():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 64), nn.Tanh(), nn.Linear(64, 1))
    x = torch.randn(16, 4)  # 1,024 outputs: within HIST_SAMPLE, so binned in full
    w = _one_step(model, x)
    out = torch.tanh(model[0](x)).detach().numpy().ravel()
    expected, _ = np.histogram(np.clip(out, -1, 1), bins=HIST_BINS, range=(-1, 1))
    hist = w.stats().query("metric == 'act_hist' and layer == '1'").sort_values("index")
    assert list(hist["index"]) == list(range(HIST_BINS))
    np.testing.assert_allclose(hist["value"].to_numpy(), expected / out.size, atol=1e-6)


def test_statistics_pool_every_forward_of_a_step_exactly():
    # Two micro-batches of different sizes and a large common offset (sigmoid near 1): the pooled
    # std must be that of the concatenated outputs, without cancellation.
    torch.manual_seed(0)
    lin = nn.Linear(5, 80)
    with torch.no_grad():
        lin.bias.fill_(6.0)
    model = nn.Sequential(lin, nn.Sigmoid(), nn.Linear(80, 1))
    xs = [torch.randn(7, 5), 3 * torch.randn(12, 5)]  # each within HIST_SAMPLE, so binned in full
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    with gw.watch(model, opt, activations=True) as w:
        for x in xs:
            model(x).pow(2).mean().backward()
        opt.step()
    pre = torch.cat([lin(x) for x in xs]).detach().double()
    out = torch.sigmoid(pre)
    got = as_dict(w.stats(), 0)
    assert got[("1", "act_std")] == pytest.approx(out.std(unbiased=False).item(), rel=1e-5)
    expected_sat = _naive_derivative_flat(torch.sigmoid, pre).double().mean().item()
    assert got[("1", "saturated_frac")] == pytest.approx(expected_sat, abs=1e-9)
    # Each call's histogram is scaled to its own element count, so pooled bins are a weighted sum.
    lo, hi = spec("sigmoid").hist_range
    expected = sum(
        np.histogram(
            np.clip(torch.sigmoid(lin(x)).detach().numpy().ravel(), lo, hi),
            bins=HIST_BINS,
            range=(lo, hi),
        )[0]
        for x in xs
    )
    hist = w.stats().query("metric == 'act_hist' and layer == '1'").sort_values("index")
    np.testing.assert_allclose(hist["value"].to_numpy(), expected / out.numel(), atol=1e-6)


def test_mixed_activations_pool_per_row_over_micro_batches():
    # Rectifiers of two widths next to a saturating function, two micro-batches of different
    # sizes: every row is pooled from its own calls only.
    torch.manual_seed(0)
    l1, l2, l3 = nn.Linear(6, 50), nn.Linear(50, 30), nn.Linear(30, 40)
    with torch.no_grad():
        l1.bias.copy_(torch.linspace(-6, 2, 50))
        l3.bias.copy_(torch.linspace(-8, 1, 40))
        l2.weight.mul_(4)
    model = nn.Sequential(l1, nn.ReLU(), l2, nn.Tanh(), l3, nn.GELU(), nn.Linear(40, 1))
    xs = [torch.randn(9, 6), torch.randn(23, 6)]
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    with gw.watch(model, opt, activations=True) as w:
        for x in xs:
            model(x).pow(2).mean().backward()
        opt.step()
    got = as_dict(w.stats(), 0)
    pres = {"1": [], "3": [], "5": []}
    for x in xs:
        h1 = l1(x)
        h3 = l2(torch.relu(h1))
        h5 = l3(torch.tanh(h3))
        for name, pre in (("1", h1), ("3", h3), ("5", h5)):
            pres[name].append(pre.detach().double())
    fns = {"1": torch.relu, "3": torch.tanh, "5": F.gelu}
    for name, fn in fns.items():
        out = torch.cat([fn(p) for p in pres[name]])
        assert got[(name, "act_std")] == pytest.approx(out.std(unbiased=False).item(), rel=1e-5), (
            name
        )
    for name in ("1", "5"):  # dead per call (units dead over that micro-batch), pooled over calls
        dead = [
            (_naive_derivative_flat(fns[name], p) & (p < 0)).all(0).double().sum().item()
            for p in pres[name]
        ]
        units = sum(p.shape[1] for p in pres[name])
        assert got[(name, "dead_frac")] == pytest.approx(sum(dead) / units, abs=1e-9), name
        assert 0 < sum(dead) < units
    flat = torch.cat([_naive_derivative_flat(torch.tanh, p).reshape(-1) for p in pres["3"]])
    assert got[("3", "saturated_frac")] == pytest.approx(flat.double().mean().item(), abs=1e-9)
    assert ("1", "saturated_frac") not in got and ("3", "dead_frac") not in got


def test_large_outputs_are_binned_from_an_even_stride_scaled_to_the_whole():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 640), nn.Tanh(), nn.Linear(640, 1))
    x = torch.randn(50, 4)
    w = _one_step(model, x)
    out = torch.tanh(model[0](x)).detach().reshape(-1)
    stride = -(-out.numel() // HIST_SAMPLE)
    sample = out[::stride].numpy()
    expected, _ = np.histogram(np.clip(sample, -1, 1), bins=HIST_BINS, range=(-1, 1))
    hist = w.stats().query("metric == 'act_hist' and layer == '1'").sort_values("index")
    np.testing.assert_allclose(hist["value"].to_numpy(), expected / sample.size, atol=1e-6)


def test_functional_activations_belong_to_the_calling_module():
    class Functional(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Linear(4, 8)
            self.b = nn.Linear(8, 8)
            self.head = nn.Linear(8, 1)

        def forward(self, x):
            h = F.relu(self.a(x))
            h = torch.tanh(self.b(h))
            return self.head(h)

    torch.manual_seed(0)
    model = Functional()
    x = torch.randn(16, 4)
    w = _one_step(model, x)
    got = as_dict(w.stats(), 0)
    h1 = torch.relu(model.a(x))
    h2 = torch.tanh(model.b(h1)).detach()
    # Both calls happen in the root's forward: one row pooling them.
    pooled = torch.cat([h1.detach().ravel(), h2.ravel()]).double()
    assert got[("(root)", "act_std")] == pytest.approx(pooled.std(unbiased=False).item(), rel=1e-6)
    assert ("(root)", "dead_frac") in got and ("(root)", "saturated_frac") in got
    assert w.layers() == ["(root)", "a", "b", "head"]


def test_inplace_activations_are_measured_on_their_input():
    torch.manual_seed(0)
    lin = nn.Linear(4, 100)
    with torch.no_grad():
        lin.bias.copy_(torch.linspace(-10, 2, 100))
    model = nn.Sequential(lin, nn.ReLU(inplace=True), nn.Linear(100, 1))
    x = torch.randn(20, 4)
    w = _one_step(model, x, backflow=True)
    pre = lin(x).detach()
    got = as_dict(w.stats(), 0)
    assert got[("1", "dead_frac")] == pytest.approx((pre <= 0).all(0).double().mean().item())
    # The Linear's backflow is ∂L/∂(its output), taken before ReLU overwrote it.
    h = lin(x)
    h.retain_grad()
    model[2](torch.relu(h)).pow(2).mean().backward()
    assert got[("0", "backflow_norm")] == pytest.approx(
        h.grad.norm().item() / np.sqrt(20), rel=1e-5
    )


class _QuietInplaceReLU(nn.ReLU):
    """Overwrites its input although its `inplace` attribute says it does not."""

    def forward(self, x):
        return torch.relu_(x)


def test_an_unannounced_inplace_activation_is_skipped_once_then_measured_on_its_input():
    # Activation modules are read in one forward hook, from their input, unless they announce
    # `inplace=True`; one caught overwriting its input is not measured that call (its input is
    # gone) and is read by a pre-hook from its next call on.
    torch.manual_seed(0)
    lin = nn.Linear(4, 100)
    with torch.no_grad():
        lin.bias.copy_(torch.linspace(-10, 2, 100))
    model = nn.Sequential(lin, _QuietInplaceReLU(), nn.Linear(100, 1))
    xs = [torch.randn(20, 4) for _ in range(2)]
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    with gw.watch(model, opt, activations=True) as w:
        for x in xs:
            opt.zero_grad()
            model(x).pow(2).mean().backward()
            opt.step()
    pre = lin(xs[1]).detach()
    assert ("1", "dead_frac") not in as_dict(w.stats(), 0)
    got = as_dict(w.stats(), 1)
    assert got[("1", "dead_frac")] == pytest.approx((pre <= 0).all(0).double().mean().item())
    assert got[("1", "act_std")] == pytest.approx(
        torch.relu(pre).double().std(unbiased=False).item(), rel=1e-6
    )


def test_activation_functions_a_forward_starts_calling_later_are_found_after_the_next_flush():
    # The function mode is dropped when a measured forward finds no functional activation (it
    # costs a Python call per torch function) and looks again after every flush.
    class Late(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Linear(4, 8)
            self.head = nn.Linear(8, 1)
            self.relu = False

        def forward(self, x):
            h = self.a(x)
            return self.head(torch.relu(h) if self.relu else h)

    torch.manual_seed(0)
    model = Late()
    xs = [torch.randn(16, 4) for _ in range(4)]
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    with gw.watch(model, opt, activations=True, flush_every=2) as w:
        for step, x in enumerate(xs):
            model.relu = step >= 1
            opt.zero_grad()
            model(x).pow(2).mean().backward()
            opt.step()
    stats = w.stats()
    assert sorted(stats.query("metric == 'act_std'").step) == [2, 3]  # step 1: before the flush
    for step in (2, 3):
        h = torch.relu(model.a(xs[step])).detach().double()
        got = as_dict(stats, step)
        assert got[("(root)", "act_std")] == pytest.approx(h.std(unbiased=False).item(), rel=1e-6)
        assert got[("(root)", "dead_frac")] == pytest.approx(
            (model.a(xs[step]) < spec("relu").lo).all(0).double().mean().item()
        )


def test_transformer_layers_get_activation_and_backflow_rows():
    model, x, loss_fn = family("transformer", 4)
    w = _one_step(model, x, loss=loss_fn, backflow=True)
    stats = w.stats()
    act = stats.query("metric == 'act_std'")
    assert set(act.layer) == {"encoder.layers.0", "encoder.layers.1"}  # F.relu inside each layer
    back = set(stats.query("metric == 'backflow_norm'").layer)
    assert {"embed", "encoder.layers.0.self_attn", "encoder.layers.1.linear2", "head"} <= back


def test_probes_switch_off_and_sample_at_their_cadence():
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 1))
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    with gw.watch(model, opt, activations=3, backflow=False, through_time=False) as w:
        for _ in range(7):
            opt.zero_grad()
            model(torch.randn(5, 3)).sum().backward()
            opt.step()
    stats = w.stats()
    assert sorted(stats.query("metric == 'act_std'").step) == [0, 3, 6]
    assert "backflow_norm" not in set(stats.metric)


def test_validation_forwards_under_no_grad_are_not_measured():
    model = nn.Sequential(nn.Linear(3, 4), nn.Sigmoid(), nn.Linear(4, 1))
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    x = torch.randn(5, 3)
    expected = torch.sigmoid(model[0](x)).detach().double().std(unbiased=False).item()
    with gw.watch(model, opt, activations=True) as w:
        model(x).sum().backward()
        with torch.no_grad():
            model(100 * torch.randn(5, 3))  # would saturate everything
        opt.step()
    assert as_dict(w.stats(), 0)[("1", "act_std")] == pytest.approx(expected, rel=1e-6)


def test_flat_region_bounds_follow_the_derivative_definition():
    assert spec("sigmoid").hi == pytest.approx(4.36, abs=0.01)
    assert spec("tanh").hi == pytest.approx(2.18, abs=0.01)
    assert spec("relu").lo == pytest.approx(0.0, abs=1e-3)
    assert spec("leaky_relu", (0.2,)).lo == -np.inf  # slope 0.2 > 5%: never flat
    assert spec("gelu", ("none",)).lo == pytest.approx(-2.28, abs=0.02)


def test_nan_activations_are_measured_without_a_crash():
    model = nn.Sequential(nn.Linear(3, 8), nn.ReLU(), nn.Linear(8, 1))
    with torch.no_grad():
        model[0].bias[0] = float("nan")
    w = _one_step(model, torch.randn(4, 3), backflow=True)
    got = as_dict(w.stats(), 0)
    assert np.isnan(got[("1", "act_std")])
    hist = w.stats().query("metric == 'act_hist' and layer == '1'")
    assert len(hist) == HIST_BINS and np.isfinite(hist.value).all()


def _activation_stats(build, batches, dtype=torch.float32, **kw):
    torch.manual_seed(0)
    model = build().to(dtype)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    with gw.watch(model, opt, activations=True, backflow=False, **kw) as w:
        for x in batches:
            opt.zero_grad()
            model(x.to(dtype)).float().pow(2).mean().backward()
            opt.step()
    s = w.stats()
    return w, s[s["metric"].isin(["act_std", "saturated_frac", "dead_frac", "act_hist"])].set_index(
        ["step", "layer", "metric", "index"]
    )["value"]


class _Mixed(nn.Module):
    """Module and functional activations, in place and not, 2-D and 4-D, saturating and
    rectifying."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(2, 6, 3, padding=1)
        self.relu = nn.ReLU(inplace=True)
        self.fc = nn.Linear(6 * 8 * 8, 300)
        self.sig = nn.Sigmoid()
        self.prelu = nn.PReLU()
        self.out = nn.Linear(300, 3)

    def forward(self, x):
        h = self.relu(self.conv(x))
        h = F.hardtanh(h * 2 - 1).flatten(1)
        h = self.sig(self.fc(h) * 3)
        return self.out(F.gelu(self.prelu(h * 4 - 2)))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_the_cpu_kernels_and_torch_ops_give_the_same_statistics(cpu_path, dtype, monkeypatch):
    if cpu_path == "torch":
        pytest.skip("compares the two paths in one run")
    torch.manual_seed(1)
    batches = [torch.randn(5, 2, 8, 8) * 2, torch.randn(9, 2, 8, 8)]
    fused_watch, fused = _activation_stats(_Mixed, batches, dtype)
    assert next(p for p in fused_watch._probes if hasattr(p, "_kernels"))._kernels is not None
    monkeypatch.setattr(_cpu_kernels, "load", lambda wait=True: None)
    _, ops = _activation_stats(_Mixed, batches, dtype)
    assert fused.index.equals(ops.index)
    metric = fused.index.get_level_values("metric")
    std = metric == "act_std"
    np.testing.assert_allclose(fused[std], ops[std], rtol=1e-5)
    # Counts and bins are exact on both paths (bounds rounded alike, samples binned alike).
    np.testing.assert_allclose(fused[~std], ops[~std], rtol=1e-12, atol=1e-12)
    assert (fused[metric == "dead_frac"] > 0).any() and (
        fused[metric == "saturated_frac"] > 0
    ).any()


def test_the_cpu_kernels_can_be_switched_off(cpu_path, monkeypatch):
    if cpu_path == "torch":
        pytest.skip("about the numba path")
    monkeypatch.setenv("GRADWATCH_NUMBA", "0")
    assert _cpu_kernels.load() is None
    monkeypatch.delenv("GRADWATCH_NUMBA")
    assert _cpu_kernels.load() is not None


def test_the_cpu_kernels_never_load_beside_training(cpu_path):
    # numba's compiler swaps the process-wide warning filters (warnings.catch_warnings); in a
    # thread beside training it swallowed the user's warnings. A watch loads them before its
    # first step, so no loader is left running.
    if cpu_path == "torch":
        pytest.skip("about the numba path")
    _cpu_kernels.reset()
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 1))
    w = _one_step(model, torch.randn(16, 4), backflow=True)
    assert not _cpu_kernels.loading()
    numba = f"numba {__import__('numba').__version__}"
    assert w.meta()["probes"]["activation_kernels"] == [[0, numba]]


def test_only_a_probe_measuring_often_loads_the_cpu_kernels(cpu_path):
    if cpu_path == "torch":
        pytest.skip("about the numba path")
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 1))
    sparse = _one_step(model, torch.randn(16, 4), activations="auto", backflow="auto")
    assert sparse.meta()["probes"]["kernels"] == "torch"
    dense = _one_step(model, torch.randn(16, 4), activations=True, backflow=2)
    assert dense.meta()["probes"]["kernels"].startswith("numba")


def test_run_metadata_says_what_computed_the_forward_probes(cpu_path, tmp_path):
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 1))
    w = _one_step(model, torch.randn(16, 4), backflow=True, log_dir=tmp_path / "run")
    expected = "torch" if cpu_path == "torch" else f"numba {__import__('numba').__version__}"
    assert w.meta()["probes"]["kernels"] == expected
    assert gw.load(tmp_path / "run").meta["probes"]["kernels"] == expected
