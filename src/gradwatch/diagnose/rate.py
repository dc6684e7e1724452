"""The learning rate as a cause: steps so large that the loss spikes or diverges, or so small that
the loss is still falling steadily when training stops."""

from __future__ import annotations

import numpy as np

from gradwatch.diagnose.advice import lr_remedies
from gradwatch.diagnose.finding import Finding
from gradwatch.diagnose.thresholds import (
    GRAD_AT_INIT,
    LR_COHERENT,
    LR_EARLY,
    LR_HIGH_UPDATE,
    LR_LOW_GAIN,
    LR_LOW_UPDATE,
    LR_LOW_WARN,
    LR_MIN_STEPS,
    LR_NO_PROGRESS,
    LR_SPIKE,
    LR_STILL_FALLING,
    UNSTABLE_ERROR,
)
from gradwatch.diagnose.view import View
from gradwatch.display.format import fmt


def _median_updates(view: View) -> np.ndarray:
    upd = view.metric("update_ratio")
    if upd.empty:
        return np.array([])
    upd = upd[view.moving(upd.columns)].replace([np.inf, -np.inf], np.nan)
    return upd.median(axis=1, skipna=True).dropna().to_numpy(dtype=float)


def detect_learning_rate(view: View) -> list[Finding]:
    """Too high: over the first steps the median layer moves more than 3e-2 of its weights per
    step and the loss spikes above 1.1x its first value and ends above 0.8x it (no lasting
    progress), or goes non-finite. Too low: updates stay
    below 3e-3, the loss has not fallen by half and is still falling at the end as fast as on
    average (training stopped long before it converged)."""
    med = _median_updates(view)
    table = view.metric("loss")
    if not len(med) or table.empty:
        return []
    loss = table.iloc[:, 0].to_numpy(dtype=float)
    logged = loss[~np.isnan(loss)] if np.isnan(loss).any() else loss
    if len(logged) < 3:
        return []
    first = float(logged[0])
    early = float(np.median(med[:LR_EARLY]))
    nonfinite = bool((~np.isfinite(logged)).any())
    finite = logged[np.isfinite(logged)]
    peak = float(finite[1:].max()) if len(finite) > 1 else first
    if nonfinite and log_of_probability(view):
        # log(softmax) / log(sigmoid) underflows to log 0 at any learning rate: the loss's
        # numerics, not the step size, make it non-finite (the nonfinite finding says so).
        nonfinite = False
    spike = nonfinite or (first > 0 and peak > LR_SPIKE * first)
    # A spike the loss recovers from, ending well below where it started, is the noise of a large
    # but workable step: the evidence for "too high" is a loss that spikes and makes no lasting
    # progress (or goes non-finite).
    tail = finite[-max(1, len(finite) // 10) :]
    stuck = nonfinite or (first > 0 and float(np.mean(tail)) > LR_NO_PROGRESS * first)
    if early > LR_HIGH_UPDATE and spike and stuck:
        severity = (
            "error" if nonfinite or early > UNSTABLE_ERROR / 3 or peak > 10 * first else "warning"
        )
        rose = "went non-finite" if nonfinite else f"rose to {fmt(peak)} from {fmt(first)}"
        summary = (
            f"The learning rate is too high: over the first {min(LR_EARLY, len(med))} steps the "
            f"median layer moved {fmt(early)} of its weights per step (~1e-3 is healthy) and the "
            f"loss {rose}."
        )
        evidence = {"early_update_ratio": early, "loss_first": first, "loss_peak": peak}
        evidence["nonfinite_loss"] = nonfinite
        at_init = view.gradient_at_init
        if at_init is not None and at_init > GRAD_AT_INIT:
            evidence["gradient_at_init"] = at_init
        return [
            Finding(
                "bad_learning_rate",
                severity,
                tuple(view.param_layers),
                summary,
                evidence,
                lr_remedies(view, early, high=True),
                view.steps[0],
            )
        ]
    if len(finite) < LR_MIN_STEPS or len(finite) != len(logged) or first <= 0:
        return []
    if _warming_up(view):
        return []  # a scheduler's warm-up starts low by design and raises the rate itself
    late = float(np.median(med[len(med) // 2 :]))
    quarter = max(2, len(finite) // 4)
    x = np.arange(len(finite), dtype=float)
    overall = np.polyfit(x, finite, 1)[0]
    end = np.polyfit(x[-quarter:], finite[-quarter:], 1)[0]
    last = float(np.mean(finite[-quarter:]))
    if (
        late < LR_LOW_UPDATE
        and float(np.max(med)) < LR_HIGH_UPDATE
        and overall < 0
        and end <= LR_STILL_FALLING * overall
        and last > LR_LOW_GAIN * first
    ):
        # Updates near the healthy 1e-3 are slow evidence: a rate that may be merely careful is
        # said (info), not warned about, unless the steps agree (they creep one way down a slope
        # at a size too small for it); far below it (LR_LOW_WARN) nothing can move.
        path, coherence = _travel(view)
        coherent = coherence is not None and coherence >= LR_COHERENT
        severity = "warning" if late < LR_LOW_WARN or coherent else "info"
        summary = (
            f"The learning rate looks too low: the median layer moves {fmt(late)} of its weights "
            f"per step and the loss is still falling as fast at the end as on average, at "
            f"{fmt(last)} from {fmt(first)}: training stops long before it converges."
        )
        if coherent:
            summary += (
                f" The steps agree: over the run the weights' norm changed by "
                f"{fmt(100 * coherence)}% of the distance the updates walked ({fmt(path)} of "
                "their size in all), so larger steps would go further the same way."
            )
        evidence = {"late_update_ratio": late, "loss_first": first, "loss_last": last}
        if coherence is not None:
            evidence.update(path=path, coherence=coherence)
        return [
            Finding(
                "bad_learning_rate",
                severity,
                tuple(view.param_layers),
                summary,
                evidence,
                lr_remedies(view, late, high=False, path=path if coherent else None),
                view.steps[0],
            )
        ]
    return []


def _travel(view: View) -> tuple[float | None, float | None]:
    """Median over layers of the path the updates walked (Σ‖Δw‖/‖w‖ over the run, from the mean
    recorded update ratio) and of how much of it went one way (|‖w_end‖ - ‖w_start‖| / ‖w_start‖
    over that path: a lower bound on the net displacement's share)."""
    upd, norm = view.metric("update_ratio"), view.metric("weight_norm")
    if upd.empty or norm.empty:
        return None, None
    paths, shares = [], []
    for col in view.moving(upd.columns):
        u = upd[col].replace([np.inf, -np.inf], np.nan).dropna()
        w = norm[col].dropna() if col in norm.columns else None
        if w is None or len(u) < 2 or len(w) < 2 or not w.iloc[0] > 0:
            continue
        path = float(u.mean()) * float(w.index[-1] - w.index[0])
        if path > 0:
            paths.append(path)
            shares.append(abs(float(w.iloc[-1] - w.iloc[0])) / float(w.iloc[0]) / path)
    if not paths:
        return None, None
    return float(np.median(paths)), float(np.median(shares))


def log_of_probability(view: View) -> bool:
    """The loss's graph takes the log of a softmax or sigmoid output (clamps aside)."""
    head = ((view.meta.get("probes", {}).get("loop") or {}).get("graph") or {}).get("head") or []
    for i, op in enumerate(head[:-1]):
        if op == "LogBackward0":
            below = next((o for o in head[i + 1 :] if o not in ("ClampBackward1",)), None)
            if below in ("SoftmaxBackward0", "SigmoidBackward0"):
                return True
    return False


def _warming_up(view: View) -> bool:
    """A scheduler's warm-up is under way: some group's rate is below the one it returns to."""
    opt = view.meta.get("optimizer") or {}
    lrs, initial = opt.get("lr") or [], opt.get("initial_lr") or []
    return any(i > 1.5 * lr for lr, i in zip(lrs, initial, strict=False))
