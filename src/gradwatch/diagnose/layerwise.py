"""Findings about individual layers: non-finite values, saturated activations, dead units,
stalled layers and updates too large for the weights."""

from __future__ import annotations

import numpy as np
import pandas as pd

from gradwatch.diagnose.advice import (
    dead_remedies,
    nonfinite_remedies,
    saturation_remedies,
    stalled_remedies,
    unstable_remedies,
)
from gradwatch.diagnose.finding import Finding
from gradwatch.diagnose.rate import log_of_probability
from gradwatch.diagnose.thresholds import (
    BRANCH_REACHED,
    COLLAPSE,
    COLLAPSE_AFTER,
    DEAD_AT_INIT,
    DEAD_ERROR,
    DEAD_WARN,
    EARLY_REWRITE,
    EARLY_STEPS,
    GRAD_AT_INIT,
    LR_NO_PROGRESS,
    MIN_UPDATE_STEPS,
    SATURATED_ERROR,
    SATURATED_WARN,
    SHORT_RUN,
    STALLED,
    STALLED_AT_INIT,
    UNSTABLE_ERROR,
    UNSTABLE_WARN,
)
from gradwatch.diagnose.view import NORM_TYPES, View
from gradwatch.display.format import fmt, names


def detect_nonfinite(view: View) -> list[Finding]:
    s = view.scalar
    bad_counts = s[(s["metric"] == "nonfinite") & (s["value"] > 0)]
    bad_values = s[
        ~np.isfinite(s["value"])
        & s["metric"].isin(["grad_norm", "backflow_norm", "act_std", "loss"])
    ]
    bad = bad_counts if not bad_counts.empty else bad_values
    if bad.empty and bad_values.empty:
        return []
    first = int(
        min(
            bad_counts["step"].min() if not bad_counts.empty else np.inf,
            bad_values["step"].min() if not bad_values.empty else np.inf,
        )
    )
    at_first = (
        bad[bad["step"] == first] if not bad.empty else bad_values[bad_values["step"] == first]
    )
    layers = [n for n in view.order if n in set(at_first["layer"])]
    counts = {r.layer: r.value for r in bad_counts[bad_counts["step"] == first].itertuples()}
    steps = sorted(set(bad_counts["step"]) | set(bad_values["step"]))
    total = int(sum(counts.values()))
    what = f"{total} NaN/Inf gradient entries" if total else "non-finite values"
    summary = (
        f"{what} at step {first} in {names(layers)}; {len(steps)} of {view.n_steps} recorded steps "
        "are affected."
    )
    evidence = {
        "first_step": first,
        "counts_at_first_step": counts,
        "steps_affected": len(steps),
        "metrics": sorted(set(at_first["metric"])),
        # log(softmax) / log(sigmoid) in the loss underflows to log 0 at any step size.
        "log_of_probability": log_of_probability(view),
    }
    return [
        Finding(
            "nonfinite", "error", tuple(layers), summary, evidence, nonfinite_remedies(view), first
        )
    ]


def _recent(table, k: int = 5):
    """Median over the last k recorded steps of each column (NaN-aware)."""
    return table.tail(k).median(skipna=True)


def detect_saturation(view: View) -> list[Finding]:
    table = view.metric("saturated_frac")
    if table.empty:
        return []
    recent = _recent(table).dropna()
    hot = recent[recent > SATURATED_WARN]
    falling, progressed = loss_falls(view), loss_progressed(view)
    if falling:
        # An output sigmoid/softmax feeding its loss saturates because the model is confident:
        # while the loss falls that is the goal, not a fault.
        hot = hot[[n not in _output_activations(view) for n in hot.index]]
    if hot.empty:
        return []
    layers = [n for n in view.order if n in hot.index]
    # Most of several saturating layers is an error: their factors compound. One layer alone at
    # 55% costs one factor: a warning until it passes SATURATED_ERROR.
    error = hot.max() > SATURATED_ERROR or (len(hot) >= 2 and len(hot) > len(recent) / 2)
    # One layer saturated part of the time costs the gradient one factor; a net whose loss fell
    # below half its start (in a rehearsal's few steps: made progress) learns through it: worth
    # knowing (info), not a fault. Several saturated layers compound, and past SATURATED_ERROR
    # almost nothing passes: still a fault.
    mild = progressed and len(hot) == 1 and hot.max() <= SATURATED_ERROR
    severity = "info" if mild else ("error" if error else "warning")
    held = table[(table[layers] > SATURATED_WARN).any(axis=1)]
    summary = (
        f"{len(layers)} of {len(recent)} saturating activations spend most of their time in the "
        f"flat region (up to {hot.max():.0%} of inputs where the derivative is below 5% of its "
        f"peak): {names(layers)}."
    )
    evidence = {"saturated_frac": {n: float(hot[n]) for n in layers}, "threshold": SATURATED_WARN}
    return [
        Finding(
            "saturated_activation",
            severity,
            tuple(layers),
            summary,
            evidence,
            saturation_remedies(view, layers),
            int(held.index[0]),
        )
    ]


def detect_dead(view: View) -> list[Finding]:
    table = view.metric("dead_frac")
    if table.empty:
        return []
    recent = _recent(table).dropna()
    # Before any update a zero-mean pre-activation is off for a given input with chance 1/2, and
    # for correlated rows (graph nodes mixed by near-uniform attention, one sequence's steps) off
    # for all of them with that same chance: at init only more than DEAD_AT_INIT is evidence.
    at_init = view.metric("update_ratio").empty
    dead = recent[recent > (DEAD_AT_INIT if at_init else DEAD_WARN)]
    if dead.empty:
        return []
    layers = [n for n in view.order if n in dead.index]
    held = table[(table[layers] > DEAD_WARN).any(axis=1)]
    summary = (
        f"{names(layers)}: {dead.max():.0%} of units are dead (zero gradient for every sample of "
        "the batch)."
    )
    evidence = {"dead_frac": {n: float(dead[n]) for n in layers}, "threshold": DEAD_WARN}
    severity = "error" if dead.max() > DEAD_ERROR else "warning"
    return [
        Finding(
            "dead_units",
            severity,
            tuple(layers),
            summary,
            evidence,
            dead_remedies(view, layers),
            int(held.index[0]),
        )
    ]


def _update_table(view: View):
    """The update ratios of the judged layers (`View.unjudged`) that were measured often enough."""
    upd = view.metric("update_ratio")
    if upd.empty:
        return None
    upd = upd[view.moving(upd.columns)].replace([np.inf, -np.inf], np.nan)
    counts = upd.notna().sum()
    enough = counts[counts >= min(MIN_UPDATE_STEPS, max(1, len(upd) // 2))].index
    return upd[enough] if len(enough) >= 2 else None


def _update_medians(view: View):
    upd = _update_table(view)
    return None if upd is None else upd.median(skipna=True)


def _late_medians(upd) -> pd.Series:
    """Per layer, the median over the last quarter of that layer's own measurements (layers take
    turns in the update probe's snapshot)."""
    out = {}
    for c in upd.columns:
        seen = upd[c].dropna().to_numpy()
        out[c] = float(np.median(seen[-max(1, len(seen) // 4) :]))
    return pd.Series(out)


def _relative_gradients_at_start(view: View):
    """‖g‖/‖w‖ per layer at the first step: with plain SGD a layer's first update/weight ratio is
    lr times this, so it predicts which layers will stall before any optimizer step is taken."""
    g, w = view.metric("grad_norm"), view.metric("weight_norm")
    if g.empty or w.empty:
        return None
    step = g.index[0]
    if step not in w.index:
        return None
    cols = [c for c in view.moving(g.columns) if c in w.columns]
    rel = (g.loc[step, cols] / w.loc[step, cols]).replace([np.inf, -np.inf], np.nan).dropna()
    rel = rel[rel > 0]
    return rel if len(rel) >= 2 else None


def detect_stalled(view: View) -> list[Finding]:
    upd = _update_table(view)
    med = None if upd is None else upd.median(skipna=True)
    if med is None and view.metric("update_ratio").empty:
        return _stalled_at_init(view)
    if med is None or view.n_steps < MIN_UPDATE_STEPS:
        return []
    # A ratio of exactly 0 is a layer whose update rounds away entirely: the most stalled of all.
    top = med.max()
    if not np.isfinite(top) or top <= 0:
        return []
    stalled = med[med < STALLED * top]
    if stalled.empty:
        return []
    # A layer behind a zero-initialised one (Fixup's first branch convolutions) gets no gradient
    # until that layer has moved: its ratio climbs by orders of magnitude and is not stalled at the
    # end.
    late = _late_medians(upd)
    late_top = late.max()
    stalled = stalled[[not (late[n] >= STALLED * late_top) for n in stalled.index]]
    if stalled.empty:
        return []
    layers = [n for n in view.order if n in stalled.index]
    summary = (
        f"{names(layers)} barely change: update/weight {fmt(float(stalled.median()))} per step, "
        f"against {fmt(float(top))} for the busiest layer."
    )
    evidence = {
        "update_ratio": {n: float(med[n]) for n in layers},
        "busiest_layer_ratio": float(top),
        "threshold_fraction": STALLED,
    }
    return [
        Finding(
            "stalled_layer",
            "warning",
            tuple(layers),
            summary,
            evidence,
            stalled_remedies(view, layers),
            view.steps[0],
        )
    ]


def _stalled_at_init(view: View) -> list[Finding]:
    rel = _relative_gradients_at_start(view)
    if rel is None:
        return []
    top = float(rel.max())
    stalled = rel[rel < STALLED_AT_INIT * top]
    # Depth starves the layers nearest the input first. A small gradient on a layer while the
    # back-propagated signal reaches a layer before it at full strength is the layer's own
    # (attention's query and key projections while attention is near uniform), not starvation.
    reached = _reached_below(view)
    layers = [n for n in view.order if n in stalled.index and n not in reached]
    stalled = stalled[layers]
    if stalled.empty:
        return []
    summary = (
        f"{names(layers)} would barely change under SGD: gradient/weight "
        f"{fmt(float(stalled.median()))}, against {fmt(top)} for the layer with the largest (an "
        "SGD step moves each layer in that proportion)."
    )
    evidence = {
        "grad_over_weight": {n: float(rel[n]) for n in layers},
        "largest": top,
        "threshold_fraction": STALLED_AT_INIT,
    }
    return [
        Finding(
            "stalled_layer",
            "warning",
            tuple(layers),
            summary,
            evidence,
            stalled_remedies(view, layers),
            int(view.steps[0]),
        )
    ]


def detect_unstable(view: View) -> list[Finding]:
    """Updates too large for the weights, on any of three pieces of evidence (median layer's
    update/weight ratio ‖Δw‖/‖w‖ per step; around 1e-3 is healthy):

    - above 0.1 on at least a quarter of the recorded steps, or above 1 on any (an error: one step
      rewrote the layer);
    - the first ten updates together add up to the weights' own size: Adam at a huge rate takes a
      few such steps and then the weights have inflated enough for the ratio to look modest;
    - steps that moved more than 3% of the weights were followed by ‖g‖/‖w‖ falling a hundredfold
      while the loss did not halve: the large steps threw the net into a flat region (Post-LN
      without warm-up, Xiong et al. 2020).
    """
    upd = view.metric("update_ratio")
    if upd.empty:
        return []
    upd = upd[view.moving(upd.columns)]
    per_step = upd.replace([np.inf, -np.inf], np.nan).median(axis=1, skipna=True).dropna()
    if per_step.empty:
        return []
    high = per_step[per_step > UNSTABLE_WARN]
    early = per_step.iloc[:EARLY_STEPS]
    # Large first steps while the loss halved (in a rehearsal's few steps: made progress) are the
    # weights growing into their scale, unless, short of halving, they left units dead that were
    # alive before them (Adam at 100x its default rate kills ReLUs while the loss still falls):
    # that damage is the large steps' doing.
    grew = loss_progressed(view) and not _killed_units(view)
    rewrote = (
        len(early) >= EARLY_STEPS
        and float(early.sum()) >= EARLY_REWRITE
        and not (grew or loss_halved(view))
    )
    collapse = _collapse(view, per_step)
    # Large steps among the first ten count towards "often" only when they were not the weights
    # growing into their scale: in a rehearsal of 20 steps five such steps are already a quarter
    # of the run.
    counted = high[high.index > early.index[-1]] if grew else high
    often = len(counted) >= len(per_step) / 4 or per_step.max() > UNSTABLE_ERROR
    if not (often or rewrote or collapse):
        return []
    med = _update_medians(view)
    worst = float(per_step.max())
    layers = [
        n for n in view.order if med is not None and n in med.index and med[n] > UNSTABLE_WARN
    ] or list(upd.columns)
    severity = "error" if worst > UNSTABLE_ERROR else "warning"
    parts = [
        f"Steps change the weights by up to {fmt(worst)} of their size (median layer), above 0.1 "
        f"on {len(high)} of {len(per_step)} recorded steps"
    ]
    if rewrote:
        parts.append(
            f"the first {EARLY_STEPS} updates add up to {fmt(float(early.sum()))} of the weights"
        )
    if collapse:
        parts.append(
            f"after them the gradient relative to the weights fell {fmt(collapse['fall'])}x while "
            "the loss did not halve"
        )
    summary = "; ".join(parts) + "; around 1e-3 is healthy, so training is unstable."
    evidence = {
        "max_median_update_ratio": worst,
        "median_update_ratio": float(per_step.median()),
        "steps_above": len(high),
        "steps": len(per_step),
        "first_updates_sum": float(early.sum()),
    }
    if collapse:
        evidence["collapse"] = collapse
    at_init = view.gradient_at_init
    if at_init is not None and at_init > GRAD_AT_INIT:
        evidence["gradient_at_init"] = at_init
    first = int(high.index[0]) if not high.empty else int(per_step.index[0])
    typical = float(high.median()) if not high.empty else worst
    return [
        Finding(
            "unstable_updates",
            severity,
            tuple(layers),
            summary,
            evidence,
            unstable_remedies(view, typical),
            first,
        )
    ]


def _killed_units(view: View) -> bool:
    """Some rectifier layer had at most DEAD_WARN of its units dead when first measured and more
    than that over its last recorded steps: the steps in between killed them."""
    table = view.metric("dead_frac")
    if table.empty:
        return False
    first = table.apply(lambda c: c.dropna().iloc[0] if c.notna().any() else np.nan)
    recent = _recent(table)
    return bool(((first <= DEAD_WARN) & (recent > DEAD_WARN)).any())


def _collapse(view: View, per_step) -> dict | None:
    if (
        len(per_step) < 2 * EARLY_STEPS
        or float(per_step.iloc[:EARLY_STEPS].max()) <= COLLAPSE_AFTER
    ):
        return None
    g, w = view.metric("grad_norm"), view.metric("weight_norm")
    if g.empty or w.empty:
        return None
    cols = [c for c in view.moving(g.columns) if c in w.columns]
    rel = (g[cols] / w[cols]).replace([np.inf, -np.inf], np.nan).median(axis=1).dropna()
    if len(rel) < 2 * EARLY_STEPS:
        return None
    before, after = float(rel.iloc[:3].median()), float(rel.iloc[-EARLY_STEPS:].median())
    if not (after > 0 and before / after > COLLAPSE):
        return None
    if loss_progressed(view):
        return None  # a net that fits its data may well end with small gradients
    return {
        "grad_over_weight_first": before,
        "grad_over_weight_recent": after,
        "fall": before / after,
    }


def loss_halved(view: View) -> bool:
    """The logged loss's last steps average under half its first ones: the run fits its data.
    Early updates as large as the weights are then weights growing into their scale from a small
    init (logistic regression from zero), not instability."""
    loss = view.metric("loss")
    if loss.empty:
        return False
    values = loss.iloc[:, 0].to_numpy(dtype=float)
    values = values[np.isfinite(values)]
    # Halving means something only for a loss bounded below by 0 (a GAN generator's log(1 - D)
    # is negative).
    return (
        len(values) >= 2 * EARLY_STEPS
        and bool((values >= 0).all())
        # Medians: one spike among the first steps (Adam at too high a rate) must not make a loss
        # that ends where it started look halved.
        and bool(np.median(values[-EARLY_STEPS:]) < 0.5 * np.median(values[:5]))
    )


def loss_progressed(view: View) -> bool:
    """The loss made the progress a run of its length should: it halved (`loss_halved`), or, in a
    run too short to expect that (fewer than SHORT_RUN logged steps: a check's rehearsal), its last
    steps' median sits below LR_NO_PROGRESS of its first ones', and every value is finite."""
    if loss_halved(view):
        return True
    loss = view.metric("loss")
    if loss.empty:
        return False
    values = loss.iloc[:, 0].to_numpy(dtype=float)
    return (
        2 * EARLY_STEPS <= len(values) < SHORT_RUN
        and bool(np.isfinite(values).all())
        and bool((values >= 0).all())
        and bool(np.median(values[-EARLY_STEPS:]) < LR_NO_PROGRESS * np.median(values[:5]))
    )


def loss_falls(view: View) -> bool:
    """The logged loss's last tenth averages below its first tenth."""
    loss = view.metric("loss")
    if loss.empty:
        return False
    values = loss.iloc[:, 0].to_numpy(dtype=float)
    values = values[np.isfinite(values)]
    k = max(1, len(values) // 10)
    return len(values) >= 2 * EARLY_STEPS and bool(np.mean(values[-k:]) < np.mean(values[:k]))


def _output_activations(view: View) -> set[str]:
    """Activation layers after the last layer with parameters: the model's output activation."""
    params = set(view.param_layers)
    last = max((i for i, n in enumerate(view.order) if n in params), default=-1)
    return {n for n in view.order[last + 1 :] if n in view.activations}


def _reached_below(view: View) -> set[str]:
    """Layers after (in the forward pass) some layer whose back-propagated signal at the first
    step is at least BRANCH_REACHED of the median layer's: the signal got below them."""
    b = view.metric("backflow_norm")
    if b.empty:
        return set()
    first = b.iloc[0].dropna()
    first = first[[n for n in first.index if view.type_of(n) not in NORM_TYPES]]
    first = first[first > 0]
    if len(first) < 2:
        return set()
    strong = set(first.index[first >= BRANCH_REACHED * float(first.median())])
    out, seen = set(), False
    for n in view.order:
        if seen:
            out.add(n)
        seen = seen or n in strong
    return out
