"""The HTML report, its data shaping and the terminal/notebook views, on real short runs."""

from __future__ import annotations

import json
import re
import sys
import time
from collections import OrderedDict

import numpy as np
import pandas as pd
import pytest
import torch
from rich.console import Console
from torch import nn

import gradwatch as gw
from gradwatch.display.terminal import runs_view
from gradwatch.report import figures
from gradwatch.report.data import (
    MAX_STEPS,
    downsample,
    from_run,
    from_stats,
    from_watch,
    load_runs,
)
from gradwatch.report.html import render, write

EVIL = "<script>alert(1)</script>"


class SeqNet(nn.Module):
    """A recurrent layer (time_grad_norm), a saturating stack (histograms, vanishing), a head."""

    def __init__(self, act: type[nn.Module] = nn.Sigmoid, depth: int = 6):
        super().__init__()
        self.rnn = nn.RNN(3, 8, batch_first=True)
        layers = []
        for _ in range(depth):
            layers += [nn.Linear(8, 8), act()]
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(8, 2)

    def forward(self, x):
        h, _ = self.rnn(x)
        return self.head(self.body(h[:, -1]))


def train(model: nn.Module, log_dir, steps: int = 12, seq: bool = True) -> gw.Watch:
    torch.manual_seed(0)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with gw.watch(
        model, opt, log_dir=log_dir, activations=True, backflow=True, through_time=True
    ) as w:
        for _ in range(steps):
            x = torch.randn(16, 5, 3) if seq else torch.randn(16, 4)
            y = torch.randint(0, 2, (16,))
            opt.zero_grad()
            loss = nn.functional.cross_entropy(model(x), y)
            loss.backward()
            w.log_loss(loss)
            opt.step()
    return w


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    torch.manual_seed(0)
    broken = train(SeqNet(nn.Sigmoid), root / "broken")
    torch.manual_seed(0)
    fixed = train(SeqNet(nn.ReLU), root / "fixed")
    return root, broken, fixed


@pytest.fixture(scope="module")
def page(runs):
    root, _, _ = runs
    return render(load_runs([root / "broken", root / "fixed"]))


def _figure(page: str, key: str) -> dict:
    """The data and layout plotly was given for the figure in div `fig-KEY`."""
    m = re.search(
        r'Plotly\.newPlot\(\s*"fig-' + key + r'",\s*(\[.*?\]),\s*(\{.*?\}),\s*\{"displaylogo"',
        page,
        re.S,
    )
    assert m, f"figure {key} not in page"
    return {"data": json.loads(m.group(1)), "layout": json.loads(m.group(2))}


def _decode(arr) -> np.ndarray:
    """Plotly's base64 typed arrays back to numpy."""
    if isinstance(arr, dict) and "bdata" in arr:
        import base64

        a = np.frombuffer(base64.b64decode(arr["bdata"]), dtype=arr["dtype"])
        return a.reshape([int(s) for s in str(arr.get("shape", len(a))).split(",")])
    return np.asarray(arr, dtype=float)


def test_page_is_self_contained_with_plotly_inlined_once(page):
    assert page.count("* plotly.js v") == 1
    assert not re.search(r"<script[^>]+src=", page)
    assert "<link" not in page
    assert "cdn.plot.ly" not in page.replace(
        "https://cdn.plot.ly/", ""
    )  # only inside plotly's own source


def test_page_holds_every_view(page):
    for key in ("flow", "backflow", "update", "profile", "loss", "activations", "time"):
        _figure(page, key)
    for section in ("Findings", "Runs", "torch", "settings"):
        assert section in page


def test_heatmap_puts_layers_in_forward_order_first_at_the_bottom(runs):
    _, broken, _ = runs
    run = from_watch(broken, "broken")
    fig = figures.layer_heatmap([run], "grad_norm", "t")
    y = list(fig.data[0].y)
    owners = [
        n for n in broken.layers() if n in set(broken.stats().query("metric == 'grad_norm'").layer)
    ]
    assert y == [figures.layer_label(run, n) for n in owners]  # plotly draws y[0] at the bottom
    assert y[0].startswith("rnn") and "RNN" in y[0]


def test_heatmap_cells_are_log10_of_the_recorded_values(runs):
    _, broken, _ = runs
    stats = broken.stats()
    fig = figures.layer_heatmap([from_watch(broken)], "grad_norm", "t")
    trace = fig.data[0]
    z, raw = np.asarray(trace.z), np.asarray(trace.customdata)
    names = [n for n in broken.layers() if n in set(stats.query("metric == 'grad_norm'").layer)]
    grads = stats[stats["metric"] == "grad_norm"].set_index(["layer", "step"])["value"]
    for i, layer in enumerate(names):
        for j, step in enumerate(trace.x):
            v = grads[(layer, step)]
            assert raw[i, j] == pytest.approx(v, rel=1e-6)
            assert z[i, j] == pytest.approx(np.log10(v), abs=1e-5)
    assert "%{y}" in trace.hovertemplate and "%{customdata" in trace.hovertemplate


def test_several_runs_share_one_colour_scale(runs):
    _, broken, fixed = runs
    fig = figures.layer_heatmap([from_watch(broken, "a"), from_watch(fixed, "b")], "grad_norm", "t")
    assert [t.coloraxis for t in fig.data] == ["coloraxis", "coloraxis"]
    lo = min(np.nanmin(np.asarray(t.z, dtype=float)) for t in fig.data)
    hi = max(np.nanmax(np.asarray(t.z, dtype=float)) for t in fig.data)
    assert fig.layout.coloraxis.cmin == pytest.approx(lo, abs=1e-5)
    assert fig.layout.coloraxis.cmax == pytest.approx(hi, abs=1e-5)


def test_profile_reports_the_fitted_factor_per_layer():
    # A synthetic stack whose signal halves at every layer towards the input: x0.5 per layer.
    layers = [f"l{i}" for i in range(6)]
    rows = [
        (0, name, metric, 2.0**i, -1)
        for i, name in enumerate(layers)
        for metric in ("grad_norm", "backflow_norm")
    ]
    stats = pd.DataFrame(rows, columns=["step", "layer", "metric", "value", "index"])
    run = from_stats(stats, {"layer_order": layers})
    fig = figures.depth_profile([run])
    fit = [t for t in fig.data if t.line.dash == "dash"][0]
    assert "×0.5 per layer" in fit.name
    assert np.allclose(np.asarray(fit.y, dtype=float), 2.0 ** np.arange(6))


def test_activation_histograms_hold_one_column_per_step_summing_to_one(runs):
    _, broken, _ = runs
    run = from_watch(broken)
    fig = figures.activation_histograms([run])
    act_layers = run.layers_with("act_hist")
    assert len(fig.data) == len(act_layers) and fig.data[0].visible is True
    z = np.asarray(fig.data[0].z, dtype=float)
    assert z.shape[0] == broken.meta()["probes"]["hist_bins"]
    assert np.allclose(z.sum(axis=0), 1.0, atol=1e-5)
    # The sigmoid's range, not bin numbers, on the y axis.
    assert min(fig.data[0].y) > 0 and max(fig.data[0].y) < 1


def test_recurrent_layers_get_gradients_through_time(runs):
    _, broken, _ = runs
    fig = figures.through_time([from_watch(broken)])
    assert fig is not None and "rnn" in fig.layout.title.text
    assert list(fig.data[0].y) == list(range(5))  # one row per time step of the 5-step sequences


def test_findings_link_to_the_layers_they_name(runs):
    root, broken, _ = runs
    run = load_runs([root / "broken"])[0]
    html = render([run])
    assert run.diagnosis.findings, "the sigmoid stack should give at least one finding"
    for f in run.diagnosis.findings:
        assert f.kind in html
        for layer in f.layers[:12]:
            anchor = f"layer-0-{run.layers.index(layer)}"
            assert f'href="#{anchor}"' in html and f"id='{anchor}'" in html


def test_a_live_watch_and_its_stored_run_give_the_same_figures(runs):
    root, broken, _ = runs
    live = figures.layer_heatmap([from_watch(broken)], "backflow_norm", "t")
    stored = figures.layer_heatmap([from_run(gw.load(root / "broken"))], "backflow_norm", "t")
    assert list(live.data[0].y) == list(stored.data[0].y)
    np.testing.assert_array_equal(np.asarray(live.data[0].z), np.asarray(stored.data[0].z))


def test_watch_report_writes_the_page(runs, tmp_path):
    _, broken, _ = runs
    path = broken.report(tmp_path / "sub" / "r.html")
    assert path.exists() and "fig-flow" in path.read_text()


def test_layer_names_are_escaped(tmp_path):
    model = nn.Sequential(
        OrderedDict([(EVIL, nn.Linear(4, 4)), ("act", nn.Tanh()), ("out", nn.Linear(4, 2))])
    )
    w = train(model, tmp_path / EVIL.replace("/", "_"), steps=3, seq=False)
    html = render([from_watch(w, EVIL)])
    assert EVIL not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert EVIL not in w._repr_html_() and EVIL not in w.diagnose()._repr_html_()


def test_downsampling_pools_buckets_by_median_and_keeps_nonfinite_counts():
    steps = np.arange(10)
    stats = pd.DataFrame(
        {
            "step": np.concatenate([steps, steps]),
            "layer": ["a"] * 20,
            "metric": ["grad_norm"] * 10 + ["nonfinite"] * 10,
            "value": np.concatenate([steps * 1.0, [0, 0, 0, 5, 0, 0, 0, 0, 0, 0]]),
            "index": -1,
        }
    )
    out = downsample(stats, max_steps=5)
    g = out.query("metric == 'grad_norm'")
    assert list(g.step) == [1, 3, 5, 7, 9]  # each bucket labelled by its last step
    assert list(g.value) == [0.5, 2.5, 4.5, 6.5, 8.5]
    assert list(out.query("metric == 'nonfinite'").value) == [0, 5, 0, 0, 0]


def test_a_million_step_run_gives_a_small_report(tmp_path):
    n, layers = 1_000_000, ["l0", "l1", "l2"]
    rng = np.random.default_rng(0)
    step = np.repeat(np.arange(n), len(layers))
    layer = np.tile(np.array(layers, dtype=object), n)
    value = np.exp(rng.normal(size=n * len(layers))) * np.tile(
        10.0 ** -np.arange(len(layers))[::-1], n
    )
    stats = pd.DataFrame(
        {"step": step, "layer": layer, "metric": "grad_norm", "value": value, "index": -1}
    )
    start = time.perf_counter()
    run = from_stats(stats, {"layer_order": layers}, name="long", diagnosis=gw.Diagnosis([]))
    path = write([run], tmp_path / "long.html")
    elapsed = time.perf_counter() - start
    assert run.n_steps == n and run.n_shown == MAX_STEPS
    size = path.stat().st_size
    assert size < 20e6, f"{size / 1e6:.1f} MB"
    print(f"1M-step report: {size / 1e6:.2f} MB in {elapsed:.1f} s")


def test_terminal_summary_shows_every_run_and_finding(runs):
    root, _, _ = runs
    shown = load_runs([root / "broken", root / "fixed"])
    console = Console(record=True, width=120)
    console.print(runs_view(shown))
    text = console.export_text()
    assert "broken" in text and "fixed" in text and "body.0" in text
    for f in shown[0].diagnosis.findings:
        assert f.kind in text


def gradwatch(monkeypatch, *args: str) -> int:
    """The command in-process (a subprocess would re-import torch: seconds on a busy machine)."""
    from gradwatch.cli import main

    monkeypatch.setattr(sys, "argv", ["gradwatch", *args])
    with pytest.raises(SystemExit) as exit_:
        main()
    return exit_.value.code or 0


def test_cli_report_writes_html(runs, tmp_path, monkeypatch, capsys):
    root, _, _ = runs
    code = gradwatch(
        monkeypatch,
        "report",
        str(root / "broken"),
        str(root / "fixed"),
        "-o",
        str(tmp_path / "cmp.html"),
    )
    assert code == 0
    assert (tmp_path / "cmp.html").exists() and str(
        (tmp_path / "cmp.html").resolve()
    ) in capsys.readouterr().out


def test_cli_report_text_prints_the_summary(runs, monkeypatch, capsys):
    root, _, _ = runs
    assert gradwatch(monkeypatch, "report", "--text", str(root / "broken")) == 0
    out = capsys.readouterr().out
    assert "Median gradient norm per layer" in out and "body.0" in out


def test_cli_report_of_a_missing_run_is_one_sentence_and_exit_2(tmp_path, monkeypatch, capsys):
    assert gradwatch(monkeypatch, "report", str(tmp_path / "nothing")) == 2
    err = capsys.readouterr().err
    assert (
        "Traceback" not in err
        and "not a gradwatch run" in err
        and len(err.strip().splitlines()) <= 2
    )


def test_notebook_shows_layers_and_findings(runs):
    _, broken, _ = runs
    d = broken.diagnose()
    page = d._repr_html_()
    assert "<script" not in page  # static: a notebook stays light and works offline
    assert "body.0" in page and d.findings[0].kind in page
    assert "body.0" in broken._repr_html_() and "SeqNet" in broken._repr_html_()


def test_html_report_takes_watches_runs_and_paths_together(runs, tmp_path):
    from gradwatch.report import html_report

    root, broken, _ = runs
    path = html_report(
        [broken, gw.load(root / "fixed"), str(root / "broken")], tmp_path / "mix.html"
    )
    page = path.read_text()
    assert page.count("* plotly.js v") == 1 and len(_figure(page, "flow")["data"]) == 3


def test_nonfinite_gradients_are_marked_not_left_blank(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 4), nn.Tanh(), nn.Linear(4, 2))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with gw.watch(model, opt) as w:
        for step in range(4):
            opt.zero_grad()
            loss = model(torch.randn(8, 4)).pow(2).mean()
            (loss * (float("nan") if step == 2 else 1.0)).backward()
            opt.step()
    fig = figures.layer_heatmap([from_watch(w)], "grad_norm", "t")
    marks = [t for t in fig.data if t.name == "non-finite"]
    # From the NaN step on (its update made the weights NaN too), both Linear layers, nothing
    # before.
    assert len(marks) == 1 and set(marks[0].x) == {2, 3}
    assert len(set(marks[0].y)) == 2


def test_a_report_mid_training_leaves_training_as_it_was(tmp_path):
    def run(report: bool) -> list[float]:
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(4, 8), nn.Sigmoid(), nn.Linear(8, 2))
        opt = torch.optim.SGD(model.parameters(), lr=0.5)
        losses = []
        with gw.watch(model, opt) as w:
            for step in range(6):
                opt.zero_grad()
                loss = model(torch.randn(8, 4)).pow(2).mean()
                loss.backward()
                opt.step()
                losses.append(loss.item())
                if report and step == 2:
                    assert "fig-flow" in w.report(tmp_path / "mid.html").read_text()
        return losses

    assert run(True) == run(False)


def test_a_report_of_a_closed_watch_reads_its_stored_findings(runs, monkeypatch):
    """A closed watch stores the whole run's findings (and which rows they judged); a report of
    its directory reads them instead of running the detectors, and they are the watch's own."""
    root, broken, _ = runs
    import gradwatch.report.data as data

    def no_detectors(*args, **kwargs):
        raise AssertionError("the report ran the detectors again")

    monkeypatch.setattr(data, "diagnose", no_detectors)
    (run,) = load_runs([root / "broken"])
    assert run.diagnosis.findings, "the broken run has findings"
    assert [f.to_dict() for f in run.diagnosis.findings] == [
        f.to_dict() for f in broken.diagnose().findings
    ]


def test_stored_findings_that_judged_other_rows_are_not_used(runs, tmp_path, monkeypatch):
    """findings.json of a run whose stats changed since (here: fewer rows) is diagnosed again."""
    import shutil

    import gradwatch.report.data as data

    root, _, _ = runs
    copy = tmp_path / "copy"
    shutil.copytree(root / "broken", copy)
    meta = json.loads((copy / "meta.json").read_text())
    assert meta["findings_of"]["rows"] == len(gw.load(copy).stats)
    meta["findings_of"]["rows"] += 1
    (copy / "meta.json").write_text(json.dumps(meta))
    calls = []
    real = data.diagnose
    monkeypatch.setattr(data, "diagnose", lambda *a, **k: calls.append(1) or real(*a, **k))
    load_runs([copy])
    assert calls == [1]


def test_downsampling_a_categorical_table_equals_downsampling_its_strings():
    rng = np.random.default_rng(0)
    n = 2000
    stats = pd.DataFrame(
        {
            "step": np.repeat(np.arange(n), 3),
            "layer": np.tile(np.array(["a", "b", "(model)"], dtype=object), n),
            "metric": np.tile(np.array(["grad_norm", "nonfinite", "loss"], dtype=object), n),
            "value": rng.uniform(size=3 * n),
            "index": -1,
        }
    )
    plain = downsample(stats, max_steps=50)
    coded = downsample(stats.astype({"layer": "category", "metric": "category"}), max_steps=50)
    key = ["step", "layer", "metric"]
    a = plain.sort_values(key).reset_index(drop=True)
    b = coded.astype({"layer": object, "metric": object}).sort_values(key).reset_index(drop=True)
    pd.testing.assert_frame_equal(a.astype({"layer": object, "metric": object}), b)
