"""How gradwatch's costs grow: with the number of layers, with steps, with a run's length.

```
.venv/bin/python bench/scale.py                      # every part, about 10 minutes on 2 cores
.venv/bin/python bench/scale.py --parts layers --layers 10,100,1000 --seconds 20
.venv/bin/python bench/scale.py --parts memory --memory-steps 1000,10000,100000
.venv/bin/python bench/scale.py --parts report --run-steps 1000,10000,100000
```

* `layers`: the per-step overhead ratio of a default watch to plain training, for a stack of L
  narrow `Linear(16, 16)` + ReLU layers (batch 32, Adam), L in `--layers`. `--copies` plain and
  watched copies of the same model step in turn, one step each per round, in a shuffled order,
  timed by the thread's CPU clock with one torch thread (as `overhead.py --interleave --clock
  cpu`); the watched copies run their first flush window untimed, and the mean covers whole flush
  periods and about `--seconds` of plain steps per depth (at least `--rounds`).
  Ratio flat in L is the target: a cost per layer that Python pays per step would make it grow.
* `memory`: a 100-layer model trained N steps under a default watch with a `log_dir`, N in
  `--memory-steps` (one process each, so that one run's memory does not hide in another's):
  the process's peak RSS over a plain run of the same steps, and the run directory's size, per
  step. What grows is the stats the watch keeps in memory for `w.stats()` and writes to disk:
  the per-step figure should settle, not grow.
* `report`: a run of N steps (N in `--run-steps`) synthesized as a stats table with the default
  schedule's density (every layer's `grad_norm` and `nonfinite` each step, `update_ratio` every
  other, `weight_norm` once per 100 steps, the activation metrics every 50) for `--run-layers`
  layers, written to a run directory; timed: `gw.load`, `diagnose()`, and the HTML report of that
  directory, with its size. The report should draw a downsampled table (≤ 10 MB, ≤ 10 s at 1e5
  steps) while the store keeps every step.

Absolute times are those of this machine at that moment; read ratios and trends.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn


def _narrow(layers: int, width: int = 16) -> nn.Module:
    mods: list[nn.Module] = []
    for _ in range(layers):
        mods += [nn.Linear(width, width), nn.ReLU()]
    return nn.Sequential(*mods, nn.Linear(width, 1))


class _Trainer:
    def __init__(self, model: nn.Module, watched: bool, width: int = 16, module=None, **kw):
        import gradwatch

        gw = module or gradwatch  # another revision's gradwatch (--against), or this one
        self.model = model
        self.opt = torch.optim.Adam(model.parameters(), lr=1e-4)
        self.watch = gw.watch(model, self.opt, **kw) if watched else None
        g = torch.Generator().manual_seed(1)
        self.x = torch.randn(32, width, generator=g)
        self.y = torch.randn(32, 1, generator=g)

    def step(self) -> None:
        self.opt.zero_grad()
        nn.functional.mse_loss(self.model(self.x), self.y).backward()
        self.opt.step()


def layers_part(
    layer_counts: list[int],
    rounds: int,
    seed: int,
    seconds: float = 20.0,
    copies: int = 2,
    against: tuple[str, object] | None = None,
) -> list[dict]:
    """Watched/plain per-step time for each depth. Each depth gets at least `rounds` rounds and
    enough to take about `seconds` of plain steps (a 10-layer step is ~1 ms: a hundred of them
    leave a ratio to chance), in whole periods of the settled schedule; `copies` plain and
    watched copies each step once per round, in a shuffled order, and are averaged. `against`:
    (revision, its gradwatch), watched copies of which step in the same rounds."""
    torch.set_num_threads(1)
    clock = time.thread_time
    configs = {"plain": None, "watch": None}
    if against is not None:
        configs[f"watch @ {against[0]}"] = against[1]
    rows = []
    for n in layer_counts:
        torch.manual_seed(seed)
        model = _narrow(n)
        trainers = [
            (name, _Trainer(copy.deepcopy(model), name != "plain", module=module))
            for _ in range(copies)
            for name, module in configs.items()
        ]
        watches = [t for name, t in trainers if name != "plain"]
        flush = watches[0].watch.flush_every
        for t in watches:
            for _ in range(flush * 2):  # the dense first window, untimed
                t.step()
        start = clock()
        for name, t in trainers:
            if name == "plain":
                for _ in range(10):
                    t.step()
        plain_step = (clock() - start) / (10 * copies)
        # Whole periods of the settled schedule: forward probes 1 in 50, flush every `flush`.
        period = int(np.lcm(50, flush))
        wanted = max(rounds, 1, int(seconds / (2 * copies * max(plain_step, 1e-6))))
        steps = -(-wanted // period) * period
        rng = random.Random(seed)
        times = [0.0] * len(trainers)
        for _ in range(steps):
            order = list(range(len(trainers)))
            rng.shuffle(order)
            for k in order:
                begin = clock()
                trainers[k][1].step()
                times[k] += clock() - begin
        for t in watches:
            t.watch.close()
        plain = sum(x for (name, _), x in zip(trainers, times, strict=True) if name == "plain")
        row = {
            "layers": n,
            "steps": steps,
            "copies": copies,
            "plain_ms": 1e3 * plain / copies / steps,
        }
        text = []
        for config in list(configs)[1:]:
            watched = [x for (name, _), x in zip(trainers, times, strict=True) if name == config]
            each = [w / (plain / copies) for w in watched]
            key = "ratio" if config == "watch" else f"ratio @ {against[0]}"
            row[key], row[f"each {config}"] = sum(watched) / plain, each
            text.append(f"{config}/plain {row[key]:.3f}x ({' / '.join(f'{e:.3f}x' for e in each)})")
        rows.append(row)
        print(
            f"  {n} layers: plain {row['plain_ms']:.2f} ms/step over {steps} steps: "
            + ", ".join(text),
            flush=True,
        )
    return rows


_MEMORY_CHILD = r"""
import json, os, sys, torch
sys.path.insert(0, os.path.dirname(sys.argv[4]))
import scale
steps, watched, log_dir = int(sys.argv[1]), sys.argv[2] == "1", sys.argv[3]
torch.set_num_threads(1)
torch.manual_seed(0)
kw = {"log_dir": log_dir} if watched else {}
t = scale._Trainer(scale._narrow(100, 8), watched, width=8, **kw)
t.step()
def hwm():  # this process's peak RSS (ru_maxrss would carry the parent's across exec)
    with open("/proc/self/status") as f:
        return int(next(l for l in f if l.startswith("VmHWM")).split()[1])
base = hwm()
for _ in range(steps):
    t.step()
if t.watch is not None:
    t.watch.close()
print(json.dumps({"base_kb": base, "peak_kb": hwm()}))
"""


def memory_part(step_counts: list[int]) -> list[dict]:
    rows = []
    here = os.path.abspath(__file__)
    for n in step_counts:
        out = {}
        for watched in (False, True):
            tmp = tempfile.mkdtemp(prefix="gw-scale-")
            log_dir = os.path.join(tmp, "run")
            res = subprocess.run(
                [sys.executable, "-c", _MEMORY_CHILD, str(n), str(int(watched)), log_dir, here],
                check=True,
                capture_output=True,
                text=True,
            )
            out[watched] = json.loads(res.stdout.strip().splitlines()[-1])
            out[watched]["disk"] = (
                sum(f.stat().st_size for f in Path(log_dir).rglob("*") if f.is_file())
                if watched
                else 0
            )
            shutil.rmtree(tmp, ignore_errors=True)
        extra = (out[True]["peak_kb"] - out[False]["peak_kb"]) * 1024
        rows.append(
            {
                "steps": n,
                "plain_peak_mb": out[False]["peak_kb"] / 1024,
                "watch_peak_mb": out[True]["peak_kb"] / 1024,
                "extra_bytes_per_step": extra / n,
                "disk_mb": out[True]["disk"] / 1e6,
                "disk_bytes_per_step": out[True]["disk"] / n,
            }
        )
        r = rows[-1]
        print(
            f"  {n} steps: peak RSS plain {r['plain_peak_mb']:.0f} MB, watched "
            f"{r['watch_peak_mb']:.0f} MB ({r['extra_bytes_per_step']:.0f} B/step more); "
            f"run dir {r['disk_mb']:.2f} MB ({r['disk_bytes_per_step']:.0f} B/step)",
            flush=True,
        )
    for a, b in zip(rows, rows[1:], strict=False):
        # The constant parts (imports, buffers, the first flush) cancel between two run lengths.
        grow = (b["watch_peak_mb"] - b["plain_peak_mb"]) - (a["watch_peak_mb"] - a["plain_peak_mb"])
        per_step = grow * 2**20 / (b["steps"] - a["steps"])
        print(
            f"  from {a['steps']} to {b['steps']} steps: {per_step:.0f} B per further step",
            flush=True,
        )
    return rows


def _synthetic_stats(steps: int, layers: int, seed: int = 0):
    """The default schedule's density over `steps` steps of `layers` layers, as a stats table."""
    import pandas as pd

    rng = np.random.default_rng(seed)
    names = [f"{i}" for i in range(layers)]
    depth = 10.0 ** -np.linspace(0, 3, layers)  # a vanishing trend across depth
    blocks = []

    def block(metric: str, every: int, value) -> None:
        s = np.arange(0, steps, every)
        blocks.append(
            pd.DataFrame(
                {
                    "step": np.repeat(s, layers),
                    "layer": np.tile(np.array(names, dtype=object), len(s)),
                    "metric": metric,
                    "value": value(len(s)),
                    "index": -1,
                }
            )
        )

    def lognormal(scale):
        return lambda k: (np.exp(rng.normal(0, 0.3, (k, layers))) * scale).ravel()

    block("grad_norm", 1, lognormal(depth))
    block("nonfinite", 1, lambda k: np.zeros(k * layers))
    block("update_ratio", 2, lognormal(1e-3))
    block("weight_norm", 100, lognormal(np.ones(layers)))
    block("act_std", 50, lognormal(np.ones(layers)))
    block("dead_frac", 50, lambda k: rng.uniform(0, 0.1, k * layers))
    s = np.arange(steps)
    blocks.append(
        pd.DataFrame(
            {"step": s, "layer": "(model)", "metric": "loss", "value": 2 * np.exp(-s / steps)}
        ).assign(index=-1)
    )
    return pd.concat(blocks, ignore_index=True), names


def report_part(step_counts: list[int], layers: int) -> list[dict]:
    import gradwatch as gw
    from gradwatch.diagnose import diagnose
    from gradwatch.report import html_report
    from gradwatch.store import RunWriter

    rows = []
    for n in step_counts:
        tmp = Path(tempfile.mkdtemp(prefix="gw-scale-"))
        stats, names = _synthetic_stats(n, layers)
        writer = RunWriter(tmp / "run")
        meta = {
            "format": 1,
            "layer_order": names,
            "settings": {"every": 1, "flush_every": 100},
            "model": {"layers": [{"name": x, "type": "Linear"} for x in names]},
            "steps_seen": n,
        }
        writer.write_meta(meta)
        writer.append(stats)
        writer.compact()
        rows_n = len(stats)
        del stats
        t0 = time.perf_counter()
        run = gw.load(tmp / "run")
        t1 = time.perf_counter()
        diagnose(run.stats, run.meta)
        t2 = time.perf_counter()
        path = html_report([tmp / "run"], tmp / "report.html")
        t3 = time.perf_counter()
        size = path.stat().st_size
        rows.append(
            {
                "steps": n,
                "rows": rows_n,
                "load_s": t1 - t0,
                "diagnose_s": t2 - t1,
                "report_s": t3 - t2,
                "html_mb": size / 1e6,
            }
        )
        r = rows[-1]
        print(
            f"  {n} steps ({rows_n} rows): load {r['load_s']:.2f} s, diagnose "
            f"{r['diagnose_s']:.2f} s, report {r['report_s']:.2f} s (its own load and diagnosis "
            f"included), HTML {r['html_mb']:.2f} MB",
            flush=True,
        )
        shutil.rmtree(tmp, ignore_errors=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parts", default="layers,memory,report")
    parser.add_argument("--layers", default="10,100,1000")
    parser.add_argument("--rounds", type=int, default=100, help="timed steps per layer count")
    parser.add_argument(
        "--seconds",
        type=float,
        default=20.0,
        help="layers part: at least this much plain stepping per layer count (more rounds)",
    )
    parser.add_argument("--copies", type=int, default=2, help="layers part: copies per config")
    parser.add_argument(
        "--against",
        default=None,
        help="layers part: also time this revision's watch in the same rounds (a commit)",
    )
    parser.add_argument("--memory-steps", default="1000,10000")
    parser.add_argument("--run-steps", default="1000,10000,100000")
    parser.add_argument("--run-layers", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    ints = lambda s: [int(float(x)) for x in s.split(",")]  # noqa: E731 - 1e5 is welcome
    parts = args.parts.split(",")
    print(f"torch {torch.__version__}, {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}")
    if "layers" in parts:
        print("per-step overhead against depth (default watch, CPU clock, 1 thread):")
        against = None
        if args.against:
            from compare_revisions import import_revision  # bench/, beside this script

            tmp = Path(tempfile.mkdtemp(prefix="gwbench-rev-"))
            against = (args.against, import_revision(args.against, tmp))
        layers_part(ints(args.layers), args.rounds, args.seed, args.seconds, args.copies, against)
    if "memory" in parts:
        print("memory against steps (100 x Linear(8, 8), default watch with a log_dir):")
        memory_part(ints(args.memory_steps))
    if "report" in parts:
        print(f"load, diagnose and report against run length ({args.run_layers} layers):")
        report_part(ints(args.run_steps), args.run_layers)


if __name__ == "__main__":
    main()
