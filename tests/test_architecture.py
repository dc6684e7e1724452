"""The house rules, read from the source with `ast`: imports flow one way, no import cycles, and
no part reaches into another part's `_private` names (docs/architecture.md draws the flow)."""

from __future__ import annotations

import ast
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = SRC / "gradwatch"

# The root's shared helpers: every part may import them, and they import no part.
BASE = {"_version", "errors", "_tensor", "_nn", "_json", "activations"}
# Which parts each part may import at module level. Parts not named here (lab, integrations,
# cli, demo, run_script, the package __init__) sit on top and may import any part.
ALLOWED = {
    "base": set(),
    "probes": {"base"},
    "store": {"base"},
    "theory": {"base"},
    "remedies": {"base"},
    "display": {"base"},
    "diagnose": {"base", "display", "theory", "remedies"},
    "monitor": {"base", "probes", "store", "diagnose"},
    "checks": {"base", "probes", "monitor", "store", "diagnose", "display", "theory", "remedies"},
    "report": {"base", "store", "diagnose", "display", "theory"},
}
# Imports inside a function that go against the flow, each for a reason: a live Watch writes its
# own report and draws itself in a notebook (w.report(), w._repr_html_()).
# w.report() and w._repr_html_(); w.what_if() rehearses with checks; a rehearsed what-if draws
# its curves with report's figures.
UPWARD_IN_FUNCTIONS = {
    ("monitor", "report"),
    ("monitor", "display"),
    ("monitor", "checks"),
    ("checks", "report"),
}


def _modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(SRC).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


MODULES = _modules()


def _part(module: str) -> str:
    """The part a module belongs to: its first package under gradwatch, or "base"."""
    parts = module.split(".")
    if len(parts) == 1:
        return "root"
    if parts[1] in BASE:
        return "base"
    return parts[1].removesuffix(".py")


def _imports(module: str) -> list[tuple[str, list[str], bool, int]]:
    """(imported module, names, inside a function, line) for each gradwatch import of `module`."""
    tree = ast.parse(MODULES[module].read_text())
    found = []

    def visit(node: ast.AST, in_function: bool, in_type_checking: bool) -> None:
        for child in ast.iter_child_nodes(node):
            nested = in_function or isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef)
            checking = in_type_checking or (
                isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test)
            )
            if isinstance(child, ast.ImportFrom) and not checking:
                assert child.level == 0, f"{module}:{child.lineno} uses a relative import"
                if child.module and child.module.split(".")[0] == "gradwatch":
                    names = [a.name for a in child.names]
                    # `from gradwatch.x import y` where y is a module: the import is of x.y
                    for name in names:
                        if f"{child.module}.{name}" in MODULES:
                            found.append((f"{child.module}.{name}", [], nested, child.lineno))
                    plain = [n for n in names if f"{child.module}.{n}" not in MODULES]
                    if plain:
                        found.append((child.module, plain, nested, child.lineno))
            elif isinstance(child, ast.Import) and not checking:
                for alias in child.names:
                    if alias.name.split(".")[0] == "gradwatch":
                        found.append((alias.name, [], nested, child.lineno))
            visit(child, nested, checking)

    visit(tree, False, False)
    return found


def test_parts_import_only_the_parts_below_them():
    wrong = []
    for module in MODULES:
        src = _part(module)
        if src not in ALLOWED:
            continue
        for target, _, in_function, line in _imports(module):
            dst = _part(target)
            if dst in (src, "root") and target != "gradwatch":
                continue
            if dst in ALLOWED[src] or (in_function and (src, dst) in UPWARD_IN_FUNCTIONS):
                continue
            wrong.append(f"{module}:{line} ({src}) imports {target} ({dst})")
    assert not wrong, "imports against the flow:\n" + "\n".join(wrong)


def test_no_import_cycle_between_modules():
    graph = defaultdict(set)
    for module in MODULES:
        for target, _, in_function, _ in _imports(module):
            if not in_function and target in MODULES and target != module:
                graph[module].add(target)
    # A package's __init__ importing its own submodules, which import the package back for a
    # sibling, is the usual re-export and not a cycle of ideas: drop edges into __init__s that
    # merely re-export (the submodule is what is really imported).
    cycles, index, low, stack, on, counter = [], {}, {}, [], set(), [0]

    def strongconnect(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                strongconnect(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for v in list(MODULES):
        if v not in index:
            strongconnect(v)
    assert not cycles, f"import cycles: {cycles}"


def test_no_private_name_is_imported_across_parts():
    wrong = []
    for module in MODULES:
        src = _part(module)
        for target, names, _, line in _imports(module):
            dst = _part(target)
            if dst in (src, "base", "root"):
                continue
            private = [n for n in names if n.startswith("_") and not n.startswith("__")]
            if any(p.startswith("_") for p in target.split(".")[1:]):
                private.append(target)
            if private:
                wrong.append(f"{module}:{line} imports {private} from {target}")
    assert not wrong, "\n".join(wrong)


def _private_members() -> dict[str, set[str]]:
    """For each part: the `_names` its classes define (methods and `self._x` attributes)."""
    members = defaultdict(set)
    for module, path in MODULES.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef):
                for item in ast.walk(node):
                    name = None
                    if isinstance(item, ast.FunctionDef | ast.AsyncFunctionDef):
                        name = item.name
                    elif (
                        isinstance(item, ast.Attribute)
                        and isinstance(item.value, ast.Name)
                        and item.value.id == "self"
                        and isinstance(item.ctx, ast.Store)
                    ):
                        name = item.attr
                    if name and name.startswith("_") and not name.startswith("__"):
                        members[_part(module)].add(name)
    return members


def test_no_part_reaches_into_another_parts_private_attributes():
    members = _private_members()
    wrong = []
    for module, path in MODULES.items():
        src = _part(module)
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.Attribute) or not node.attr.startswith("_"):
                continue
            if node.attr.startswith("__") or node.attr in members[src]:
                continue
            if isinstance(node.value, ast.Name) and node.value.id in ("self", "cls"):
                continue
            owners = [part for part, names in members.items() if node.attr in names]
            if owners:
                wrong.append(f"{module}:{node.lineno} uses .{node.attr} (private to {owners})")
    assert not wrong, "\n".join(wrong)


@pytest.mark.parametrize("heavy", ["plotly", "torch.distributed.tensor", "gradwatch.report"])
def test_import_gradwatch_loads_nothing_a_watch_does_not_need(heavy):
    code = f"import sys, gradwatch; print({heavy!r} in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


_WATCH_IMPORTS = """
import sys, torch
model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))
opt = torch.optim.SGD(model.parameters(), lr=0.1)  # torch's own imports, before gradwatch's
before = set(sys.modules)
import gradwatch as gw
w = gw.watch(model, opt, flush_every=8)
for _ in range(3):  # steps before the first flush
    opt.zero_grad()
    model(torch.randn(16, 4)).pow(2).mean().backward()
    opt.step()
heavy = ("pandas", "pyarrow", "plotly", "torch.distributed.tensor", "gradwatch.diagnose.detect",
         "numba")
print(sorted(m for m in set(sys.modules) - before if m in heavy))
"""


def test_watching_imports_no_table_library_before_the_first_flush():
    """`import gradwatch`, `gw.watch(...)` and the steps before the first flush import neither
    pandas nor pyarrow (nor plotly, DTensor or the detectors): they cost more to import than the
    rest of gradwatch, and only the flush needs them. Nor numba: the default watch's forward
    probes measure too rarely to earn back the seconds its kernels take to load."""
    out = subprocess.run(
        [sys.executable, "-c", _WATCH_IMPORTS], capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "[]", out.stdout


def test_public_names_resolve_lazily():
    code = (
        "import gradwatch as gw\n"
        "names = [gw.watch, gw.check, gw.load, gw.Watch, gw.Diagnosis, gw.Finding, gw.Remedy,"
        " gw.Run, gw.theory.mean_field, gw.remedies.he_init, gw.report.html_report]\n"
        "print(len(names))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "11"


# Every optional dependency (the extras in pyproject.toml) made unimportable, as in a fresh
# `pip install gradwatch`: the package, a watch, a check and the theory must still work.
_WITHOUT_EXTRAS = """
import importlib.abc, sys

OPTIONAL = ("numba", "matplotlib", "lightning", "pytorch_lightning", "transformers",
            "accelerate", "tensorboard", "wandb", "mlflow", "playwright")

class Absent(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in OPTIONAL:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None

sys.meta_path.insert(0, Absent())
import torch
import gradwatch as gw

model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))
opt = torch.optim.SGD(model.parameters(), lr=0.1)
with gw.watch(model, opt) as w:
    for _ in range(3):
        opt.zero_grad()
        model(torch.randn(16, 4)).pow(2).mean().backward()
        opt.step()
assert len(w.stats()) > 0
gw.check(model, torch.randn(16, 4))
gw.theory.mean_field("tanh", sigma_w2=1.0, sigma_b2=0.05)
assert not any(m.split(".")[0] in OPTIONAL for m in sys.modules)
print("ok")
"""


def test_gradwatch_works_with_every_optional_dependency_absent():
    out = subprocess.run(
        [sys.executable, "-c", _WITHOUT_EXTRAS],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().endswith("ok")
