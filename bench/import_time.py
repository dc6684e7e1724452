"""What `import gradwatch` costs on top of `import torch`, two fresh processes side by side.

```
.venv/bin/python bench/import_time.py            # 10 rounds
.venv/bin/python bench/import_time.py --runs 20 --what "import torch, gradwatch; gradwatch.watch"
.venv/bin/python bench/import_time.py --clock cpu   # CPU time used: steadier on a busy machine
.venv/bin/python bench/import_time.py --importtime  # what is imported after torch, by package
```

Each round runs `python -c "import torch"` and `python -c "import torch, gradwatch;
gradwatch.watch"` (the names a watch needs) one after the other, in a shuffled order, and times
each process's wall time. On a shared machine absolute times drift with load; the median
difference and the ratio of medians, measured in the same rounds, are what to read. For where the
time goes, `python -X importtime -c "import torch, gradwatch; gradwatch.watch"`.
"""

from __future__ import annotations

import argparse
import random
import resource
import statistics
import subprocess
import sys
import time

BASE = "import torch"
WATCH = "import torch, gradwatch; gradwatch.watch"


def _time(code: str, cpu: bool = False) -> float:
    """The process's wall time, or with `cpu` the CPU time it used (user + system): on a loaded
    machine the wall time of a process waits for the others', its CPU time much less."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], check=True)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    used = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return used if cpu else wall


def after_torch(code: str = WATCH) -> tuple[float, dict[str, float]]:
    """`python -X importtime`: the self time of every module `code` imports after torch, summed,
    and by top-level package (seconds)."""
    err = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", code], capture_output=True, text=True, check=True
    ).stderr.splitlines()
    first = max(i for i, line in enumerate(err) if line.rstrip().endswith("| torch")) + 1
    by: dict[str, float] = {}
    for line in err[first:]:
        parts = line.split("|")
        if len(parts) == 3:
            top = parts[2].strip().split(".")[0]
            by[top] = by.get(top, 0.0) + int(parts[0].split(":")[1]) / 1e6
    return sum(by.values()), dict(sorted(by.items(), key=lambda kv: -kv[1]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10, help="rounds (one process of each)")
    parser.add_argument("--what", default=WATCH, help="the code timed against `import torch`")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--clock", choices=("wall", "cpu"), default="wall", help="wall time, or CPU time used"
    )
    parser.add_argument(
        "--importtime", action="store_true", help="sum -X importtime after torch, 3 runs"
    )
    args = parser.parse_args()
    if args.importtime:
        for _ in range(3):
            total, by = after_torch(args.what)
            top = ", ".join(f"{k} {v:.3f}" for k, v in list(by.items())[:4])
            print(f"imported after torch: {total:.3f} s ({top})")
        return
    cpu = args.clock == "cpu"
    rng = random.Random(args.seed)
    _time(BASE)  # fills the page cache for both
    _time(args.what)
    times: dict[str, list[float]] = {BASE: [], args.what: []}
    for _ in range(args.runs):
        order = [BASE, args.what]
        rng.shuffle(order)
        for code in order:
            times[code].append(_time(code, cpu))
    base, other = statistics.median(times[BASE]), statistics.median(times[args.what])
    diffs = [b - a for a, b in zip(times[BASE], times[args.what], strict=True)]
    print(f"{args.runs} rounds, medians of {args.clock} time per process:")
    print(f"  {BASE!r}: {base:.3f} s")
    print(f"  {args.what!r}: {other:.3f} s")
    print(
        f"  difference: median {statistics.median(diffs):+.3f} s per round "
        f"(min {min(diffs):+.3f}, max {max(diffs):+.3f}); ratio of medians {other / base:.3f}x"
    )


if __name__ == "__main__":
    main()
