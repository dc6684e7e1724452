"""Mean-field theory applied to a real model: each layer's own σ_w², biases and activation.

For a chain of layers h^{l+1} = W^{l+1} φ(h^l) + b^{l+1} (found by `_trace`), the theory of
`theory.py` predicts the back-propagated signal's per-layer factor: E‖∂L/∂h^l‖² / E‖∂L/∂h^{l+1}‖²
= σ_w²(l+1) · E[φ'(h^l)²], whatever the widths (a conv's stride and channels cancel the same way).
Real models break the textbook's assumptions in two ways that matter, and both are kept here:
layers differ (σ_w² = fan_in · mean(W²) per layer), and biases are fixed numbers, not draws of
variance σ_b² (a bias of +6 before a sigmoid is a unit's mean, not noise). So each unit i of layer
l is N(b_i, s_l²), with s_l² = σ_w²(l) · mean_j E[φ(h_j^{l-1})²] propagated from the measured
second moment of the chain's input, and expectations are averaged over units.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np
import pandas as pd
import torch

from gradwatch._nn import fans
from gradwatch._tensor import stat_dtype, to_host
from gradwatch.theory import gaussian as _am
from gradwatch.theory.trace import Call, Trace

_CUTOFF = 10.0
_UNITS = 64  # biases summarised by this many quantiles: the mean over units of a smooth function
_t, _w = np.polynomial.legendre.leggauss(64)
_T, _W = (_t + 1.0) / 2, _w / 2  # Gauss-Legendre on [0, 1]
del _t, _w


def shifted_mean(f, mean: np.ndarray, std: float) -> np.ndarray:
    """E_z[f(mean_i + std·z)], z ~ N(0, 1), for each entry of `mean` (or of 64 of its quantiles).

    The activations here have their only kink at 0, i.e. at z = -mean/std: the range is split
    there, so each piece is smooth and Gauss-Legendre converges fast.
    """
    mean = np.asarray(mean, dtype=float)
    if mean.size > _UNITS:
        mean = np.quantile(mean, (np.arange(_UNITS) + 0.5) / _UNITS)
    if std <= 0:
        return f(mean)
    z0 = np.clip(-mean / std, -_CUTOFF, _CUTOFF)[:, None]
    lo_w, hi_w = z0 + _CUTOFF, _CUTOFF - z0
    z = np.concatenate([-_CUTOFF + lo_w * _T, z0 + hi_w * _T], axis=1)
    w = (
        np.concatenate([lo_w * _W, hi_w * _W], axis=1)
        * np.exp(-0.5 * z**2)
        / math.sqrt(2 * math.pi)
    )
    return (f(mean[:, None] + std * z) * w).sum(axis=1)


def layer_sigmas(call: Call) -> tuple[float, np.ndarray]:
    """(σ_w² = fan_in · mean(W²) · valid-tap fraction, bias per output unit or channel, zeros
    without a bias).
    """
    module = call.module
    w = module.weight.detach()
    sigma_w2 = (
        float(torch.linalg.vector_norm(w, dtype=stat_dtype(w.device))) ** 2
        / max(w.numel(), 1)
        * fans(module)[0]
        * call.valid_taps
    )
    n_out = (
        w.shape[0] if not isinstance(module, torch.nn.modules.conv._ConvTransposeNd) else w.shape[1]
    )
    bias = to_host([module.bias.detach()])[0] if module.bias is not None else np.zeros(n_out)
    return sigma_w2, bias


@dataclass(frozen=True)
class LayerPrediction:
    """One link of a traced chain: layer -> activation -> next layer, predicted and measured.

    Factors are of the back-propagated signal's norm, ‖∂L/∂h(layer)‖ / ‖∂L/∂h(next)‖ (unitless).
    """

    layer: str  # dotted name of the layer whose output feeds the activation
    next: str  # dotted name of the layer the activation feeds
    activation: str  # the activation between them, by its theory name ("tanh", "relu", ...)
    sigma_w2: float  # σ_w² of `next`: fan_in · mean(W²) · valid-tap fraction (unitless)
    sigma_b2: float  # mean square of `layer`'s biases (squared units of its output)
    q: float  # second moment of `layer`'s pre-activations, s² + σ_b² (squared output units)
    chi: float  # predicted variance factor σ_w² · E[φ'(h)²] (unitless)
    predicted: float  # predicted norm factor, √chi (unitless)
    measured: float | None = None  # backflow(layer) / backflow(next) at the first step; None
    # where either is missing, zero or non-finite

    def to_dict(self) -> dict:
        return {
            "layer": self.layer,
            "next": self.next,
            "activation": self.activation,
            "sigma_w2": self.sigma_w2,
            "sigma_b2": self.sigma_b2,
            "q": self.q,
            "chi": self.chi,
            "predicted": self.predicted,
            "measured": self.measured,
        }


@dataclass(frozen=True)
class TheoryComparison:
    """Mean-field prediction next to measurement of the back-propagated signal's per-layer factor
    (`Diagnosis.summary["theory"]` of a check). Factors are unitless ratios of norms."""

    per_layer_predicted: float | None  # geometric mean of `predicted` over the links with both
    per_layer_measured: float | None  # geometric mean of `measured` over the same links
    n_links: int  # how many links have both a positive prediction and a measurement
    chains: tuple[tuple[str, ...], ...]  # every traced chain, each its layers' names in order
    links: tuple[LayerPrediction, ...]  # every link of every chain, measured or not

    def to_dict(self) -> dict:
        return {
            "per_layer_predicted": self.per_layer_predicted,
            "per_layer_measured": self.per_layer_measured,
            "n_links": self.n_links,
            "chains": [list(c) for c in self.chains],
            "links": [lk.to_dict() for lk in self.links],
        }


def predict_chain(trace: Trace, chain: list[str]) -> list[LayerPrediction]:
    """One prediction per link of `chain`: the layers, activation, σ_w², σ_b², the pre-activation
    scale and the predicted factor of the back-propagated signal's *norm* (√ of the variance
    factor); `measured` is left None."""
    calls = {c.name: c for c in trace.calls}
    acts = {(link.src, link.dst): link for link in trace.links}
    sigma_w2, bias = layer_sigmas(calls[chain[0]])
    s2 = sigma_w2 * calls[chain[0]].input_sq  # variance of the first layer's pre-activations
    out = []
    for src, dst in zip(chain[:-1], chain[1:], strict=True):
        link = acts[(src, dst)]
        act = _am.resolve(link.activation, **link.params)
        std = math.sqrt(max(s2, 0.0))
        e_dphi2 = float(shifted_mean(lambda x, a=act: a.dphi(x) ** 2, bias, std).mean())
        e_phi2 = float(shifted_mean(lambda x, a=act: a.phi(x) ** 2, bias, std).mean())
        next_w2, next_bias = layer_sigmas(calls[dst])
        chi = next_w2 * e_dphi2
        out.append(
            LayerPrediction(
                layer=src,
                next=dst,
                activation=link.activation,
                sigma_w2=next_w2,
                sigma_b2=float(np.mean(bias**2)),
                q=s2 + float(np.mean(bias**2)),
                chi=chi,
                predicted=math.sqrt(chi),
            )
        )
        bias, s2 = next_bias, next_w2 * e_phi2
    return out


def _geo_mean(values: list[float]) -> float | None:
    return float(np.exp(np.mean(np.log(values)))) if values else None


def compare(trace: Trace, stats: pd.DataFrame) -> TheoryComparison | None:
    """Predicted next to measured per-layer factors of `backflow_norm`, over every traced chain.

    Measured factor of a link = backflow(layer) / backflow(next layer) at the first step.
    The headline numbers are geometric means over the links where both are positive and finite.
    Returns None when the model has no chain of at least two linked layers.
    """
    chains = trace.chains()
    if not chains:
        return None
    rows = stats[(stats["metric"] == "backflow_norm") & (stats["index"] == -1)]
    first = rows[rows["step"] == rows["step"].min()] if not rows.empty else rows
    measured = dict(zip(first["layer"], first["value"].astype(float), strict=True))
    links = []
    for chain in chains:
        for link in predict_chain(trace, chain):
            a, b = measured.get(link.layer), measured.get(link.next)
            ok = a is not None and b is not None and a > 0 and b > 0 and math.isfinite(a / b)
            links.append(replace(link, measured=a / b if ok else None))
    both = [lk for lk in links if lk.measured is not None and lk.predicted > 0]
    return TheoryComparison(
        per_layer_predicted=_geo_mean([lk.predicted for lk in both]),
        per_layer_measured=_geo_mean([lk.measured for lk in both]),
        n_links=len(both),
        chains=tuple(tuple(c) for c in chains),
        links=tuple(links),
    )
