"""The run directory: what is flushed survives a SIGKILL, and bad paths get one clear sentence."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
from torch import nn

import gradwatch as gw
from gradwatch.errors import CorruptRunError, RunExistsError, RunNotFoundError
from gradwatch.store import STATS_DIR, RunWriter


def _train(log_dir: Path, steps: int = 7, **kw):
    model = nn.Sequential(nn.Linear(3, 5), nn.Sigmoid(), nn.Linear(5, 2))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with gw.watch(model, opt, log_dir=log_dir, **kw) as w:
        for _ in range(steps):
            opt.zero_grad()
            model(torch.randn(4, 3)).pow(2).sum().backward()
            opt.step()
    return w


def test_loaded_run_equals_the_live_stats(tmp_path):
    w = _train(tmp_path / "run", flush_every=3)
    run = gw.load(tmp_path / "run")
    pd.testing.assert_frame_equal(run.stats, w.stats())
    assert run.layers() == w.layers() == ["0", "1", "2"]
    first = run.meta["model"]["layers"][0]
    assert {
        k: first[k] for k in ("name", "type", "n_params", "n_trainable", "fan_in", "fan_out")
    } == {
        "name": "0",
        "type": "Linear",
        "n_params": 20,
        "n_trainable": 20,
        "fan_in": 3,
        "fan_out": 5,
    }
    assert run.meta["torch_version"] == torch.__version__
    assert run.meta["settings"]["every"] == 1 and run.meta["finished"]


def test_parts_are_compacted_on_close(tmp_path):
    _train(tmp_path / "run", steps=10, flush_every=2)
    parts = [p.name for p in (tmp_path / "run" / STATS_DIR).iterdir()]
    assert parts == ["part-00000000-00004.parquet".replace("00004", "00000004")]
    assert sorted(pd.read_parquet(tmp_path / "run" / STATS_DIR).step.unique()) == list(range(10))


def test_a_compaction_interrupted_midway_does_not_duplicate_rows(tmp_path):
    writer = RunWriter(tmp_path / "run")
    for step in range(3):
        writer.append(
            pd.DataFrame(
                {
                    "step": [step],
                    "layer": ["a"],
                    "metric": ["grad_norm"],
                    "value": [1.0],
                    "index": [-1],
                }
            )
        )
    stats = tmp_path / "run" / STATS_DIR
    keep = {p.name: p.read_bytes() for p in stats.iterdir()}
    writer.compact()
    for name, data in keep.items():  # as if killed after writing the merged part, before unlinking
        (stats / name).write_bytes(data)
    assert sorted(gw.load(tmp_path / "run").stats.step) == [0, 1, 2]


KILLED_SCRIPT = textwrap.dedent(
    """
    import sys, time, torch
    from torch import nn
    import gradwatch as gw
    model = nn.Sequential(nn.Linear(3, 5), nn.Tanh(), nn.Linear(5, 1))
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    w = gw.watch(model, opt, log_dir=sys.argv[1], flush_every=5)
    step = 0
    while True:
        opt.zero_grad()
        model(torch.randn(4, 3)).sum().backward()
        opt.step()
        step += 1
        if step == 23:
            print("flushed 20", flush=True)
        time.sleep(0.001)
    """
)


def test_a_run_killed_with_sigkill_keeps_every_flushed_step(tmp_path):
    script = tmp_path / "train.py"
    script.write_text(KILLED_SCRIPT)
    proc = subprocess.Popen(
        [sys.executable, str(script), str(tmp_path / "run")], stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout.readline().strip() == "flushed 20"
        time.sleep(0.2)
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    run = gw.load(tmp_path / "run")
    steps = sorted(run.stats.step.unique())
    assert steps[:20] == list(range(20))
    assert len(steps) % 5 == 0  # whole flushes only, never half of one
    assert run.meta["finished"] is None
    assert run.layers() == ["0", "1", "2"]


def test_missing_run_gets_one_sentence(tmp_path):
    with pytest.raises(RunNotFoundError, match="does not exist"):
        gw.load(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(RunNotFoundError, match="not a gradwatch run"):
        gw.load(tmp_path / "empty")
    (tmp_path / "file").write_text("x")
    with pytest.raises(RunNotFoundError, match="is a file"):
        gw.load(tmp_path / "file")


def test_corrupt_meta_gets_one_sentence(tmp_path):
    _train(tmp_path / "run")
    (tmp_path / "run" / "meta.json").write_text("{not json")
    with pytest.raises(CorruptRunError, match="not valid JSON"):
        gw.load(tmp_path / "run")


def test_a_damaged_part_is_skipped_with_a_warning_and_the_rest_loads(tmp_path):
    writer = RunWriter(tmp_path / "run")
    for step in range(3):
        writer.append(
            pd.DataFrame(
                {
                    "step": [step],
                    "layer": ["a"],
                    "metric": ["grad_norm"],
                    "value": [1.0],
                    "index": [-1],
                }
            )
        )
    (tmp_path / "run" / STATS_DIR / "part-00000001-00000001.parquet").write_bytes(b"garbage")
    with pytest.warns(UserWarning, match="Skipped unreadable part"):
        run = gw.load(tmp_path / "run")
    assert sorted(run.stats.step) == [0, 2]


def test_an_existing_run_is_never_overwritten_silently(tmp_path):
    _train(tmp_path / "run")
    before = json.loads((tmp_path / "run" / "meta.json").read_text())
    with pytest.raises(RunExistsError, match="already holds a gradwatch run"):
        _train(tmp_path / "run")
    assert json.loads((tmp_path / "run" / "meta.json").read_text()) == before
    _train(tmp_path / "run", steps=2, overwrite=True)
    assert sorted(gw.load(tmp_path / "run").stats.step.unique()) == [0, 1]
