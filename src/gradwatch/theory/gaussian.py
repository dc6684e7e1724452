"""Activations, their derivatives, and the Gaussian expectations mean-field theory needs (numpy
only).

Mean-field theory asks for E_z[f(√q z)] with z ~ N(0, 1), and E[f(u1) g(u2)] for two Gaussians of
second moment q and correlation c. Every kink of the activations here (ReLU family, ELU, SELU) sits
at pre-activation 0, so quadrature is split there: in 1-D, Gauss-Legendre on each half-line; in
2-D, polar coordinates with the angle split where u1 = 0 or u2 = 0. Each piece is then smooth and
the rule converges exponentially, where Gauss-Hermite over the whole line converges only
algebraically across a kink (and slowly for tanh at large q, whose poles crowd the real axis).
The piecewise-linear family (relu, leaky_relu, linear) uses exact closed forms instead: second
moments q(1+a²)/2 and the arc-cosine kernel of Cho & Saul (2009).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

NAMES = (
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
)
_ALIASES = {"swish": "silu", "identity": "linear", "leakyrelu": "leaky_relu"}
# Parameters an activation accepts, with PyTorch's defaults.
_PARAMS: dict[str, dict[str, float]] = {
    "leaky_relu": {"negative_slope": 0.01},
    "elu": {"alpha": 1.0},
}

SELU_LAMBDA = 1.0507009873554805  # Klambauer et al. 2017, as in torch.nn.SELU
SELU_ALPHA = 1.6732632423543772

Fn = Callable[[np.ndarray], np.ndarray]


@dataclass(frozen=True)
class Activation:
    """φ and φ' of one activation; `slope` is set for piecewise-linear ones (closed forms apply)."""

    name: str
    phi: Fn
    dphi: Fn
    slope: float | None = None
    params: tuple[tuple[str, float], ...] = ()


_erf_scalar = np.frompyfunc(math.erf, 1, 1)


def erf(x: np.ndarray) -> np.ndarray:
    """Vectorised error function (numpy has none and scipy is not a dependency)."""
    return np.asarray(_erf_scalar(x), dtype=float)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * x))  # no overflow for large |x|, unlike 1/(1+exp(-x))


def _norm_cdf(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + erf(x / math.sqrt(2.0)))


def _piecewise_linear(name: str, a: float, params: tuple = ()) -> Activation:
    return Activation(
        name,
        lambda x: np.where(x > 0, x, a * x),
        lambda x: np.where(x > 0, 1.0, a),
        slope=a,
        params=params,
    )


def _elu(name: str, scale: float, alpha: float, params: tuple = ()) -> Activation:
    return Activation(
        name,
        lambda x: scale * np.where(x > 0, x, alpha * np.expm1(np.minimum(x, 0.0))),
        lambda x: scale * np.where(x > 0, 1.0, alpha * np.exp(np.minimum(x, 0.0))),
        params=params,
    )


def resolve(activation: str, **params: float) -> Activation:
    """Look an activation up by name (case-insensitive, aliases allowed); raise ValueError if
    unknown."""
    key = str(activation).strip().lower().replace("-", "_").replace(" ", "_")
    key = _ALIASES.get(key, key)
    if key not in NAMES:
        raise ValueError(
            f"Unknown activation {activation!r}; supported: {', '.join(NAMES)} "
            f"(aliases: {', '.join(sorted(_ALIASES))})."
        )
    allowed = _PARAMS.get(key, {})
    extra = sorted(set(params) - set(allowed))
    if extra:
        accepts = f"accepts only {', '.join(allowed)}" if allowed else "takes no parameters"
        raise ValueError(f"Activation {key!r} {accepts}, but got {', '.join(extra)}.")
    p = {**allowed, **{k: float(v) for k, v in params.items()}}
    ptuple = tuple(sorted(p.items()))
    if key == "relu":
        return _piecewise_linear(key, 0.0)
    if key == "leaky_relu":
        return _piecewise_linear(key, p["negative_slope"], ptuple)
    if key == "linear":
        return _piecewise_linear(key, 1.0)
    if key == "elu":
        return _elu(key, 1.0, p["alpha"], ptuple)
    if key == "selu":
        return _elu(key, SELU_LAMBDA, SELU_ALPHA)
    table: dict[str, tuple[Fn, Fn]] = {
        "tanh": (np.tanh, lambda x: 1.0 - np.tanh(x) ** 2),
        "sigmoid": (_sigmoid, lambda x: _sigmoid(x) * _sigmoid(-x)),
        "gelu": (
            lambda x: x * _norm_cdf(x),
            lambda x: _norm_cdf(x) + x * np.exp(-0.5 * x * x) / math.sqrt(2 * math.pi),
        ),
        "silu": (lambda x: x * _sigmoid(x), lambda x: _sigmoid(x) * (1.0 + x * _sigmoid(-x))),
        "softplus": (lambda x: np.logaddexp(0.0, x), _sigmoid),
        "erf": (erf, lambda x: 2.0 / math.sqrt(math.pi) * np.exp(-x * x)),
    }
    phi, dphi = table[key]
    return Activation(key, phi, dphi)


# --- quadrature rules, built once -------------------------------------------------------------
# Gaussian mass beyond 10 standard deviations is 1.5e-23: far below double precision.
_CUTOFF = 10.0
_t, _w = np.polynomial.legendre.leggauss(128)
_Z = (_t + 1.0) * (_CUTOFF / 2)  # nodes on (0, cutoff); mirrored for the negative half-line
_WZ = _w * (_CUTOFF / 2) * np.exp(-0.5 * _Z**2) / math.sqrt(2 * math.pi)
_t, _w = np.polynomial.legendre.leggauss(96)
_R = (_t + 1.0) * (_CUTOFF / 2)  # radius of (z1, z3), density r·exp(-r²/2) on (0, cutoff)
_WR = _w * (_CUTOFF / 2) * _R * np.exp(-0.5 * _R**2)
_t, _w = np.polynomial.legendre.leggauss(48)
_TA, _WA = (_t + 1.0) / 2, _w / 2  # angle nodes on [0, 1] of each segment
del _t, _w


def gauss1(f: Fn, q: float | np.ndarray) -> np.ndarray:
    """E_z[f(√q z)], z ~ N(0, 1); q (a second moment) may be an array."""
    # q = 0 is taken as the limit q -> 0+, so a kink at 0 (SELU's φ') averages its two sides.
    s = np.sqrt(np.maximum(np.asarray(q, dtype=float), 1e-300))[..., None]
    return (f(s * _Z) + f(-s * _Z)) @ _WZ


def gauss2(f: Fn, g: Fn, q: float, c: float | np.ndarray) -> np.ndarray:
    """E[f(u1) g(u2)] for u1, u2 ~ N(0, q) with correlation c (c may be an array, q a scalar).

    With u1 = √q z1 and u2 = √q (c z1 + √(1-c²) z3) and (z1, z3) = r (cos a, sin a), u1 ∝ cos a
    and u2 ∝ cos(a - arccos c): both change sign only on four rays, which bound the segments.
    """
    c = np.clip(np.asarray(c, dtype=float), -1.0, 1.0)
    th = np.arccos(c.reshape(-1))[:, None]
    half = np.pi / 2 + 0 * th
    starts = np.concatenate([-half, th - half, half, th + half], axis=1)
    widths = np.concatenate([th, np.pi - th, th, np.pi - th], axis=1)
    ang = (starts[..., None] + widths[..., None] * _TA).reshape(len(th), -1)
    wang = (widths[..., None] * _WA / (2 * np.pi)).reshape(len(th), -1)
    s = math.sqrt(q)
    u1 = s * np.cos(ang)[..., None] * _R
    u2 = s * np.cos(ang - th)[..., None] * _R
    out = np.einsum("cak,ca,k->c", f(u1) * g(u2), wang, _WR)
    return out.reshape(c.shape)


# --- the four expectations, closed form where one exists ------------------------------------------


def _arccos_j(c: np.ndarray) -> np.ndarray:
    """E[relu(u1) relu(u2)] / q: the degree-1 arc-cosine kernel."""
    th = np.arccos(np.clip(c, -1.0, 1.0))
    return (np.sin(th) + (np.pi - th) * np.cos(th)) / (2 * np.pi)


def phi_sq(act: Activation, q: float | np.ndarray) -> np.ndarray:
    """E_z[φ(√q z)²]."""
    if act.slope is not None:
        return np.asarray(q, dtype=float) * (1 + act.slope**2) / 2
    return gauss1(lambda x: act.phi(x) ** 2, q)


def dphi_sq(act: Activation, q: float | np.ndarray) -> np.ndarray:
    """E_z[φ'(√q z)²]."""
    if act.slope is not None:
        return np.full(np.shape(q), (1 + act.slope**2) / 2)
    return gauss1(lambda x: act.dphi(x) ** 2, q)


def phi_cross(act: Activation, c: float | np.ndarray, q: float) -> np.ndarray:
    """E[φ(u1) φ(u2)] for u1, u2 ~ N(0, q) with correlation c."""
    if act.slope is not None:
        a, c = act.slope, np.asarray(c, dtype=float)
        return q * (a * c + (1 - a) ** 2 * _arccos_j(c))
    return gauss2(act.phi, act.phi, q, c)


def dphi_cross(act: Activation, c: float | np.ndarray, q: float) -> np.ndarray:
    """E[φ'(u1) φ'(u2)] for u1, u2 ~ N(0, q) with correlation c."""
    if act.slope is not None:
        a, c = act.slope, np.asarray(c, dtype=float)
        return a + (1 - a) ** 2 * (np.pi - np.arccos(np.clip(c, -1.0, 1.0))) / (2 * np.pi)
    return gauss2(act.dphi, act.dphi, q, c)
