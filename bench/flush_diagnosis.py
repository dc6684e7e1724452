"""Cost of the streaming diagnosis that runs at every flush when `log_dir` is set.

A 3-layer tanh MLP trained for 1000 steps with flush_every=50: the detectors run 20 times, each on
the last ten flushes (up to 500 steps). Prints the time of the diagnosis alone per flush (first,
median, last, max) and as a share of the training loop's wall time.

    python bench/flush_diagnosis.py [--steps 1000] [--flush-every 50]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import torch
from torch import nn

import gradwatch as gw
import gradwatch.monitor.buffer as monitor  # where the streaming diagnosis looks `diagnose` up


def main(argv: list[str] | None = None) -> list[float]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--flush-every", type=int, default=50)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Linear(32, 64), nn.Tanh(), nn.Linear(64, 64), nn.Tanh(), nn.Linear(64, 10)
    )
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    x, y = torch.randn(64, 32), torch.randint(0, 10, (64,))
    times: list[float] = []
    real = monitor.diagnose

    def timed(stats, meta=None):
        start = time.perf_counter()
        try:
            return real(stats, meta)
        finally:
            times.append(time.perf_counter() - start)

    monitor.diagnose = timed
    try:
        with tempfile.TemporaryDirectory() as tmp:
            start = time.perf_counter()
            with gw.watch(model, opt, flush_every=args.flush_every, log_dir=f"{tmp}/run") as w:
                for _ in range(args.steps):
                    opt.zero_grad()
                    loss = nn.functional.cross_entropy(model(x), y)
                    loss.backward()
                    w.log_loss(loss)
                    opt.step()
            wall = time.perf_counter() - start
    finally:
        monitor.diagnose = real
    streamed = times[: args.steps // args.flush_every]  # the last call is close()'s own flush
    ms = [t * 1e3 for t in streamed]
    print(
        f"{len(ms)} flushes: diagnosis per flush first {ms[0]:.0f} ms, median "
        f"{statistics.median(ms):.0f} ms, last {ms[-1]:.0f} ms, max {max(ms):.0f} ms; "
        f"{sum(streamed) / wall:.0%} of the loop's {wall:.1f} s"
    )
    return ms


if __name__ == "__main__":
    main()
