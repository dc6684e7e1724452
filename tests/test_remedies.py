"""gradwatch.remedies, each checked against its paper's definition with a naive reference."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from gradwatch import remedies as R

pytestmark = pytest.mark.usefixtures("one_thread")


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def relative_gap(measured: float, expected: float) -> float:
    return abs(measured - expected) / expected


def assert_biases_zero(*layers: nn.Module) -> None:
    for layer in layers:
        assert torch.count_nonzero(layer.bias) == 0


# ---------------------------------------------------------------- variance-scaling inits

BIG_LINEAR = (512, 512)
BIG_CONV = (32, 64, 3)  # in, out, kernel: weight 64×32×3×3


@pytest.mark.parametrize("distribution", ["normal", "uniform"])
def test_he_init_weight_variance_is_2_over_fan_in(distribution):
    lin, conv = nn.Linear(*BIG_LINEAR), nn.Conv2d(*BIG_CONV)
    R.he_init(nn.ModuleList([lin, conv]), distribution=distribution, generator=gen())
    assert relative_gap(lin.weight.var().item(), 2 / 512) < 0.03
    assert relative_gap(conv.weight.var().item(), 2 / (32 * 9)) < 0.05
    assert abs(lin.weight.mean().item()) < 3 * math.sqrt(2 / 512 / lin.weight.numel())
    assert_biases_zero(lin, conv)


def test_he_init_leaky_slope_and_fan_out_follow_2_over_1_plus_a2_fan():
    conv = nn.Conv2d(*BIG_CONV)
    R.he_init(conv, nonlinearity="leaky_relu", a=0.2, mode="fan_out", generator=gen())
    assert relative_gap(conv.weight.var().item(), 2 / ((1 + 0.2**2) * 64 * 9)) < 0.05


def test_he_init_rejects_a_slope_without_leaky_relu():
    with pytest.raises(ValueError, match="leaky_relu"):
        R.he_init(nn.Linear(3, 3), a=0.1)


@pytest.mark.parametrize("distribution", ["normal", "uniform"])
@pytest.mark.parametrize("gain", [1.0, 5 / 3])
def test_xavier_init_weight_variance_is_gain2_times_2_over_fan_in_plus_fan_out(distribution, gain):
    lin, conv = nn.Linear(512, 256), nn.Conv2d(*BIG_CONV)
    R.xavier_init([lin, conv], gain=gain, distribution=distribution, generator=gen())
    assert relative_gap(lin.weight.var().item(), gain**2 * 2 / (512 + 256)) < 0.03
    assert relative_gap(conv.weight.var().item(), gain**2 * 2 / ((32 + 64) * 9)) < 0.05
    assert_biases_zero(lin, conv)


def test_lecun_init_weight_variance_is_1_over_fan_in():
    lin, conv = nn.Linear(*BIG_LINEAR), nn.Conv2d(*BIG_CONV)
    R.lecun_init(nn.Sequential(lin, nn.SELU(), conv), generator=gen())
    assert relative_gap(lin.weight.var().item(), 1 / 512) < 0.03
    assert relative_gap(conv.weight.var().item(), 1 / (32 * 9)) < 0.05
    assert_biases_zero(lin, conv)


def test_transposed_and_grouped_convs_use_the_fans_of_their_computation():
    # ConvTranspose2d weight is (in, out, k, k): an output reads in·k² inputs, whatever the layout.
    tconv, grouped = nn.ConvTranspose2d(64, 16, 3), nn.Conv2d(64, 64, 3, groups=4)
    R.lecun_init([tconv, grouped], generator=gen())
    assert relative_gap(tconv.weight.var().item(), 1 / (64 * 9)) < 0.06
    assert relative_gap(grouped.weight.var().item(), 1 / (16 * 9)) < 0.06


def test_init_with_a_generator_is_reproducible_and_leaves_the_global_rng_alone():
    a, b = nn.Linear(8, 8), nn.Linear(8, 8)
    state = torch.get_rng_state()
    R.he_init(a, generator=gen(3))
    R.he_init(b, generator=gen(3))
    assert torch.equal(a.weight, b.weight)
    assert torch.equal(torch.get_rng_state(), state)


def test_init_returns_what_it_was_given_so_calls_chain():
    model = nn.Sequential(nn.Linear(3, 4))
    layers = [nn.Linear(2, 2)]
    assert R.xavier_init(model) is model
    assert R.orthogonal_init(layers) is layers


def test_init_of_a_model_without_weight_layers_raises_a_clear_value_error():
    with pytest.raises(ValueError, match="found no nn.Linear"):
        R.he_init(nn.Sequential(nn.ReLU()))


# ---------------------------------------------------------------- orthogonal and delta-orthogonal


@pytest.mark.parametrize("shape", [(64, 128), (128, 64)])
def test_orthogonal_init_is_orthonormal_times_gain(shape):
    lin = nn.Linear(*shape)  # weight is (out, in)
    R.orthogonal_init(lin, gain=2.0, generator=gen())
    w = lin.weight.double()
    gram = w.T @ w if w.shape[0] >= w.shape[1] else w @ w.T
    torch.testing.assert_close(
        gram, 4.0 * torch.eye(min(w.shape), dtype=torch.float64), atol=1e-5, rtol=0
    )
    assert_biases_zero(lin)


def test_orthogonal_init_flattens_a_conv_kernel_to_out_by_in_times_k():
    conv = nn.Conv2d(8, 16, 3)
    R.orthogonal_init(conv, generator=gen())
    w = conv.weight.double().reshape(16, -1)  # 16 × 72: wide, so the rows are orthonormal
    torch.testing.assert_close(w @ w.T, torch.eye(16, dtype=torch.float64), atol=1e-5, rtol=0)


def centre_of(w: torch.Tensor) -> tuple[int, ...]:
    return tuple(k // 2 for k in w.shape[2:])


@pytest.mark.parametrize(
    "conv",
    [nn.Conv2d(8, 16, 3), nn.Conv1d(4, 4, 5), nn.Conv3d(2, 6, 3), nn.Conv2d(8, 12, 3, groups=2)],
    ids=["conv2d", "conv1d", "conv3d", "grouped"],
)
def test_delta_orthogonal_kernel_is_zero_except_an_orthogonal_centre(conv):
    R.delta_orthogonal_init(conv, gain=1.5, generator=gen())
    w = conv.weight.detach().double()
    centre = centre_of(w)
    off_centre = w.clone()
    off_centre[(slice(None), slice(None)) + centre] = 0
    assert torch.count_nonzero(off_centre) == 0
    g = conv.groups
    n_out, n_in = conv.out_channels // g, conv.in_channels // g
    for k in range(g):  # each group's centre has orthonormal columns, times gain
        q = w[(slice(k * n_out, (k + 1) * n_out), slice(None)) + centre]
        torch.testing.assert_close(
            q.T @ q, 2.25 * torch.eye(n_in, dtype=torch.float64), atol=1e-5, rtol=0
        )
    assert_biases_zero(conv)


def test_delta_orthogonal_transposed_conv_is_an_isometry_from_in_to_out_channels():
    tconv = nn.ConvTranspose2d(4, 8, 3, padding=1)
    R.delta_orthogonal_init(tconv, generator=gen())
    x = torch.randn(3, 4, 5, 5, generator=gen(1))
    y = tconv(x)
    torch.testing.assert_close(
        y.pow(2).sum((1, 2, 3)), x.pow(2).sum((1, 2, 3)), rtol=1e-4, atol=1e-5
    )


def test_delta_orthogonal_refuses_a_conv_that_reduces_channels():
    with pytest.raises(ValueError, match="out_channels ≥ in_channels"):
        R.delta_orthogonal_init(nn.Conv2d(16, 8, 3))


def _jacobian_singular_values(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    jac = torch.autograd.functional.jacobian(model, x, vectorize=True)
    return torch.linalg.svdvals(jac.reshape(x.numel(), -1).double())


def test_deep_linear_cnn_with_delta_orthogonal_has_all_jacobian_singular_values_one():
    depth, c = 32, 4
    deep = nn.Sequential(*[nn.Conv2d(c, c, 3, padding=1) for _ in range(depth)])
    x = torch.randn(1, c, 5, 5, generator=gen(1))
    R.delta_orthogonal_init(deep, generator=gen())
    s = _jacobian_singular_values(deep, x)
    torch.testing.assert_close(s, torch.ones_like(s), atol=1e-4, rtol=0)
    R.lecun_init(deep, generator=gen())  # Gaussian, variance-preserving on average
    s = _jacobian_singular_values(deep, x)
    assert s.max() / s.min() > 100


# ---------------------------------------------------------------- LSUV


class ConvNet(nn.Module):
    """Not a Sequential: LSUV must follow the forward order, through BN and dropout."""

    def __init__(self):
        super().__init__()
        self.head = nn.Linear(8, 5)  # registered first, called last
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.drop = nn.Dropout(0.3)

    def forward(self, x, scale=1.0):
        x = torch.relu(self.bn(self.conv1(x * scale)))
        x = self.drop(torch.tanh(self.conv2(x)))
        return self.head(x.mean((2, 3)))


def output_variances(model: nn.Module, inputs, call) -> list[float]:
    """Population variance of every Linear/Conv output in one forward, from the same RNG state."""
    got = []
    hooks = [
        m.register_forward_hook(lambda m, a, out: got.append(out.double().var(correction=0).item()))
        for m in model.modules()
        if isinstance(m, nn.Linear | nn.Conv2d)
    ]
    with torch.no_grad(), torch.random.fork_rng():
        call(model)
    for h in hooks:
        h.remove()
    return got


def test_lsuv_makes_every_layer_output_variance_one_within_tol():
    mlp = nn.Sequential(
        nn.Linear(20, 64), nn.Tanh(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10)
    )
    x = 3 * torch.randn(256, 20, generator=gen(1))
    R.lsuv_init(mlp, x, tol=0.05, generator=gen())
    assert all(abs(v - 1) < 0.05 for v in output_variances(mlp, x, lambda m: m(x)))


def test_lsuv_follows_the_forward_order_of_an_arbitrary_module_with_dropout():
    net = ConvNet().train()
    x = torch.randn(16, 3, 6, 6, generator=gen(1))
    R.lsuv_init(net, (x, 2.0), tol=0.1, generator=gen())
    variances = output_variances(net, None, lambda m: m(x, 2.0))
    assert len(variances) == 3
    assert all(abs(v - 1) < 0.1 for v in variances)


@pytest.mark.parametrize("train", [True, False])
def test_lsuv_leaves_modes_buffers_and_global_rng_as_they_were(train):
    net = ConvNet().train(train)
    modes = [m.training for m in net.modules()]
    buffers = {k: v.clone() for k, v in net.named_buffers()}
    rng = torch.get_rng_state()
    R.lsuv_init(net, torch.randn(8, 3, 6, 6, generator=gen(1)), generator=gen())
    assert torch.equal(torch.get_rng_state(), rng)
    assert [m.training for m in net.modules()] == modes
    for k, v in net.named_buffers():
        assert torch.equal(v, buffers[k]), k


# ---------------------------------------------------------------- Fixup and zero-init


class ResMLP(nn.Module):
    def __init__(self, n_blocks: int = 4, m: int = 2, width: int = 16):
        super().__init__()
        self.stem = nn.Linear(5, width)
        self.blocks = nn.ModuleList()
        for _ in range(n_blocks):
            layers: list[nn.Module] = []
            for i in range(m):
                layers += [nn.Linear(width, width)] + ([nn.ReLU()] if i < m - 1 else [])
            self.blocks.append(nn.Sequential(*layers))
        self.head = nn.Linear(width, 3)

    def forward(self, x):
        x = self.stem(x)
        for block in self.blocks:
            x = torch.relu(x + block(x))
        return self.head(x)


@pytest.mark.parametrize("n_blocks, m", [(4, 2), (9, 3)])
def test_fixup_scales_branch_layers_by_L_to_minus_1_over_2m_minus_2_and_zeroes_the_last(
    n_blocks, m
):
    net = ResMLP(n_blocks, m)
    reference = R.he_init(copy.deepcopy(net), generator=gen(7))
    R.fixup_init(net, list(net.blocks), m=m, generator=gen(7))
    scale = n_blocks ** (-1 / (2 * m - 2))
    assert torch.equal(net.stem.weight, reference.stem.weight)
    assert torch.equal(net.head.weight, reference.head.weight)
    for block, ref in zip(net.blocks, reference.blocks, strict=True):
        linears = [x for x in block if isinstance(x, nn.Linear)]
        ref_linears = [x for x in ref if isinstance(x, nn.Linear)]
        for layer, ref_layer in zip(linears[:-1], ref_linears[:-1], strict=True):
            torch.testing.assert_close(layer.weight, ref_layer.weight * scale, rtol=1e-6, atol=0)
        assert torch.count_nonzero(linears[-1].weight) == 0
        assert_biases_zero(*linears)


def test_fixup_zeroes_the_head_when_given_one():
    net = ResMLP()
    R.fixup_init(net, list(net.blocks), head=net.head, generator=gen())
    assert torch.count_nonzero(net.head.weight) == 0


def test_fixup_rejects_m_below_2_and_blocks_outside_the_model():
    net = ResMLP()
    with pytest.raises(ValueError, match="m ≥ 2"):
        R.fixup_init(net, list(net.blocks), m=1)
    with pytest.raises(ValueError, match="submodule"):
        R.fixup_init(net, [nn.Linear(2, 2)])


def test_zero_init_last_zeroes_bn_gamma_when_the_branch_ends_in_batchnorm():
    bn_branch = nn.Sequential(
        nn.Conv2d(4, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 4, 3), nn.BatchNorm2d(4)
    )
    plain = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 4))
    before = copy.deepcopy([bn_branch, plain])
    R.zero_init_last([bn_branch, plain])
    assert torch.count_nonzero(bn_branch[4].weight) == 0
    assert torch.equal(bn_branch[4].bias, before[0][4].bias)
    assert torch.equal(bn_branch[3].weight, before[0][3].weight)  # only one layer per branch zeroed
    assert torch.count_nonzero(plain[2].weight) == 0 and torch.count_nonzero(plain[2].bias) == 0
    assert torch.equal(plain[0].weight, before[1][0].weight)


# ---------------------------------------------------------------- LSTM forget bias


def test_lstm_forget_bias_sets_every_layer_and_direction_and_touches_nothing_else():
    model = nn.ModuleDict(
        {"lstm": nn.LSTM(3, 5, num_layers=2, bidirectional=True), "cell": nn.LSTMCell(3, 4)}
    )
    before = {k: v.clone() for k, v in model.named_parameters()}
    R.lstm_forget_bias(model, value=2.5)
    biases = 0
    for name, p in model.named_parameters():
        h = 5 if name.startswith("lstm") else 4
        forget = slice(h, 2 * h)
        if "bias_ih" in name:
            biases += 1
            hh = model.get_parameter(name.replace("bias_ih", "bias_hh"))
            torch.testing.assert_close(p[forget] + hh[forget], torch.full((h,), 2.5))
            assert torch.equal(hh[forget], torch.zeros(h))
        if "bias" in name:
            rest = torch.cat([p[:h], p[2 * h :]])
            assert torch.equal(rest, torch.cat([before[name][:h], before[name][2 * h :]])), name
        else:
            assert torch.equal(p, before[name]), name
    assert biases == 2 * 2 + 1  # 2 layers × 2 directions, and the cell


def test_lstm_forget_bias_without_an_lstm_raises_a_clear_value_error():
    with pytest.raises(ValueError, match="no nn.LSTM"):
        R.lstm_forget_bias(nn.GRU(3, 4))


# ---------------------------------------------------------------- swap_activation


class Nested(nn.Module):
    def __init__(self):
        super().__init__()
        self.seq = nn.Sequential(
            nn.Linear(4, 4), nn.Sigmoid(), nn.Sequential(nn.Linear(4, 4), nn.Sigmoid())
        )
        self.items = nn.ModuleList([nn.Linear(4, 4), nn.Sigmoid()])
        self.table = nn.ModuleDict({"a": nn.Sigmoid(), "b": nn.Tanh()})
        self.act = nn.Sigmoid()

    def forward(self, x):
        x = self.seq(x)
        for m in self.items:
            x = m(x)
        return self.act(self.table["b"](self.table["a"](x)))


def test_swap_activation_replaces_nested_modules_and_keeps_names_order_and_parameters():
    model = Nested()
    params = dict(model.named_parameters())
    values = {k: v.clone() for k, v in params.items()}
    names = [n for n, _ in model.named_modules()]
    sigmoids = sum(isinstance(m, nn.Sigmoid) for m in model.modules())
    assert R.swap_activation(model, nn.Sigmoid, nn.ReLU) is model
    assert [n for n, _ in model.named_modules()] == names
    assert not any(isinstance(m, nn.Sigmoid) for m in model.modules())
    assert sum(type(m) is nn.ReLU for m in model.modules()) == sigmoids == 5
    assert isinstance(model.table["b"], nn.Tanh)
    for k, p in model.named_parameters():
        assert p is params[k] and torch.equal(p, values[k])
    model(torch.randn(2, 4))


def test_swap_activation_takes_a_tuple_of_classes_and_a_factory():
    model = Nested()
    R.swap_activation(model, (nn.Sigmoid, nn.Tanh), lambda: nn.LeakyReLU(0.1))
    acts = [m for m in model.modules() if isinstance(m, nn.LeakyReLU)]
    assert len(acts) == 6 and all(a.negative_slope == 0.1 for a in acts)


def test_swap_activation_with_nothing_to_replace_raises_a_clear_value_error():
    with pytest.raises(ValueError, match="found no Sigmoid module in the model"):
        R.swap_activation(nn.Sequential(nn.Linear(2, 2), nn.ReLU()))


# ---------------------------------------------------------------- insert_norm


def test_insert_norm_puts_batchnorm_between_each_layer_and_its_activation():
    model = nn.Sequential(
        nn.Linear(10, 20), nn.ReLU(), nn.Linear(20, 30), nn.Tanh(), nn.Linear(30, 5)
    )
    x = torch.randn(8, 10)
    out = R.insert_norm(model)
    assert [type(m) for m in out] == [
        nn.Linear,
        nn.BatchNorm1d,
        nn.ReLU,
        nn.Linear,
        nn.BatchNorm1d,
        nn.Tanh,
        nn.Linear,
    ]
    assert [out[1].num_features, out[4].num_features] == [20, 30]
    assert out[0] is model[0] and len(model) == 5  # layers shared, the input not mutated
    assert out(x).shape == model(x).shape


def test_insert_norm_matches_conv_dimension_inside_nested_sequentials():
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3),
        nn.ReLU(),
        nn.Sequential(nn.Conv2d(8, 16, 3, padding=1), nn.ReLU()),
        nn.Flatten(1, 2),
        nn.Conv1d(16 * 4, 6, 1),
        nn.ELU(),
    )
    x = torch.randn(2, 3, 6, 6)
    out = R.insert_norm(model)
    assert isinstance(out[1], nn.BatchNorm2d) and out[1].num_features == 8
    assert isinstance(out[3][1], nn.BatchNorm2d) and out[3][1].num_features == 16
    assert isinstance(out[6], nn.BatchNorm1d) and out[6].num_features == 6
    assert out(x).shape == model(x).shape


def test_insert_norm_layer_kind_uses_layernorm_and_groupnorm_of_one_group():
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 4 * 4, 6), nn.GELU()
    )
    out = R.insert_norm(model, kind="layer")
    assert isinstance(out[1], nn.GroupNorm) and (out[1].num_groups, out[1].num_channels) == (1, 8)
    assert isinstance(out[5], nn.LayerNorm) and out[5].normalized_shape == (6,)
    assert out(torch.randn(2, 3, 6, 6)).shape == (2, 6)


def test_insert_norm_refuses_a_model_that_is_not_a_sequential():
    with pytest.raises(ValueError, match="rebuilds an nn.Sequential"):
        R.insert_norm(Nested())
    with pytest.raises(ValueError, match="found no Linear or Conv"):
        R.insert_norm(nn.Sequential(nn.Linear(2, 2)))


# ---------------------------------------------------------------- clipping


def with_grads(scale: float, seed: int = 0) -> nn.Module:
    model = nn.Sequential(nn.Linear(6, 5), nn.Tanh(), nn.Conv1d(5, 4, 1))
    g = gen(seed)
    for p in model.parameters():
        p.grad = scale * torch.randn(p.shape, generator=g)
    return model


def grads(model: nn.Module) -> list[torch.Tensor]:
    return [p.grad.clone() for p in model.parameters()]


def naive_norm(tensors, p: float = 2.0) -> float:
    flat = torch.cat([t.double().flatten() for t in tensors])
    return flat.abs().max().item() if p == math.inf else flat.abs().pow(p).sum().pow(1 / p).item()


@pytest.mark.parametrize("norm_type", [2.0, 1.0, math.inf])
def test_clip_by_norm_rescales_to_max_norm_when_above_it(norm_type):
    model = with_grads(10.0)
    before = grads(model)
    total = naive_norm(before, norm_type)
    returned = R.clip_by_norm(model.parameters(), 1.0, norm_type)
    assert math.isclose(returned.item(), total, rel_tol=1e-5)
    for g, g0 in zip(grads(model), before, strict=True):
        torch.testing.assert_close(g, g0 * (1.0 / total), rtol=1e-5, atol=1e-7)
    assert math.isclose(naive_norm(grads(model), norm_type), 1.0, rel_tol=1e-5)


def test_clip_by_norm_leaves_gradients_below_the_threshold_exactly_unchanged():
    model = with_grads(0.01)
    before = grads(model)
    R.clip_by_norm(model, 100.0)
    assert all(torch.equal(g, g0) for g, g0 in zip(grads(model), before, strict=True))


def test_clip_by_value_clamps_each_element_and_returns_the_norm_before():
    model = with_grads(1.0)
    before = grads(model)
    returned = R.clip_by_value(model.parameters(), 0.5)
    assert isinstance(returned, torch.Tensor)
    assert math.isclose(returned.item(), naive_norm(before), rel_tol=1e-5)
    for g, g0 in zip(grads(model), before, strict=True):
        assert torch.equal(g, g0.clamp(-0.5, 0.5))


def naive_agc(
    weight: torch.Tensor, grad: torch.Tensor, clipping: float, eps: float
) -> torch.Tensor:
    """Brock et al. 2021, one unit at a time: rows of a matrix/kernel, the whole of a vector."""
    w, g = weight.double(), grad.double().clone()
    units = [(slice(None),)] if w.ndim <= 1 else [(i,) for i in range(w.shape[0])]
    for u in units:
        max_norm = clipping * max(w[u].norm().item(), eps)
        g_norm = g[u].norm().item()
        if g_norm > max_norm:
            g[u] = g[u] * (max_norm / g_norm)
    return g


def test_adaptive_clip_equals_the_per_unit_rule_for_linear_conv_and_bias():
    model = nn.ModuleList([nn.Linear(6, 5), nn.Conv2d(3, 4, 3)])
    g = gen(2)
    for p in model.parameters():
        p.grad = torch.randn(p.shape, generator=g) * 0.05
    lin, conv = model
    lin.weight.grad[0] *= 1e-4  # a unit well below its threshold
    lin.weight.grad[1] = 0.0  # a zero unit
    with torch.no_grad():
        conv.weight[2] = 0.0  # weight norm floored at eps
    conv.bias.grad.zero_()  # a zero bias gradient (one unit)
    params = list(model.parameters())
    expected = [naive_agc(p, p.grad, 0.01, 1e-3) for p in params]
    before = grads(model)
    returned = R.adaptive_clip(params, clipping=0.01, eps=1e-3)
    assert math.isclose(returned.item(), naive_norm(before), rel_tol=1e-5)
    for p, e in zip(params, expected, strict=True):
        assert torch.isfinite(p.grad).all()
        torch.testing.assert_close(p.grad.double(), e, rtol=1e-5, atol=1e-9)
    assert torch.equal(lin.weight.grad[0], before[0][0])  # below threshold: bit-identical
    assert torch.count_nonzero(lin.weight.grad[1]) == 0 and torch.count_nonzero(conv.bias.grad) == 0
    clipped = [i for i in range(5) if not torch.equal(lin.weight.grad[i], before[0][i])]
    assert clipped, "the test should exercise units above the threshold"


@settings(max_examples=30, deadline=None)
@given(
    shape=st.sampled_from([(7,), (3, 5), (4, 2, 3), (2, 3, 2, 2)]),
    grad_scale=st.sampled_from([0.0, 1e-4, 1e-2, 1.0, 100.0]),
    weight_scale=st.sampled_from([0.0, 1e-3, 1.0]),
    seed=st.integers(0, 2**16),
)
def test_adaptive_clip_equals_the_per_unit_rule_for_any_shape_and_scale(
    shape, grad_scale, weight_scale, seed
):
    g = gen(seed)
    p = nn.Parameter(weight_scale * torch.randn(shape, generator=g))
    p.grad = grad_scale * torch.randn(shape, generator=g)
    expected = naive_agc(p, p.grad, 0.01, 1e-3)
    R.adaptive_clip([p])
    torch.testing.assert_close(p.grad.double(), expected, rtol=1e-5, atol=1e-9)


# ---------------------------------------------------------------- applicable / apply


def sigmoid_mlp() -> nn.Sequential:
    return nn.Sequential(
        nn.Linear(4, 8), nn.Sigmoid(), nn.Linear(8, 8), nn.Sigmoid(), nn.Linear(8, 1), nn.Sigmoid()
    )


class LSTMNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.rnn = nn.LSTM(3, 6, batch_first=True)
        self.head = nn.Linear(6, 1)

    def forward(self, x):
        return self.head(self.rnn(x)[0][:, -1])


def relu_cnn() -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(2, 4, 3),
        nn.ReLU(),
        nn.Conv2d(4, 4, 3),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(4 * 2 * 2, 3),
    )


def test_applicable_names_the_remedies_that_fit_each_model():
    mlp = set(R.applicable(sigmoid_mlp()))
    assert {"swap_activation:relu", "xavier_init", "insert_norm"} <= mlp
    assert not mlp & {"he_init", "lstm_forget_bias", "delta_orthogonal_init", "lsuv_init"}
    assert "lsuv_init" in R.applicable(sigmoid_mlp(), torch.randn(4, 4))
    assert "lstm_forget_bias" in R.applicable(LSTMNet())
    assert {"he_init", "delta_orthogonal_init", "insert_norm"} <= set(R.applicable(relu_cnn()))
    assert set(R.applicable(relu_cnn())) <= set(R.REMEDIES)


def describe(model: nn.Module) -> tuple[str, dict[str, torch.Tensor]]:
    return repr(model), {k: v.clone() for k, v in model.state_dict().items()}


def same(a, b) -> bool:
    return (
        a[0] == b[0]
        and a[1].keys() == b[1].keys()
        and all(torch.equal(a[1][k], b[1][k]) for k in a[1])
    )


@pytest.mark.parametrize(
    "make, inputs",
    [
        (sigmoid_mlp, torch.randn(16, 4)),
        (LSTMNet, torch.randn(4, 5, 3)),
        (relu_cnn, torch.randn(4, 2, 6, 6)),
    ],
    ids=["sigmoid_mlp", "lstm", "relu_cnn"],
)
def test_apply_changes_a_deep_copy_and_leaves_the_users_model_untouched(make, inputs):
    model = make()
    original = describe(model)
    names = R.applicable(model, inputs)
    assert names
    for name in names:
        changed = R.apply(name, model, inputs, generator=gen())
        assert changed is not model
        assert same(describe(model), original), name
        assert not same(describe(changed), original), name
        changed(inputs)


def test_apply_swap_keeps_an_output_sigmoid():
    changed = R.apply("swap_activation:relu", sigmoid_mlp())
    assert [type(m).__name__ for m in changed][1::2] == ["ReLU", "ReLU", "Sigmoid"]


def test_apply_unknown_name_or_missing_inputs_raises_a_clear_value_error():
    with pytest.raises(ValueError, match="unknown remedy 'dropout'"):
        R.apply("dropout", sigmoid_mlp())
    with pytest.raises(ValueError, match="needs inputs"):
        R.apply("lsuv_init", sigmoid_mlp())
