"""The lab's results page: one self-contained HTML file (plotly.js inlined, no network needed).

Every piece of text from an experiment is HTML-escaped; figure data goes in as JSON with `</`
escaped so no string can close the script element it sits in.
"""

from __future__ import annotations

import html
import json
from typing import Any

_STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;max-width:1100px;margin:2em auto;
padding:0 1em;color:#222}
h1{margin-bottom:.2em} .meta{color:#666;font-size:.9em}
section{border-top:1px solid #ddd;margin-top:2em;padding-top:1em}
.verdict{display:inline-block;padding:.15em .6em;border-radius:.3em;font-weight:600;color:#fff}
.yes{background:#2a7d2a} .no{background:#b8860b} .err{background:#b22222}
table{border-collapse:collapse;margin:.6em 0;font-size:.9em}
caption{text-align:left;font-weight:600;padding:.2em 0}
td,th{border:1px solid #ddd;padding:.25em .6em;text-align:left;vertical-align:top}
th{background:#f4f4f4} td.num{text-align:right;font-variant-numeric:tabular-nums}
.source{color:#555;font-style:italic} pre{background:#f8f8f8;padding:.6em;overflow-x:auto}
.figs{display:flex;flex-wrap:wrap;gap:1em} .fig{width:520px;height:360px}
"""


def _e(text: Any) -> str:
    return html.escape(str(text), quote=True)


def _fmt(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return str(value)
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def flatten(measured: Any, prefix: str = "") -> list[tuple[str, Any]]:
    """Nested measurements as (dotted key, leaf) rows; short lists of scalars stay one row."""
    if isinstance(measured, dict):
        rows: list[tuple[str, Any]] = []
        for k, v in measured.items():
            rows += flatten(v, f"{prefix}.{k}" if prefix else str(k))
        return rows
    if (
        isinstance(measured, list)
        and measured
        and all(not isinstance(v, dict | list) for v in measured)
    ):
        return [(prefix, "[" + ", ".join(_fmt(v) for v in measured) + "]")]
    if isinstance(measured, list):
        rows = []
        for i, v in enumerate(measured):
            rows += flatten(v, f"{prefix}[{i}]")
        return rows
    return [(prefix, measured)]


def _scalar(v: Any) -> bool:
    return not isinstance(v, dict | list)


def _grid(key: str, value: dict[str, Any]) -> str | None:
    """A dict of dicts of scalars as a grid (outer keys rows, inner keys columns); a dict of
    scalars as one row. None for anything else."""
    if value and all(
        isinstance(v, dict) and v and all(_scalar(x) for x in v.values()) for v in value.values()
    ):
        cols = list(dict.fromkeys(c for v in value.values() for c in v))
        head = "".join(f"<th>{_e(c)}</th>" for c in cols)
        body = "".join(
            f"<tr><th>{_e(r)}</th>"
            + "".join(f"<td class='num'>{_e(_fmt(v.get(c, '')))}</td>" for c in cols)
            + "</tr>"
            for r, v in value.items()
        )
        return f"<table><caption>{_e(key)}</caption><tr><th></th>{head}</tr>{body}</table>"
    if value and all(_scalar(v) for v in value.values()):
        head = "".join(f"<th>{_e(c)}</th>" for c in value)
        cells = "".join(f"<td class='num'>{_e(_fmt(v))}</td>" for v in value.values())
        return f"<table><caption>{_e(key)}</caption><tr>{head}</tr><tr>{cells}</tr></table>"
    return None


def _measured(measured: dict[str, Any]) -> str:
    """Each measured quantity as a grid where its shape allows; the rest as key/value rows."""
    grids, rest = [], {}
    for key, value in measured.items():
        grid = _grid(key, value) if isinstance(value, dict) else None
        if grid is None:
            rest[key] = value
        else:
            grids.append(grid)
    return (_table(rest) if rest else "") + "".join(grids)


def _table(measured: dict[str, Any], header: str = "measured") -> str:
    rows = flatten(measured)
    if not rows:
        return "<p>No measurements.</p>"
    body = "".join(f"<tr><td>{_e(k)}</td><td class='num'>{_e(_fmt(v))}</td></tr>" for k, v in rows)
    return f"<table><tr><th>{header}</th><th>value</th></tr>{body}</table>"


def _figure(fig: dict[str, Any], div_id: str) -> str:
    traces = []
    for label, line in fig.get("lines", {}).items():
        trace = {"x": line["x"], "y": line["y"], "name": label}
        trace.update(
            {"type": "bar"}
            if fig.get("kind") == "bar"
            else {"type": "scatter", "mode": "lines+markers"}
        )
        traces.append(trace)
    layout = {
        "title": {"text": fig.get("title", "")},
        "xaxis": {"title": {"text": fig.get("x_label", "")}},
        "yaxis": {
            "title": {"text": fig.get("y_label", "")},
            "type": "log" if fig.get("log_y") else "linear",
        },
        "margin": {"l": 60, "r": 10, "t": 40, "b": 50},
        "legend": {"font": {"size": 10}},
    }
    data = json.dumps(traces, allow_nan=False).replace("</", "<\\/")
    lay = json.dumps(layout, allow_nan=False).replace("</", "<\\/")
    return (
        f"<div class='fig' id='{div_id}'></div>"
        f"<script>Plotly.newPlot('{div_id}', {data}, {lay}, {{responsive: true}});</script>"
    )


def _verdict_word(rec: dict[str, Any]) -> str:
    if rec.get("error"):
        return "failed"
    return "reproduced" if rec.get("reproduced") else "not reproduced"


def _section(i: int, rec: dict[str, Any]) -> str:
    if rec.get("error"):
        verdict = "<span class='verdict err'>failed</span>"
    elif rec.get("reproduced"):
        verdict = "<span class='verdict yes'>reproduced</span>"
    else:
        verdict = "<span class='verdict no'>not reproduced</span>"
    parts = [
        f"<section id='{_e(rec.get('name', ''))}'>",
        f"<h2>{_e(rec.get('name', ''))} {verdict}</h2>",
        f"<p><b>Claim.</b> {_e(rec.get('claim', ''))}</p>",
        f"<p class='source'>Source: {_e(rec.get('source', ''))}</p>",
        f"<p><b>Expected.</b> {_e(rec.get('expected', ''))}</p>",
        f"<p class='meta'>{_e(rec.get('seconds', 0))} s, seed {_e(rec.get('seed', ''))}, "
        f"{'quick' if rec.get('quick') else 'full'} settings</p>",
    ]
    if rec.get("error"):
        parts.append(f"<p><b>Error.</b></p><pre>{_e(rec.get('traceback') or rec['error'])}</pre>")
    parts.append(_measured(rec.get("measured") or {}))
    if rec.get("setup"):
        parts.append(
            "<details><summary>setup</summary>"
            + _table(rec["setup"], header="setting")
            + "</details>"
        )
    figs = rec.get("figures") or []
    if figs:
        parts.append(
            "<div class='figs'>"
            + "".join(_figure(f, f"fig-{i}-{j}") for j, f in enumerate(figs))
            + "</div>"
        )
    if rec.get("runs"):
        parts.append(
            "<p class='meta'>Stored runs (read with gw.load): "
            + ", ".join(f"<code>{_e(r)}</code>" for r in rec["runs"])
            + "</p>"
        )
    parts.append("</section>")
    return "\n".join(parts)


def render(doc: dict[str, Any]) -> str:
    """The whole page for a results.json document."""
    from plotly.offline import get_plotlyjs

    records = doc.get("experiments", [])
    done = sum(1 for r in records if r.get("reproduced"))
    rows = "".join(
        f"<tr><td><a href='#{_e(r.get('name', ''))}'>{_e(r.get('name', ''))}</a></td>"
        f"<td>{_verdict_word(r)}</td>"
        f"<td class='num'>{_e(r.get('seconds', 0))}</td></tr>"
        for r in records
    )
    status = (
        " (interrupted: the experiments below are those that finished)"
        if doc.get("interrupted")
        else ""
    )
    head = (
        "<!doctype html><html><head><meta charset='utf-8'><title>gradwatch lab</title>"
        f"<style>{_STYLE}</style><script>{get_plotlyjs()}</script></head><body>"
    )
    summary = (
        f"<h1>gradwatch lab</h1><p class='meta'>{done} of {len(records)} reproduced{_e(status)}; "
        f"seed {_e(doc.get('seed', ''))}, {'quick' if doc.get('quick') else 'full'} settings, "
        f"gradwatch {_e(doc.get('gradwatch_version', ''))}, "
        f"torch {_e(doc.get('torch_version', ''))}, started {_e(doc.get('started', ''))}</p>"
        f"<table><tr><th>experiment</th><th>verdict</th><th>seconds</th></tr>{rows}</table>"
    )
    sections = "\n".join(_section(i, r) for i, r in enumerate(records))
    return head + summary + sections + "</body></html>"
