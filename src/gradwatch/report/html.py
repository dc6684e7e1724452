"""One self-contained HTML page: plotly's JavaScript inlined once, then the figures and panels.

The page makes no network request, so it opens from an e-mail attachment or an air-gapped cluster.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import plotly.io as pio

from gradwatch._version import __version__
from gradwatch.display.format import esc
from gradwatch.report import figures
from gradwatch.report.data import ReportRun, load_runs

_CONFIG = {
    "displaylogo": False,
    "responsive": True,
    "toImageButtonOptions": {"format": "png", "scale": 2},
}
_CSS = """
body{font:14px/1.45 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;
margin:0;color:#222;background:#fafafa}
header{background:#1b2a41;color:#fff;padding:14px 24px}header h1{margin:0;font-size:20px}
header p{margin:4px 0 0;opacity:.85}
nav{padding:6px 24px;background:#eef1f5;position:sticky;top:0;z-index:9}
nav a{margin-right:14px;color:#1b2a41;text-decoration:none;font-weight:600}
section{background:#fff;margin:14px 24px;padding:10px 16px;border-radius:6px;
box-shadow:0 1px 3px #0002}
h2{font-size:17px;margin:6px 0 8px}.runs{display:flex;gap:16px;flex-wrap:wrap}
.run{flex:1 1 380px;min-width:0}
.finding{border-left:4px solid #888;padding:6px 10px;margin:8px 0;background:#fcfcfc}
.error{border-color:#c62828}.warning{border-color:#ef8f00}.info{border-color:#1e88e5}
.sev{font-weight:700;text-transform:uppercase;font-size:11px;margin-right:6px}
.error .sev{color:#c62828}.warning .sev{color:#ef8f00}.info .sev{color:#1e88e5}
.ok{color:#2e7d32;font-weight:600}.caveat{color:#b26a00}table{border-collapse:collapse;font-size:12.5px}
td,th{padding:2px 8px;border-bottom:1px solid #eee;text-align:left;vertical-align:top}
tr:target{background:#fff3c4}
dl{margin:4px 0;display:grid;grid-template-columns:max-content 1fr;gap:0 10px;font-size:12.5px}
dt{color:#666}dd{margin:0}
pre{white-space:pre-wrap;margin:2px 0;font-size:12px;background:#f4f4f4;padding:4px}
.note{color:#666;font-size:12.5px}.fig{min-height:200px}
"""


def _rehearsed(runs: list[ReportRun]):
    """The first run's rehearsed what-if, if its diagnosis holds one."""
    for r in runs:
        rw = r.diagnosis.summary.get("rehearsed_what_if") if r.diagnosis else None
        if rw is not None:
            return figures.rehearsed_curves(rw)
    return None


def render(runs: list[ReportRun]) -> str:
    """The report page for one or more runs, as one string."""
    sections: list[tuple[str, str, str]] = [("findings", "Findings", _findings(runs))]
    plots = [
        (
            "flow",
            "Gradient flow",
            figures.layer_heatmap(
                runs, "grad_norm", "Gradient norm per layer (‖∂L/∂W‖), first layer at the bottom"
            ),
        ),
        (
            "backflow",
            "Back-propagated signal",
            figures.layer_heatmap(
                runs, "backflow_norm", "Back-propagated signal per layer (‖∂L/∂h‖ per sample)"
            ),
        ),
        (
            "update",
            "Update ratio",
            figures.layer_heatmap(
                runs, "update_ratio", "Update / weight ratio per layer (‖ΔW‖/‖W‖)"
            ),
        ),
        ("profile", "Depth profile", figures.depth_profile(runs)),
        ("loss", "Loss", figures.loss_curve(runs)),
        ("activations", "Activations", figures.activation_histograms(runs)),
        ("time", "Through time", figures.through_time(runs)),
        ("rehearsed", "Rehearsed what-if", _rehearsed(runs)),
    ]
    first = True
    for key, name, fig in plots:
        if fig is None:
            continue
        div = pio.to_html(
            fig,
            full_html=False,
            include_plotlyjs=first,
            config=_CONFIG,
            div_id=f"fig-{key}",
            validate=False,
        )
        first = False
        sections.append((key, name, f'<div class="fig">{div}</div>'))
    sections.append(("meta", "Runs", _metadata(runs)))
    nav = "".join(f'<a href="#{k}">{esc(n)}</a>' for k, n, _ in sections)
    body = "".join(
        f'<section id="{k}"><h2>{esc(n)}</h2>{content}</section>' for k, n, content in sections
    )
    names = ", ".join(r.name for r in runs)
    return (
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
        "<meta name='viewport' content='width=device-width, initial-scale=1'>"
        f"<title>gradwatch report: {esc(names)}</title>"
        f"<style>{_CSS}</style></head><body>"
        f"<header><h1>gradwatch report</h1><p>{_headline(runs)}</p></header>"
        f"<nav>{nav}</nav>{body}"
        f"<footer class='note' style='margin:0 24px 20px'>gradwatch {esc(__version__)}</footer>"
        "</body></html>"
    )


def write(runs: list[ReportRun], path: str | os.PathLike) -> Path:
    path = Path(path)
    if path.parent != Path():
        path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render(runs), encoding="utf-8")
    return path


def report_runs(run_dirs: list[str | os.PathLike], out: str | os.PathLike) -> Path:
    """`gradwatch report`: the page for the run directories, written to `out`."""
    return write(load_runs(run_dirs), out)


def _headline(runs: list[ReportRun]) -> str:
    parts = []
    for r in runs:
        shown = f"{r.n_steps:,} recorded steps"
        if r.n_shown < r.n_steps:
            shown += f", shown as {r.n_shown:,} (median of each run of consecutive steps)"
        state = "" if r.diagnosis.ok else " — <b>errors found</b>"
        parts.append(
            f"<b>{esc(r.name)}</b>: "
            f"{esc(r.meta.get('model', {}).get('class', 'model'))}, {shown}{state}"
        )
    return "<br>".join(parts)


def _anchor(run_i: int, run: ReportRun, layer: str) -> str:
    i = run.layers.index(layer) if layer in run.layers else -1
    return f"layer-{run_i}-{i}"


def _value(v) -> str:
    if isinstance(v, float):
        return "nan" if math.isnan(v) else f"{v:.4g}"
    if isinstance(v, (list, tuple)):
        shown = ", ".join(_value(x) for x in v[:8])
        return f"[{shown}{', …' if len(v) > 8 else ''}]"
    if isinstance(v, dict):
        return esc(json.dumps(v, default=str)[:300])
    return esc(v)


def findings_html(run_i: int, run: ReportRun, link: bool = True) -> str:
    """A run's findings: severity, kind, summary, linked layers, evidence, remedies."""
    from gradwatch.display.format import cause_lines, caveat_lines

    d = run.diagnosis
    caveats = [f"<p class='caveat'><b>{esc(line)}</b></p>" for line in caveat_lines(d.summary)]
    if not d.findings:
        return "".join(caveats) or "<p class='ok'>No problem found.</p>"
    out = caveats + [f"<p class='cause'><b>{esc(line)}</b></p>" for line in cause_lines(d.findings)]
    for k, f in enumerate(d.findings):
        first = k == 0  # the worst finding's remedies open; the rest one click away
        layers = ", ".join(
            f'<a href="#{_anchor(run_i, run, n)}">{esc(n)}</a>' if link else esc(n)
            for n in f.layers[:12]
        ) + (f" and {len(f.layers) - 12} more" if len(f.layers) > 12 else "")
        evidence = "".join(f"<dt>{esc(k)}</dt><dd>{_value(v)}</dd>" for k, v in f.evidence.items())
        remedies = "".join(
            f"<li><b>{esc(r.action)}</b>: <pre>{esc(r.detail)}</pre>"
            + (f"<span class='note'>expected: {esc(r.expected)}</span>" if r.expected else "")
            + (f"<br><span class='note'>why: {esc(r.why)}</span>" if r.why else "")
            + "</li>"
            for r in f.remedies
        )
        step = f" (from step {f.step})" if f.step is not None else ""
        out.append(
            f"<div class='finding {esc(f.severity)}'>"
            f"<span class='sev'>{esc(f.severity)}</span><b>{esc(f.kind)}</b>{step}"
            f"<div>{esc(f.summary)}</div>"
            + (f"<div class='note'>layers: {layers}</div>" if layers else "")
            + (
                f"<details><summary>evidence</summary><dl>{evidence}</dl></details>"
                if evidence
                else ""
            )
            + (
                f"<details{' open' if first else ''}><summary>remedies</summary>"
                f"<ol>{remedies}</ol></details>"
                if remedies
                else ""
            )
            + "</div>"
        )
    return "".join(out)


def _findings(runs: list[ReportRun]) -> str:
    cols = "".join(
        f"<div class='run'><h3>{esc(r.name)}</h3>{findings_html(i, r)}</div>"
        for i, r in enumerate(runs)
    )
    return f"<div class='runs'>{cols}</div>"


def _metadata(runs: list[ReportRun]) -> str:
    cols = []
    for i, r in enumerate(runs):
        meta = r.meta
        model = meta.get("model", {})
        acts = meta.get("probes", {}).get("activations", {})
        rows = []
        by_name = {d.get("name"): d for d in model.get("layers", [])}
        for j, name in enumerate(r.layers):
            d = by_name.get(name, {})
            cells = [
                name,
                d.get("type", ""),
                d.get("n_params", ""),
                d.get("fan_in", ""),
                d.get("fan_out", ""),
                f"{d['weight_std']:.4g}" if "weight_std" in d else "",
                acts.get(name, {}).get("function", ""),
            ]
            rows.append(
                f"<tr id='layer-{i}-{j}'>" + "".join(f"<td>{esc(c)}</td>" for c in cells) + "</tr>"
            )
        head = "".join(
            f"<th>{h}</th>"
            for h in ("layer", "type", "params", "fan in", "fan out", "weight std", "activation")
        )
        info = {
            "model": model.get("class", ""),
            "parameters": f"{model.get('n_params', 0):,}"
            if isinstance(model.get("n_params"), int)
            else "",
            "optimizer": json.dumps(meta.get("optimizer", {}), default=str),
            "settings": json.dumps(meta.get("settings", {}), default=str),
            "device": meta.get("device", ""),
            "started": meta.get("started", ""),
            "finished": meta.get("finished", ""),
            "versions": f"gradwatch {meta.get('gradwatch_version', '?')}, "
            f"torch {meta.get('torch_version', '?')}, "
            f"python {meta.get('python_version', '?')}",
            "path": str(r.path) if r.path else "",
        }
        dl = "".join(f"<dt>{esc(k)}</dt><dd>{esc(v)}</dd>" for k, v in info.items() if v)
        cols.append(
            f"<div class='run'><h3>{esc(r.name)}</h3><dl>{dl}</dl>"
            f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table></div>"
        )
    return f"<div class='runs'>{''.join(cols)}</div>"
