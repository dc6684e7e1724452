"""Detectors: pure functions of the stats table (and its meta) that return findings.

They run the same on a live Watch and on a run read from disk, at initialisation (one step) and
during training (many).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from gradwatch.diagnose.finding import KINDS, Diagnosis, Finding, Remedy

if TYPE_CHECKING:
    import pandas as pd


def diagnose(stats: pd.DataFrame, meta: dict | None = None) -> Diagnosis:
    """Run every detector over a stats table; findings come root cause first (each consequence
    names its cause in `caused_by`).

    The detectors (and pandas) are imported on the first call, not with this package: a watch
    imports it for the finding kinds and pays for the detectors at its first flush."""
    from gradwatch.diagnose.detect import diagnose as run

    return run(stats, meta)


__all__ = ["KINDS", "Diagnosis", "Finding", "Remedy", "diagnose"]
