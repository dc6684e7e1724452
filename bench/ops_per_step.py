"""Operations dispatched per training step: plain training against each gradwatch configuration.

On a GPU every dispatched operation on a device tensor is (at least) one kernel launch, and a
small model's step is bound by launches, not by arithmetic. Counting them needs no GPU: a
`TorchDispatchMode` sees every operation, on the CPU as on CUDA. `--as-accelerator` makes the
parameter probe take the path it takes on a device where reading a number costs a sync (CUDA,
MPS), the forward probes their torch operations (numba's CPU kernels are not dispatched, and
not counted, without it), and Adam take its multi-tensor step (its default on CUDA), so a
CPU-only machine previews what a GPU would launch. Counts are exact and repeat from run to run;
they say nothing about how long each operation takes (see overhead.py for that).

    python bench/ops_per_step.py                           # mlp, cnn, transformer
    python bench/ops_per_step.py --models mlp --as-accelerator
"""

from __future__ import annotations

import argparse
import statistics
import sys
from collections.abc import Sequence
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode

sys.path.insert(0, str(Path(__file__).resolve().parent))
import gradwatch  # noqa: E402
import overhead  # noqa: E402  (the models and batches of bench/overhead.py)
from compare_revisions import CONFIGS, Run  # noqa: E402
from gradwatch.probes import kernels as _cpu_kernels  # noqa: E402
from gradwatch.probes import params  # noqa: E402


class _Count(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.ops = self.kernels = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops += 1
        self.kernels += not func.is_view  # a view (detach, select, t...) launches nothing
        return func(*args, **(kwargs or {}))


def count(run: Run, steps: int) -> tuple[list[int], list[int]]:
    """(operations, operations other than views) dispatched by each of `steps` steps of `run`."""
    ops, kernels = [], []
    for _ in range(steps):
        with _Count() as c:
            run.step()
        ops.append(c.ops)
        kernels.append(c.kernels)
    return ops, kernels


def main(argv: Sequence[str] | None = None) -> dict[str, dict[str, float]]:
    """Per model, each configuration's mean operations per step other than views."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--models", default="mlp,cnn,transformer", help=f"from {', '.join(overhead.MODELS)}"
    )
    p.add_argument("--configs", default="default,params,all", help=f"from {', '.join(CONFIGS)}")
    p.add_argument(
        "--steps", type=int, default=100, help="steps counted (a multiple of 50 covers a flush)"
    )
    p.add_argument(
        "--warmup",
        type=int,
        default=50,
        help="steps first, uncounted: 50 takes the default watch past its first flush window "
        "(denser)",
    )
    p.add_argument(
        "--as-accelerator",
        action="store_true",
        help="the probes' paths on CUDA/MPS, and Adam's multi-tensor (foreach) step, its default "
        "there",
    )
    args = p.parse_args(argv)
    free_reads, kernels = params.FREE_READS, _cpu_kernels.load
    if args.as_accelerator:
        params.FREE_READS = set()
        _cpu_kernels.load = lambda wait=True: None
    try:
        return _count_models(args)
    finally:
        params.FREE_READS, _cpu_kernels.load = free_reads, kernels


def _count_models(args: argparse.Namespace) -> dict[str, dict[str, float]]:
    results: dict[str, dict[str, float]] = {}
    for name in args.models.split(","):
        task = overhead.Task(overhead.MODELS[name], torch.device("cpu"), calibrate=False)
        foreach = True if args.as_accelerator else None
        runs = [Run("plain", task, foreach=foreach)]
        runs += [
            Run(c, task, gradwatch, CONFIGS[c], foreach=foreach) for c in args.configs.split(",")
        ]
        means = {}
        for run in runs:
            count(run, args.warmup)
            means[run.label] = tuple(statistics.mean(c) for c in count(run, args.steps))
            if run.watch is not None:
                run.watch.close()
        ops, kernels = means["plain"]
        path = "accelerator" if args.as_accelerator else "CPU"
        print(
            f"\n{name}: {ops:.0f} operations per plain step, {kernels:.0f} of them not views; "
            f"parameter probe on its {path} path; mean of {args.steps} steps"
        )
        print(
            "| configuration | ops/step | not views | extra not views | ratio (not views) "
            "|\n|---|---:|---:|---:|---:|"
        )
        for label, (o, k) in means.items():
            print(f"| {label} | {o:.1f} | {k:.1f} | {k - kernels:+.1f} | {k / kernels:.3f}x |")
        results[name] = {label: k for label, (_, k) in means.items()}
    return results


if __name__ == "__main__":
    main()
