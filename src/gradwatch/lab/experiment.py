"""What one lab experiment is: a claim from the literature, a run that measures it, and a verdict.

The verdict is a pure function of the measured numbers (`judge`), kept apart from the run so it
can be tested on both outcomes without training anything.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Settings:
    """How to run: `quick` is the honestly scaled-down form; `out` is this experiment's own
    folder."""

    quick: bool
    seed: int
    out: Path
    progress: Callable[[float], None] = lambda fraction: None


@dataclass
class Figure:
    """A line (or bar) chart the results page draws: `lines` maps a label to (xs, ys).

    xs are numbers, or category names (strings) for a bar chart.
    """

    title: str
    x_label: str
    y_label: str
    lines: dict[str, tuple[list[float] | list[str], list[float]]]
    log_y: bool = False
    kind: str = "line"  # "line" or "bar"

    def to_dict(self) -> dict[str, Any]:
        return {
            "title": self.title,
            "x_label": self.x_label,
            "y_label": self.y_label,
            "log_y": self.log_y,
            "kind": self.kind,
            "lines": {
                k: {
                    "x": [v if isinstance(v, str) else float(v) for v in x],
                    "y": list(map(float, y)),
                }
                for k, (x, y) in self.lines.items()
            },
        }


@dataclass
class Outcome:
    """What a run returns: its settings, its numbers (JSON-ready), figures and stored run
    folders."""

    setup: dict[str, Any]
    measured: dict[str, Any]
    figures: list[Figure] = field(default_factory=list)
    runs: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Experiment:
    name: str
    claim: str
    source: str
    expected: str  # the literature's expected outcome and the tolerance, in words
    run: Callable[[Settings], Outcome]
    judge: Callable[[dict[str, Any]], bool]  # measured -> reproduced; pure, no torch
