"""The stats table shaped for display: one `ReportRun` per run, steps downsampled for long runs.

Pure pandas/numpy; no plotting here. A live Watch and a stored run give the same `ReportRun`, so
every view below reads one thing.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from gradwatch.diagnose import Diagnosis, Finding, diagnose
from gradwatch.errors import ReportError, RunNotFoundError
from gradwatch.store import Run, findings_current, normalize, read_run

MAX_STEPS = 400  # display columns per heatmap: a screen is ~1000 px wide, more is noise and bytes
LOSS_LAYER = "(model)"
# Counts must not be smoothed away: a single NaN step in a bucket still shows.
_MAX_METRICS = {"nonfinite"}


@dataclass(eq=False)
class ReportRun:
    """One run as the report shows it. `stats` is already downsampled (see `downsample`)."""

    name: str
    stats: pd.DataFrame
    meta: dict
    layers: list[str]
    diagnosis: Diagnosis
    n_steps: int  # recorded steps before downsampling
    n_shown: int  # step columns after downsampling
    path: Path | None = None
    types: dict[str, str] = field(default_factory=dict)
    _pivots: dict[str, pd.DataFrame] = field(default_factory=dict, repr=False)

    def type_of(self, layer: str) -> str:
        return self.types.get(layer, "")

    def metric(self, name: str) -> pd.DataFrame:
        """`[step x layer]` of a per-layer scalar metric, columns in forward order (cached)."""
        if name not in self._pivots:
            rows = self.stats[(self.stats["metric"] == name) & (self.stats["index"] == -1)]
            if rows.empty:
                table = pd.DataFrame()
            else:
                table = rows.pivot_table(
                    index="step", columns="layer", values="value", aggfunc="last", dropna=False
                )
                table = table[[c for c in self.layers if c in table.columns]].sort_index()
            self._pivots[name] = table
        return self._pivots[name]

    def series(self, name: str, layer: str) -> pd.DataFrame:
        """`[index x step]` of an indexed metric (histogram bin, time step) for one layer."""
        rows = self.stats[
            (self.stats["metric"] == name)
            & (self.stats["layer"] == layer)
            & (self.stats["index"] >= 0)
        ]
        if rows.empty:
            return pd.DataFrame()
        return rows.pivot_table(
            index="index", columns="step", values="value", aggfunc="last", dropna=False
        ).sort_index()

    def layers_with(self, name: str) -> list[str]:
        present = set(self.stats.loc[self.stats["metric"] == name, "layer"].unique())
        return [n for n in self.layers if n in present]


def from_stats(
    stats: pd.DataFrame,
    meta: dict | None = None,
    name: str = "run",
    findings: list | None = None,
    path: Path | None = None,
    max_steps: int = MAX_STEPS,
    diagnosis: Diagnosis | None = None,
) -> ReportRun:
    """Build a ReportRun from a long stats table; diagnosis runs on the full table, not the
    display one.
    """
    meta = meta or {}
    if diagnosis is None:
        diagnosis = (
            diagnose(normalize(stats), meta)
            if findings is None
            else Diagnosis([_finding(f) for f in findings])
        )
    order = list(meta.get("layer_order") or [])
    seen = set(order)
    order += [n for n in stats["layer"].unique() if n not in seen and n != LOSS_LAYER]
    types = {d["name"]: d.get("type", "") for d in meta.get("model", {}).get("layers", [])}
    n_steps = len(pd.unique(stats["step"].to_numpy())) if len(stats) else 0
    shown = normalize(downsample(stats, max_steps))  # text columns as strings, if categoricals
    return ReportRun(
        name,
        shown,
        meta,
        order,
        diagnosis,
        n_steps,
        int(shown["step"].nunique()) if len(shown) else 0,
        path,
        types,
    )


def from_watch(w, name: str = "run") -> ReportRun:
    return from_stats(w.stats(), w.meta(), name=name, path=w.log_dir)


def from_run(run: Run, name: str | None = None) -> ReportRun:
    """A loaded run as the report shows it, with the findings the watch stored when they judged
    exactly these stats (a closed watch stores the whole run's), else diagnosed here. A damaged
    run whose stats cannot be read at all (`run.problems`, no rows) is shown by the findings it
    stored, not as "no problem found"."""
    damaged = run.problems and run.stats.empty and run.findings
    stored = run.findings if damaged or findings_current(run) else None
    return from_stats(
        run.stats, run.meta, name=name or run.path.name, findings=stored, path=run.path
    )


def load_runs(paths: list[str | os.PathLike]) -> list[ReportRun]:
    """Load run directories for a report; a bad path is a ReportError naming it."""
    runs = []
    names: set[str] = set()
    for p in paths:
        try:
            run = read_run(p, categories=True)
        except RunNotFoundError:
            raise ReportError(
                f"'{p}' is not a gradwatch run directory; pass the log_dir given to gw.watch()."
            ) from None
        name = run.path.name or str(run.path)
        while name in names:  # runs/a/seed0 and runs/b/seed0 must stay apart
            name = f"{run.path.parent.name}/{name}"
        names.add(name)
        runs.append(from_run(run, name))
    return runs


def _finding(f) -> Finding:
    return f if isinstance(f, Finding) else Finding.from_dict(f)


def downsample(stats: pd.DataFrame, max_steps: int = MAX_STEPS) -> pd.DataFrame:
    """At most `max_steps` distinct steps: consecutive recorded steps are pooled into buckets.

    Each bucket is labelled by its last step and holds the median of its values (the maximum for
    counts such as `nonfinite`), so a 1e6-step run draws like a 400-step one without thinning away
    a trend. Metrics recorded only every N steps keep their own, sparser, steps inside a bucket.
    """
    if stats.empty:
        return stats
    step = stats["step"].to_numpy()
    steps = np.sort(pd.unique(step))
    if len(steps) <= max_steps:
        return stats
    # Equal-count buckets of recorded steps (not of step numbers: `every` may vary between runs).
    edges = steps[np.linspace(0, len(steps), max_steps + 1).astype(np.int64)[:-1]]
    bucket = np.searchsorted(edges, step, side="right") - 1
    last = np.append(edges[1:], steps[-1] + 1)
    labels = steps[np.searchsorted(steps, last) - 1]
    # One integer key per (bucket, layer, metric, index): grouping on it is far cheaper than on
    # three string columns of a million-step table.
    layer_codes, layer_names = _codes(stats["layer"])
    metric_codes, metric_names = _codes(stats["metric"])
    index = stats["index"].to_numpy()
    n_idx = int(index.max()) + 2
    key = (
        (bucket.astype(np.int64) * len(layer_names) + layer_codes) * len(metric_names)
        + metric_codes
    ) * n_idx + (index + 1)
    value = pd.Series(stats["value"].to_numpy())
    counts = [i for i, m in enumerate(metric_names) if m in _MAX_METRICS]
    is_max = np.isin(metric_codes, counts) if counts else np.zeros(len(key), bool)
    parts = []
    for mask, how in ((~is_max, "median"), (is_max, "max")):
        if mask.any():
            parts.append(value[mask].groupby(key[mask], sort=True).agg(how))
    pooled = pd.concat(parts)
    k = pooled.index.to_numpy()
    idx, k = k % n_idx - 1, k // n_idx
    metric, k = k % len(metric_names), k // len(metric_names)
    layer, b = k % len(layer_names), k // len(layer_names)
    out = pd.DataFrame(
        {
            "step": labels[b],
            "layer": np.asarray(layer_names, dtype=object)[layer],
            "metric": np.asarray(metric_names, dtype=object)[metric],
            "value": pooled.to_numpy(dtype=float),
            "index": idx,
        }
    )
    return out.sort_values("step", kind="stable").reset_index(drop=True)


def _codes(column: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """Integer codes of a text column and the names they stand for: a categorical's own (free),
    else factorized."""
    if isinstance(column.dtype, pd.CategoricalDtype):
        return column.cat.codes.to_numpy(), np.asarray(column.cat.categories, dtype=object)
    codes, names = pd.factorize(column)
    return codes, np.asarray(names, dtype=object)
