"""DDP and FSDP2 with real processes (torchrun, 2 ranks, gloo on CPU): the statistics are those of
the global model, equal to a single process training on the whole batch."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

import gradwatch as gw

sys.path.insert(0, str(Path(__file__).parent))
from workers.dist_train import make_model, train  # noqa: E402

WORKER = Path(__file__).parent / "workers" / "dist_train.py"
GLOBAL_METRICS = ["grad_norm", "weight_norm", "update_ratio", "nonfinite"]


def torchrun(
    mode: str, out: Path, env: dict | None = None, timeout: float = 240
) -> subprocess.CompletedProcess:
    src = str(Path(gw.__file__).parents[1])
    full_env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([src, os.environ.get("PYTHONPATH", "")]),
        "OMP_NUM_THREADS": "1",
        **(env or {}),
    }
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        str(WORKER),
        mode,
        str(out),
    ]
    return subprocess.run(cmd, env=full_env, capture_output=True, text=True, timeout=timeout)


def _global(stats: pd.DataFrame) -> pd.Series:
    rows = stats[stats["metric"].isin(GLOBAL_METRICS)]
    return rows.set_index(["step", "layer", "metric"])["value"].sort_index()


@pytest.fixture(scope="module")
def single_process() -> pd.Series:
    return _global(train(make_model(), None).stats())


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory) -> Path:
    """One launch trains under DDP, then under FSDP2 (process start-up dominates the cost)."""
    out = tmp_path_factory.mktemp("dist")
    done = torchrun("ddp,fsdp", out)
    if done.returncode != 0 and "terminate called without an active exception" in done.stderr:
        # A rare abort inside gloo's C++ teardown at process exit (seen once in CI, not reproduced
        # in 19 local launches): not about the statistics, so launch once more before judging.
        out = tmp_path_factory.mktemp("dist-again")
        done = torchrun("ddp,fsdp", out)
    assert done.returncode == 0, done.stderr[-3000:]
    return out


@pytest.mark.parametrize("mode", ["ddp", "fsdp"])
def test_two_ranks_record_the_statistics_of_one_process(mode, two_ranks, single_process):
    run = gw.load(two_ranks / mode)
    got = _global(run.stats)
    assert list(got.index) == list(single_process.index)
    assert (got - single_process).abs().max() < 1e-5
    assert run.meta["steps_seen"] == 5


@pytest.mark.slow
def test_a_rank_that_dies_does_not_hang_the_others(tmp_path):
    done = torchrun(
        "fsdp",
        tmp_path,
        env={"GRADWATCH_TEST_FAIL_RANK": "1", "GRADWATCH_TEST_TIMEOUT": "5"},
        timeout=180,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "could not reduce statistics across ranks" in done.stderr
    assert not gw.load(tmp_path / "fsdp").stats.empty  # rank 0 kept its own shard's numbers
