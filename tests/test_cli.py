"""The `gradwatch` command as a user runs it: a real subprocess, real exit codes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import gradwatch as gw

# The checkout under test, not whatever gradwatch the interpreter has installed (a shared venv).
SRC = str(Path(__file__).resolve().parents[1] / "src")


def gradwatch(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "gradwatch.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={"COLUMNS": "100", "PATH": "/usr/bin:/bin", "PYTHONHASHSEED": "0", "PYTHONPATH": SRC},
    )


def gradwatch_many(*argvs: list[str], timeout: float = 600) -> list[subprocess.CompletedProcess]:
    """Several command lines in one subprocess (`workers/cli_batch.py`): each through the CLI's
    own `main()`, with its own output and exit code; one start of Python and torch for all."""
    worker = Path(__file__).resolve().parent / "workers" / "cli_batch.py"
    out = subprocess.run(
        [sys.executable, str(worker)],
        input=json.dumps([list(a) for a in argvs]),
        capture_output=True,
        text=True,
        timeout=timeout,
        env={"COLUMNS": "100", "PATH": "/usr/bin:/bin", "PYTHONHASHSEED": "0", "PYTHONPATH": SRC},
    )
    assert out.returncode == 0, out.stderr
    return [
        subprocess.CompletedProcess(a, r["returncode"], r["stdout"], r["stderr"])
        for a, r in zip(argvs, json.loads(out.stdout.strip().splitlines()[-1]), strict=True)
    ]


def test_version_prints_the_package_version():
    out = gradwatch("--version")
    assert out.returncode == 0
    assert out.stdout.strip() == f"gradwatch {gw.__version__}"


def test_demo_shows_the_vanishing_gradient_and_the_fix(tmp_path):
    out = gradwatch("demo", "--out", str(tmp_path / "demo"))
    assert out.returncode == 0, out.stderr
    assert "Median gradient norm per layer" in out.stdout
    broken = gw.load(tmp_path / "demo" / "broken")
    fixed = gw.load(tmp_path / "demo" / "fixed")
    first, last = broken.layers()[0], broken.layers()[-1]
    g = broken.stats.query("metric == 'grad_norm'").groupby("layer").value.median()
    assert g[first] < 1e-6 * g[last]  # the vanishing gradient, plain to see
    h = fixed.stats.query("metric == 'grad_norm'").groupby("layer").value.median()
    assert h[first] > 0.1 * h[last]
    assert "test accuracy" in out.stdout
    report = tmp_path / "demo" / "report.html"
    assert report.exists() and str(report) in out.stdout  # the comparison page, path printed
    assert "fig-flow" in report.read_text()


def test_a_usage_error_exits_2_with_one_line():
    out = gradwatch("demo", "--out")
    assert out.returncode == 2
    assert "Traceback" not in out.stderr


FACTORIES = """
import torch
from torch import nn

def broken():
    layers = []
    for _ in range(15):
        layers += [nn.Linear(32, 32), nn.Sigmoid()]
    model = nn.Sequential(*layers, nn.Linear(32, 10))
    return model, torch.randn(32, 32), torch.randint(0, 10, (32,))

def healthy():
    return nn.Sequential(nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 10)), torch.randn(32, 32)

def wrong_shape():
    return nn.Linear(3, 2), torch.randn(4, 5)

def raises():
    raise ValueError("boom")

def only_model():
    return nn.Linear(3, 2)

def adam_too_fast():
    torch.manual_seed(0)
    layers = []
    for _ in range(6):
        lin = nn.Linear(32, 32)
        nn.init.kaiming_normal_(lin.weight, nonlinearity="relu")
        nn.init.zeros_(lin.bias)
        layers += [lin, nn.ReLU()]
    model = nn.Sequential(*layers, nn.Linear(32, 10))
    return {"model": model, "inputs": torch.randn(64, 32), "target": torch.randint(0, 10, (64,)),
            "optimizer": torch.optim.Adam(model.parameters(), lr=0.1)}

def misspelt():
    return {"model": nn.Linear(3, 2), "inputs": torch.randn(4, 3), "optimiser": None}
"""


def test_check_exit_codes_and_json(tmp_path):
    (tmp_path / "models.py").write_text(FACTORIES)
    target = str(tmp_path / "models.py")
    # The first alone, as a user runs it; the others share one process (gradwatch_many).
    broken = gradwatch("check", f"{target}:broken")
    assert broken.returncode == 1 and "vanishing_gradient" in broken.stdout
    assert "bars on a log scale" in broken.stdout  # the per-layer table comes before the findings
    healthy, broken_json, fast = gradwatch_many(
        ["check", f"{target}:healthy", "--json"],
        ["check", f"{target}:broken", "--json"],
        ["check", f"{target}:adam_too_fast", "--json"],
    )
    assert healthy.returncode == 0
    assert json.loads(healthy.stdout) == {
        "ok": True,
        "findings": [],
        "summary": json.loads(healthy.stdout)["summary"],
    }
    doc = json.loads(broken_json.stdout)
    assert broken_json.returncode == 1
    assert doc["ok"] is False and doc["findings"][0]["kind"] == "vanishing_gradient"
    # A dict factory with an optimizer: the rehearsal finds the learning rate the model alone hides.
    doc = json.loads(fast.stdout)
    assert fast.returncode == (0 if doc["ok"] else 1) and doc["summary"]["rehearsal"]["lr"] == [0.1]
    assert "unstable_updates" in doc["summary"]["rehearsal"]["findings"]


def test_check_bad_targets_get_one_sentence_and_exit_2(tmp_path):
    (tmp_path / "models.py").write_text(FACTORIES)
    target = str(tmp_path / "models.py")
    cases = {
        f"{tmp_path}/missing.py:f": "No file",
        f"{target}:nothing": "has no callable 'nothing'",
        f"{target}:raises": "raised ValueError: boom",
        f"{target}:wrong_shape": "could not run on the inputs",
        f"{target}:only_model": "returned only a model",
        f"{target}:misspelt": "unknown key(s) optimiser",
        "no_such_package_xyz:f": "No module",
        target: "names no factory",
    }
    # The first alone, as a user runs it; the others share one process (gradwatch_many).
    first, *rest = cases
    outs = [gradwatch("check", first), *gradwatch_many(*(["check", arg] for arg in rest))]
    for (arg, message), out in zip(cases.items(), outs, strict=True):
        assert out.returncode == 2, (arg, out.stdout, out.stderr)
        assert message in " ".join(out.stderr.split()), (arg, out.stderr)
        assert "Traceback" not in out.stderr


def test_check_a_module_path_factory(tmp_path, monkeypatch):
    (tmp_path / "zoo_models.py").write_text(FACTORIES)
    out = subprocess.run(
        [sys.executable, "-m", "gradwatch.cli", "check", "zoo_models:healthy"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(tmp_path)},
    )
    assert out.returncode == 0, out.stderr


def test_theory_json_has_the_documented_fields():
    import json

    out = gradwatch(
        "theory",
        "--activation",
        "tanh",
        "--sigma-w2",
        "1.0",
        "--sigma-b2",
        "0.05",
        "--critical",
        "--json",
    )
    doc = json.loads(out.stdout)
    assert {
        "q_star",
        "chi1",
        "xi_c",
        "xi_grad",
        "phase",
        "trainable_depth",
        "critical_sigma_w2",
    } <= set(doc)
    assert abs(doc["critical_sigma_w2"] - 1.76) < 0.01 and doc["phase"] == "ordered"
