"""Whether training can make progress at all: a net whose hidden activations are constant (every
hidden gradient is exactly zero), and updates so small in every layer that nothing will move."""

from __future__ import annotations

import numpy as np

from gradwatch.diagnose.advice import constant_remedies, idle_remedies
from gradwatch.diagnose.finding import Finding
from gradwatch.diagnose.layerwise import loss_halved
from gradwatch.diagnose.thresholds import (
    IDLE,
    MIN_UPDATE_STEPS,
    SMALL_GRADIENT,
)
from gradwatch.diagnose.view import View
from gradwatch.display.format import fmt, names


def detect_constant(view: View) -> list[Finding]:
    """Every activation layer outputs the same value for every sample (std exactly 0), at the
    first recorded step and still at the last: the loss cannot fall below the class prior's."""
    table = view.metric("act_std")
    if table.empty or table.shape[1] < 2:
        return []
    constant = (table == 0).all(axis=1) & table.notna().all(axis=1)
    if not (constant.iloc[0] and constant.iloc[-1]):
        return []
    layers = list(table.columns)
    summary = (
        f"All {len(layers)} activation layers output a constant ({names(layers)}): no hidden unit "
        "depends on the input, every hidden gradient is zero, and the loss will stay at the level "
        "of a constant prediction."
    )
    evidence = {
        "act_std": 0.0,
        "activation_layers": len(layers),
        "steps_constant": int(constant.sum()),
    }
    return [
        Finding(
            "loss_plateau",
            "error",
            tuple(layers),
            summary,
            evidence,
            constant_remedies(view),
            int(table.index[0]),
        )
    ]


def detect_idle(view: View) -> list[Finding]:
    """The busiest layer moves less than 3e-4 of its weights per step (median over the recorded
    steps). With ordinary gradients that is a learning rate too small (the loss will plateau);
    with gradients tiny in every layer at once it is a gradient lost at the loss, such as the
    saturating GAN generator loss."""
    upd = view.metric("update_ratio")
    if upd.empty or len(upd) < MIN_UPDATE_STEPS:
        return []
    upd = upd[view.moving(upd.columns)].replace([np.inf, -np.inf], np.nan)
    med = upd.median(skipna=True).dropna()
    if len(med) < 2:
        return []
    top = float(med.max())
    if not (0 < top < IDLE) or loss_halved(view):
        # A loss that fell below half its start was fitted: small gradients and updates are
        # what a fitted net has, not a gradient lost at the loss.
        return []
    g, w = view.metric("grad_norm"), view.metric("weight_norm")
    cols = [c for c in med.index if c in g.columns and c in w.columns]
    rel = (g[cols] / w[cols]).replace([np.inf, -np.inf], np.nan).median(axis=1).dropna()
    grad_over_weight = float(rel.median()) if len(rel) else float("nan")
    small = bool(np.isfinite(grad_over_weight) and grad_over_weight < SMALL_GRADIENT)
    layers = [n for n in view.order if n in med.index]
    evidence = {
        "busiest_update_ratio": top,
        "median_update_ratio": float(med.median()),
        "grad_over_weight": grad_over_weight,
        "threshold": IDLE,
    }
    remedies = idle_remedies(view, top, small)
    if small:
        summary = (
            f"Every layer's gradient is tiny next to its weights ({fmt(grad_over_weight)}, median "
            f"layer) and even the busiest layer moves {fmt(top)} of itself per step: the gradient "
            "vanishes at the loss, before depth plays a part."
        )
        return [
            Finding(
                "vanishing_gradient",
                "warning",
                tuple(layers),
                summary,
                evidence,
                remedies,
                int(upd.index[0]),
            )
        ]
    summary = (
        f"Even the busiest layer moves only {fmt(top)} of its weights per step (gradients are "
        f"ordinary: {fmt(grad_over_weight)} of the weights): the learning rate is too small and "
        "the loss will plateau."
    )
    return [
        Finding(
            "loss_plateau", "warning", tuple(layers), summary, evidence, remedies, int(upd.index[0])
        )
    ]
