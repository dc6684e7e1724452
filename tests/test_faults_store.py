"""The run directory under faults: two writers never mix, damage is reported, never hidden."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
from torch import nn

import gradwatch as gw
from gradwatch.errors import RunError, RunLockedError
from gradwatch.store import FINDINGS, LOCK, META, STATS_DIR, RunWriter, write_json

SRC = str(Path(__file__).resolve().parents[1] / "src")


def _rows(step: int) -> pd.DataFrame:
    return pd.DataFrame(
        {"step": [step], "layer": ["a"], "metric": ["grad_norm"], "value": [1.0], "index": [-1]}
    )


def _train(log_dir: Path, steps: int = 4, **kw):
    model = nn.Sequential(nn.Linear(3, 5), nn.Sigmoid(), nn.Linear(5, 2))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with gw.watch(model, opt, log_dir=log_dir, **kw) as w:
        for _ in range(steps):
            opt.zero_grad()
            model(torch.randn(4, 3)).pow(2).sum().backward()
            opt.step()
    return w


def test_atomic_writes_never_share_a_temporary_name(tmp_path, monkeypatch):
    # A second write of the same file lands while the first is between writing and renaming:
    # with one shared temporary name the first rename found its file gone (FileNotFoundError).
    replace = os.replace
    nested = []

    def interleaved(src, dst):
        if not nested:
            nested.append(src)
            write_json(tmp_path / FINDINGS, ["second"])
        replace(src, dst)

    monkeypatch.setattr(os, "replace", interleaved)
    write_json(tmp_path / FINDINGS, ["first"])
    assert (tmp_path / FINDINGS).read_text().count("first") == 1
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_a_second_writer_in_the_same_process_is_refused(tmp_path):
    first = RunWriter(tmp_path / "run")
    first.append(_rows(0))
    with pytest.raises(RunLockedError, match="another live writer") as info:
        RunWriter(tmp_path / "run", overwrite=True)
    assert isinstance(info.value, RunError) and str(os.getpid()) in str(info.value)
    # The refused writer deleted nothing of the first's.
    assert len(list((tmp_path / "run" / STATS_DIR).glob("part-*"))) == 1
    first.close()


def test_a_closed_writer_or_watch_frees_the_directory(tmp_path):
    first = RunWriter(tmp_path / "run")
    first.close()
    first.close()  # twice is harmless
    RunWriter(tmp_path / "run", overwrite=True).close()
    w = _train(tmp_path / "watched")  # closed by its `with`, still referenced here
    assert not (tmp_path / "watched" / LOCK).exists()
    _train(tmp_path / "watched", overwrite=True)
    assert w.log_dir == tmp_path / "watched"


def test_a_collected_writer_releases_its_lock(tmp_path):
    RunWriter(tmp_path / "run")  # never closed, dropped at once
    RunWriter(tmp_path / "run", overwrite=True).close()


HOLD = """
import sys, time
from gradwatch.store import RunWriter
w = RunWriter(sys.argv[1])
print("ready", flush=True)
time.sleep(60)
"""


def test_a_writer_in_another_live_process_is_refused(tmp_path):
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(tmp_path / "run")],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": SRC},
    )
    try:
        assert proc.stdout.readline().strip() == "ready"
        with pytest.raises(RunLockedError, match=f"pid {proc.pid}"):
            RunWriter(tmp_path / "run", overwrite=True)
    finally:
        proc.kill()
        proc.wait()


def test_the_lock_of_a_writer_that_died_is_taken_over(tmp_path):
    script = "import os, sys\nfrom gradwatch.store import RunWriter\n"
    script += "w = RunWriter(sys.argv[1])\nos._exit(0)  # no finalizer runs\n"
    subprocess.run(
        [sys.executable, "-c", script, str(tmp_path / "run")],
        check=True,
        env={**os.environ, "PYTHONPATH": SRC},
    )
    assert (tmp_path / "run" / LOCK).exists()  # died without releasing it
    RunWriter(tmp_path / "run", overwrite=True).close()
    assert not (tmp_path / "run" / LOCK).exists()


def test_a_log_dir_that_cannot_be_created_is_one_sentence(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(RunError, match="cannot be created"):
        RunWriter(tmp_path / "file" / "run")


def test_a_damaged_part_is_named_with_the_flushes_lost_and_the_rest_loads(tmp_path):
    writer = RunWriter(tmp_path / "run")
    for step in range(3):
        writer.append(_rows(step))
    writer.close()
    part = tmp_path / "run" / STATS_DIR / "part-00000001-00000001.parquet"
    part.write_bytes(part.read_bytes()[:20])
    with pytest.warns(UserWarning, match="part-00000001-00000001"):
        run = gw.load(tmp_path / "run")
    assert sorted(run.stats.step) == [0, 2]
    assert len(run.problems) == 1
    assert "part-00000001-00000001.parquet" in run.problems[0] and "flush 1" in run.problems[0]


@pytest.mark.parametrize(
    "meta, problem",
    [
        (None, "Stats of flush 1 are missing"),
        (
            {"settings": {"every": 2, "flush_every": 1}, "thinned": []},
            "Stats of flush 1, up to 1 recorded steps (optimizer steps 2-3) are missing",
        ),
        # Thinned by the watch's cost budget, recorded steps are not every-th optimizer steps.
        (
            {"settings": {"every": 2, "flush_every": 1}, "thinned": [[200, 4]]},
            "Stats of flush 1, up to 1 recorded steps are missing",
        ),
    ],
)
def test_a_missing_part_is_named(tmp_path, meta, problem):
    writer = RunWriter(tmp_path / "run")
    if meta is not None:
        writer.write_meta(meta)
    for step in range(3):
        writer.append(_rows(step))
    writer.close()
    (tmp_path / "run" / STATS_DIR / "part-00000001-00000001.parquet").unlink()
    with pytest.warns(UserWarning, match="missing"):
        run = gw.load(tmp_path / "run")
    assert sorted(run.stats.step) == [0, 2]
    assert run.problems == [problem]


def test_a_deleted_stats_directory_is_a_problem_and_the_stored_findings_stay(tmp_path):
    _train(tmp_path / "run")
    write_json(tmp_path / "run" / FINDINGS, [{"kind": "nonfinite", "severity": "error"}])
    for part in (tmp_path / "run" / STATS_DIR).iterdir():
        part.unlink()
    (tmp_path / "run" / STATS_DIR).rmdir()
    with pytest.warns(UserWarning, match="stats.parquet is missing"):
        run = gw.load(tmp_path / "run")
    assert run.stats.empty and run.findings[0]["kind"] == "nonfinite"
    assert run.problems == [
        "stats.parquet is missing, so none of the 4 optimizer steps' stats can be read"
    ]
    assert (tmp_path / "run" / META).exists()


def test_a_sound_run_has_no_problems(tmp_path):
    _train(tmp_path / "run", flush_every=2)
    assert gw.load(tmp_path / "run").problems == []


def test_the_library_report_of_a_run_without_stats_shows_its_stored_findings(tmp_path):
    # gw.report.html_report reads runs as `gradwatch report` does: a run whose stats are gone is
    # shown by the findings it stored, not as "no problem found".
    _train(tmp_path / "run")
    write_json(
        tmp_path / "run" / FINDINGS,
        [{"kind": "nonfinite", "severity": "error", "summary": "NaN in 'fc' since step 3"}],
    )
    for part in (tmp_path / "run" / STATS_DIR).iterdir():
        part.unlink()
    (tmp_path / "run" / STATS_DIR).rmdir()
    with pytest.warns(UserWarning, match="stats.parquet is missing"):
        path = gw.report.html_report(tmp_path / "run", tmp_path / "r.html")
    page = path.read_text()
    assert "NaN in &#x27;fc&#x27; since step 3" in page or "NaN in 'fc' since step 3" in page
