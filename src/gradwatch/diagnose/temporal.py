"""Findings over time: gradients vanishing or exploding through the steps of a recurrent layer,
and a loss that does not move."""

from __future__ import annotations

import numpy as np

from gradwatch.diagnose.advice import plateau_remedies, through_time_remedies
from gradwatch.diagnose.finding import Finding
from gradwatch.diagnose.thresholds import (
    MIN_TIME_STEPS,
    PLATEAU_GAIN,
    PLATEAU_STEPS,
    TIME_EXPLODE_ERROR,
    TIME_EXPLODE_WARN,
    TIME_VANISH_ERROR,
    TIME_VANISH_WARN,
)
from gradwatch.diagnose.view import View, fit_log_slope
from gradwatch.display.format import fmt, names, times

GATED = {"LSTM", "GRU", "LSTMCell", "GRUCell"}


def _series_ratio(values: np.ndarray) -> tuple[float, float]:
    """(first over last, per-step factor) of a through-time series, robust to a few zeros."""
    head = values[: max(1, len(values) // 20)]
    tail = values[-max(1, len(values) // 20) :]
    last = float(np.mean(tail))
    ratio = float(np.mean(head)) / last if last > 0 else float("nan")
    positive = values[values > 0]
    slope, _ = fit_log_slope(positive) if len(positive) >= 2 else (0.0, 0.0)
    return ratio, float(10 ** (-slope))


def detect_through_time(view: View) -> list[Finding]:
    rows = view.series("time_grad_norm")
    if rows.empty:
        return []
    vanishing, exploding = {}, {}
    first_step: dict[str, int] = {}
    judged: dict[str, int] = {}  # series per layer
    vanished: dict[str, int] = {}  # of which vanishing
    worst_seen: dict[str, dict] = {}
    first_judged: dict[str, bool] = {}  # whether the first series judged had vanished
    for (step, layer), group in rows.groupby(["step", "layer"], sort=True):
        values = group.sort_values("index")["value"].to_numpy(dtype=float)
        if len(values) < MIN_TIME_STEPS or not np.isfinite(values).all():
            continue
        ratio, per_step = _series_ratio(values)
        entry = {
            "ratio": ratio,
            "per_step_factor": per_step,
            "length": len(values),
            "step": int(step),
        }
        judged[layer] = judged.get(layer, 0) + 1
        first_judged.setdefault(layer, ratio < TIME_VANISH_WARN)
        if ratio < TIME_VANISH_WARN:
            vanishing[layer] = entry
            vanished[layer] = vanished.get(layer, 0) + 1
            if layer not in worst_seen or ratio < worst_seen[layer]["ratio"]:
                worst_seen[layer] = entry
            first_step.setdefault(f"v{layer}", int(step))
        elif ratio > TIME_EXPLODE_WARN:
            exploding[layer] = entry
            first_step.setdefault(f"e{layer}", int(step))
        else:
            # Vanishing is judged on the latest step that has a series (training may cure it);
            # an explosion already happened and its overshooting steps are done, so it stays.
            vanishing.pop(layer, None)
    # Kept when it held from the start or on most recorded steps, and training has not made up
    # for it since: a vanilla RNN under Adam grows its recurrent weights until the ratio passes the
    # threshold while the loss stays at chance (the steps lost early are not undone).
    lapsed = {
        n: first_step[f"v{n}"]
        for n in worst_seen
        if n not in vanishing and (first_judged[n] or 2 * vanished[n] >= judged[n])
    }
    for layer in _loss_not_halved(view, lapsed):
        vanishing[layer] = {**worst_seen[layer], "cured": False}
    findings = []
    for kind, found, error_at, word in (
        ("vanishing_through_time", vanishing, lambda r: r < TIME_VANISH_ERROR, "shrinks"),
        ("exploding_through_time", exploding, lambda r: r > TIME_EXPLODE_ERROR, "grows"),
    ):
        if not found:
            continue
        layers = [n for n in view.order if n in found] or list(found)
        worst = (
            min(found.values(), key=lambda e: e["ratio"])
            if word == "shrinks"
            else max(found.values(), key=lambda e: e["ratio"])
        )
        summary = (
            f"In {names(layers)} the gradient {word} {times(worst['per_step_factor'])} per time "
            f"step: the first of {worst['length']} steps gets {fmt(worst['ratio'])} of what the "
            "last gets."
        )
        severity = "error" if any(error_at(e["ratio"]) for e in found.values()) else "warning"
        gated = all(view.type_of(n) in GATED for n in layers)
        if word == "shrinks" and gated and severity == "warning":
            # LSTM/GRU gates start half-open and learn to carry memory (Hochreiter & Schmidhuber
            # 1997): a moderate decay at this point is expected, not yet a problem.
            severity = "info"
        step = min(first_step[("v" if word == "shrinks" else "e") + n] for n in found)
        findings.append(
            Finding(
                kind,
                severity,
                tuple(layers),
                summary,
                {"layers": found},
                through_time_remedies(view, layers, word == "shrinks"),
                step,
            )
        )
    return findings


def _loss_not_halved(view: View, since: dict[str, int]) -> list[str]:
    """The layers of `since` (layer -> step) at whose step the loss was less than twice what it
    is now. A vanilla RNN on a long-memory task can rise above the vanishing threshold after a few
    hundred steps while still at the task's baseline: the lost steps are not undone."""
    loss = view.metric("loss")
    if not since or loss.empty:
        return []
    values = loss.iloc[:, 0].replace([np.inf, -np.inf], np.nan).dropna()
    if len(values) < PLATEAU_STEPS:
        return []
    recent = float(values.iloc[-max(5, len(values) // 5) :].mean())
    out = []
    for layer, step in since.items():
        then = values[values.index <= step]
        start = float(then.iloc[-5:].mean()) if len(then) else float(values.iloc[:5].mean())
        if start > 0 and recent > 0.5 * start:
            out.append(layer)
    return out


def detect_plateau(view: View) -> list[Finding]:
    loss = view.metric("loss")
    if loss.empty or len(loss) < PLATEAU_STEPS:
        return []
    values = loss.iloc[:, 0].to_numpy(dtype=float)
    values = values[np.isfinite(values)]
    if len(values) < PLATEAU_STEPS:
        return []
    start = float(np.mean(values[:5]))
    recent = float(np.mean(values[-max(5, len(values) // 5) :]))
    best = float(np.min(values))
    if start <= 0 or recent < (1 - PLATEAU_GAIN) * start or best < (1 - 2 * PLATEAU_GAIN) * start:
        return []
    summary = (
        f"The loss has not moved: {fmt(start)} at the start, {fmt(recent)} over the last "
        f"{max(5, len(values) // 5)} recorded steps, after {len(values)} steps."
    )
    evidence = {"start_loss": start, "recent_loss": recent, "best_loss": best, "steps": len(values)}
    return [
        Finding(
            "loss_plateau",
            "warning",
            (),
            summary,
            evidence,
            plateau_remedies(view),
            int(loss.index[PLATEAU_STEPS - 1]),
        )
    ]
