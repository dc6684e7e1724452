"""Jupyter display: small static HTML (no JavaScript), so a notebook stays light and opens offline.

The interactive page is one call away: `w.report("report.html")`.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from gradwatch.display.format import esc
from gradwatch.display.terminal import _order, _types, layer_medians

_STYLE = (
    "<style>.gw table{border-collapse:collapse;font-size:12px}"
    ".gw td,.gw th{padding:1px 8px;text-align:left}"
    ".gw .bar{display:inline-block;height:10px;background:#4c78a8;vertical-align:middle}"
    ".gw .f{border-left:4px solid #888;padding:3px 8px;margin:4px 0}"
    ".gw .error{border-color:#c62828}"
    ".gw .warning{border-color:#ef8f00}.gw .info{border-color:#1e88e5}</style>"
)


def layer_bars_html(
    stats: pd.DataFrame, meta: dict | None, metric: str = "grad_norm", width: int = 160
) -> str:
    """Median `metric` per layer in forward order, with a bar on a log scale shared by all
    layers.
    """
    med = layer_medians(stats, metric)
    if med.empty:
        return ""
    types = _types(meta)
    values = med.to_numpy(dtype=float)
    positive = values[np.isfinite(values) & (values > 0)]
    lo, hi = (positive.min(), positive.max()) if positive.size else (1e-12, 1.0)
    span = max(math.log10(hi) - math.log10(lo), 1e-12)
    rows = []
    for layer in _order(stats, meta):
        if layer not in med.index:
            continue
        v = float(med[layer])
        if math.isfinite(v) and v > 0:
            px = max(1, round((math.log10(v) - math.log10(lo)) / span * width))
            bar, text = f"<span class='bar' style='width:{px}px'></span>", f"{v:.2e}"
        else:
            bar, text = "", "non-finite" if not math.isfinite(v) else "0"
        rows.append(
            f"<tr><td>{esc(layer)}</td><td>{esc(types.get(layer, ''))}</td>"
            f"<td>{text}</td><td>{bar}</td></tr>"
        )
    return (
        "<table><thead><tr><th>layer</th><th>type</th>"
        f"<th>median {esc(metric)}</th><th>log scale {lo:.0e} … {hi:.0e}</th></tr></thead>"
        f"<tbody>{''.join(rows)}</tbody></table>"
    )


def findings_list_html(diagnosis) -> str:
    from gradwatch.display.format import cause_lines, caveat_lines

    caveats = [
        f"<p style='color:#b26a00'><b>{esc(line)}</b></p>"
        for line in caveat_lines(diagnosis.summary)
    ]
    if not diagnosis.findings:
        return "".join(caveats) or "<p style='color:#2e7d32'><b>No problem found.</b></p>"
    items = caveats + [f"<p><b>{esc(line)}</b></p>" for line in cause_lines(diagnosis.findings)]
    for f in diagnosis.findings:
        fix = f"<br><i>fix</i>: {esc(f.remedies[0].detail.splitlines()[0])}" if f.remedies else ""
        where = (
            f" <small>({esc(', '.join(f.layers[:6]))}{' …' if len(f.layers) > 6 else ''})</small>"
            if f.layers
            else ""
        )
        items.append(
            f"<div class='f {esc(f.severity)}'><b>{esc(f.severity)} · {esc(f.kind)}</b>"
            f"{_from(f)}{where}<br>{esc(f.summary)}{fix}</div>"
        )
    return "".join(items)


def _from(f) -> str:
    return f" <i>(a consequence of {esc(f.caused_by)})</i>" if f.caused_by else ""


def diagnosis_html(diagnosis) -> str:
    bars = (
        layer_bars_html(diagnosis.stats, diagnosis.meta)
        if diagnosis.stats is not None and len(diagnosis.stats)
        else ""
    )
    return f"<div class='gw'>{_STYLE}{bars}{findings_list_html(diagnosis)}</div>"


def watch_html(w) -> str:
    d = w.diagnose()
    head = f"<p><b>gradwatch</b> · {esc(repr(w))}</p>"
    return (
        f"<div class='gw'>{_STYLE}{head}"
        f"{layer_bars_html(d.stats, d.meta) if d.stats is not None and len(d.stats) else ''}"
        f"{findings_list_html(d)}</div>"
    )
