"""The command under faults: user strings printed literally, bad input is one sentence and exit 2,
damage is said, never hidden. Each case is a real subprocess, as a user runs it."""

from __future__ import annotations

import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
from torch import nn

import gradwatch as gw
from gradwatch.store import FINDINGS, STATS_DIR

SRC = str(Path(__file__).resolve().parents[1] / "src")
# "[x]" is read as a style by rich (and vanishes); "[/x]" is a closing tag with no opening one
# (MarkupError). A path holds it as the directory "d[" followed by "x]".
ODD = "d[/x]/o[x]"


def gradwatch(*args: str, cwd: Path, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "gradwatch.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=cwd,
        env={"COLUMNS": "200", "PATH": "/usr/bin:/bin", "PYTHONHASHSEED": "0", "PYTHONPATH": SRC},
    )


def _train(log_dir: Path, depth: int = 2, steps: int = 6) -> None:
    """A small run; depth 12 of sigmoids stores a vanishing-gradient error in findings.json."""
    torch.manual_seed(0)
    layers: list[nn.Module] = []
    for _ in range(depth):
        layers += [nn.Linear(16, 16), nn.Sigmoid()]
    model = nn.Sequential(*layers, nn.Linear(16, 4))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with gw.watch(model, opt, log_dir=log_dir, flush_every=5) as w:
        for _ in range(steps):
            opt.zero_grad()
            loss = nn.functional.cross_entropy(
                model(torch.randn(32, 16)), torch.randint(0, 4, (32,))
            )
            loss.backward()
            opt.step()
    assert w.steps_seen == steps


SCRIPT = """
import pathlib, sys
import torch
from torch import nn
pathlib.Path("started").write_text("yes")
m = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 1))
opt = torch.optim.SGD(m.parameters(), lr=0.1)
for _ in range(3):
    opt.zero_grad()
    m(torch.randn(8, 3)).pow(2).mean().backward()
    opt.step()
print("trained")
"""

FACTORY = """
import torch
from torch import nn

def broken():
    layers = []
    for _ in range(15):
        layers += [nn.Linear(32, 32), nn.Sigmoid()]
    return nn.Sequential(*layers, nn.Linear(32, 4)), torch.randn(64, 32)
"""


# ------------------------------------------------------------- 1. user strings printed literally


def test_report_prints_a_bracketed_run_path_literally(tmp_path):
    _train(tmp_path / ODD)
    out = gradwatch("report", ODD, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert f"Report written to {ODD}/report.html" in out.stdout
    assert (tmp_path / ODD / "report.html").exists()


def test_report_to_a_bracketed_output_path(tmp_path):
    _train(tmp_path / "run")
    out = gradwatch("report", "run", "-o", f"{ODD}.html", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert f"Report written to {ODD}.html" in out.stdout


def test_demo_prints_a_bracketed_out_path_literally(tmp_path):
    out = gradwatch("demo", "--out", ODD, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert f"Runs written to {ODD}/broken and {ODD}/fixed" in out.stdout
    assert f"side by side: {ODD}/report.html" in out.stdout


def test_run_prints_bracketed_script_and_log_dir_literally(tmp_path):
    (tmp_path / "s[/x]").mkdir(parents=True)
    (tmp_path / "s[/x]" / "t[x].py").write_text(SCRIPT)
    out = gradwatch("run", "--log-dir", ODD, "s[/x]/t[x].py", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "trained"
    assert f"gradwatch: run directory {ODD}" in out.stderr
    # The default run directory is named after the script: "t[x]-<time>".
    out = gradwatch("run", "s[/x]/t[x].py", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "gradwatch: run directory runs/t[x]-" in out.stderr


def test_check_prints_a_bracketed_target_literally(tmp_path):
    (tmp_path / "m[/x]").mkdir(parents=True)
    (tmp_path / "m[/x]" / "f[x].py").write_text(FACTORY)
    out = gradwatch("check", "m[/x]/f[x].py:broken", cwd=tmp_path)
    assert out.returncode == 1, out.stderr  # the sigmoid stack's error finding
    assert "gradwatch check m[/x]/f[x].py:broken" in out.stdout
    out = gradwatch("check", "m[/x]/f[x].py:missing", cwd=tmp_path)
    assert out.returncode == 2
    assert "m[/x]/f[x].py" in out.stderr and "Traceback" not in out.stderr


# --------------------------------------------------------------------------------- 2. --help


@pytest.mark.parametrize(
    "command, flags",
    [
        ("report", ["--text"]),
        ("check", ["--json", "--what-if"]),
        ("theory", ["--critical", "--json"]),
        ("lab", ["--quick"]),
        ("demo", ["--overwrite"]),
        ("run", ["--overwrite"]),
    ],
)
def test_help_shows_boolean_options_as_flags(tmp_path, command, flags):
    out = gradwatch(command, "--help", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    for flag in flags:
        # the option's own row (another row's help may mention the flag)
        (line,) = [ln for ln in out.stdout.splitlines() if ln.strip("│ ").startswith(f"{flag} ")]
        assert "<bool>" not in line, line


def test_report_help_shows_the_default_output_path(tmp_path):
    out = gradwatch("report", "--help", cwd=tmp_path)
    (line,) = [ln for ln in out.stdout.splitlines() if "--out" in ln]
    text = " ".join(out.stdout.split())
    assert "[default: (RUN_DIR/report.html, or report.html for several runs)]" in text, text
    assert "HTML file to write" in line


# ------------------------------------------------------------------- 3 and 4. the bad-input matrix


@pytest.fixture
def place(tmp_path):
    """A working directory with a file, a finished run, a script that marks its start."""
    (tmp_path / "file.txt").write_text("not a directory")
    _train(tmp_path / "run")
    (tmp_path / "demo" / "broken").mkdir(parents=True)
    (tmp_path / "demo" / "broken" / "meta.json").write_text("{}")
    (tmp_path / "train.py").write_text(SCRIPT)
    return tmp_path


BAD = [
    (["report", "missing"], "is not a gradwatch run directory"),
    (["report", "file.txt"], "is not a gradwatch run directory"),
    (["report", "run", "-o", "run"], "-o 'run' is a directory"),
    (["report", "run", "-o", "file.txt/r.html"], "'file.txt' is a file"),
    (["demo", "--out", "file.txt"], "--out 'file.txt' is a file"),
    (["demo", "--out", "demo"], "already holds a demo run (broken)"),
    (["demo", "--out", "file.txt/sub"], "--out 'file.txt/sub' cannot be created"),
    (["run", "--every", "0", "train.py"], "--every must be a positive integer, got 0"),
    (["run", "--log-dir", "file.txt", "train.py"], "--log-dir 'file.txt' is a file"),
    (["run", "--log-dir", "run", "train.py"], "--log-dir 'run' already holds a gradwatch run"),
    (["run", "--log-dir", "file.txt/sub", "train.py"], "'file.txt/sub' cannot be created"),
    (["run", "missing.py"], "No script at missing.py"),
    (["check", "missing.py:f"], "No file"),
    (["lab", "--quick", "--out", "file.txt", "mean-field"], "--out 'file.txt' is a file"),
    (["theory", "--activation", "nope"], "nope"),
]


@pytest.mark.parametrize("args, message", BAD, ids=[" ".join(a) for a, _ in BAD])
def test_bad_input_is_one_sentence_and_exit_2(place, args, message):
    before = {p.name: p.stat().st_mtime_ns for p in (place / "run").iterdir()}
    out = gradwatch(*args, cwd=place)
    assert out.returncode == 2, (out.stdout, out.stderr)
    assert "Traceback" not in out.stderr + out.stdout
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], out.stderr
    assert not (place / "started").exists()  # a script never starts on bad arguments
    assert {p.name: p.stat().st_mtime_ns for p in (place / "run").iterdir()} == before


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only directories")
def test_report_into_a_read_only_run_directory_is_one_sentence(tmp_path):
    _train(tmp_path / "run")
    (tmp_path / "run").chmod(0o555)
    try:
        out = gradwatch("report", "run", cwd=tmp_path)
    finally:
        (tmp_path / "run").chmod(0o755)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert "cannot be written" in out.stderr


def test_report_into_a_directory_the_os_refuses_is_one_sentence(tmp_path, monkeypatch, capsys):
    """The same check as above where it can run as root: the OS's answer is what is refused."""
    from gradwatch.cli import main

    _train(tmp_path / "run")
    refused = (tmp_path / "run").resolve()
    real = os.access

    def access(path, mode, *args, **kwargs):
        if mode & os.W_OK and Path(path).resolve() == refused:
            return False
        return real(path, mode, *args, **kwargs)

    monkeypatch.setattr(os, "access", access)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["gradwatch", "report", "run"])
    with pytest.raises(SystemExit) as stop:
        main()
    err = " ".join(capsys.readouterr().err.split())
    assert stop.value.code == 2 and "Traceback" not in err
    assert "cannot be written (no permission on" in err
    assert not (tmp_path / "run" / "report.html").exists()


def test_demo_overwrite_replaces_a_previous_demo(tmp_path, monkeypatch):
    from gradwatch import demo

    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "meta.json").write_text("{}")
    with pytest.raises(gw.errors.RunExistsError, match="--overwrite"):
        demo.check_out(tmp_path, overwrite=False)
    demo.check_out(tmp_path, overwrite=True)


# ------------------------------------------------------------- 4. the watch never breaks a script

RAW = """
import torch
w = torch.randn(3, requires_grad=True)
opt = torch.optim.SGD([w], lr=0.1)
for _ in range(3):
    opt.zero_grad()
    (w ** 2).sum().backward()
    opt.step()
print("trained")
"""


def test_run_of_an_optimizer_over_raw_tensors_says_why_nothing_was_watched(tmp_path):
    (tmp_path / "raw.py").write_text(RAW)
    out = gradwatch("run", "--log-dir", "raw-run", "raw.py", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "trained"
    assert "belong to no nn.Module" in out.stderr
    assert "took no optimizer step" not in out.stderr
    assert not (tmp_path / "raw-run").exists()  # the unused directory is not left behind


def test_a_watch_that_fails_to_start_detaches_and_training_goes_on(tmp_path, monkeypatch, capsys):
    from gradwatch.run_script import run_script

    def broken_watch(*args, **kwargs):
        raise RuntimeError("probe setup failed")

    monkeypatch.setattr(gw, "watch", broken_watch)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "train.py").write_text(SCRIPT)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        code = run_script(tmp_path / "train.py", [], log_dir=tmp_path / "run")
    assert code == 0
    assert capsys.readouterr().out.strip() == "trained"
    messages = [str(w.message) for w in caught if "gradwatch run" in str(w.message)]
    assert len(messages) == 1 and "probe setup failed" in messages[0], messages


# ----------------------------------------------------------------- 6. the store tells the truth


def test_report_of_a_run_whose_only_part_is_truncated_shows_its_stored_findings(tmp_path):
    _train(tmp_path / "run", depth=12, steps=12)
    (part,) = (tmp_path / "run" / STATS_DIR).glob("part-*")
    part.write_bytes(part.read_bytes()[:100])
    assert "vanishing_gradient" in (tmp_path / "run" / FINDINGS).read_text()
    out = gradwatch("report", "run", "--text", cwd=tmp_path)
    assert out.returncode == 1, (out.stdout, out.stderr)
    assert "Traceback" not in out.stderr
    err = " ".join(out.stderr.split())
    assert "run 'run' is damaged" in err and part.name in err
    assert "showing the findings stored in its findings.json" in err
    assert "no problem found" not in out.stdout.lower()
    assert "vanish" in out.stdout.lower()


def test_report_of_a_run_without_its_stats_directory_says_so(tmp_path):
    _train(tmp_path / "run", depth=12, steps=12)
    for part in (tmp_path / "run" / STATS_DIR).iterdir():
        part.unlink()
    (tmp_path / "run" / STATS_DIR).rmdir()
    out = gradwatch("report", "run", cwd=tmp_path)
    assert out.returncode == 1, (out.stdout, out.stderr)
    err = " ".join(out.stderr.split())
    assert "stats.parquet is missing" in err and "12 optimizer steps" in err
    assert "showing the findings stored" in err
    assert (tmp_path / "run" / "report.html").exists()
    assert "vanish" in (tmp_path / "run" / "report.html").read_text().lower()


def test_report_of_a_sound_run_exits_0_without_warnings(tmp_path):
    _train(tmp_path / "run")
    out = gradwatch("report", "run", "--text", cwd=tmp_path)
    assert out.returncode == 0 and out.stderr == "", out.stderr


def test_theory_prints_a_bracketed_plot_path_literally(tmp_path):
    out = gradwatch("theory", "--plot", f"{ODD}.png", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert f"{ODD}.png" in out.stdout and (tmp_path / f"{ODD}.png").exists()


def test_names_with_brackets_are_printed_literally_in_the_terminal_views():
    import pandas as pd

    # Run, layer and finding text come from the user: rich must not read "[/x]" as markup
    # (MarkupError) nor swallow "[x]" as a style.
    from rich.console import Console

    from gradwatch.diagnose import Diagnosis, Finding, Remedy
    from gradwatch.display.terminal import compare_table, findings_view

    finding = Finding(
        "dead_units",
        "warning",
        ("blocks[/x].relu",),
        "layer blocks[/x].relu [bold]dies",
        remedies=(Remedy("init", "re-init blocks[/x] [red]now"),),
    )
    console = Console(width=200, record=True)
    console.print(findings_view(Diagnosis([finding]), title="Diagnosis of run[/a]"))
    table = pd.DataFrame(
        {
            "step": [0],
            "layer": ["blocks[/x].fc"],
            "metric": ["grad_norm"],
            "value": [1.0],
            "index": [-1],
        }
    )
    console.print(compare_table({"run[/b]": table}, ["blocks[/x].fc"], {"blocks[/x].fc": "Li[x]"}))
    text = console.export_text()
    for literal in (
        "run[/a]",
        "blocks[/x].relu [bold]dies",
        "re-init blocks[/x] [red]now",
        "run[/b]",
        "blocks[/x].fc",
        "Li[x]",
    ):
        assert literal in text, literal
