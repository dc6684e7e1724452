"""Findings about individual layers: non-finite values, saturated activations, dead units,
stalled layers and updates too large for the weights."""

from __future__ import annotations

import numpy as np

from .finding import Finding
from .remedies import (
    dead_remedies,
    nonfinite_remedies,
    saturation_remedies,
    stalled_remedies,
    unstable_remedies,
)
from .view import View, fmt, names

SATURATED_WARN, SATURATED_ERROR = 0.5, 0.9
DEAD_WARN, DEAD_ERROR = 0.5, 0.9
STALLED = 1e-3  # a layer's update ratio below this fraction of the busiest layer's
MIN_UPDATE_STEPS = 5
UNSTABLE_WARN, UNSTABLE_ERROR = 0.1, 1.0  # update/weight per step, median layer


def detect_nonfinite(view: View) -> list[Finding]:
    s = view.scalar
    bad_counts = s[(s["metric"] == "nonfinite") & (s["value"] > 0)]
    bad_values = s[~np.isfinite(s["value"]) & s["metric"].isin(["grad_norm", "backflow_norm", "act_std", "loss"])]
    bad = bad_counts if not bad_counts.empty else bad_values
    if bad.empty and bad_values.empty:
        return []
    first = int(min(bad_counts["step"].min() if not bad_counts.empty else np.inf, bad_values["step"].min() if not bad_values.empty else np.inf))
    at_first = bad[bad["step"] == first] if not bad.empty else bad_values[bad_values["step"] == first]
    layers = [n for n in view.order if n in set(at_first["layer"])]
    counts = {r.layer: r.value for r in bad_counts[bad_counts["step"] == first].itertuples()}
    steps = sorted(set(bad_counts["step"]) | set(bad_values["step"]))
    total = int(sum(counts.values()))
    what = f"{total} NaN/Inf gradient entries" if total else "non-finite values"
    summary = f"{what} at step {first} in {names(layers)}; {len(steps)} of {view.n_steps} recorded steps are affected."
    evidence = {"first_step": first, "counts_at_first_step": counts, "steps_affected": len(steps), "metrics": sorted(set(at_first["metric"]))}
    return [Finding("nonfinite", "error", tuple(layers), summary, evidence, nonfinite_remedies(view), first)]


def _recent(table, k: int = 5):
    """Median over the last k recorded steps of each column (NaN-aware)."""
    return table.tail(k).median(skipna=True)


def detect_saturation(view: View) -> list[Finding]:
    table = view.metric("saturated_frac")
    if table.empty:
        return []
    recent = _recent(table).dropna()
    hot = recent[recent > SATURATED_WARN]
    if hot.empty:
        return []
    layers = [n for n in view.order if n in hot.index]
    error = hot.max() > SATURATED_ERROR or len(hot) > len(recent) / 2
    held = table[(table[layers] > SATURATED_WARN).any(axis=1)]
    summary = (
        f"{len(layers)} of {len(recent)} saturating activations spend most of their time in the flat region "
        f"(up to {hot.max():.0%} of inputs where the derivative is below 5% of its peak): {names(layers)}."
    )
    evidence = {"saturated_frac": {n: float(hot[n]) for n in layers}, "threshold": SATURATED_WARN}
    return [Finding("saturated_activation", "error" if error else "warning", tuple(layers), summary, evidence, saturation_remedies(view, layers), int(held.index[0]))]


def detect_dead(view: View) -> list[Finding]:
    table = view.metric("dead_frac")
    if table.empty:
        return []
    recent = _recent(table).dropna()
    dead = recent[recent > DEAD_WARN]
    if dead.empty:
        return []
    layers = [n for n in view.order if n in dead.index]
    held = table[(table[layers] > DEAD_WARN).any(axis=1)]
    summary = f"{names(layers)}: {dead.max():.0%} of units are dead (zero gradient for every sample of the batch)."
    evidence = {"dead_frac": {n: float(dead[n]) for n in layers}, "threshold": DEAD_WARN}
    severity = "error" if dead.max() > DEAD_ERROR else "warning"
    return [Finding("dead_units", severity, tuple(layers), summary, evidence, dead_remedies(view, layers), int(held.index[0]))]


def _update_medians(view: View):
    upd = view.metric("update_ratio")
    if upd.empty:
        return None
    upd = upd.replace([np.inf, -np.inf], np.nan)
    counts = upd.notna().sum()
    enough = counts[counts >= min(MIN_UPDATE_STEPS, max(1, len(upd) // 2))].index
    if len(enough) < 2:
        return None
    return upd[enough].median(skipna=True)


def detect_stalled(view: View) -> list[Finding]:
    med = _update_medians(view)
    if med is None or view.n_steps < MIN_UPDATE_STEPS:
        return []
    # A ratio of exactly 0 is a layer whose update rounds away entirely: the most stalled of all.
    top = med.max()
    if not np.isfinite(top) or top <= 0:
        return []
    # Layers whose weights are zero-initialised or frozen on purpose have no ratio; only moving ones count.
    stalled = med[med < STALLED * top]
    if stalled.empty:
        return []
    layers = [n for n in view.order if n in stalled.index]
    summary = (
        f"{names(layers)} barely change: update/weight {fmt(float(stalled.median()))} per step, "
        f"against {fmt(float(top))} for the busiest layer."
    )
    evidence = {"update_ratio": {n: float(med[n]) for n in layers}, "busiest_layer_ratio": float(top), "threshold_fraction": STALLED}
    return [Finding("stalled_layer", "warning", tuple(layers), summary, evidence, stalled_remedies(view, layers), view.steps[0])]


def detect_unstable(view: View) -> list[Finding]:
    """Updates too large for the weights: the median layer's update/weight ratio above 0.1 on at
    least a quarter of the recorded steps, or above 1 on any (an error: one step rewrote the layer).

    Per step, not averaged: with Adam at a huge rate the weights inflate until the ratio looks
    modest, so the early steps carry the evidence.
    """
    upd = view.metric("update_ratio")
    if upd.empty:
        return []
    per_step = upd.replace([np.inf, -np.inf], np.nan).median(axis=1, skipna=True).dropna()
    if per_step.empty:
        return []
    high = per_step[per_step > UNSTABLE_WARN]
    if high.empty or (len(high) < len(per_step) / 4 and per_step.max() <= UNSTABLE_ERROR):
        return []
    med = _update_medians(view)
    worst = float(per_step.max())
    layers = [n for n in view.order if med is not None and n in med.index and med[n] > UNSTABLE_WARN] or list(upd.columns)
    severity = "error" if worst > UNSTABLE_ERROR else "warning"
    summary = (
        f"Steps change the weights by up to {fmt(worst)} of their size (median layer), above 0.1 on "
        f"{len(high)} of {len(per_step)} recorded steps; around 1e-3 is healthy, so training is unstable."
    )
    evidence = {"max_median_update_ratio": worst, "median_update_ratio": float(per_step.median()), "steps_above": len(high), "steps": len(per_step)}
    return [Finding("unstable_updates", severity, tuple(layers), summary, evidence, unstable_remedies(view, float(high.median())), int(high.index[0]))]
