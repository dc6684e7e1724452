"""Smoke test of bench/overhead.py: it runs, and every row it prints has a usable ratio.

Timings are never asserted (the machines are shared and noisy); only that the numbers exist.
"""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench" / "overhead.py"


@pytest.fixture(scope="module")
def overhead():
    spec = importlib.util.spec_from_file_location("gradwatch_bench_overhead", BENCH)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up by name
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.modules.pop(spec.name, None)


def test_quick_run_gives_a_ratio_for_every_row(overhead, capsys):
    pytest.importorskip("lightning")
    # One thread: two OpenMP threads on a busy two-core machine stall for a scheduler tick per op.
    argv = "--quick --models mlp --configs plain,gw1,lightning --device cpu --threads 1"
    results = overhead.main(argv.split())
    assert [r.model for r in results] == ["mlp"]
    rows = {row.key: row for row in results[0].rows}
    assert list(rows) == ["plain", "gw1", "lightning"]
    for row in rows.values():
        assert row.error is None, f"{row.name}: {row.error}"
        assert row.ratio is not None and math.isfinite(row.ratio) and row.ratio > 0, row
        assert row.ms is not None and math.isfinite(row.ms) and row.ms > 0, row
    assert rows["plain"].ratio == 1.0
    assert rows["gw1"].memory is not None and 0 < rows["gw1"].memory["fraction"] <= 1
    out = capsys.readouterr().out
    for name in ("plain", "gradwatch every=1", "lightning grad_norm"):
        assert name in out


def test_markdown_has_a_row_per_configuration(overhead):
    row = overhead.Row("plain", "plain", ratio=1.0, ms=2.5)
    broken = overhead.Row("wandb", "wandb.watch gradients", error="could not set up: ImportError")
    res = overhead.ModelResult("mlp", "cpu", 7, 20, [row, broken])
    text = overhead.markdown([res])
    assert "| plain | 1.000x | 2.50 |" in text
    assert "| wandb.watch gradients | n/a | n/a | could not set up: ImportError |" in text


def test_interleaved_run_steps_every_configuration_once_per_round(overhead):
    argv = "--quick --interleave --models mlp --configs plain,gw1 --device cpu --threads 1"
    res = overhead.main(argv.split())[0]
    assert res.rounds == 4 and "mean of 4 interleaved steps" in overhead._title(res)
    for row in res.rows:
        assert row.error is None and len(row.blocks_ms) == 4
        assert row.ms == pytest.approx(sum(row.blocks_ms) / 4)


def test_compare_revisions_times_revisions_next_to_the_working_tree(capsys):
    root = Path(__file__).resolve().parents[1]
    if not (root / ".git").exists():
        pytest.skip("needs the git history of a checkout")
    import torch

    spec = importlib.util.spec_from_file_location(
        "gradwatch_bench_compare", root / "bench" / "compare_revisions.py"
    )
    module = importlib.util.module_from_spec(spec)
    threads = torch.get_num_threads()
    try:
        spec.loader.exec_module(module)
        module.main(["HEAD", "HEAD~1", "--rounds", "4", "--warmup", "1", "--configs", "default"])
    finally:
        torch.set_num_threads(threads)
        sys.modules.pop("gradwatch_HEAD", None)
        sys.modules.pop("gradwatch_HEAD_1", None)
    out = capsys.readouterr().out
    rows = [
        line.split("|")[1:3] for line in out.splitlines() if line.startswith("| ") and "x |" in line
    ]
    assert [label.strip() for label, _ in rows] == [
        "plain",
        "default @ HEAD",
        "default @ HEAD~1",
        "default @ working tree",
    ]
    assert all(math.isfinite(float(ratio.strip().rstrip("x"))) for _, ratio in rows)


def test_ops_per_step_counts_the_two_counting_kernels_per_gradient_on_an_accelerator():
    import torch

    root = Path(__file__).resolve().parents[1]
    spec = importlib.util.spec_from_file_location(
        "gradwatch_bench_ops", root / "bench" / "ops_per_step.py"
    )
    module = importlib.util.module_from_spec(spec)
    threads = torch.get_num_threads()
    try:
        spec.loader.exec_module(module)
        argv = ["--models", "mlp", "--configs", "params", "--steps", "3", "--warmup", "2"]
        cpu = module.main(argv)["mlp"]
        accelerator = module.main([*argv, "--as-accelerator"])["mlp"]
    finally:
        torch.set_num_threads(threads)
    assert cpu["params"] > cpu["plain"] > 0
    # On an accelerator the usual step counts each gradient's NaN/Inf entries: two kernels each
    # (the 20-layer MLP has 21 weights and 21 biases) and one stack of the counts.
    assert accelerator["params"] - accelerator["plain"] == cpu["params"] - cpu["plain"] + 2 * 42 + 1
