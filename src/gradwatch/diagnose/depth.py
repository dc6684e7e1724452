"""Vanishing and exploding gradients across depth.

The evidence is the back-propagated signal (`backflow_norm`) of the layers that own parameters, in
forward order: log10 of it is fitted against depth, and the slope says "x0.71 per layer, 1e-9
over 60 layers". Weight gradients can stay level while that signal vanishes (ReLU with Xavier
init), so they are only the fallback when no backflow was recorded. A net whose activations and
gradients explode together keeps a harmless first/last gradient ratio; it is caught by the growth
of its activations through depth and by gradients that dwarf the weights they belong to.
"""

from __future__ import annotations

import numpy as np

from .finding import Finding
from .remedies import exploding_remedies, vanishing_remedies
from .view import View, fit_log_slope, fmt

MIN_LAYERS = 4  # a depth trend needs at least this many layers
VANISH_WARN, VANISH_ERROR = 1e-3, 1e-6  # total multiplier from the last layer back to the first
EXPLODE_WARN, EXPLODE_ERROR = 1e3, 1e6
QUARTILE_MARGIN = 10.0  # the first quarter vs the last quarter must agree with the fit, 10x less strict
RELATIVE_GRAD_WARN, RELATIVE_GRAD_ERROR = 1e2, 1e4  # ‖g‖/‖w‖, median over layers
SPIKE = 1e2  # a step's total gradient norm over the median of the steps before it


def _profile(view: View, step: int) -> tuple[str, list[str], np.ndarray] | None:
    # Backflow when the run has it (weight gradients can look level while it vanishes).
    metrics = ("backflow_norm",) if not view.metric("backflow_norm").empty else ("grad_norm",)
    for metric in metrics:
        table = view.metric(metric)
        if table.empty or step not in table.index:
            continue
        cols = [c for c in view.param_layers if c in table.columns]
        row = table.loc[step, cols]
        row = row[np.isfinite(row.to_numpy(dtype=float)) & (row.to_numpy(dtype=float) > 0)]
        if len(row) >= MIN_LAYERS:
            return metric, list(row.index), row.to_numpy(dtype=float)
    return None


def depth_trend(view: View, step: int) -> dict | None:
    """Fit of log10(signal) against depth at one step: per-layer factor (backwards) and total."""
    prof = _profile(view, step)
    if prof is None:
        return None
    metric, layers, values = prof
    slope, _ = fit_log_slope(values)
    n = len(values)
    quarter = max(1, n // 4)
    return {
        "metric": metric,
        "layers": layers,
        "per_layer": float(10 ** (-slope)),  # multiplier per layer, going from output to input
        "total": float(10 ** (-slope * (n - 1))),
        "quartile_ratio": float(np.median(values[:quarter]) / np.median(values[-quarter:])),
        "first": float(values[0]),
        "last": float(values[-1]),
        "n_layers": n,
    }


def _activation_growth(view: View, step: int) -> dict | None:
    table = view.metric("act_std")
    if table.empty or step not in table.index:
        return None
    row = table.loc[step].dropna()
    row = row[(row > 0) & np.isfinite(row)]
    if len(row) < MIN_LAYERS:
        return None
    slope, _ = fit_log_slope(row.to_numpy(dtype=float))
    return {"per_layer": float(10**slope), "total": float(10 ** (slope * (len(row) - 1))), "layers": list(row.index), "last_std": float(row.iloc[-1])}


def _relative_gradient(view: View, step: int) -> float | None:
    g, w = view.metric("grad_norm"), view.metric("weight_norm")
    if g.empty or w.empty or step not in g.index or step not in w.index:
        return None
    cols = [c for c in g.columns if c in w.columns]
    rel = (g.loc[step, cols] / w.loc[step, cols]).replace([np.inf, -np.inf], np.nan).dropna()
    return float(rel.median()) if len(rel) else None


def detect_depth(view: View) -> list[Finding]:
    vanish, explode = [], []
    backflow = view.metric("backflow_norm")
    trend_steps = set(backflow.index) if not backflow.empty else set(view.steps)
    for step in view.steps:
        trend = depth_trend(view, step) if step in trend_steps else None
        if trend is not None:
            if trend["total"] < VANISH_WARN and trend["quartile_ratio"] < VANISH_WARN * QUARTILE_MARGIN:
                vanish.append((step, trend))
            if trend["total"] > EXPLODE_WARN and trend["quartile_ratio"] > EXPLODE_WARN / QUARTILE_MARGIN:
                explode.append((step, {"trend": trend}))
        growth = _activation_growth(view, step)
        rel = _relative_gradient(view, step)
        if growth is not None and growth["total"] > EXPLODE_WARN:
            explode.append((step, {"activations": growth, "relative_gradient": rel}))
        elif rel is not None and rel > RELATIVE_GRAD_WARN:
            explode.append((step, {"relative_gradient": rel}))
    spikes = _spikes(view) + _growth_before_nonfinite(view)
    judged = sum(depth_trend(view, s) is not None for s in trend_steps)
    findings = []
    if _persistent(vanish, view, judged):
        findings.append(_vanishing(view, vanish))
    if _persistent(explode, view, max(judged, 1)) or spikes:
        findings.append(_exploding(view, explode + spikes))
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
        f"The {signal} shrinks x{t['per_layer']:.2f} per layer towards the input: the first layer gets "
        f"{fmt(t['total'])} of what the last gets over {t['n_layers']} layers, so early layers barely learn."
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
    return Finding("vanishing_gradient", severity, tuple(layers), summary, evidence, vanishing_remedies(view, t), first_step)


def _exploding(view: View, held: list) -> Finding:
    first_step = held[0][0]
    step, ev = held[-1]
    parts, worst = [], 0.0
    layers: list[str] = view.param_layers
    if "trend" in ev:
        t = ev["trend"]
        parts.append(f"the back-propagated signal grows x{t['per_layer']:.2f} per layer towards the input ({fmt(t['total'])} over {t['n_layers']} layers)")
        worst = max(worst, t["total"])
        layers = t["layers"][: max(1, len(t["layers"]) // 2)]
    if ev.get("activations"):
        a = ev["activations"]
        parts.append(f"activations grow x{a['per_layer']:.2f} per layer ({fmt(a['total'])} from first to last)")
        worst = max(worst, a["total"])
    if ev.get("relative_gradient") is not None and ev["relative_gradient"] > RELATIVE_GRAD_WARN:
        parts.append(f"gradients are {fmt(ev['relative_gradient'])}x the weights they update (median layer)")
        worst = max(worst, ev["relative_gradient"] * EXPLODE_ERROR / RELATIVE_GRAD_ERROR)
    if ev.get("spike"):
        s = ev["spike"]
        parts.append(f"the total gradient norm jumped to {fmt(s['norm'])}, {fmt(s['ratio'])}x its usual size, at step {s['step']}")
        worst = max(worst, s["ratio"] * EXPLODE_ERROR / SPIKE / 100)
    severity = "error" if worst >= EXPLODE_ERROR else "warning"
    summary = "Gradients explode: " + "; ".join(parts) + "."
    evidence = {k: v for k, v in ev.items() if v is not None}
    evidence["at_step"] = step
    return Finding("exploding_gradient", severity, tuple(layers), summary, evidence, exploding_remedies(view, ev), first_step)


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
        return [(nan_step, {"spike": {"step": int(total.index[int(np.argmax(before))]), "norm": peak, "ratio": peak / start}, "turned_nonfinite_at": nan_step})]
    return []


def _spikes(view: View) -> list:
    g = view.metric("grad_norm")
    if g.empty or len(g) < 10:
        return []
    total = np.sqrt((g.fillna(0) ** 2).sum(axis=1))
    found = []
    values = total.to_numpy()
    for i in range(5, len(values)):
        base = np.median(values[:i])
        if base > 0 and np.isfinite(values[i]) and values[i] > SPIKE * base:
            found.append((int(total.index[i]), {"spike": {"step": int(total.index[i]), "norm": float(values[i]), "ratio": float(values[i] / base)}}))
    return found[:1] + found[-1:] if len(found) > 1 else found

