"""What the watch's flushes cost a small model, per flush and per step.

```
.venv/bin/python bench/flush_cost.py                    # 5000 steps, no log_dir
.venv/bin/python bench/flush_cost.py --steps 20000 --log-dir /tmp/run
```

Trains the 3-layer MLP of the overhead benchmark (64-64-64-10, batch 64, Adam, one thread) under
a default watch and times `StepBuffer.flush` where it runs. Printed: the mean flush, the first
one (which imports pandas and pyarrow, left out of `import gradwatch`), the later ones, their
cost per step and their share of the watched step. Run it at two revisions (or with the working
tree stashed) to compare; a cost that grows with the run shows as later flushes slower than the
early ones (`--steps` larger).
"""

from __future__ import annotations

import argparse
import time

import torch
from torch import nn

import gradwatch as gw
from gradwatch.monitor import buffer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=5000)
    parser.add_argument("--log-dir", default=None)
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10)
    )
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    x, y = torch.randn(64, 64), torch.randint(0, 10, (64,))
    loss_fn = nn.CrossEntropyLoss()
    times: list[float] = []
    flush = buffer.StepBuffer.flush

    def timed(self, step):
        start = time.perf_counter()
        flush(self, step)
        times.append(time.perf_counter() - start)

    buffer.StepBuffer.flush = timed
    w = gw.watch(model, opt, log_dir=args.log_dir, overwrite=True)
    start = time.perf_counter()
    for _ in range(args.steps):
        opt.zero_grad()
        loss = loss_fn(model(x), y)
        loss.backward()
        w.log_loss(loss)
        opt.step()
    total = time.perf_counter() - start
    w.close()
    n, later = args.steps, times[1:] or times
    half = len(later) // 2
    print(
        f"{n} steps, {len(times)} flushes: mean {1e3 * sum(times) / len(times):.2f} ms, "
        f"first {1e3 * times[0]:.1f} ms, later {1e3 * sum(later) / len(later):.2f} ms "
        f"(first half {1e3 * sum(later[:half]) / max(half, 1):.2f}, second half "
        f"{1e3 * sum(later[half:]) / max(len(later) - half, 1):.2f}); "
        f"{1e6 * sum(times) / n:.1f} us a step, {100 * sum(times) / total:.1f}% of the watched step"
    )


if __name__ == "__main__":
    main()
