"""What watching adds to the first steps of a new process: the numba kernels' start-up.

```
.venv/bin/python bench/first_steps.py                 # 5 rounds, 30 steps, the 3-layer MLP
.venv/bin/python bench/first_steps.py --rounds 7 --steps 50
```

Each round starts one fresh process per mode, in a shuffled order; each process imports torch and
gradwatch, builds a 3-layer MLP (64-64-64-10, batch 64, Adam) and times its first `--steps`
training steps (the watch's setup included), with numba's on-disk cache as it is (run once before
to fill it). Modes: `plain` (no watch), `torch` (a watch with GRADWATCH_NUMBA=0), `default`
(a watch as it is: its forward probes measure too rarely to load the kernels, see
`probes/kernels.KERNEL_CADENCE`), `blocking` (the kernels loaded before the first step, as a watch
whose forward probes measure every step does), and `lazy` (each
kernel compiled or read from the cache at its first call, inside the first measured forward).
Printed: each mode's median time for the steps and its excess over `plain`, in seconds of the
same rounds: what a user waits for on top of training.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import time

MODES = ("plain", "torch", "default", "blocking", "lazy")

CHILD = r"""
import json, os, sys, time
mode, steps = sys.argv[1], int(sys.argv[2])
import torch
from torch import nn
import gradwatch as gw
from gradwatch.probes import kernels

torch.manual_seed(0)
torch.set_num_threads(1)
model = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))
opt = torch.optim.Adam(model.parameters(), lr=1e-3)
x, y = torch.randn(64, 64), torch.randint(0, 10, (64,))
loss_fn = nn.CrossEntropyLoss()
if mode == "lazy":  # no warm-up: numba compiles or reads each kernel at its first call
    kernels._warm = lambda k: None
gw.watch  # imported before the clock starts: bench/import_time.py times imports
start = time.perf_counter()
if mode == "blocking" or mode == "lazy":
    kernels.load()
w = gw.watch(model, opt) if mode != "plain" else None
marks = []
for _ in range(steps):
    opt.zero_grad()
    loss_fn(model(x), y).backward()
    opt.step()
    marks.append(time.perf_counter() - start)
if w is not None:
    hist = w.meta()["probes"].get("activation_kernels")
    w.close()
else:
    hist = None
print(json.dumps({"total": marks[-1], "first10": marks[min(9, steps - 1)], "history": hist}))
"""


def _run(mode: str, steps: int) -> dict:
    env = dict(os.environ)
    if mode == "torch":
        env["GRADWATCH_NUMBA"] = "0"
    out = subprocess.run(
        [sys.executable, "-c", CHILD, mode, str(steps)],
        env=env,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--modes", default=",".join(MODES))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    modes = args.modes.split(",")
    rng = random.Random(args.seed)
    _run("blocking", 2)  # numba's cache filled, as "once the cache exists" asks
    runs: dict[str, list[dict]] = {m: [] for m in modes}
    for _ in range(args.rounds):
        order = list(modes)
        rng.shuffle(order)
        for mode in order:
            runs[mode].append(_run(mode, args.steps))
    t0 = time.strftime("%Y-%m-%d %H:%M")
    print(f"{args.rounds} rounds, {args.steps} steps, 3-layer MLP, fresh process each ({t0}):")
    print(f"| mode | first 10 steps (s) | first {args.steps} steps (s) | excess over plain (s) |")
    print("|---|---|---|---|")
    plain = statistics.median(r["total"] for r in runs.get("plain", [{"total": float("nan")}]))
    for mode in modes:
        first10 = statistics.median(r["first10"] for r in runs[mode])
        total = statistics.median(r["total"] for r in runs[mode])
        print(f"| {mode} | {first10:.3f} | {total:.3f} | {total - plain:+.3f} |")
    hist = [r["history"] for r in runs.get("default", [])]
    if hist:
        print("default: the activation probe's paths per run:", hist)


if __name__ == "__main__":
    main()
