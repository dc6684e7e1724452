"""What-if at initialisation: each remedy that fits, applied to a deep copy and checked again.

A remedy is judged by what the re-check measures, not by what it promises: which findings remain,
and how the back-propagated signal reaching the first layer (or the first time step) compares
with the last. The user's model is never changed: `remedies.apply` works on a deep copy.
"""

from __future__ import annotations

import math
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


def _problems(d: Diagnosis) -> list[str]:
    return sorted({f.kind for f in d.findings if f.severity in _PROBLEMS})


def signal(d: Diagnosis, stats: pd.DataFrame) -> dict | None:
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
        found.append({"where": "first layer", "ratio": float(trend["total"])})
    rows = stats[(stats["metric"] == "time_grad_norm") & (stats["index"] >= 0)]
    for _, group in rows.groupby("layer", sort=False):
        values = group.sort_values("index")["value"].to_numpy(dtype=float)
        if len(values) >= 2 and np.isfinite(values).all() and values[-1] > 0 and values[0] > 0:
            found.append({"where": "first time step", "ratio": float(values[0] / values[-1])})
    return max(found, key=lambda s: abs(math.log10(s["ratio"]))) if found else None


def _fmt(x: float) -> str:
    return f"{x:.2g}" if 1e-2 <= abs(x) < 1e3 else f"{x:.0e}"


def _line(name: str, before: dict | None, after: dict | None, fixed: bool, left: list[str]) -> str:
    parts = [name + ":"]
    if before and after and before["where"] == after["where"]:
        parts.append(
            f"{before['where']} signal {_fmt(before['ratio'])} -> {_fmt(after['ratio'])} of the last"
        )
    elif after:
        parts.append(f"{after['where']} signal {_fmt(after['ratio'])} of the last")
    parts.append(
        "fixes every finding"
        if fixed
        else f"leaves {', '.join(left)}"
        if left
        else "no finding before or after"
    )
    return " ".join(parts[:1]) + " " + "; ".join(parts[1:])


def what_if(
    model: nn.Module, inputs: Any, target: Any, loss_fn, diagnosis: Diagnosis, stats: pd.DataFrame
) -> list[dict]:
    """Every applicable remedy, applied to a deep copy and re-checked; best first.

    Ranked by: all warnings and errors gone first, then fewest errors, fewest warnings, then the
    signal ratio closest to 1 (|log10|). Entries: remedy, summary, fixed, findings_before/after,
    signal_before/after ({"where", "ratio"}), line (one sentence), error (why it could not run).
    """
    from gradwatch.checks.at_init import _run

    before, sig_before = _problems(diagnosis), signal(diagnosis, stats)
    entries = []
    for name in R.applicable(model, inputs):
        entry: dict = {
            "remedy": name,
            "summary": R.REMEDIES[name].summary,
            "findings_before": before,
            "signal_before": sig_before,
        }
        try:
            copy = R.apply(name, model, inputs, generator=torch.Generator().manual_seed(SEED))
            after, after_stats = _run(copy, inputs, target, loss_fn, predict=False)
        except Exception as exc:  # noqa: BLE001 - one remedy that cannot run must not stop the others
            reason = (
                str(exc)
                if isinstance(exc, GradwatchError)
                else f"{type(exc).__name__}: {str(exc).strip().splitlines()[0][:160] if str(exc).strip() else 'no message'}"
            )
            entries.append(
                {
                    **entry,
                    "fixed": False,
                    "error": reason,
                    "findings_after": None,
                    "signal_after": None,
                    "line": f"{name}: could not be tried ({reason})",
                }
            )
            continue
        left = _problems(after)
        sig = signal(after, after_stats)
        fixed = bool(before) and not left
        entries.append(
            {
                **entry,
                "fixed": fixed,
                "findings_after": left,
                "signal_after": sig,
                "errors_after": sum(f.severity == "error" for f in after.findings),
                "warnings_after": sum(f.severity == "warning" for f in after.findings),
                "line": _line(name, sig_before, sig, fixed, left),
            }
        )

    def rank(e: dict) -> tuple:
        if e.get("error"):
            return (2, 0, 0, 0.0)
        spread = abs(math.log10(e["signal_after"]["ratio"])) if e["signal_after"] else 0.0
        return (0 if e["fixed"] else 1, e["errors_after"], e["warnings_after"], spread)

    return sorted(entries, key=rank)
