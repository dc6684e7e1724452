"""Mean-field signal propagation: how fast gradients vanish or explode in a deep random network.

A fully connected network with weights W_ij ~ N(0, σ_w²/N) and biases b_i ~ N(0, σ_b²) has, at
large width N, Gaussian pre-activations whose second moment q follows the variance map
    q^l = σ_w² E_z[φ(√q^{l-1} z)²] + σ_b²          (Poole et al. 2016)
to a fixed point q*. Back-propagation multiplies the gradient's variance per layer by
    χ₁ = σ_w² E_z[φ'(√q* z)²]                        (Schoenholz et al. 2017).
χ₁ < 1: gradients vanish with depth (ordered phase); χ₁ > 1: they explode (chaotic phase);
χ₁ = 1 is the critical line along which very deep networks train. This module predicts all of it
before training, so a measured per-layer gradient ratio can be held against the theory and a
change of initialisation judged before it is made.

Units: q is a per-unit second moment (mean square of pre-activations); χ is a per-layer factor of
gradient *variance* (the norm changes by √χ); depth scales ξ and trainable depth count layers.
Expectations are computed as described in `theory.gaussian` (closed forms for the ReLU family,
split Gauss-Legendre quadrature otherwise, accurate to ~1e-13).

`jacobian_spectrum(model, inputs)` measures the other side of the theory on a real model: the
singular values of its input-output Jacobian, whose mean and spread say how far it is from
dynamical isometry (Pennington et al. 2017). `gw.check` applies these recursions layer by layer
to the model's own weights (see `theory.model`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np

from gradwatch.errors import TheoryError
from gradwatch.theory import gaussian as _am

ACTIVATIONS: tuple[str, ...] = _am.NAMES
PHASE_TOL = (
    1e-3  # |χ₁ - 1| within this is "critical": ξ_∇ > 1000 layers, deeper than nets are built
)
_UNIT_TOL = 1e-9  # |log χ| below this is exactly marginal: depth scale reported as inf
_SIGMA_W2_RANGE = (1e-2, 1e3)  # where critical_sigma_w2 looks for χ₁ = 1


@dataclass(frozen=True)
class MeanField:
    """Mean-field prediction for one (activation, σ_w², σ_b²).

    q_star: fixed point of the variance map (0 if the signal dies, inf if it grows without bound).
    chi1: per-layer factor of back-propagated gradient variance at q_star.
    c_star, chi_c: fixed point of the correlation map and the map's slope there.
    xi_c: depth scale (layers) over which input correlations are forgotten, 1/|log χ_c|.
    xi_grad: depth scale (layers) of gradient variance, 1/|log χ₁|; the gradient variance changes
        as exp(±(L-l)/xi_grad), shrinking in the ordered phase and growing in the chaotic one.
    phase: "ordered" (χ₁ < 1 - PHASE_TOL), "chaotic" (χ₁ > 1 + PHASE_TOL) or "critical".
    trainable_depth: layers through which a net still trains, 6ξ_c (Schoenholz et al. 2017); where
        q* is infinite, correlations are marginal (ξ_c = inf) and exploding gradients set it: 6ξ_∇.
    """

    activation: str
    sigma_w2: float
    sigma_b2: float
    q_star: float
    chi1: float
    c_star: float
    chi_c: float
    xi_c: float
    xi_grad: float
    phase: str
    trainable_depth: float
    params: tuple[tuple[str, float], ...] = ()

    def to_dict(self) -> dict:
        """JSON-ready: inf and nan become None, activation parameters a dict."""
        d = asdict(self)
        d["params"] = dict(self.params)
        return {
            k: None if isinstance(v, float) and not math.isfinite(v) else v for k, v in d.items()
        }


def _check(sigma_w2: float, sigma_b2: float) -> None:
    if not (sigma_w2 > 0 and math.isfinite(sigma_w2)):
        raise TheoryError(f"sigma_w2 must be a positive finite weight variance, got {sigma_w2!r}.")
    if not (sigma_b2 >= 0 and math.isfinite(sigma_b2)):
        raise TheoryError(
            f"sigma_b2 must be a non-negative finite bias variance, got {sigma_b2!r}."
        )


def _resolve(activation: str, params: dict) -> _am.Activation:
    try:
        return _am.resolve(activation, **params)
    except ValueError as e:
        raise TheoryError(str(e)) from None


def variance_map(
    activation: str, q: float | np.ndarray, sigma_w2: float, sigma_b2: float, **params: float
) -> float | np.ndarray:
    """One layer of the variance map: σ_w² E_z[φ(√q z)²] + σ_b² (second moment in, second moment
    out)."""
    act = _resolve(activation, params)
    return _out(sigma_w2 * _am.phi_sq(act, q) + sigma_b2)


def chi1(
    activation: str, q: float | np.ndarray, sigma_w2: float, **params: float
) -> float | np.ndarray:
    """σ_w² E_z[φ'(√q z)²]: per-layer factor of gradient variance at pre-activation second moment
    q."""
    act = _resolve(activation, params)
    return _out(sigma_w2 * _am.dphi_sq(act, q))


def correlation_map(
    activation: str,
    c: float | np.ndarray,
    q: float,
    sigma_w2: float,
    sigma_b2: float,
    **params: float,
) -> float | np.ndarray:
    """One layer of the correlation map for two inputs of equal second moment q and correlation c.

    c' = (σ_w² E[φ(u1)φ(u2)] + σ_b²) / q' with q' the variance map of q; at q = q* this is the map
    of Poole et al. whose fixed point c* (= 1 in the ordered phase) is reported by `mean_field`.
    """
    act = _resolve(activation, params)
    q_next = sigma_w2 * float(_am.phi_sq(act, q)) + sigma_b2
    return _out((sigma_w2 * _am.phi_cross(act, c, q) + sigma_b2) / q_next)


def _out(x: np.ndarray) -> float | np.ndarray:
    return float(x) if np.ndim(x) == 0 else x


def _root(
    f: Callable[[float], float], a: float, b: float, fa: float, fb: float, rtol: float = 1e-13
) -> float:
    """A root of f in [a, b] where fa, fb differ in sign: Illinois regula falsi (superlinear)."""
    side = 0
    for _ in range(200):
        x = (a * fb - b * fa) / (fb - fa)
        if not min(a, b) < x < max(a, b):
            x = 0.5 * (a + b)
        fx = f(x)
        if fx == 0:
            return x
        if math.copysign(1, fx) == math.copysign(1, fb):
            b, fb = x, fx
            if side == -1:
                fa /= 2
            side = -1
        else:
            a, fa = x, fx
            if side == 1:
                fb /= 2
            side = 1
        if abs(b - a) <= rtol * max(abs(a), abs(b)):
            break
    return x


def _q_star(act: _am.Activation, sw: float, sb: float) -> float:
    """Fixed point reached by iterating the variance map from q = 1."""
    if act.slope is not None:  # the map is linear: q' = m q + σ_b²
        m = sw * (1 + act.slope**2) / 2
        if abs(m - 1) <= 1e-12:
            # Every q is a fixed point without bias: the net keeps the input's q, which we take
            # as 1.
            return 1.0 if sb == 0 else math.inf
        return sb / (1 - m) if m < 1 else math.inf

    def g(q):
        return sw * _am.phi_sq(act, q) + sb - q

    # The map is increasing, so iteration from 1 moves monotonically to the first fixed point on
    # its way; find it on a geometric grid, then polish. Beyond q_hi the signal is unbounded.
    g1 = float(g(1.0))
    if g1 == 0:
        return 1.0
    q_end = 1e12 * (1 + sw + sb) if g1 > 0 else (sb / 2 if sb > 0 else 1e-12)
    grid = np.geomspace(1.0, q_end, 97)
    vals = g(grid)
    crossed = np.flatnonzero(vals <= 0 if g1 > 0 else vals >= 0)
    if crossed.size == 0:
        return math.inf if g1 > 0 else 0.0  # 0: no bias, and a variance that dies out
    i = crossed[0]
    return _root(lambda q: float(g(q)), grid[i - 1], grid[i], vals[i - 1], vals[i])


def _chi1_at(act: _am.Activation, q: float, sw: float) -> float:
    # An unbounded q* arises only for activations linear at infinity: χ₁ is then its limit.
    q = 1e12 * (1 + sw) if math.isinf(q) else q
    return sw * float(_am.dphi_sq(act, q))


def _c_star(act: _am.Activation, q: float, sw: float, sb: float) -> float:
    """Stable fixed point of the correlation map at q* > 0 in the chaotic phase (χ₁ > 1).

    On [0, 1] the map C(c) is a power series in c with non-negative coefficients (Mehler), so
    h(c) = C(c) - c is convex there, with h(0) = (σ_w² E[φ]² + σ_b²)/q* >= 0, h(1) = 0 and
    h'(1) = χ₁ - 1 > 0: exactly one root below 1, bracketed by 0 and the first 1 - 4^-k with h < 0.
    """
    cs = 1.0 - 4.0 ** -np.arange(0, 14)
    h = (sw * _am.phi_cross(act, cs, q) + sb) / q - cs
    if h[0] <= 1e-14:  # C(0) = 0: odd activation (or zero-mean one, like SELU at q*) without bias
        return 0.0
    neg = np.flatnonzero(h < 0)
    if neg.size == 0:
        return 1.0  # so close to critical that c* is within 4e-8 of 1
    i = neg[0]

    def f(c):
        return float((sw * _am.phi_cross(act, c, q) + sb) / q - c)

    return _root(f, cs[i - 1], cs[i], h[i - 1], h[i], rtol=1e-12)


def _depth_scale(chi: float) -> float:
    lg = abs(math.log(chi)) if chi > 0 else math.inf
    return math.inf if lg < _UNIT_TOL else 1.0 / lg


def _phase(chi: float) -> str:
    return "ordered" if chi < 1 - PHASE_TOL else "chaotic" if chi > 1 + PHASE_TOL else "critical"


def mean_field(
    activation: str, sigma_w2: float, sigma_b2: float = 0.0, **params: float
) -> MeanField:
    """Mean-field prediction for a deep fully connected net with weight variance σ_w²/fan_in.

    sigma_w2: weight variance times fan-in (1 = LeCun, 2 = He); sigma_b2: bias variance.
    params: activation parameters (negative_slope for leaky_relu, alpha for elu).
    Degenerate fixed points are reported as the limits that a small bias would give:
    q* = 0 (no bias, a vanishing signal) has c* = 1 and χ_c = χ₁; q* = inf (an activation linear
    at infinity and σ_w² at or above its edge) has c* = 1 and χ_c = 1, because the correlation
    map of a scale-free net is marginal at c = 1: there the gradient, not correlation, limits depth.
    On a piecewise-linear activation's critical edge without bias (relu at σ_w² = 2) every q is a
    fixed point: the net keeps its input's second moment, and q* is reported as 1, where the
    iteration starts.
    """
    _check(sigma_w2, sigma_b2)
    act = _resolve(activation, params)
    q = _q_star(act, sigma_w2, sigma_b2)
    x1 = _chi1_at(act, q, sigma_w2)
    c, xc = 1.0, x1
    if math.isinf(q):
        xc = 1.0
    elif q > 0 and x1 > 1:
        c = _c_star(act, q, sigma_w2, sigma_b2)
        xc = sigma_w2 * float(_am.dphi_cross(act, c, q)) if c < 1 else x1
    xi_c, xi_grad = _depth_scale(xc), _depth_scale(x1)
    return MeanField(
        activation=act.name,
        sigma_w2=float(sigma_w2),
        sigma_b2=float(sigma_b2),
        q_star=float(q),
        chi1=float(x1),
        c_star=float(c),
        chi_c=float(xc),
        xi_c=xi_c,
        xi_grad=xi_grad,
        phase=_phase(x1),
        trainable_depth=6 * (xi_grad if math.isinf(q) else xi_c),
        params=act.params,
    )


def critical_sigma_w2(activation: str, sigma_b2: float = 0.0, **params: float) -> float:
    """σ_w² on the critical line χ₁(q*) = 1 for this bias variance (weight variance × fan-in).

    Searched in [0.01, 1000]; raises TheoryError (a ValueError) when χ₁ does not cross 1 there.
    """
    _check(1.0, sigma_b2)
    act = _resolve(activation, params)
    if act.slope is not None:  # χ₁ = σ_w² (1 + a²)/2 whatever q* is
        return 2.0 / (1 + act.slope**2)

    def f(sw):
        return _chi1_at(act, _q_star(act, sw, sigma_b2), sw) - 1.0

    grid = np.geomspace(*_SIGMA_W2_RANGE, 61)
    prev = f(grid[0])
    for a, b in zip(grid[:-1], grid[1:], strict=True):
        fb = f(b)
        if prev < 0 <= fb:
            return a if prev == 0 else _root(f, a, b, prev, fb)
        prev = fb
    lo, hi = _SIGMA_W2_RANGE
    raise TheoryError(
        f"{act.name} with sigma_b2={sigma_b2:g} has no critical point: χ₁ does not cross 1 for "
        f"sigma_w2 in [{lo:g}, {hi:g}]; try another activation or bias variance."
    )


def gradient_ratio_per_layer(
    activation: str, sigma_w2: float, sigma_b2: float = 0.0, **params: float
) -> float:
    """Predicted E[(∂L/∂h^l)²] / E[(∂L/∂h^{l+1})²] deep in the net: χ₁ at q* (variance, not norm).

    A value below 1 is the factor by which gradient variance shrinks per layer towards the input.
    """
    return mean_field(activation, sigma_w2, sigma_b2, **params).chi1


def predict_backflow(
    activation: str,
    sigma_w2: float,
    sigma_b2: float,
    depth: int,
    q0: float | None = None,
    **params: float,
) -> np.ndarray:
    """Predicted back-propagated gradient *norm* per layer, relative to the last layer (= 1).

    Entry l (0 = first layer) is the expected ‖∂L/∂h^l‖ / ‖∂L/∂h^{L-1}‖ for pre-activations h^l
    (the outputs of the Linear layers): ∏_{k=l}^{L-2} √χ(q^k). Without q0 every layer sits at q*,
    so the ratio between neighbours is √χ₁. With q0, the mean square of the network input, the
    first layer has q^0 = σ_w² q0 + σ_b² and q^l follows the variance map, so the transient
    before q* is reached is predicted too.
    """
    if depth < 1:
        raise TheoryError(f"depth must be a positive number of layers, got {depth!r}.")
    _check(sigma_w2, sigma_b2)
    act = _resolve(activation, params)
    if q0 is None:
        chis = np.full(depth - 1, _chi1_at(act, _q_star(act, sigma_w2, sigma_b2), sigma_w2))
    else:
        qs = [sigma_w2 * float(q0) + sigma_b2]
        for _ in range(depth - 2):
            qs.append(sigma_w2 * float(_am.phi_sq(act, qs[-1])) + sigma_b2)
        chis = sigma_w2 * _am.dphi_sq(act, np.array(qs[: depth - 1]))
    with np.errstate(divide="ignore"):
        log_chi = np.log(chis)
    # Sum from the output backwards; the last layer contributes nothing to its own norm.
    log_norm = 0.5 * np.concatenate([np.cumsum(log_chi[::-1])[::-1], [0.0]])
    return np.exp(log_norm)
