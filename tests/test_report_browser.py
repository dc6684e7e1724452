"""The report in a real browser: it draws offline, without errors, and the hover names the layer.

Needs Playwright and Chromium at /usr/bin/chromium; skipped without them, except under CI (env
CI set), where a missing browser is a failure. See DEVELOPERS.md.
"""

from __future__ import annotations

import os
import time
from collections import OrderedDict
from pathlib import Path

import pytest
import torch
from torch import nn

from gradwatch.report.data import from_watch, load_runs
from gradwatch.report.html import write
from test_report_html import EVIL, SeqNet, train

CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"


def _playwright():
    missing = None
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        missing = "playwright is not installed"
    if missing is None and not os.path.exists(CHROMIUM):
        missing = f"no Chromium at {CHROMIUM}"
    if missing:
        if os.environ.get("CI"):
            pytest.fail(f"{missing}; CI must run the browser tests (see DEVELOPERS.md).")
        pytest.skip(missing)
    return sync_playwright


@pytest.fixture(scope="module")
def browser():
    sync_playwright = _playwright()
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--headless"])
        yield b
        b.close()


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    torch.manual_seed(0)
    train(SeqNet(nn.Sigmoid), root / "broken")
    torch.manual_seed(0)
    train(SeqNet(nn.ReLU), root / "fixed")
    runs = load_runs([root / "broken", root / "fixed"])
    return write(runs, root / "report.html"), runs


class Opened:
    def __init__(self, page, errors, requests, seconds):
        self.page, self.errors, self.requests, self.seconds = page, errors, requests, seconds


def open_report(browser, path: Path) -> Opened:
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    errors: list[str] = []
    requests: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on("dialog", lambda d: (errors.append(f"dialog: {d.message}"), d.dismiss()))
    page.on("request", lambda r: requests.append(r.url))
    start = time.perf_counter()
    page.goto(path.resolve().as_uri())
    page.wait_for_function(
        "() => { const p = [...document.querySelectorAll('.js-plotly-plot')];"
        " return p.length > 0 && p.every(d => d._fullLayout && d.querySelector('.main-svg')); }",
        timeout=120_000,
    )
    return Opened(page, errors, requests, time.perf_counter() - start)


@pytest.fixture(scope="module")
def opened(browser, report):
    o = open_report(browser, report[0])
    print(f"report drew in {o.seconds:.1f} s")
    yield o
    o.page.close()


def test_report_opens_without_errors_or_network_requests(opened):
    assert opened.errors == []
    assert [u for u in opened.requests if not u.startswith("file://")] == []


def test_every_figure_drew(opened):
    counts = opened.page.evaluate(
        """() => [...document.querySelectorAll('.js-plotly-plot')].map(d => ({
            id: d.id,
            box: d.getBoundingClientRect().height * d.getBoundingClientRect().width,
            marks: d.querySelectorAll(
                '.heatmaplayer image, .scatterlayer path.js-line, .scatterlayer path.point'
            ).length,
        }))"""
    )
    ids = {c["id"] for c in counts}
    assert {
        "fig-flow",
        "fig-backflow",
        "fig-update",
        "fig-profile",
        "fig-loss",
        "fig-activations",
        "fig-time",
    } <= ids
    for c in counts:
        assert c["box"] > 0 and c["marks"] > 0, c


def test_hovering_a_heatmap_cell_names_the_layer(opened, report):
    page = opened.page
    page.locator("#fig-flow").scroll_into_view_if_needed()
    box = page.locator("#fig-flow .nsewdrag").first.bounding_box()
    page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    page.wait_for_selector("#fig-flow .hoverlayer .hovertext", timeout=10_000)
    text = page.locator("#fig-flow .hoverlayer .hovertext").first.text_content()
    layers = report[1][0].layers
    assert any(name in text for name in layers), text
    assert "grad_norm" in text and "step" in text


def test_a_finding_links_to_its_layer(opened):
    page = opened.page
    link = page.locator("#findings .finding a").first
    target = link.get_attribute("href")
    link.click()
    assert page.evaluate("location.hash") == target
    assert page.locator(target).is_visible()


def test_screenshot_is_saved(opened):
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / "report.png"
    opened.page.evaluate("window.scrollTo(0, 0)")
    opened.page.screenshot(path=str(path), full_page=True)
    assert path.stat().st_size > 10_000


def test_readme_screenshot_is_saved(opened):
    """The README's picture (docs/img/report.png is a copy): the findings with their remedies
    folded, then the gradient-flow heatmaps, at a fixed size so that a copy stays small."""
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / "report-readme.png"
    page = opened.page
    were_open = page.evaluate(
        "() => [...document.querySelectorAll('details')].map(d => { const o = d.open;"
        " d.open = false; return o; })"
    )
    try:
        page.evaluate("window.scrollTo(0, 0)")
        bottom = page.evaluate(
            "() => document.querySelector('#fig-flow').getBoundingClientRect().bottom"
        )
        page.screenshot(path=str(path), clip={"x": 0, "y": 0, "width": 1400, "height": bottom + 30})
    finally:
        page.evaluate(
            "open => document.querySelectorAll('details').forEach((d, i) => { d.open = open[i]; })",
            were_open,
        )
    assert path.stat().st_size > 10_000


def test_a_layer_named_like_a_script_runs_nothing(browser, tmp_path):
    model = nn.Sequential(
        OrderedDict([(EVIL, nn.Linear(4, 4)), ("act", nn.Tanh()), ("out", nn.Linear(4, 2))])
    )
    w = train(model, tmp_path / "evil", steps=3, seq=False)
    o = open_report(browser, write([from_watch(w, EVIL)], tmp_path / "evil.html"))
    try:
        assert o.errors == []  # an alert() would show up here as a dialog
        assert EVIL in o.page.locator("#meta table").first.inner_text()  # shown as text
    finally:
        o.page.close()
