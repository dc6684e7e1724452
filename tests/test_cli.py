"""The `gradwatch` command as a user runs it: a real subprocess, real exit codes."""

from __future__ import annotations

import subprocess
import sys

import gradwatch as gw


def gradwatch(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "gradwatch.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={"COLUMNS": "100", "PATH": "/usr/bin:/bin", "PYTHONHASHSEED": "0"},
    )


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


def test_a_usage_error_exits_2_with_one_line():
    out = gradwatch("demo", "--out")
    assert out.returncode == 2
    assert "Traceback" not in out.stderr
