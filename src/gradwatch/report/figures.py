"""Plotly figures over `ReportRun`s. Several runs share one colour axis so they compare by eye.

Every string that comes from the user's model (layer and run names) is HTML-escaped before it
reaches plotly, which renders labels as a subset of HTML. Arrays go in as float32 numpy arrays:
plotly serialises them as base64 typed arrays, a third of the bytes of JSON number lists.
"""

from __future__ import annotations

import math

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from gradwatch.diagnose.view import fit_log_slope
from gradwatch.display.format import esc
from gradwatch.report.data import LOSS_LAYER, ReportRun

PROFILE_CHOICES = 8  # steps offered by the profile's slider
COLOURS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf")
_LAYOUT = dict(template="plotly_white", margin=dict(l=10, r=10, t=60, b=40), font=dict(size=12))


def layer_label(run: ReportRun, layer: str) -> str:
    kind = run.type_of(layer)
    return esc(f"{layer} · {kind}" if kind else layer)


def _log10(v: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(np.isfinite(v) & (v > 0), np.log10(np.where(v > 0, v, 1.0)), np.nan)


def _log_axis(lo: float, hi: float) -> dict:
    """Colour-bar ticks at powers of ten for a colour axis that holds log10 values."""
    lo_i, hi_i = math.floor(lo), math.ceil(hi)
    step = max(1, (hi_i - lo_i) // 8)
    ticks = list(range(lo_i, hi_i + 1, step))
    return dict(tickvals=ticks, ticktext=[f"1e{t}" for t in ticks])


def _range(arrays: list[np.ndarray]) -> tuple[float, float] | None:
    finite = [a[np.isfinite(a)] for a in arrays]
    finite = [a for a in finite if a.size]
    if not finite:
        return None
    lo, hi = min(float(a.min()) for a in finite), max(float(a.max()) for a in finite)
    return (lo, hi) if hi > lo else (lo - 0.5, hi + 0.5)


def _columns(runs: list[ReportRun], titles: list[str] | None = None):
    return make_subplots(
        rows=1,
        cols=len(runs),
        subplot_titles=titles or [esc(r.name) for r in runs],
        horizontal_spacing=min(0.12, 0.5 / max(len(runs), 1)),
    )


def _height(n_rows: int) -> int:
    return int(min(1400, max(320, 120 + 16 * n_rows)))


def layer_heatmap(runs: list[ReportRun], metric: str, title: str) -> go.Figure | None:
    """Layers (first at the bottom) by step, colour = log10 of the metric; hover names the layer."""
    tables = [r.metric(metric) for r in runs]
    if all(t.empty for t in tables):
        return None
    logs = [_log10(t.to_numpy(dtype=float).T) if not t.empty else np.empty((0, 0)) for t in tables]
    span = _range(logs)
    if span is None:
        return None
    fig = _columns(runs)
    for i, (run, table, z) in enumerate(zip(runs, tables, logs, strict=True)):
        if table.empty:
            continue
        raw = table.to_numpy(dtype=float).T
        fig.add_trace(
            go.Heatmap(
                x=table.index.to_numpy(),
                y=[layer_label(run, c) for c in table.columns],
                z=z.astype(np.float32),
                customdata=raw.astype(np.float32),
                coloraxis="coloraxis",
                hovertemplate=(
                    f"<b>%{{y}}</b><br>step %{{x}}<br>{metric} %{{customdata:.3g}}"
                    f"<extra>{esc(run.name)}</extra>"
                ),
                hoverongaps=False,
            ),
            row=1,
            col=i + 1,
        )
        _nonfinite_marks(fig, run, table, raw, i + 1)
        fig.update_xaxes(title_text="step", row=1, col=i + 1)
    n_rows = max(len(t.columns) for t in tables)
    fig.update_layout(
        **_LAYOUT,
        title=title,
        height=_height(n_rows),
        coloraxis=dict(
            colorscale="Viridis",
            cmin=span[0],
            cmax=span[1],
            colorbar=dict(title=metric, **_log_axis(*span)),
        ),
    )
    fig.update_yaxes(type="category", automargin=True)
    return fig


def _nonfinite_marks(fig: go.Figure, run: ReportRun, table, raw: np.ndarray, col: int) -> None:
    """Red crosses where a value is NaN/Inf or the step's gradients held any: a heatmap alone
    would show those cells as empty, the same as "not measured"."""
    bad = ~np.isfinite(raw) & ~np.isnan(raw)  # Inf; NaN is also "not measured" in a pivot
    counts = run.metric("nonfinite")
    if not counts.empty:
        aligned = counts.reindex(index=table.index, columns=table.columns).to_numpy(dtype=float).T
        bad |= np.nan_to_num(aligned, nan=0.0) > 0
    if not bad.any():
        return
    rows, cols = np.nonzero(bad)
    labels = [layer_label(run, c) for c in table.columns]
    fig.add_trace(
        go.Scatter(
            x=table.index.to_numpy()[cols],
            y=[labels[r] for r in rows],
            mode="markers",
            showlegend=False,
            marker=dict(symbol="x", color="red", size=7),
            name="non-finite",
            hovertemplate="<b>%{y}</b><br>step %{x}<br>NaN/Inf in this layer's gradients<extra>"
            + esc(run.name)
            + "</extra>",
        ),
        row=1,
        col=col,
    )


def _profile_metric(runs: list[ReportRun]) -> str:
    # The back-propagated signal shows vanishing even where weight gradients look level
    # (ReLU + Xavier).
    return (
        "backflow_norm" if any(not r.metric("backflow_norm").empty for r in runs) else "grad_norm"
    )


def _profile_table(run: ReportRun, metric: str):
    table = run.metric(metric)
    if table.empty:
        return table
    owners = run.metric("grad_norm").columns
    cols = [c for c in table.columns if c in owners] if len(owners) else list(table.columns)
    return table[cols].dropna(how="all")


def depth_profile(runs: list[ReportRun]) -> go.Figure | None:
    """The per-layer signal at a chosen step (slider), with the fitted factor per layer."""
    metric = _profile_metric(runs)
    tables = [_profile_table(r, metric) for r in runs]
    if all(t.empty for t in tables):
        return None
    fig = go.Figure()
    n_choices = min(PROFILE_CHOICES, max(len(t.index) for t in tables))
    choice_steps = []
    for k in range(n_choices):
        q = k / max(n_choices - 1, 1)
        per_run = []
        for i, (run, table) in enumerate(zip(runs, tables, strict=True)):
            if table.empty:
                per_run.append(None)
                continue
            step = int(table.index[round(q * (len(table.index) - 1))])
            per_run.append(step)
            _profile_traces(
                fig,
                run,
                table,
                step,
                visible=(k == n_choices - 1),
                colour=COLOURS[i % len(COLOURS)],
            )
        choice_steps.append(per_run)
    traces_per_choice = len(fig.data) // n_choices if n_choices else 0
    sliders = []
    if n_choices > 1:
        steps = []
        for k, per_run in enumerate(choice_steps):
            visible = [
                k * traces_per_choice <= j < (k + 1) * traces_per_choice
                for j in range(len(fig.data))
            ]
            label = next((str(s) for s in per_run if s is not None), str(k))
            steps.append(dict(method="restyle", args=[{"visible": visible}], label=label))
        sliders = [
            dict(
                active=n_choices - 1, steps=steps, currentvalue=dict(prefix="step "), pad=dict(t=50)
            )
        ]
    fig.update_layout(
        **_LAYOUT,
        title=(
            f"{metric} per layer at one step (first layer on the left); "
            "dashed: fitted factor per layer"
        ),
        height=460,
        sliders=sliders,
        legend=dict(orientation="h", y=1.02, yanchor="bottom"),
    )
    fig.update_yaxes(type="log", title_text=metric, exponentformat="e")
    fig.update_xaxes(title_text="layer (forward order)", type="category")
    return fig


def _profile_traces(
    fig: go.Figure, run: ReportRun, table, step: int, visible: bool, colour: str
) -> None:
    row = table.loc[step]
    layers = [c for c in table.columns if np.isfinite(row[c]) and row[c] > 0]
    values = np.array([row[c] for c in layers], dtype=float)
    labels = [esc(c) for c in layers]
    hover = [layer_label(run, c) for c in layers]
    fig.add_trace(
        go.Scatter(
            x=labels,
            y=values,
            mode="lines+markers",
            name=f"{esc(run.name)} (step {step})",
            visible=visible,
            line=dict(color=colour),
            customdata=hover,
            hovertemplate="<b>%{customdata}</b><br>%{y:.3g}<extra>" + esc(run.name) + "</extra>",
        )
    )
    if len(values) >= 2:
        slope, intercept = fit_log_slope(values)
        fit = 10 ** (intercept + slope * np.arange(len(values)))
        # Reported backwards (output to input), as the diagnosis says it: x0.7 per layer vanishes.
        factor = 10 ** (-slope)
        total = 10 ** (-slope * (len(values) - 1))
        name = f"{esc(run.name)}: ×{factor:.3g} per layer, ×{total:.2g} over {len(values)} layers"
    else:
        fit, name = values, f"{esc(run.name)}: too few layers to fit"
    fig.add_trace(
        go.Scatter(
            x=labels,
            y=fit,
            mode="lines",
            name=name,
            visible=visible,
            line=dict(color=colour, dash="dash"),
            hoverinfo="skip",
        )
    )


def loss_curve(runs: list[ReportRun]) -> go.Figure | None:
    fig = go.Figure()
    positive = True
    for i, run in enumerate(runs):
        rows = run.stats[(run.stats["metric"] == "loss") & (run.stats["layer"] == LOSS_LAYER)]
        if rows.empty:
            continue
        positive &= bool((rows["value"] > 0).all())
        fig.add_trace(
            go.Scatter(
                x=rows["step"].to_numpy(),
                y=rows["value"].to_numpy(dtype=np.float32),
                mode="lines",
                name=esc(run.name),
                line=dict(color=COLOURS[i % len(COLOURS)]),
            )
        )
    if not fig.data:
        return None
    fig.update_layout(
        **_LAYOUT, title="loss", height=320, legend=dict(orientation="h", y=1.02, yanchor="bottom")
    )
    fig.update_xaxes(title_text="step")
    fig.update_yaxes(type="log" if positive else "linear")
    return fig


def _bin_centres(run: ReportRun, layer: str, n: int) -> np.ndarray:
    info = run.meta.get("probes", {}).get("activations", {}).get(layer, {})
    lo, hi = info.get("hist_range") or (0.0, float(n))
    edges = np.linspace(lo, hi, n + 1)
    return (edges[:-1] + edges[1:]) / 2


def _series_figure(
    runs: list[ReportRun], metric: str, title: str, ylabel: str, log: bool, hover: str
) -> go.Figure | None:
    """One heatmap per run for an indexed metric, a dropdown choosing the layer."""
    layers: list[str] = []
    for run in runs:
        layers += [n for n in run.layers_with(metric) if n not in layers]
    if not layers:
        return None
    fig = _columns(runs)
    blocks: list[list[int]] = []  # trace indices per layer
    values = []
    for li, layer in enumerate(layers):
        blocks.append([])
        for ri, run in enumerate(runs):
            table = run.series(metric, layer)
            if table.empty:
                continue
            v = table.to_numpy(dtype=float)
            if log:
                z = _log10(v)
            else:
                with np.errstate(invalid="ignore", divide="ignore"):
                    z = v / np.nansum(
                        v, axis=0, keepdims=True
                    )  # share of the step's outputs per bin
            values.append(z)
            y = (
                _bin_centres(run, layer, len(table.index))
                if metric == "act_hist"
                else table.index.to_numpy()
            )
            blocks[-1].append(len(fig.data))
            fig.add_trace(
                go.Heatmap(
                    x=table.columns.to_numpy(),
                    y=y,
                    z=z.astype(np.float32),
                    coloraxis="coloraxis",
                    visible=(li == 0),
                    name=esc(layer),
                    hovertemplate=(
                        f"<b>{layer_label(run, layer)}</b><br>step %{{x}}"
                        f"<br>{ylabel} %{{y:.3g}}<br>{hover}<extra>{esc(run.name)}</extra>"
                    ),
                ),
                row=1,
                col=ri + 1,
            )
            fig.update_yaxes(title_text=ylabel, row=1, col=ri + 1)
            fig.update_xaxes(title_text="step", row=1, col=ri + 1)
    span = _range(values)
    if span is None:
        return None
    colorbar = dict(title="‖∂L/∂h_t‖" if log else "share", **(_log_axis(*span) if log else {}))
    buttons = [
        dict(
            label=esc(layer),
            method="update",
            args=[
                {"visible": [j in block for j in range(len(fig.data))]},
                {"title.text": f"{title}: {esc(layer)}"},
            ],
        )
        for layer, block in zip(layers, blocks, strict=True)
    ]
    fig.update_layout(
        **_LAYOUT,
        title=f"{title}: {esc(layers[0])}",
        height=420,
        coloraxis=dict(
            colorscale="Viridis" if log else "Blues", cmin=span[0], cmax=span[1], colorbar=colorbar
        ),
        updatemenus=[
            dict(buttons=buttons, direction="down", x=1.0, xanchor="right", y=1.18, yanchor="top")
        ]
        if len(layers) > 1
        else [],
    )
    return fig


def activation_histograms(runs: list[ReportRun]) -> go.Figure | None:
    return _series_figure(
        runs,
        "act_hist",
        "Activation histogram over time",
        "output",
        log=False,
        hover="share %{z:.3f}",
    )


def through_time(runs: list[ReportRun]) -> go.Figure | None:
    return _series_figure(
        runs,
        "time_grad_norm",
        "Gradient through time",
        "time step t",
        log=True,
        hover="log10 ‖∂L/∂h_t‖ %{z:.2f}",
    )


def rehearsed_curves(rehearsal, columns: int = 3) -> go.Figure | None:
    """One small panel per rehearsed change: its loss curve at each seed, the baseline's in grey
    in every panel (`checks.rehearsed.RehearsedWhatIf`)."""
    changes = [c for c in rehearsal.changes if c.losses]
    if not changes:
        return None
    rows = math.ceil(len(changes) / columns)
    fig = make_subplots(
        rows=rows,
        cols=columns,
        subplot_titles=[f"{esc(c.name[:40])} ({c.verdict})" for c in changes],
        shared_yaxes=True,
        vertical_spacing=0.5 / max(rows, 1) if rows > 1 else 0.1,
    )
    steps = list(range(rehearsal.steps))
    for i, c in enumerate(changes):
        row, col = i // columns + 1, i % columns + 1
        for k, curve in enumerate(rehearsal.baseline.losses):
            fig.add_trace(
                go.Scatter(
                    x=steps, y=curve, mode="lines", line={"color": "#999", "width": 1},
                    name="baseline", legendgroup="baseline", showlegend=i == 0 and k == 0,
                ),
                row=row, col=col,
            )  # fmt: skip
        for k, curve in enumerate(c.losses):
            fig.add_trace(
                go.Scatter(
                    x=steps, y=curve, mode="lines", line={"color": "#1f77b4", "width": 1.5},
                    name="change", legendgroup="change", showlegend=i == 0 and k == 0,
                ),
                row=row, col=col,
            )  # fmt: skip
    fig.update_yaxes(type="log")
    fig.update_layout(
        height=max(260, 190 * rows),
        margin={"l": 50, "r": 20, "t": 40, "b": 30},
        title=f"Rehearsed what-if: loss over {rehearsal.steps} steps, baseline in grey",
    )
    return fig
