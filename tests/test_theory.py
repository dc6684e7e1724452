"""Mean-field theory: published critical points, closed forms, Monte Carlo, and real random nets."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gradwatch import theory
from gradwatch.errors import GradwatchError
from gradwatch.theory import gaussian as am

SMOOTH = ("tanh", "sigmoid", "gelu", "silu", "softplus", "erf")
KINKED = ("elu", "selu")  # φ' jumps (SELU) or φ'' jumps (ELU) at 0


# --- published critical points --------------------------------------------------------------


def test_tanh_critical_point_matches_schoenholz():
    # Schoenholz et al. 2017 (and DOMAIN.md): σ_w² ≈ 1.76 at σ_b² = 0.05.
    sw = theory.critical_sigma_w2("tanh", sigma_b2=0.05)
    assert sw == pytest.approx(1.761, abs=0.01)
    r = theory.mean_field("tanh", sw, 0.05)
    assert r.chi1 == pytest.approx(1.0, abs=1e-9)
    assert r.phase == "critical"


def test_tanh_without_bias_is_critical_at_sigma_w2_one():
    # q* -> 0 there, so χ₁ -> σ_w² tanh'(0)² = σ_w².
    assert theory.critical_sigma_w2("tanh", sigma_b2=0.0) == pytest.approx(1.0, abs=1e-6)


def test_relu_without_bias_is_critical_at_he_init():
    assert theory.critical_sigma_w2("relu", sigma_b2=0.0) == pytest.approx(2.0, abs=1e-12)
    r = theory.mean_field("relu", 2.0, 0.0)
    assert (r.chi1, r.phase, r.q_star) == (1.0, "critical", 1.0)
    assert math.isinf(r.xi_grad) and math.isinf(r.trainable_depth)


def test_selu_at_lecun_init_keeps_unit_variance_and_is_slightly_chaotic():
    # λ, α were chosen (Klambauer et al. 2017) so that mean 0, variance 1 is a fixed point; E[φ²]
    # is then exactly 1, so q* = 1 up to the 1e-13 of quadrature and root finding.
    r = theory.mean_field("selu", 1.0, 0.0)
    assert r.q_star == pytest.approx(1.0, abs=1e-6)
    # χ₁ is *not* 1: by hand, χ₁ = λ²(1/2 + α² e² Φ(-2)), since E[e^{2z}; z<0] = e² Φ(-2).
    lam, alpha = am.SELU_LAMBDA, am.SELU_ALPHA
    by_hand = lam**2 * (0.5 + alpha**2 * math.e**2 * 0.5 * math.erfc(2 / math.sqrt(2)))
    assert r.chi1 == pytest.approx(by_hand, rel=1e-10)
    assert r.chi1 == pytest.approx(1.0716, abs=1e-4)
    assert r.phase == "chaotic"
    assert r.c_star == pytest.approx(0.0, abs=1e-6)  # zero mean at q*, no bias: C(0) = 0


def test_critical_sigma_w2_raises_a_sentence_when_there_is_none():
    # A huge bias pushes sigmoid so deep into saturation that χ₁ < 1 for every σ_w² searched.
    with pytest.raises(ValueError, match="has no critical point"):
        theory.critical_sigma_w2("sigmoid", sigma_b2=1e4)


def test_leaky_relu_critical_point_is_two_over_one_plus_slope_squared():
    assert theory.critical_sigma_w2("leaky_relu", negative_slope=0.2) == pytest.approx(2 / 1.04)


# --- expectations against closed forms, Gauss-Hermite and Monte Carlo -------------------------


@pytest.mark.parametrize("q", [1e-4, 0.3, 1.0, 7.0, 50.0])
def test_quadrature_reproduces_relu_closed_forms(q):
    # Drop the closed-form shortcut so the generic split quadrature is what is checked.
    relu = am.resolve("relu")
    generic = am.Activation("relu", relu.phi, relu.dphi)
    assert am.phi_sq(generic, q) == pytest.approx(q / 2, rel=1e-12)
    assert am.dphi_sq(generic, q) == pytest.approx(0.5, rel=1e-12)
    c = np.array([-0.9, 0.0, 0.5, 0.99, 1.0])
    theta = np.arccos(c)
    arccos_kernel = q * (np.sin(theta) + (np.pi - theta) * c) / (2 * np.pi)
    np.testing.assert_allclose(am.phi_cross(generic, c, q), arccos_kernel, atol=1e-12 * q)
    np.testing.assert_allclose(
        am.dphi_cross(generic, c, q), (np.pi - theta) / (2 * np.pi), atol=1e-12
    )


@pytest.mark.parametrize("q", [0.01, 0.5, 2.0, 20.0])
def test_quadrature_reproduces_erf_closed_forms(q):
    # For Gaussian u with covariance Σ: E[erf(u1) erf(u2)] = (2/π) arcsin(2Σ12 /
    # √((1+2Σ11)(1+2Σ22))) and E[e^{-u1²-u2²}] = det(I + 2Σ)^{-1/2}, with erf'(x) = (2/√π) e^{-x²}.
    assert theory.variance_map("erf", q, 1.0, 0.0) == pytest.approx(
        2 / np.pi * np.arcsin(2 * q / (1 + 2 * q)), rel=1e-12
    )
    assert theory.chi1("erf", q, 1.0) == pytest.approx(4 / np.pi / np.sqrt(1 + 4 * q), rel=1e-12)
    erf = am.resolve("erf")
    c = np.array([0.0, 0.3, 0.9, 0.999])
    np.testing.assert_allclose(
        am.phi_cross(erf, c, q), 2 / np.pi * np.arcsin(2 * q * c / (1 + 2 * q)), atol=1e-11
    )
    np.testing.assert_allclose(
        am.dphi_cross(erf, c, q),
        4 / np.pi / np.sqrt((1 + 2 * q) ** 2 - (2 * q * c) ** 2),
        rtol=1e-11,
    )


@pytest.mark.parametrize("name", SMOOTH)
def test_quadrature_agrees_with_gauss_hermite_for_smooth_activations(name):
    # 200-point Gauss-Hermite is the naive reference; it is itself only good to ~1e-7 for tanh'²
    # at q = 3 (poles near the real axis), hence the tolerance.
    z, w = np.polynomial.hermite_e.hermegauss(200)
    w = w / math.sqrt(2 * math.pi)
    act = am.resolve(name)
    for q in (0.2, 1.0, 3.0):
        u = math.sqrt(q) * z
        assert am.phi_sq(act, q) == pytest.approx(w @ act.phi(u) ** 2, rel=1e-6)
        assert am.dphi_sq(act, q) == pytest.approx(w @ act.dphi(u) ** 2, rel=1e-6)


@pytest.mark.parametrize("name, q", [("tanh", 3.0), ("tanh", 50.0), ("selu", 1.0), ("gelu", 2.0)])
def test_quadrature_matches_arbitrary_precision_integration(name, q):
    mp = pytest.importorskip("mpmath")  # installed with torch (via sympy)
    mp.mp.dps = 30
    act = am.resolve(name)
    fns = {
        "tanh": (mp.tanh, lambda x: mp.sech(x) ** 2),
        "selu": (
            lambda x: am.SELU_LAMBDA * (x if x > 0 else am.SELU_ALPHA * mp.expm1(x)),
            lambda x: am.SELU_LAMBDA * (1 if x > 0 else am.SELU_ALPHA * mp.exp(x)),
        ),
        "gelu": (lambda x: x * mp.ncdf(x), lambda x: mp.ncdf(x) + x * mp.npdf(x)),
    }[name]
    for ours, f in [(am.phi_sq(act, q), fns[0]), (am.dphi_sq(act, q), fns[1])]:
        exact = mp.quad(
            lambda z, f=f: f(mp.sqrt(q) * z) ** 2 * mp.npdf(z), [-mp.inf, -1, 0, 1, mp.inf]
        )
        assert float(ours) == pytest.approx(float(exact), rel=1e-12)


@pytest.mark.parametrize("name", SMOOTH + KINKED)
def test_quadrature_agrees_with_monte_carlo(name):
    rng = np.random.default_rng(0)
    q, c, n = 0.8, 0.6, 10**6
    z1, z3 = rng.standard_normal((2, n))
    u1 = math.sqrt(q) * z1
    u2 = math.sqrt(q) * (c * z1 + math.sqrt(1 - c * c) * z3)
    act = am.resolve(name)
    for predicted, samples in [
        (am.phi_sq(act, q), act.phi(u1) ** 2),
        (am.dphi_sq(act, q), act.dphi(u1) ** 2),
        (am.phi_cross(act, c, q), act.phi(u1) * act.phi(u2)),
        (am.dphi_cross(act, c, q), act.dphi(u1) * act.dphi(u2)),
    ]:
        stderr = samples.std() / math.sqrt(n)
        assert abs(predicted - samples.mean()) < 5 * stderr


# --- fixed points and phases ----------------------------------------------------------------


def test_q_star_is_a_fixed_point_of_the_variance_map():
    for name, sw, sb in [("tanh", 1.5, 0.05), ("gelu", 1.7, 0.1), ("elu", 1.2, 0.02)]:
        r = theory.mean_field(name, sw, sb)
        assert theory.variance_map(name, r.q_star, sw, sb) == pytest.approx(r.q_star, rel=1e-11)


def test_chaotic_c_star_is_a_stable_fixed_point_of_the_correlation_map():
    r = theory.mean_field("tanh", 2.5, 0.05)
    assert 0 < r.c_star < 1
    assert theory.correlation_map("tanh", r.c_star, r.q_star, 2.5, 0.05) == pytest.approx(
        r.c_star, abs=1e-10
    )
    assert r.chi_c < 1 < r.chi1  # correlations converge while gradients explode
    assert r.xi_c == pytest.approx(-1 / math.log(r.chi_c))


def test_odd_activation_without_bias_decorrelates_fully_in_the_chaotic_phase():
    assert theory.mean_field("tanh", 4.0, 0.0).c_star == pytest.approx(0.0, abs=1e-6)


def test_ordered_phase_has_c_star_one_and_equal_depth_scales():
    r = theory.mean_field("tanh", 1.0, 0.05)
    assert r.phase == "ordered" and r.c_star == 1.0
    assert r.xi_c == r.xi_grad == pytest.approx(-1 / math.log(r.chi1))
    assert r.trainable_depth == pytest.approx(6 * r.xi_c)


def test_phase_follows_chi1():
    assert theory.mean_field("tanh", 1.0, 0.05).phase == "ordered"
    assert theory.mean_field("tanh", 2.5, 0.05).phase == "chaotic"
    assert theory.mean_field("relu", 1.0, 0.0).phase == "ordered"
    assert theory.mean_field("sigmoid", 1.0, 0.0).phase == "ordered"


def test_tanh_signal_dies_without_bias_below_sigma_w2_one():
    r = theory.mean_field("tanh", 0.8, 0.0)
    assert r.q_star == 0.0
    assert r.chi1 == pytest.approx(0.8)  # tanh'(0)² = 1
    assert r.trainable_depth == pytest.approx(6 / -math.log(0.8))


def test_relu_above_he_init_explodes_forward_and_backward():
    r = theory.mean_field("relu", 3.0, 0.1)
    assert math.isinf(r.q_star) and r.phase == "chaotic"
    assert r.chi1 == pytest.approx(1.5)
    assert r.trainable_depth == pytest.approx(6 / math.log(1.5))


def test_relu_with_bias_below_he_init_has_closed_form_q_star():
    r = theory.mean_field("relu", 1.5, 0.1)
    assert r.q_star == pytest.approx(0.1 / (1 - 1.5 / 2))


def test_gradient_ratio_per_layer_is_chi1():
    assert (
        theory.gradient_ratio_per_layer("tanh", 1.5, 0.05)
        == theory.mean_field("tanh", 1.5, 0.05).chi1
    )


def test_to_dict_is_json_serialisable_with_none_for_infinity():
    for r in (
        theory.mean_field("relu", 2.0, 0.0),
        theory.mean_field("tanh", 2.5, 0.05),
        theory.mean_field("leaky_relu", 1.0, 0.0, negative_slope=0.2),
    ):
        d = json.loads(json.dumps(r.to_dict(), allow_nan=False))
        for key in (
            "q_star",
            "chi1",
            "c_star",
            "xi_c",
            "xi_grad",
            "phase",
            "trainable_depth",
            "activation",
            "sigma_w2",
            "sigma_b2",
        ):
            assert key in d
    d = theory.mean_field("relu", 2.0, 0.0).to_dict()
    assert d["xi_c"] is None and d["trainable_depth"] is None


@settings(max_examples=40, deadline=None, derandomize=True)
@given(
    name=st.sampled_from(theory.ACTIVATIONS),
    sigma_w2=st.floats(0.05, 6.0),
    sigma_b2=st.floats(0.0, 1.0),
)
def test_mean_field_is_self_consistent_for_any_activation_and_variances(name, sigma_w2, sigma_b2):
    r = theory.mean_field(name, sigma_w2, sigma_b2)
    assert r.phase == (
        "ordered"
        if r.chi1 < 1 - theory.PHASE_TOL
        else "chaotic"
        if r.chi1 > 1 + theory.PHASE_TOL
        else "critical"
    )
    if 0 < r.q_star < math.inf:
        assert theory.variance_map(name, r.q_star, sigma_w2, sigma_b2) == pytest.approx(
            r.q_star, rel=1e-9
        )
        assert r.chi1 == pytest.approx(theory.chi1(name, r.q_star, sigma_w2), rel=1e-12)
    if r.c_star < 1:
        c_next = theory.correlation_map(name, r.c_star, r.q_star, sigma_w2, sigma_b2)
        assert c_next == pytest.approx(r.c_star, abs=1e-9)
        assert r.chi_c < 1
    assert 0 <= r.c_star <= 1 and r.xi_c > 0 and r.xi_grad > 0 and r.trainable_depth > 0
    json.dumps(r.to_dict(), allow_nan=False)


# --- names --------------------------------------------------------------------------------


def test_aliases_and_case_resolve_to_the_same_activation():
    assert theory.mean_field("swish", 2.0, 0.1) == theory.mean_field("silu", 2.0, 0.1)
    assert theory.mean_field("Identity", 0.9, 0.1) == theory.mean_field("linear", 0.9, 0.1)
    assert theory.mean_field("TANH", 1.2, 0.0) == theory.mean_field("tanh", 1.2, 0.0)
    assert set(theory.ACTIVATIONS) >= {
        "tanh",
        "relu",
        "leaky_relu",
        "sigmoid",
        "gelu",
        "silu",
        "elu",
        "selu",
        "softplus",
        "erf",
        "linear",
    }


def test_leaky_relu_slope_is_a_keyword():
    assert theory.mean_field("leaky_relu", 1.0, 0.0).chi1 == pytest.approx((1 + 0.01**2) / 2)
    assert theory.mean_field("leaky_relu", 1.0, 0.0, negative_slope=0.2).chi1 == pytest.approx(0.52)
    with pytest.raises(ValueError, match="negative_slope"):
        theory.mean_field("tanh", 1.0, 0.0, negative_slope=0.2)


def test_unknown_activation_raises_a_sentence_listing_supported_names():
    with pytest.raises(ValueError, match=r"Unknown activation 'mish'; supported: tanh, relu"):
        theory.mean_field("mish", 1.0, 0.0)
    with pytest.raises(GradwatchError):  # so the CLI prints the sentence and exits 2
        theory.critical_sigma_w2("mish")


def test_invalid_variances_are_rejected():
    with pytest.raises(ValueError, match="sigma_w2"):
        theory.mean_field("tanh", 0.0, 0.0)
    with pytest.raises(ValueError, match="sigma_b2"):
        theory.mean_field("tanh", 1.0, -0.1)


# --- predicted backflow --------------------------------------------------------------------


def test_predicted_backflow_shrinks_towards_the_input_by_sqrt_chi1_per_layer():
    r = theory.mean_field("tanh", 1.5, 0.05)
    b = theory.predict_backflow("tanh", 1.5, 0.05, depth=20)
    assert b.shape == (20,) and b[-1] == 1.0
    assert np.all(np.diff(b) > 0)  # smaller at every step from the output back to the input
    np.testing.assert_allclose(b[:-1] / b[1:], math.sqrt(r.chi1), rtol=1e-12)


def test_predicted_backflow_from_an_input_moment_reaches_the_fixed_point_ratio():
    r = theory.mean_field("tanh", 1.5, 0.05)
    b = theory.predict_backflow("tanh", 1.5, 0.05, depth=60, q0=4.0)
    ratio = b[:-1] / b[1:]
    assert ratio[0] < ratio[-1]  # a large input saturates tanh early: a steeper first drop
    assert ratio[-1] == pytest.approx(math.sqrt(r.chi1), rel=1e-6)


def test_predicted_backflow_grows_towards_the_input_in_the_chaotic_phase():
    b = theory.predict_backflow("tanh", 2.5, 0.05, depth=10)
    assert np.all(np.diff(b) < 0)


# --- a real random network, at width 1000 -------------------------------------------------------


def _random_mlp(activation, sigma_w2, sigma_b2, q_in, width=1000, depth=30, batch=32, nets=4):
    """Per-layer backprop variance ratios and pre-activation second moments, averaged over nets.

    The input is taken as the first pre-activation h^0 ~ N(0, q_in); then h^l = W φ(h^{l-1}) + b
    with W_ij ~ N(0, σ_w²/N), b_i ~ N(0, σ_b²). A random cotangent at h^L is back-propagated.
    Averaging over a few independent nets matters in the ordered phase, where every input converges
    to the same direction and a batch cannot average out one net's weights (q then varies ~1.5%).
    """
    torch = pytest.importorskip("torch")
    phi = {"tanh": torch.tanh, "relu": torch.relu}[activation]
    g = torch.Generator().manual_seed(0)

    def one_net():
        hs = [(torch.randn(batch, width, generator=g) * math.sqrt(q_in)).requires_grad_()]
        for _ in range(depth):
            w = torch.randn(width, width, generator=g) * math.sqrt(sigma_w2 / width)
            b = torch.randn(width, generator=g) * math.sqrt(sigma_b2)
            hs.append(torch.nn.functional.linear(phi(hs[-1]), w, b))
        grads = torch.autograd.grad(hs[-1], hs, torch.randn(batch, width, generator=g))
        v = torch.stack([gr.double().pow(2).mean() for gr in grads])
        return v[:-1] / v[1:], torch.stack([h.detach().double().pow(2).mean() for h in hs])

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # these ops are small: extra threads only spin, several-fold slower
    try:
        ratios, qs = zip(*[one_net() for _ in range(nets)], strict=True)
    finally:
        torch.set_num_threads(threads)
    return torch.stack(ratios).mean(0).numpy(), torch.stack(qs).mean(0).numpy()


@pytest.mark.parametrize("sigma_w2, phase", [(1.5, "ordered"), (2.5, "chaotic")])
def test_tanh_network_matches_predicted_chi1_and_q_star(sigma_w2, phase):
    r = theory.mean_field("tanh", sigma_w2, 0.05)
    assert r.phase == phase
    ratios, qs = _random_mlp("tanh", sigma_w2, 0.05, r.q_star)
    measured_chi = ratios[8:-8].mean()
    measured_q = qs[8:].mean()
    assert measured_chi == pytest.approx(r.chi1, rel=0.03)
    assert measured_q == pytest.approx(r.q_star, rel=0.03)


def test_relu_network_at_he_init_keeps_gradient_variance_per_layer():
    r = theory.mean_field("relu", 2.0, 0.0)
    ratios, qs = _random_mlp("relu", 2.0, 0.0, r.q_star)
    assert ratios[8:-8].mean() == pytest.approx(r.chi1, rel=0.03)
    # At χ₁ = 1 every q is a fixed point: q is kept layer to layer, but only on average. Over
    # depth it drifts log-normally with variance ~5L/N (Hanin 2018), ~±40% at L = 30, N = 1000,
    # so the one-step map is what can be checked, not q at depth.
    assert (qs[1:] / qs[:-1]).mean() == pytest.approx(1.0, rel=0.03)


# --- the picture ----------------------------------------------------------------------------


def test_phase_diagram_writes_a_png(tmp_path):
    pytest.importorskip("matplotlib")
    from gradwatch.report.theory_plot import phase_diagram

    out = phase_diagram(tmp_path / "phase.png", "tanh", resolution=(10, 6))
    data = out.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 1000
