"""Vanishing and exploding gradients across depth.

The evidence is the back-propagated signal (`backflow_norm`) of the layers that own parameters, in
forward order: log10 of it is fitted against depth, and the slope says "x0.71 per layer, 1e-9
over 60 layers". Weight gradients can stay level while that signal vanishes (ReLU with Xavier
init), so they are only the fallback when no backflow was recorded. A net whose activations and
gradients explode together keeps a harmless first/last gradient ratio; it is caught by the growth
of its activations through depth and by gradients that dwarf the weights they belong to.
"""

from __future__ import annotations

import bisect

import numpy as np
import pandas as pd

from gradwatch.diagnose.advice import exploding_remedies, vanishing_remedies
from gradwatch.diagnose.finding import Finding
from gradwatch.diagnose.thresholds import (
    EXPLODE_ERROR,
    EXPLODE_WARN,
    GRAD_AT_INIT,
    MIN_LAYERS,
    QUARTILE_MARGIN,
    RELATIVE_GRAD_ERROR,
    RELATIVE_GRAD_WARN,
    SPIKE,
    VANISH_ERROR,
    VANISH_WARN,
)
from gradwatch.diagnose.view import View
from gradwatch.display.format import fmt, times


def _profile_table(view: View) -> tuple[str, pd.DataFrame] | None:
    # Backflow when the run has it (weight gradients can look level while it vanishes).
    for metric in ("backflow_norm", "grad_norm"):
        table = view.metric(metric)
        if not table.empty:
            return metric, table[[c for c in view.param_layers if c in table.columns]]
    return None


def _row_fits(values: np.ndarray, valid: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Least-squares slope of log10(value) against position among each row's valid entries,
    with the medians of each row's first and last quarter: all rows in one pass (rows that share
    a pattern of valid entries are reduced together, so a table of a thousand steps costs a few
    numpy calls, not a thousand fits)."""
    n_rows = len(values)
    slope = np.full(n_rows, np.nan)
    head = np.full(n_rows, np.nan)
    tail = np.full(n_rows, np.nan)
    if n_rows == 0:
        return slope, head, tail
    patterns, inverse = np.unique(valid, axis=0, return_inverse=True)
    for p, mask in enumerate(patterns):
        n = int(mask.sum())
        if n < 2:
            continue
        rows = np.flatnonzero(inverse.reshape(-1) == p)
        v = values[np.ix_(rows, np.flatnonzero(mask))]
        y = np.log10(v)
        x = np.arange(n, dtype=float) - (n - 1) / 2
        slope[rows] = (y - y.mean(axis=1, keepdims=True)) @ x / (x @ x)
        quarter = max(1, n // 4)
        head[rows] = np.median(v[:, :quarter], axis=1)
        tail[rows] = np.median(v[:, -quarter:], axis=1)
    return slope, head, tail


def _positive(table: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    values = table.to_numpy(dtype=float)
    with np.errstate(invalid="ignore"):
        valid = np.isfinite(values) & (values > 0)
    return values, valid


def _trends(view: View) -> dict[int, dict]:
    """`depth_trend` for every step that has a profile, computed once per view."""
    cached = view.__dict__.get("_depth_trends")
    if cached is not None:
        return cached
    trends: dict[int, dict] = {}
    prof = _profile_table(view)
    if prof is not None:
        metric, table = prof
        values, valid = _positive(table)
        counts = valid.sum(axis=1)
        keep = counts >= MIN_LAYERS
        slope, head, tail = _row_fits(values[keep], valid[keep])
        cols = np.asarray(table.columns, dtype=object)
        for i, row in enumerate(np.flatnonzero(keep)):
            mask, n = valid[row], int(counts[row])
            kept = values[row, mask]
            trends[int(table.index[row])] = {
                "metric": metric,
                "layers": list(cols[mask]),
                "per_layer": float(
                    10 ** (-slope[i])
                ),  # multiplier per layer, going from output to input
                "total": float(10 ** (-slope[i] * (n - 1))),
                "quartile_ratio": float(head[i] / tail[i]),
                "first": float(kept[0]),
                "last": float(kept[-1]),
                "n_layers": n,
            }
    view.__dict__["_depth_trends"] = trends
    return trends


def depth_trend(view: View, step: int) -> dict | None:
    """Fit of log10(signal) against depth at one step: per-layer factor (backwards) and total."""
    return _trends(view).get(step)


def _activation_growth(view: View) -> dict[int, dict]:
    """Per step: growth of the activations' std from the first activation layer to the last."""
    table = view.metric("act_std")
    if table.empty:
        return {}
    values, valid = _positive(table)
    counts = valid.sum(axis=1)
    keep = counts >= MIN_LAYERS
    slope, _, _ = _row_fits(values[keep], valid[keep])
    cols = np.asarray(table.columns, dtype=object)
    out = {}
    for i, row in enumerate(np.flatnonzero(keep)):
        total = float(10 ** (slope[i] * (counts[row] - 1)))
        if total > EXPLODE_WARN:  # only growth that can make a finding needs its details
            mask = valid[row]
            out[int(table.index[row])] = {
                "per_layer": float(10 ** slope[i]),
                "total": total,
                "layers": list(cols[mask]),
                "last_std": float(values[row, mask][-1]),
            }
    return out


def _relative_gradient(view: View) -> pd.Series:
    """Per step: median over the judged layers (`View.unjudged`) of ‖g‖/‖w‖."""
    g, w = view.metric("grad_norm"), view.metric("weight_norm")
    if g.empty or w.empty:
        return pd.Series(dtype=float)
    cols = [c for c in view.moving(g.columns) if c in w.columns]
    steps = g.index.intersection(w.index)
    with np.errstate(divide="ignore", invalid="ignore"):
        rel = g.loc[steps, cols].to_numpy(dtype=float) / w.loc[steps, cols].to_numpy(dtype=float)
    rel[~np.isfinite(rel)] = np.nan
    has = ~np.isnan(rel).all(axis=1) if rel.size else np.zeros(len(steps), dtype=bool)
    med = np.full(len(steps), np.nan)
    if has.any():
        med[has] = np.nanmedian(rel[has], axis=1)
    return pd.Series(med, index=steps).dropna()


def detect_depth(view: View) -> list[Finding]:
    vanish, explode = [], []
    trends = _trends(view)
    growth = _activation_growth(view)
    rel = _relative_gradient(view)
    for step, trend in trends.items():
        if trend["total"] < VANISH_WARN and trend["quartile_ratio"] < VANISH_WARN * QUARTILE_MARGIN:
            vanish.append((step, trend))
        if (
            trend["total"] > EXPLODE_WARN
            and trend["quartile_ratio"] > EXPLODE_WARN / QUARTILE_MARGIN
        ):
            explode.append((step, {"trend": trend}))
    # Gradients that dwarf their weights mean explosion through depth only in a deep net; in a
    # shallow one they come from the loss's or the data's scale, which have their own findings.
    deep = len(view.param_layers) >= MIN_LAYERS
    for step, r in rel.items():
        if deep and r > RELATIVE_GRAD_WARN and step not in growth:
            explode.append((int(step), {"relative_gradient": float(r)}))
    for step, g in growth.items():
        r = rel.get(step)
        explode.append(
            (step, {"activations": g, "relative_gradient": None if r is None else float(r)})
        )
    explode.sort(key=lambda held: held[0])
    spikes = _spikes(view) + _growth_before_nonfinite(view)
    findings = []
    if _persistent(vanish, view, len(trends)):
        findings.append(_vanishing(view, vanish))
    if _persistent(explode, view, max(len(trends), 1)) or spikes:
        held = explode + spikes
        at_init = view.gradient_at_init
        if at_init is not None and at_init > GRAD_AT_INIT and min(s for s, _ in held) > 0:
            # Before any update the gradients already dwarfed the weights: the explosion began
            # at step 0, and the steps that followed only carried it on.
            held = [(0, {"gradient_at_init": at_init})] + held
        findings.append(_exploding(view, held))
    return findings


def _persistent(held: list, view: View, judged: int | None = None) -> bool:
    """Held on at least half the steps it was judged on (a single step at init counts)."""
    if not held:
        return False
    judged = judged or view.n_steps
    return len({s for s, _ in held}) >= max(1, judged // 2)


def _vanishing(view: View, held: list) -> Finding:
    first_step = held[0][0]
    step, t = held[-1]
    severity = "error" if t["total"] < VANISH_ERROR else "warning"
    signal = "back-propagated signal" if t["metric"] == "backflow_norm" else "weight gradient"
    summary = (
        f"The {signal} shrinks {times(t['per_layer'])} per layer towards the input: the first "
        f"layer gets {fmt(t['total'])} of what the last gets over {t['n_layers']} layers, so early "
        "layers barely learn."
    )
    evidence = {
        "metric": t["metric"],
        "per_layer_factor": t["per_layer"],
        "total_factor": t["total"],
        "first_layer_value": t["first"],
        "last_layer_value": t["last"],
        "first_quarter_over_last_quarter": t["quartile_ratio"],
        "n_layers": t["n_layers"],
        "at_step": step,
    }
    layers = t["layers"][: max(1, len(t["layers"]) // 2)]
    return Finding(
        "vanishing_gradient",
        severity,
        tuple(layers),
        summary,
        evidence,
        vanishing_remedies(view, t),
        first_step,
    )


def _exploding(view: View, held: list) -> Finding:
    first_step = held[0][0]
    step, ev = held[-1]
    parts, worst = [], 0.0
    layers: list[str] = view.param_layers
    if "trend" in ev:
        t = ev["trend"]
        parts.append(
            f"the back-propagated signal grows {times(t['per_layer'])} per layer towards the input "
            f"({fmt(t['total'])} over {t['n_layers']} layers)"
        )
        worst = max(worst, t["total"])
        layers = t["layers"][: max(1, len(t["layers"]) // 2)]
    if ev.get("activations"):
        a = ev["activations"]
        parts.append(
            f"activations grow {times(a['per_layer'])} per layer ({fmt(a['total'])} from first to "
            "last)"
        )
        worst = max(worst, a["total"])
    if ev.get("relative_gradient") is not None and ev["relative_gradient"] > RELATIVE_GRAD_WARN:
        parts.append(
            f"gradients are {fmt(ev['relative_gradient'])}x the weights they update (median layer)"
        )
        worst = max(worst, ev["relative_gradient"] * EXPLODE_ERROR / RELATIVE_GRAD_ERROR)
    at_init = held[0][1].get("gradient_at_init") if held[0][0] == 0 else None
    if at_init is not None:
        parts.insert(
            0,
            f"before any update the gradients were already {fmt(at_init)}x the weights they "
            "update (median layer)",
        )
    if ev.get("spike"):
        s = ev["spike"]
        parts.append(
            f"the total gradient norm jumped to {fmt(s['norm'])}, {fmt(s['ratio'])}x its usual "
            f"size, at step {s['step']}"
        )
        worst = max(worst, s["ratio"] * EXPLODE_ERROR / SPIKE / 100)
    severity = "error" if worst >= EXPLODE_ERROR else "warning"
    summary = "Gradients explode: " + "; ".join(parts) + "."
    evidence = {k: v for k, v in ev.items() if v is not None}
    evidence["at_step"] = step
    if at_init is not None:
        evidence["gradient_at_init"] = at_init
    return Finding(
        "exploding_gradient",
        severity,
        tuple(layers),
        summary,
        evidence,
        exploding_remedies(view, evidence),
        first_step,
    )


def _growth_before_nonfinite(view: View) -> list:
    """A gradient that grew a hundredfold over the steps before it turned NaN/Inf exploded."""
    g = view.metric("grad_norm")
    if g.empty or len(g) < 2:
        return []
    total = np.sqrt((g.fillna(0) ** 2).sum(axis=1))
    finite = np.isfinite(total.to_numpy())
    if finite.all() or not finite[0]:
        return []
    first_bad = int(np.argmin(finite))
    before = total.to_numpy()[:first_bad]
    if len(before) < 1:
        return []
    peak, start = float(before.max()), float(before[0])
    nan_step = int(total.index[first_bad])
    if len(before) >= 2 and start > 0 and peak > SPIKE * start:
        return [
            (
                nan_step,
                {
                    "spike": {
                        "step": int(total.index[int(np.argmax(before))]),
                        "norm": peak,
                        "ratio": peak / start,
                    },
                    "turned_nonfinite_at": nan_step,
                },
            )
        ]
    return []


def _spikes(view: View) -> list:
    g = view.metric("grad_norm")
    if g.empty or len(g) < 10:
        return []
    total = np.sqrt((g.fillna(0) ** 2).sum(axis=1))
    found = []
    values = total.to_numpy()
    # The median of all steps before each one, kept sorted as it grows: O(n log n), not a fresh
    # median (O(n)) per step.
    before = sorted(values[:5].tolist())
    for i in range(5, len(values)):
        k = len(before)
        base = before[k // 2] if k % 2 else 0.5 * (before[k // 2 - 1] + before[k // 2])
        if base > 0 and np.isfinite(values[i]) and values[i] > SPIKE * base:
            found.append(
                (
                    int(total.index[i]),
                    {
                        "spike": {
                            "step": int(total.index[i]),
                            "norm": float(values[i]),
                            "ratio": float(values[i] / base),
                        }
                    },
                )
            )
        bisect.insort(before, values[i])
    return found[:1] + found[-1:] if len(found) > 1 else found
