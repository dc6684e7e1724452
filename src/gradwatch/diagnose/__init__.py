"""Detectors: pure functions of the stats table (and its meta) that return findings.

They run the same on a live Watch and on a run read from disk, at initialisation (one step) and
during training (many).
"""

from __future__ import annotations

import pandas as pd

from .depth import depth_trend, detect_depth
from .finding import KINDS, Diagnosis, Finding, Remedy
from .layerwise import (
    detect_dead,
    detect_nonfinite,
    detect_saturation,
    detect_stalled,
    detect_unstable,
)
from .temporal import detect_plateau, detect_through_time
from .view import View

DETECTORS = (
    detect_nonfinite,
    detect_depth,
    detect_saturation,
    detect_dead,
    detect_stalled,
    detect_unstable,
    detect_through_time,
    detect_plateau,
)
_RANK = {"error": 0, "warning": 1, "info": 2}


def diagnose(stats: pd.DataFrame, meta: dict | None = None) -> Diagnosis:
    """Run every detector over a stats table; findings come errors first."""
    view = View(stats, meta or {})
    if stats.empty:
        return Diagnosis([], {"steps": 0, "layers": 0}, stats, meta)
    findings: list[Finding] = []
    for detector in DETECTORS:
        findings.extend(detector(view))
    if any(f.kind == "nonfinite" for f in findings):
        # Once values are NaN, trends computed from them say nothing new.
        findings = [f for f in findings if f.kind not in ("vanishing_gradient",)]
    findings.sort(key=lambda f: _RANK[f.severity])
    summary = {"steps": view.n_steps, "first_step": view.steps[0], "last_step": view.steps[-1], "layers": len(view.order)}
    trend = depth_trend(view, view.steps[-1])
    if trend is not None:
        summary["depth_trend"] = {k: trend[k] for k in ("metric", "per_layer", "total", "n_layers")}
    return Diagnosis(findings, summary, stats, meta)


__all__ = ["KINDS", "Diagnosis", "Finding", "Remedy", "diagnose"]
