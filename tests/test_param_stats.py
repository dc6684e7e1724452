"""Every parameter statistic equals a naive float64 reference, on every model family."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import gradwatch as gw
from conftest import FAMILIES, as_dict, family, naive_grad_stats, naive_layers, naive_norm


def _train_and_compare(kind: str, size: int, seed: int, steps: int = 3, lr: float = 0.05):
    model, x, loss_fn = family(kind, size, seed)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    return _compare_with_naive(model, opt, lambda: loss_fn(model(x)), steps)


def _compare_with_naive(model, opt, loss, steps: int, rel: float = 1e-5):
    """Train `steps` steps watched, checking every parameter statistic and update ratio against
    the naive float64 reference (`rel`: for the statistics; ratios to 1e-5)."""
    expected, updates = {}, {}
    with gw.watch(model, opt, update_memory=1.0) as w:
        for step in range(steps):
            opt.zero_grad()
            loss().backward()
            expected[step] = naive_grad_stats(model)
            before = {n: [p.detach().clone() for p in ps] for n, ps in naive_layers(model).items()}
            opt.step()
            for name, ps in naive_layers(model).items():
                delta = [p.detach() - b for p, b in zip(ps, before[name], strict=True)]
                updates[(step, name)] = naive_norm(delta) / naive_norm(before[name])
    stats = w.stats()
    for step in range(steps):
        got = as_dict(stats, step)
        for key, value in expected[step].items():
            assert got[key] == pytest.approx(value, rel=rel, abs=1e-12), (step, key)
        for name in naive_layers(model):
            assert got[(name, "update_ratio")] == pytest.approx(updates[(step, name)], rel=1e-5)
    return stats


@pytest.mark.parametrize("kind", FAMILIES)
def test_stats_equal_naive_reference_for_each_family(kind, reads):
    _train_and_compare(kind, size=4, seed=1)


@settings(max_examples=12, deadline=None)
@given(kind=st.sampled_from(FAMILIES), size=st.integers(2, 9), seed=st.integers(0, 10_000))
def test_stats_equal_naive_reference_for_random_shapes(kind, size, seed):
    _train_and_compare(kind, size, seed, steps=2)


def test_every_layer_owning_parameters_is_recorded_once():
    model, x, loss_fn = family("transformer", 4)
    opt = torch.optim.Adam(model.parameters())
    with gw.watch(model, opt) as w:
        loss_fn(model(x)).backward()
        opt.step()
    stats = w.stats()
    grad = stats[stats.metric == "grad_norm"]
    assert sorted(grad.layer) == sorted(naive_layers(model))
    assert not grad.duplicated(["step", "layer"]).any()


def test_tied_parameters_are_counted_once():
    class Tied(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = nn.Embedding(10, 6)
            self.mid = nn.Linear(6, 6)
            self.out = nn.Linear(6, 10, bias=False)
            self.out.weight = self.embed.weight

        def forward(self, t):
            return self.out(torch.tanh(self.mid(self.embed(t))))

    model = Tied()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with gw.watch(model, opt) as w:
        model(torch.tensor([[1, 2, 3]])).logsumexp(-1).sum().backward()
        opt.step()
    got = as_dict(w.stats(), 0)
    assert "out" not in {layer for layer, _ in got}
    assert got[("embed", "grad_norm")] == pytest.approx(
        naive_norm([model.embed.weight.grad]), rel=1e-6
    )


def test_frozen_layers_have_weight_norm_but_no_gradient_rows():
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    for p in model[0].parameters():
        p.requires_grad_(False)
    model[2].bias.requires_grad_(False)
    opt = torch.optim.SGD([model[2].weight], lr=0.1)
    with gw.watch(model, opt) as w:
        model(torch.randn(5, 3)).sum().backward()
        opt.step()
    got = as_dict(w.stats(), 0)
    assert ("0", "weight_norm") in got
    assert ("0", "grad_norm") not in got and ("0", "update_ratio") not in got
    assert got[("2", "grad_norm")] == pytest.approx(naive_norm([model[2].weight.grad]), rel=1e-6)


def test_several_parameter_groups_are_one_model():
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2))
    opt = torch.optim.SGD(
        [
            {"params": model[0].parameters(), "lr": 0.5},
            {"params": model[2].parameters(), "lr": 0.01},
        ]
    )
    with gw.watch(model, opt, update_memory=1.0) as w:
        before = [p.detach().clone() for p in model[0].parameters()]
        model(torch.randn(5, 3)).sum().backward()
        opt.step()
    got = as_dict(w.stats(), 0)
    delta = [p.detach() - b for p, b in zip(model[0].parameters(), before, strict=True)]
    assert got[("0", "update_ratio")] == pytest.approx(
        naive_norm(delta) / naive_norm(before), rel=1e-6
    )
    assert got[("0", "update_ratio")] > 10 * got[("2", "update_ratio")]


def test_gradient_accumulation_records_at_the_optimizer_step_only():
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 1))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with gw.watch(model, opt) as w:
        for _ in range(3):
            for _ in range(4):
                model(torch.randn(2, 3)).sum().backward()
            expected = naive_grad_stats(model)
            opt.step()
            opt.zero_grad()
    stats = w.stats()
    assert sorted(stats.step.unique()) == [0, 1, 2]
    assert as_dict(stats, 2)[("0", "grad_norm")] == pytest.approx(
        expected[("0", "grad_norm")], rel=1e-6
    )


def test_nonfinite_gradients_are_counted_not_dropped(reads):
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 1))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with gw.watch(model, opt) as w:
        model(torch.randn(2, 3)).sum().backward()
        model[0].weight.grad[0, :2] = float("nan")
        model[0].weight.grad[1, 0] = float("inf")
        opt.step()
    got = as_dict(w.stats(), 0)
    assert got[("0", "nonfinite")] == 3
    assert math.isnan(got[("0", "grad_norm")])
    assert got[("2", "nonfinite")] == 0 and math.isfinite(got[("2", "grad_norm")])


def test_nonfinite_gradients_at_a_later_step_are_counted_too(reads):
    # Past the first step of a flush the usual step takes a shorter path; a non-finite gradient
    # must still be counted there.
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 1))
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    with gw.watch(model, opt) as w:
        for step in range(3):
            opt.zero_grad()
            model(torch.randn(2, 3)).sum().backward()
            if step == 2:
                model[2].weight.grad[0, 1] = float("inf")
            expected = naive_grad_stats(model)
            opt.step()
    got = as_dict(w.stats(), 2)
    assert got[("2", "nonfinite")] == 1 and math.isinf(got[("2", "grad_norm")])
    assert got[("0", "nonfinite")] == 0
    assert got[("0", "grad_norm")] == pytest.approx(expected[("0", "grad_norm")], rel=1e-6)
    assert all(as_dict(w.stats(), 1)[(name, "nonfinite")] == 0 for name in ("0", "2"))


def test_huge_finite_gradients_do_not_overflow_the_layer_norm(reads):
    model = nn.Linear(2, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    with gw.watch(model, opt) as w:
        model.weight.grad = torch.full((2, 2), 1e18)
        model.bias.grad = torch.full((2,), 1e18)
        opt.step()
    got = as_dict(w.stats(), 0)
    assert got[("(root)", "grad_norm")] == pytest.approx(math.sqrt(6) * 1e18, rel=1e-6)
    assert got[("(root)", "nonfinite")] == 0


def test_bf16_model_stats_match_reference(reads):
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4)).to(torch.bfloat16)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with gw.watch(model, opt) as w:
        model(torch.randn(5, 8, dtype=torch.bfloat16)).float().pow(2).mean().backward()
        expected = naive_grad_stats(model)
        opt.step()
    got = as_dict(w.stats(), 0)
    for key, value in expected.items():
        assert got[key] == pytest.approx(value, rel=1e-4), key


def test_every_n_records_steps_0_n_2n():
    model = nn.Linear(3, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with gw.watch(model, opt, every=4, flush_every=2) as w:
        for _ in range(10):
            opt.zero_grad()
            model(torch.randn(2, 3)).sum().backward()
            opt.step()
    assert sorted(w.stats().step.unique()) == [0, 4, 8]


def test_manual_step_without_optimizer_matches_reference():
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 1))
    w = gw.watch(model, update_memory=1.0)
    ratios = {}
    for step in range(3):
        model.zero_grad()
        model(torch.randn(2, 3)).sum().backward()
        expected = naive_grad_stats(model)
        w.step()
        before = [p.detach().clone() for p in model[0].parameters()]
        with torch.no_grad():
            for p in model.parameters():
                p -= 0.1 * p.grad
        delta = [p.detach() - b for p, b in zip(model[0].parameters(), before, strict=True)]
        ratios[step] = naive_norm(delta) / naive_norm(before)
    w.close()
    stats = w.stats()
    assert as_dict(stats, 2)[("0", "grad_norm")] == pytest.approx(
        expected[("0", "grad_norm")], rel=1e-6
    )
    for step in range(3):
        assert as_dict(stats, step)[("0", "update_ratio")] == pytest.approx(ratios[step], rel=1e-5)


def test_update_ratio_snapshots_stay_within_the_memory_budget():
    model = nn.Sequential(*[nn.Linear(32, 32) for _ in range(8)])
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    param_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    with gw.watch(model, opt, update_memory=0.25) as w:
        for _ in range(8):
            opt.zero_grad()
            model(torch.randn(4, 32)).sum().backward()
            opt.step()
    assert w.update_extra_bytes <= 0.25 * param_bytes
    ratios = w.stats().query("metric == 'update_ratio'")
    # Each layer is measured in turn: all eight layers, every fourth step each.
    assert ratios.layer.nunique() == 8
    assert ratios.groupby("layer").size().min() >= 2


def test_layers_another_optimizer_steps_get_no_update_ratio():
    gen, disc = nn.Linear(3, 3), nn.Linear(3, 1)
    model = nn.Sequential(gen, disc)
    g_opt = torch.optim.SGD(gen.parameters(), lr=0.1)
    with gw.watch(model, g_opt, update_memory=1.0) as w:
        model(torch.randn(4, 3)).sum().backward()
        g_opt.step()
    ratios = w.stats().query("metric == 'update_ratio'")
    assert set(ratios.layer) == {"0"}


def test_weight_norms_taken_in_turns_are_exact_and_cover_every_layer(reads):
    """Under a small update_memory the layers' weight norms are read in turns; each one read is
    exact."""
    model, x, loss_fn = family("mlp", 6, seed=3)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    weights = {}
    with gw.watch(model, opt, update_memory=0.2) as w:
        for step in range(8):
            opt.zero_grad()
            loss_fn(model(x)).backward()
            weights[step] = {name: naive_norm(ps) for name, ps in naive_layers(model).items()}
            opt.step()
    stats = w.stats()
    groups = w.meta()["probes"]["update_groups"]
    assert groups > 1
    seen = stats[stats.metric == "weight_norm"]
    assert set(seen[seen.step == 0].layer) == set(naive_layers(model))
    for row in seen.itertuples():
        assert row.value == pytest.approx(weights[row.step][row.layer], rel=1e-6)
    for name in naive_layers(model):
        steps = sorted(seen[seen.layer == name].step)
        assert max(b - a for a, b in zip(steps, [*steps, 8][1:], strict=True)) <= groups
    ratio = stats[stats.metric == "update_ratio"][["step", "layer"]]
    assert len(ratio.merge(seen, on=["step", "layer"])) == len(ratio)


def test_float64_model_keeps_norms_beyond_float32_range(reads):
    """A float64 model's norms are kept in float64 all the way: weights and gradients near 1e40
    (beyond float32's 3.4e38) come out finite and exact, update ratios too."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 6), nn.Linear(6, 2)).double()
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(1e40)
    x = torch.randn(7, 5, dtype=torch.float64)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    stats = _compare_with_naive(
        model, opt, lambda: model(x).sum(), steps=2, rel=1e-9
    )  # gradients near 1e40 too
    for step in range(2):
        got = as_dict(stats, step)
        assert got[("0", "grad_norm")] > 1e39 and got[("1", "weight_norm")] > 1e39


def test_a_sparse_gradient_takes_the_general_path_and_is_measured_coalesced():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Embedding(10, 4, sparse=True), nn.Flatten(), nn.Linear(12, 1))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x = torch.tensor([[1, 1, 3], [3, 1, 7]])  # repeated indices: an uncoalesced gradient
    with gw.watch(model, opt) as w:
        for _ in range(3):
            opt.zero_grad()
            model(x).pow(2).mean().backward()
            expected = model[0].weight.grad.to_dense().norm().item()
            opt.step()
    s = w.stats()
    got = s[(s.metric == "grad_norm") & (s.layer == "0")].sort_values("step").value.iloc[-1]
    assert got == pytest.approx(expected, rel=1e-6)


def test_many_layers_of_one_shape_are_normed_stacked_and_match_the_reference():
    # 20 weights and 20 biases of one shape each: over STACK_ALIKE, so on the CPU their norms
    # are taken by one stack and one norm per shape instead of one _foreach_norm entry each.
    from gradwatch.probes.base import STACK_ALIKE

    torch.manual_seed(0)
    layers = []
    for _ in range(max(20, STACK_ALIKE)):
        layers += [nn.Linear(8, 8), nn.Tanh()]
    model = nn.Sequential(*layers, nn.Linear(8, 1))
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    x = torch.randn(16, 8)
    _compare_with_naive(model, opt, lambda: model(x).pow(2).mean(), steps=3)


def test_only_small_tensors_are_stacked():
    # Stacking copies the tensors: worth it where dispatch dominates (small layers), not for
    # large ones, whose copy costs more than the norms it replaces.
    from gradwatch.probes.base import STACK_ALIKE, STACK_MAX_NUMEL, _stack_alike

    cpu, n = torch.device("cpu"), max(20, STACK_ALIKE)
    side = int(STACK_MAX_NUMEL**0.5) + 1
    tensors = [torch.zeros(8, 8) for _ in range(n)] + [torch.zeros(side, side) for _ in range(n)]
    groups = _stack_alike([(cpu, torch.float32, list(range(2 * n)), None)], tensors)
    stacked = [g for g in groups if g[3] is not None]
    assert [sorted(g[2]) for g in stacked] == [list(range(n))]
    assert [g[2] for g in groups if g[3] is None] == [list(range(n, 2 * n))]


def test_many_large_layers_of_one_shape_match_the_reference():
    from gradwatch.probes.base import STACK_ALIKE, STACK_MAX_NUMEL

    width = int(STACK_MAX_NUMEL**0.5) + 1
    torch.manual_seed(0)
    layers = []
    for _ in range(STACK_ALIKE):
        layers += [nn.Linear(width, width), nn.Tanh()]
    model = nn.Sequential(*layers, nn.Linear(width, 1))
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    x = torch.randn(16, width)
    _compare_with_naive(model, opt, lambda: model(x).pow(2).mean(), steps=2)
