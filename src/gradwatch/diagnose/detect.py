"""The detectors in the order they run, and `diagnose()`, which runs them all over a stats table.

Kept out of the package's `__init__` so that what a watch imports from `gradwatch.diagnose` (the
finding kinds, `Finding`, `Diagnosis`) does not import pandas and every detector with it.
"""

from __future__ import annotations

import pandas as pd

from gradwatch.diagnose.causes import order_by_cause
from gradwatch.diagnose.depth import depth_trend, detect_depth
from gradwatch.diagnose.finding import Diagnosis, Finding
from gradwatch.diagnose.layerwise import (
    detect_dead,
    detect_nonfinite,
    detect_saturation,
    detect_stalled,
    detect_unstable,
)
from gradwatch.diagnose.loop import (
    detect_no_gradient,
    detect_output_loss,
    detect_uncleared,
    detect_unscaled,
)
from gradwatch.diagnose.progress import detect_constant, detect_idle
from gradwatch.diagnose.rate import detect_learning_rate
from gradwatch.diagnose.temporal import detect_plateau, detect_through_time
from gradwatch.diagnose.view import View

DETECTORS = (
    detect_uncleared,
    detect_output_loss,
    detect_unscaled,
    detect_no_gradient,
    detect_learning_rate,
    detect_nonfinite,
    detect_depth,
    detect_saturation,
    detect_dead,
    detect_stalled,
    detect_unstable,
    detect_through_time,
    detect_plateau,
    detect_constant,
    detect_idle,
)
_RANK = {"error": 0, "warning": 1, "info": 2}


def diagnose(stats: pd.DataFrame, meta: dict | None = None) -> Diagnosis:
    """Run every detector over a stats table; findings come root cause first (each consequence
    names its cause in `caused_by`)."""
    view = View(stats, meta or {})
    if stats.empty:
        return Diagnosis([], {"steps": 0, "layers": 0}, stats, meta)
    findings: list[Finding] = []
    for detector in DETECTORS:
        findings.extend(detector(view))
    if any(f.kind == "nonfinite" for f in findings):
        # Once values are NaN, trends computed from them say nothing new.
        findings = [f for f in findings if f.kind not in ("vanishing_gradient",)]
    findings = order_by_cause(_one_per_kind(findings))
    summary = {
        "steps": view.n_steps,
        "first_step": view.steps[0],
        "last_step": view.steps[-1],
        "layers": len(view.order),
    }
    trend = depth_trend(view, view.steps[-1])
    if trend is not None:
        summary["depth_trend"] = {k: trend[k] for k in ("metric", "per_layer", "total", "n_layers")}
    return Diagnosis(findings, summary, stats, meta)


def _one_per_kind(findings: list[Finding]) -> list[Finding]:
    """Several detectors can find one kind (a plateau from the loss and from idle updates); a
    reader wants it once: the most severe, the earliest among equals."""
    best: dict[str, Finding] = {}
    for f in findings:
        kept = best.get(f.kind)
        if kept is None or (_RANK[f.severity], f.step if f.step is not None else 0) < (
            _RANK[kept.severity],
            kept.step if kept.step is not None else 0,
        ):
            best[f.kind] = f
    return [f for f in findings if best[f.kind] is f]
