"""What-if at initialisation: each remedy that fits, applied to a deep copy and checked again.

A remedy is judged by what the re-check measures, not by what it promises: which findings remain,
and how the back-propagated signal reaching the first layer (or the first time step) compares
with the last. The user's model is never changed: `remedies.apply` works on a deep copy.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from gradwatch import remedies as R
from gradwatch.diagnose import Diagnosis
from gradwatch.errors import GradwatchError

SEED = 0  # every random init in a what-if draws from this seed, so the ranking is reproducible
_PROBLEMS = ("warning", "error")


@dataclass(frozen=True)
class SignalRatio:
    """How much of the back-propagated signal reaches the start of the model."""

    where: str  # "first layer" (through depth) or "first time step" (through time)
    ratio: float  # ‖∂L/∂h‖ there over the last layer's or time step's (unitless, > 0)

    def to_dict(self) -> dict:
        return {"where": self.where, "ratio": self.ratio}


@dataclass(frozen=True)
class RemedyTrial:
    """One remedy function of `gradwatch.remedies.REMEDIES` applied to a deep copy of the model
    and checked again: one entry of `Diagnosis.what_if`.

    Finding kinds are those of severity warning or error, sorted. A trial that could not run has
    `error` set and no `findings_after`, `errors_after` or `warnings_after`.
    """

    remedy: str  # the remedy's name in REMEDIES, e.g. "swap_activation:relu+he_init"
    summary: str  # what the remedy changes, one phrase
    findings_before: tuple[str, ...]  # finding kinds of the original check
    signal_before: SignalRatio | None  # the original check's signal ratio; None if unmeasured
    fixed: bool  # the original had findings and the copy has none
    findings_after: tuple[str, ...] | None  # finding kinds of the copy's check; None on error
    signal_after: SignalRatio | None  # the copy's signal ratio; None if unmeasured or on error
    line: str  # one sentence a person reads: what changed, what is left
    errors_after: int | None = None  # error findings of the copy's check (a count)
    warnings_after: int | None = None  # warning findings of the copy's check (a count)
    error: str | None = None  # why the remedy could not be tried; None when it ran

    def to_dict(self) -> dict:
        out: dict = {
            "remedy": self.remedy,
            "summary": self.summary,
            "findings_before": list(self.findings_before),
            "signal_before": _signal_dict(self.signal_before),
            "fixed": self.fixed,
        }
        after = {
            "findings_after": None if self.findings_after is None else list(self.findings_after),
            "signal_after": _signal_dict(self.signal_after),
        }
        if self.error is not None:
            return {**out, "error": self.error, **after, "line": self.line}
        counts = {"errors_after": self.errors_after, "warnings_after": self.warnings_after}
        return {**out, **after, **counts, "line": self.line}


def _signal_dict(s: SignalRatio | None) -> dict | None:
    return None if s is None else s.to_dict()


def _problems(d: Diagnosis) -> tuple[str, ...]:
    return tuple(sorted({f.kind for f in d.findings if f.severity in _PROBLEMS}))


def signal(d: Diagnosis, stats: pd.DataFrame) -> SignalRatio | None:
    """The measured spread of the back-propagated signal: through depth (first layer over last)
    or, where the model is recurrent, through time (first step over last), whichever is worse."""
    found = []
    trend = d.summary.get("depth_trend")
    if (
        trend
        and trend.get("total") is not None
        and math.isfinite(trend["total"])
        and trend["total"] > 0
    ):
        found.append(SignalRatio("first layer", float(trend["total"])))
    rows = stats[(stats["metric"] == "time_grad_norm") & (stats["index"] >= 0)]
    for _, group in rows.groupby("layer", sort=False):
        values = group.sort_values("index")["value"].to_numpy(dtype=float)
        if len(values) >= 2 and np.isfinite(values).all() and values[-1] > 0 and values[0] > 0:
            found.append(SignalRatio("first time step", float(values[0] / values[-1])))
    return max(found, key=lambda s: abs(math.log10(s.ratio))) if found else None


def _fmt(x: float) -> str:
    return f"{x:.2g}" if 1e-2 <= abs(x) < 1e3 else f"{x:.0e}"


def _line(
    name: str,
    before: SignalRatio | None,
    after: SignalRatio | None,
    fixed: bool,
    left: tuple[str, ...],
) -> str:
    parts = [name + ":"]
    if before and after and before.where == after.where:
        parts.append(
            f"{before.where} signal {_fmt(before.ratio)} -> {_fmt(after.ratio)} of the last"
        )
    elif after:
        parts.append(f"{after.where} signal {_fmt(after.ratio)} of the last")
    parts.append(
        "fixes every finding"
        if fixed
        else f"leaves {', '.join(left)}"
        if left
        else "no finding before or after"
    )
    return " ".join(parts[:1]) + " " + "; ".join(parts[1:])


def _reason(exc: Exception) -> str:
    """Why a remedy could not be tried, in one line: a GradwatchError's own sentence, else the
    exception's type and the first line of its message."""
    if isinstance(exc, GradwatchError):
        return str(exc)
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0][:160] if text else 'no message'}"


def what_if(
    model: nn.Module, inputs: Any, target: Any, loss_fn, diagnosis: Diagnosis, stats: pd.DataFrame
) -> list[RemedyTrial]:
    """Every applicable remedy, applied to a deep copy and re-checked; best first.

    Ranked by: all warnings and errors gone first, then fewest errors, fewest warnings, then the
    signal ratio closest to 1 (|log10|); remedies that could not run last.
    """
    from gradwatch.checks.at_init import _run

    before, sig_before = _problems(diagnosis), signal(diagnosis, stats)
    trials = []
    for name in R.applicable(model, inputs):
        trial = partial(
            RemedyTrial,
            remedy=name,
            summary=R.REMEDIES[name].summary,
            findings_before=before,
            signal_before=sig_before,
        )
        try:
            copy = R.apply(name, model, inputs, generator=torch.Generator().manual_seed(SEED))
            after, after_stats = _run(copy, inputs, target, loss_fn, predict=False)
        except Exception as exc:  # noqa: BLE001 - any remedy, any model
            # One remedy that cannot run must not stop the others: it is reported and ranked last.
            reason = _reason(exc)
            trials.append(
                trial(
                    fixed=False,
                    findings_after=None,
                    signal_after=None,
                    line=f"{name}: could not be tried ({reason})",
                    error=reason,
                )
            )
            continue
        left = _problems(after)
        sig = signal(after, after_stats)
        fixed = bool(before) and not left
        trials.append(
            trial(
                fixed=fixed,
                findings_after=left,
                signal_after=sig,
                line=_line(name, sig_before, sig, fixed, left),
                errors_after=sum(f.severity == "error" for f in after.findings),
                warnings_after=sum(f.severity == "warning" for f in after.findings),
            )
        )

    def rank(t: RemedyTrial) -> tuple:
        if t.error is not None:
            return (2, 0, 0, 0.0)
        spread = abs(math.log10(t.signal_after.ratio)) if t.signal_after else 0.0
        return (0 if t.fixed else 1, t.errors_after, t.warnings_after, spread)

    return sorted(trials, key=rank)
