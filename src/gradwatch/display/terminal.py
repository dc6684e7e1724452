"""Rich terminal views of the stats table."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from rich.table import Table
from rich.text import Text

BAR_WIDTH = 16


def layer_medians(stats: pd.DataFrame, metric: str = "grad_norm") -> pd.Series:
    """Median of `metric` per layer over all recorded steps (NaN-aware)."""
    rows = stats[(stats["metric"] == metric) & (stats["index"] == -1)]
    return rows.groupby("layer", sort=False)["value"].median()


def log_bar(value: float, lo: float, hi: float, width: int = BAR_WIDTH) -> Text:
    """A bar whose length is `value` on a log scale from `lo` to `hi`."""
    if not np.isfinite(value):
        return Text("non-finite".ljust(width), style="bold red")
    if value <= 0:
        return Text("".ljust(width))
    span = max(math.log10(hi) - math.log10(lo), 1e-12)
    frac = (math.log10(value) - math.log10(lo)) / span
    n = max(1, round(min(max(frac, 0.0), 1.0) * width))
    style = "red" if frac < 0.33 else "yellow" if frac < 0.66 else "green"
    return Text("█" * n + " " * (width - n), style=style)


def compare_table(
    runs: dict[str, pd.DataFrame],
    layers: list[str],
    types: dict[str, str] | None = None,
    metric: str = "grad_norm",
    title: str | None = None,
) -> Table:
    """One row per layer (first to last), one value-and-bar column pair per run, on one log
    scale.
    """
    medians = {name: layer_medians(df, metric) for name, df in runs.items()}
    positive = [v for m in medians.values() for v in m.to_numpy() if np.isfinite(v) and v > 0]
    lo, hi = (min(positive), max(positive)) if positive else (1e-12, 1.0)
    table = Table(
        title=_literal(title),
        title_justify="left",
        caption=f"{metric}, bars on a log scale from {lo:.0e} to {hi:.0e}",
        caption_justify="left",
        show_edge=False,
        pad_edge=False,
    )
    table.add_column("layer", style="bold", no_wrap=True)
    if types:
        table.add_column("type", style="dim", no_wrap=True)
    for name in runs:
        table.add_column(Text(name), justify="right", no_wrap=True)
        table.add_column("", no_wrap=True, min_width=BAR_WIDTH)
    for layer in layers:
        if not any(layer in m.index for m in medians.values()):
            continue
        cells: list[str | Text] = [Text(layer)]
        if types:
            cells.append(Text(types.get(layer, "")))
        for m in medians.values():
            v = float(m.get(layer, float("nan")))
            cells += [f"{v:.2e}" if not math.isnan(v) else "-", log_bar(v, lo, hi)]
        table.add_row(*cells)
    return table


def _literal(title: str | Text | None) -> Text | None:
    """A title printed as written: run and layer names may hold `[` and `]`, which rich would
    otherwise read as markup (and raise on, or drop)."""
    return Text(title) if isinstance(title, str) else title


_SEVERITY_STYLE = {"error": "bold red", "warning": "yellow", "info": "cyan"}


def findings_view(diagnosis, title: str | None = None, remedies: int = 2):
    """A rich renderable: one row per finding (severity, kind, where, what), then its top
    remedies.
    """
    from rich.console import Group
    from rich.padding import Padding

    from gradwatch.display.format import caveat_lines

    extras = _predicted(diagnosis)
    caveats = [Text(line, style="bold yellow") for line in caveat_lines(diagnosis.summary)]
    if not diagnosis.findings:
        if caveats:
            return Group(
                Text(f"{title + ': ' if title else ''}no finding, but:"), *caveats, *extras
            )
        return Group(
            Text(f"{title + ': ' if title else ''}no problem found.", style="bold green"), *extras
        )
    table = Table(
        title=_literal(title), title_justify="left", show_edge=False, pad_edge=False, expand=False
    )
    table.add_column("", no_wrap=True)
    table.add_column("finding", no_wrap=True, style="bold")
    table.add_column("where", max_width=24)
    table.add_column("what", ratio=1)
    for f in diagnosis.findings:
        where = ", ".join(f.layers[:3]) + (f" +{len(f.layers) - 3}" if len(f.layers) > 3 else "")
        table.add_row(
            Text(f.severity, style=_SEVERITY_STYLE[f.severity]),
            Text(f.kind + (f"\n(from {f.caused_by})" if f.caused_by else "")),
            Text(where or "-"),
            Text(f.summary),
        )
    from gradwatch.display.format import cause_lines

    parts: list = [
        *caveats,
        *(Text(line, style="bold") for line in cause_lines(diagnosis.findings)),
    ]
    parts.append(table)
    fixes = []
    for f in diagnosis.findings:
        for i, r in enumerate(f.remedies[:remedies]):
            head = Text.assemble(
                (f"{f.kind} " if i == 0 else " " * (len(f.kind) + 1), "dim"),
                (f"{i + 1}. {r.action}: ", "bold"),
            )
            fixes.append(Text.assemble(head, r.detail))
    if fixes:
        parts.append(Text("What to change:", style="bold"))
        parts.extend(Padding(t, (0, 0, 0, 2)) for t in fixes)
    return Group(*parts, *extras)


def _types(meta: dict | None) -> dict[str, str]:
    return {d["name"]: d.get("type", "") for d in (meta or {}).get("model", {}).get("layers", [])}


def _order(stats: pd.DataFrame, meta: dict | None) -> list[str]:
    order = list((meta or {}).get("layer_order") or [])
    return order + [n for n in stats["layer"].unique() if n not in order and n != "(model)"]


def trend_line(summary: dict, name: str = "") -> Text | None:
    """ "x0.71 per layer": the fitted depth factor the diagnosis computed, as one line."""
    trend = summary.get("depth_trend")
    if not trend:
        return None
    per, total = trend["per_layer"], trend["total"]
    style = "red" if total < 1e-3 or total > 1e3 else "green"
    return Text.assemble(
        (f"{name}: " if name else "", "bold"),
        f"{trend['metric']} changes ",
        (f"×{per:.3g} per layer", style),
        f" from the output back to the input, ×{total:.2g} over {trend['n_layers']} layers.",
    )


def diagnosis_view(diagnosis, title: str | None = None, remedies: int = 2):
    """The layer table with bars (when the diagnosis kept its stats), the fitted depth factor, then
    the findings: what `gradwatch check` prints."""
    from rich.console import Group

    parts: list = []
    stats = diagnosis.stats
    if stats is not None and len(stats) and (stats["metric"] == "grad_norm").any():
        parts.append(
            compare_table(
                {"gradient norm": stats},
                _order(stats, diagnosis.meta),
                _types(diagnosis.meta),
                title=title,
            )
        )
        title = None
    line = trend_line(diagnosis.summary)
    if line is not None:
        parts.append(line)
    parts.append(findings_view(diagnosis, title=title, remedies=remedies))
    return Group(*parts)


def runs_view(runs):
    """`report --text` and the demo: one table over every run (one log scale), then each
    diagnosis.
    """
    from rich.console import Group

    layers: list[str] = []
    types: dict[str, str] = {}
    for r in runs:
        layers += [n for n in r.layers if n not in layers]
        types.update(r.types)
    parts: list = [
        compare_table(
            {r.name: r.stats for r in runs},
            layers,
            types,
            title="Median gradient norm per layer, first layer at the top",
        )
    ]
    for r in runs:
        line = trend_line(r.diagnosis.summary, r.name)
        if line is not None:
            parts.append(line)
    for r in runs:
        parts += [Text(""), findings_view(r.diagnosis, title=f"Diagnosis of {r.name}")]
    return Group(*parts)


def _predicted(diagnosis) -> list:
    """Theory and Jacobian lines, then the what-if ranking, if the check computed them."""
    from gradwatch.display.predicted import prediction_lines, what_if_lines

    out: list = [Text(line, style="dim") for line in prediction_lines(diagnosis.summary)]
    ranked = what_if_lines(getattr(diagnosis, "what_if", None))
    if ranked:
        out.append(
            Text(
                "What if (each remedy applied to a copy of the model and checked again):",
                style="bold",
            )
        )
        out += [
            Text("  " + line, style="green" if line.startswith("fixes") else "") for line in ranked
        ]
    return out
