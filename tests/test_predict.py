"""Theory meets the real model: traced layer chains, mean-field prediction of each layer's
back-propagated factor next to the measured one, and the input-output Jacobian's spectrum."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

import gradwatch as gw
from gradwatch import theory
from gradwatch.theory import JacobianError, jacobian_spectrum
from gradwatch.theory.model import LayerPrediction, TheoryComparison, predict_chain, shifted_mean
from gradwatch.theory.trace import trace

pytestmark = pytest.mark.usefixtures("one_thread")


def deep(act, depth=12, width=512, std=None, bias=None, seed=0):
    torch.manual_seed(seed)
    layers = []
    for _ in range(depth):
        lin = nn.Linear(width, width)
        with torch.no_grad():
            if std is not None:
                lin.weight.normal_(0, std / math.sqrt(width))
                lin.bias.zero_()
            if bias is not None:
                lin.bias.fill_(bias)
        layers += [lin, act()]
    return nn.Sequential(*layers, nn.Linear(width, 10))


def measured_factors(model: nn.Sequential, x: torch.Tensor) -> list[float]:
    """Naive reference: ‖∂L/∂h‖ of every Linear's output by retain_grad, ratio of neighbours."""
    outs = []
    h = x
    for m in model:
        h = m(h)
        if isinstance(m, nn.Linear):
            h.retain_grad()
            outs.append(h)
    v = torch.randn(h.shape, generator=torch.Generator().manual_seed(1))
    (h * v).sum().backward()
    norms = [o.grad.norm().item() for o in outs]
    return [a / b for a, b in zip(norms[:-1], norms[1:], strict=True)]


def links_of(model, x):
    with trace(model) as tr:
        model(x)
    (chain,) = tr.chains()
    return tr, chain


# ---------------------------------------------------------------- against theory.py


def test_zero_bias_chain_follows_the_variance_map_and_chi1_of_theory():
    model = deep(nn.Tanh, depth=6, width=64, std=1.3)
    x = 0.7 * torch.randn(32, 64)
    tr, chain = links_of(model, x)
    links = predict_chain(tr, chain)
    sigma_w2 = [
        float(m.weight.detach().double().pow(2).mean()) * 64
        for m in model
        if isinstance(m, nn.Linear)
    ]
    q = sigma_w2[0] * float(x.double().pow(2).mean())
    for i, link in enumerate(links):
        assert link.q == pytest.approx(q, rel=1e-7)
        assert link.chi == pytest.approx(theory.chi1("tanh", q, sigma_w2[i + 1]), rel=1e-7)
        q = theory.variance_map("tanh", q, sigma_w2[i + 1], 0.0)


def test_shifted_gaussian_mean_matches_the_closed_form_for_relu():
    # E[relu(m + s z)²] = (m² + s²) Φ(m/s) + m s ϕ(m/s)
    for mean, std in ((0.0, 1.0), (6.0, 0.5), (-3.0, 2.0), (-5.0, 1.0)):
        a = mean / std
        cdf, pdf = (
            0.5 * (1 + math.erf(a / math.sqrt(2))),
            math.exp(-a * a / 2) / math.sqrt(2 * math.pi),
        )
        exact = (mean**2 + std**2) * cdf + mean * std * pdf
        got = shifted_mean(lambda u: np.maximum(u, 0) ** 2, np.array([mean]), std)[0]
        assert got == pytest.approx(exact, rel=1e-8, abs=1e-12)


# ---------------------------------------------------------------- against measurement


@pytest.mark.parametrize(
    "act, std, bias",
    [
        (nn.Tanh, None, None),  # PyTorch default init: ordered phase
        (nn.ReLU, math.sqrt(2), None),  # He init: critical
        (nn.Sigmoid, None, None),
        (nn.GELU, None, None),
        (nn.Sigmoid, 1.0, 6.0),  # fixed biases of +6: saturated, not a zero-mean draw
    ],
    ids=["tanh-default", "relu-he", "sigmoid-default", "gelu-default", "sigmoid-bias6"],
)
def test_check_predicts_the_measured_per_layer_factor_within_3_percent(act, std, bias):
    model = deep(act, depth=8 if bias else 12, std=std, bias=bias)
    x = torch.randn(256, 512)
    th = gw.check(model, x).summary["theory"]
    factors = measured_factors(model, x)
    reference = float(np.exp(np.mean(np.log(factors))))
    assert th.n_links == len(factors)
    assert th.per_layer_measured == pytest.approx(reference, rel=0.01)  # another cotangent
    assert th.per_layer_predicted == pytest.approx(reference, rel=0.03)


def test_residual_add_and_functional_activations_break_the_chain():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b, self.c, self.d = (nn.Linear(8, 8) for _ in range(4))
            self.act = nn.ReLU()

        def forward(self, x):
            h = self.act(self.a(x))
            h = h + self.act(self.b(h))  # residual: c's input is not the activation's output
            return self.d(torch.tanh(self.c(h)))  # functional: invisible to module hooks

    net = Net()
    with trace(net) as tr:
        net(torch.randn(4, 8))
    assert [(lk.src, lk.dst, lk.activation) for lk in tr.links] == [("a", "b", "relu")]


def test_a_link_whose_tensor_also_feeds_a_skip_connection_is_dropped():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b, self.c, self.d = (nn.Linear(8, 8) for _ in range(4))
            self.act = nn.ReLU()

        def forward(self, x):
            h = self.act(self.a(x))
            h = h + self.c(self.act(self.b(h)))  # a -> b is read twice; b -> c once
            return self.d(h)

    net = Net()
    with trace(net) as tr:
        out = net(torch.randn(4, 8))
    assert {(lk.src, lk.dst) for lk in tr.links} == {("a", "b"), ("b", "c")}
    tr.keep_single_use(out.sum())
    assert [(lk.src, lk.dst) for lk in tr.links] == [("b", "c")]


def test_a_layer_called_twice_is_not_linked():
    lin, act = nn.Linear(8, 8), nn.Tanh()
    model = nn.Sequential(lin, act, lin, act, nn.Linear(8, 2))
    with trace(model) as tr:
        model(torch.randn(4, 8))
    assert tr.chains() == []


# ---------------------------------------------------------------- Jacobian spectrum


def autograd_singular_values(model, x):
    jac = torch.autograd.functional.jacobian(model, x)
    return torch.linalg.svdvals(jac.reshape(-1, x.numel()).double()).numpy()


def test_exact_spectrum_matches_autograd_jacobian():
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Linear(12, 24), nn.Tanh(), nn.Linear(24, 24), nn.GELU(), nn.Linear(24, 6)
    )
    x = torch.randn(5, 12)
    spec = jacobian_spectrum(model, x, exact=True)
    ref = autograd_singular_values(model, x)
    np.testing.assert_allclose(spec.singular_values, ref, rtol=1e-4, atol=1e-7)
    assert spec.mean_sq == pytest.approx(np.mean(ref**2), rel=1e-6)
    assert spec.spread == pytest.approx(np.var(ref**2) / np.mean(ref**2) ** 2, rel=1e-6)


def test_tall_jacobian_uses_columns_and_still_matches():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 40), nn.Tanh(), nn.Linear(40, 50))
    x = torch.randn(2, 3)
    np.testing.assert_allclose(
        jacobian_spectrum(model, x, exact=True).singular_values,
        autograd_singular_values(model, x),
        rtol=1e-4,
        atol=1e-7,
    )


def test_randomized_estimates_agree_with_the_exact_spectrum():
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Linear(64, 64), nn.Tanh(), nn.Linear(64, 64), nn.Tanh(), nn.Linear(64, 64)
    )
    x = torch.randn(8, 64)
    exact = jacobian_spectrum(model, x, exact=True)
    est = jacobian_spectrum(model, x, exact=False, k=128)
    assert not est.exact
    assert est.mean_sq == pytest.approx(exact.mean_sq, rel=0.1)
    assert est.var_sq == pytest.approx(exact.var_sq, rel=0.3)
    assert est.singular_values[0] == pytest.approx(exact.singular_values[0], rel=0.02)
    assert np.all(est.singular_values <= exact.singular_values[0] * (1 + 1e-6))


def test_deep_orthogonal_linear_net_is_an_isometry_and_gaussian_is_not():
    depth = 16
    model = nn.Sequential(*[nn.Linear(32, 32, bias=False) for _ in range(depth)])
    gw.remedies.orthogonal_init(model, generator=torch.Generator().manual_seed(0))
    spec = jacobian_spectrum(model, torch.randn(4, 32))
    np.testing.assert_allclose(spec.singular_values, 1.0, atol=1e-4)
    assert spec.spread < 1e-6
    gw.remedies.lecun_init(model, generator=torch.Generator().manual_seed(0))
    assert jacobian_spectrum(model, torch.randn(4, 32)).spread > 1  # Pennington et al. 2017


def test_token_inputs_have_no_jacobian():
    with pytest.raises(JacobianError, match="floating-point input"):
        jacobian_spectrum(nn.Embedding(5, 3), torch.tensor([[1, 2]]))


def test_check_reports_the_jacobian_and_leaves_parameter_gradients_alone():
    model = deep(nn.Tanh, depth=3, width=16)
    d = gw.check(model, torch.randn(8, 16))
    jac = d.summary["jacobian"]
    assert jac.spectrum.exact is True and jac.spectrum.mean_sq > 0
    assert all(p.grad is None for p in model.parameters())
    assert "predicted x" in str(d) and "measured x" in str(d)


def test_theory_and_jacobian_are_typed_and_write_the_json_they_always_wrote():
    d = gw.check(deep(nn.Tanh, depth=3, width=16), torch.randn(32, 16))
    th, jac = d.summary["theory"], d.summary["jacobian"]
    assert isinstance(th, TheoryComparison) and isinstance(th.links[0], LayerPrediction)
    doc = d.to_dict()["summary"]
    assert list(doc["theory"]) == [
        "per_layer_predicted",
        "per_layer_measured",
        "n_links",
        "chains",
        "links",
    ]
    assert doc["theory"]["chains"] == [list(c) for c in th.chains]
    assert list(doc["theory"]["links"][0]) == [
        *("layer", "next", "activation", "sigma_w2", "sigma_b2", "q", "chi", "predicted"),
        "measured",
    ]
    assert doc["jacobian"] == {**jac.spectrum.to_dict(), "samples": 16}


def test_identity_modules_are_transparent_to_the_trace():
    model = nn.Sequential(
        nn.Linear(8, 8), nn.Identity(), nn.ReLU(), nn.Identity(), nn.Linear(8, 8), nn.Linear(8, 2)
    )
    with trace(model) as tr:
        model(torch.randn(4, 8))
    assert [(lk.src, lk.dst, lk.activation) for lk in tr.links] == [
        ("0", "4", "relu"),
        ("4", "5", "linear"),
    ]


def test_zero_padding_share_of_kernel_taps_is_counted_per_output():
    from gradwatch.theory.trace import _valid_taps

    # 3x3 kernel, padding 1, 4x4 image: 2, 3, 3, 2 taps valid along each axis.
    assert _valid_taps(nn.Conv2d(1, 1, 3, padding=1), torch.zeros(1, 1, 4, 4)) == pytest.approx(
        (2.5 / 3) ** 2
    )
    assert _valid_taps(nn.Conv2d(1, 1, 3), torch.zeros(1, 1, 4, 4)) == 1.0


def test_deep_cnn_on_small_images_is_predicted_with_its_padding():
    torch.manual_seed(0)
    layers = []
    for _ in range(8):
        layers += [nn.Conv2d(32, 32, 3, padding=1), nn.Tanh()]
    model = nn.Sequential(*layers, nn.Flatten(), nn.Linear(32 * 6 * 6, 10))
    th = gw.check(model, torch.randn(32, 32, 6, 6)).summary["theory"]
    assert th.n_links == 7
    # Border outputs see fewer taps both ways, a correlation mean field ignores: 5%, not 1%.
    assert th.per_layer_predicted == pytest.approx(th.per_layer_measured, rel=0.05)
