"""The README and docs/ say what the code does: their python snippets run, their links resolve.

Every ```python block of README.md and docs/*.md runs, in order, in one namespace per file (a
later snippet may use what an earlier one made, as a reader would), in a temporary directory,
after PREAMBLE: small stand-ins for what a reader already has (a model, an optimizer, a loader).
A block whose fence is preceded by `<!-- not run: REASON -->` is skipped; keep those few.
"""

from __future__ import annotations

import re
import textwrap
import traceback
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = sorted((ROOT / "docs").glob("*.md"))
NOT_RUN = re.compile(r"<!--\s*not run:\s*(?P<reason>[^>]*?)\s*-->")
MAX_NOT_RUN = 4  # blocks marked not run, over all files: the few that need a framework or account

# What a reader of the docs already has. A deep sigmoid MLP, so that diagnosis, theory and
# what-if have something to say; small, so that the whole file runs in seconds.
PREAMBLE = """
import io

import rich.console
import torch
import torch.nn.functional as F
from torch import nn

import gradwatch
import gradwatch as gw

torch.manual_seed(0)


def _mlp(depth=6, width=16, act=nn.Sigmoid):
    layers = [m for _ in range(depth) for m in (nn.Linear(width, width), act())]
    return nn.Sequential(*layers, nn.Linear(width, 4))


model = _mlp()
opt = torch.optim.SGD(model.parameters(), lr=0.1)
loss_fn = nn.CrossEntropyLoss()
inputs, target = torch.randn(32, 16), torch.randint(0, 4, (32,))
loader = [(torch.randn(32, 16), torch.randint(0, 4, (32,))) for _ in range(6)]
scaler = torch.amp.GradScaler("cpu")
lstm = nn.LSTM(8, 8)
console = rich.console.Console(file=io.StringIO())

# Two finished runs on disk, runs/a and runs/b, for the snippets that compare runs; `w` watched b.
for _name in ("a", "b"):
    _m = _mlp()
    _o = torch.optim.SGD(_m.parameters(), lr=0.1)
    with gw.watch(_m, _o, log_dir=f"runs/{_name}") as _w:
        for _x, _y in loader:
            _o.zero_grad()
            loss_fn(_m(_x), _y).backward()
            _o.step()
w = _w
"""


@dataclass(frozen=True)
class Snippet:
    path: Path
    line: int  # 1-based line of the opening fence
    code: str
    not_run: str | None  # the reason, for a block marked not run

    @property
    def where(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"


def snippets(path: Path) -> list[Snippet]:
    """The ```python blocks of a markdown file, each with the not-run reason above it, if any."""
    lines = path.read_text().splitlines()
    found, i = [], 0
    while i < len(lines):
        if lines[i].strip() == "```python":
            start = i
            end = next(j for j in range(i + 1, len(lines)) if lines[j].strip() == "```")
            before = [line for line in lines[:start] if line.strip()]
            mark = NOT_RUN.search(before[-1]) if before else None
            code = textwrap.dedent("\n".join(lines[start + 1 : end]))
            found.append(Snippet(path, start + 1, code, mark["reason"] if mark else None))
            i = end
        i += 1
    return found


FILES = [README, *DOCS]
WITH_SNIPPETS = [p for p in FILES if any(s.not_run is None for s in snippets(p))]


def test_the_readme_has_snippets_to_run():
    assert README in WITH_SNIPPETS


@pytest.mark.parametrize("path", WITH_SNIPPETS, ids=lambda p: str(p.relative_to(ROOT)))
def test_python_snippets_run(path, tmp_path, monkeypatch):
    blocks = snippets(path)
    runnable = [s for s in blocks if s.not_run is None]
    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": "__docs__"}
    exec(compile(PREAMBLE, "<preamble>", "exec"), namespace)
    for s in runnable:
        # Padding the code with blank lines makes a traceback's line numbers the file's own.
        code = compile("\n" * s.line + s.code, str(s.path), "exec")
        try:
            exec(code, namespace)
        except Exception:  # noqa: BLE001 - any error in a snippet is the failure being reported
            pytest.fail(f"the snippet at {s.where} raised:\n{traceback.format_exc()}")
    print(f"{path.name}: {len(runnable)} snippets ran, {len(blocks) - len(runnable)} not run")


def test_few_snippets_are_marked_not_run_and_each_says_why():
    marked = [s for path in FILES for s in snippets(path) if s.not_run is not None]
    assert len(marked) <= MAX_NOT_RUN, [s.where for s in marked]
    assert all(s.not_run for s in marked), [s.where for s in marked if not s.not_run]


def test_readme_starts_with_make_demo_and_make_test():
    head = README.read_text().split("\n\n")[1]
    assert head.splitlines()[1].startswith("make demo    # ")
    assert head.splitlines()[2].startswith("make test    # ")


def test_readme_is_a_front_door():
    assert len(README.read_text().splitlines()) <= 120


@pytest.mark.parametrize("path", FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_and_images_resolve(path):
    text = re.sub(r"```.*?```", "", path.read_text(), flags=re.S)  # links in code are not links
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"[a-z]+:", target) or target.startswith("#"):
            continue
        assert (path.parent / target.split("#")[0]).exists(), f"{path.name}: {target}"


def test_the_readme_screenshot_is_small():
    image = ROOT / "docs" / "img" / "report.png"
    assert 10_000 < image.stat().st_size < 400_000
