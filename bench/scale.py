"""How gradwatch's costs grow: with the number of layers, with steps, with a run's length.

```
.venv/bin/python bench/scale.py                      # every part, about 10 minutes on 2 cores
.venv/bin/python bench/scale.py --parts layers --layers 10,100,1000 --seconds 20
.venv/bin/python bench/scale.py --parts memory --memory-steps 1000,10000,100000
.venv/bin/python bench/scale.py --parts report --run-steps 1000,10000,100000
```

* `layers`: the per-step overhead ratio of a default watch to plain training, for a stack of L
  narrow `Linear(16, 16)` + ReLU layers (batch 32, Adam), L in `--layers`. `--copies` plain and
  watched copies of the same model step in turn, ten steps each per round, in a shuffled order,
  timed by the thread's CPU clock with one torch thread; the watched copies run their young run
  (`THIN_AFTER` recorded steps, never thinned by the budget) and two flush windows untimed, and
  the mean covers whole flush periods and about `--seconds` of plain steps per depth (at least
  `--rounds`).
  Ratio flat in L is the target: a cost per layer that Python pays per step would make it grow.
* `memory`: a 100-layer model (`Linear(8, 8)`) trained under a default watch with a `log_dir`,
  under one without, and plain, one process each (side by side), each reading its RSS (and
  Arrow's memory pool) at every step count in `--memory-steps`: the RSS over plain's, and what
  it grew per step since the previous count; `w.stats()` is read once at the end (it returns
  every step, so it is not what the watch keeps). With a `log_dir` the watch keeps nothing per
  step (flat); without one it keeps every step, compressed (about a byte a row).
* `report`: a run of N steps (N in `--run-steps`) synthesized as a stats table with the default
  schedule's density (every layer's `grad_norm` and `nonfinite` each step, `update_ratio` every
  other, `weight_norm` once per 100 steps, the activation metrics every 50) for `--run-layers`
  layers, written to a run directory; timed: `gw.load`, `diagnose()`, and the HTML report of that
  directory (its own load included), with its size: once with the findings stored as a closed
  watch stores them (the whole run's, with meta.json's `findings_of`), which the report reads
  instead of diagnosing, and once without them (the report runs the detectors). The report
  should draw a downsampled table (≤ 10 MB, ≤ 10 s at 1e5 steps) while the store keeps every
  step.

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

from gradwatch.monitor.budget import THIN_AFTER


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


BLOCK = 10  # consecutive steps of one copy per turn (divides the settled period, 50)


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
    watched copies each step `BLOCK` times per round, in a shuffled order, and are averaged.
    `against`: (revision, its gradwatch), watched copies of which step in the same rounds."""
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
            # The young run, recorded in full whatever it costs, and the first thinned flush
            # window after it, untimed.
            for _ in range(THIN_AFTER + flush * 2):
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
        # Blocks of BLOCK steps: a watch times its share of the step from the period between
        # its steps, which in single interleaved steps would hold every other copy's step too.
        for _ in range(steps // BLOCK):
            order = list(range(len(trainers)))
            rng.shuffle(order)
            for k in order:
                for _ in range(BLOCK):
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
marks, mode, log_dir = [int(x) for x in sys.argv[1].split(",")], sys.argv[2], sys.argv[3]
torch.set_num_threads(1)
torch.manual_seed(0)
kw = {"log_dir": log_dir} if mode == "log_dir" else {}
t = scale._Trainer(scale._narrow(100, 8), mode != "plain", width=8, **kw)
t.step()
def status():  # this process's RSS now and at its peak, kB; Arrow's pool, bytes
    with open("/proc/self/status") as f:
        d = {l.split(":")[0]: int(l.split()[1]) for l in f if l.startswith(("VmRSS", "VmHWM"))}
    pa = sys.modules.get("pyarrow")
    return d["VmRSS"], d["VmHWM"], pa.total_allocated_bytes() if pa else 0
done = 1
for mark in marks:
    while done < mark:
        t.step()
        done += 1
    rss, hwm, arrow = status()
    print(json.dumps({"steps": mark, "rss_kb": rss, "hwm_kb": hwm, "arrow": arrow}), flush=True)
# w.stats() once, at the end: it returns every step (so its own size grows with the run), and
# the allocator would keep its pages, hiding what the watch holds at the marks above.
rows = len(t.watch.stats()) if t.watch is not None else 0
if t.watch is not None:
    t.watch.close()
print(json.dumps({"rows": rows}), flush=True)
"""

MEMORY_MODES = ("plain", "log_dir", "memory")


def memory_part(step_counts: list[int]) -> list[dict]:
    """One process per mode (plain training; a default watch with a log_dir; one without), run in
    parallel (memory does not depend on timing), each reporting its RSS at every step count after
    reading `w.stats()` there."""
    here = os.path.abspath(__file__)
    tmp = tempfile.mkdtemp(prefix="gw-scale-")
    marks = ",".join(str(n) for n in sorted(step_counts))
    procs = {
        mode: subprocess.Popen(
            [sys.executable, "-c", _MEMORY_CHILD, marks, mode, os.path.join(tmp, "run"), here],
            stdout=subprocess.PIPE,
            text=True,
        )
        for mode in MEMORY_MODES
    }
    out = {mode: [json.loads(line) for line in p.stdout] for mode, p in procs.items()}
    final_rows = {mode: out[mode].pop()["rows"] for mode in out}
    for p in procs.values():
        if p.wait() != 0:
            raise SystemExit("a memory child failed")
    disk = sum(f.stat().st_size for f in Path(tmp, "run").rglob("*") if f.is_file())
    shutil.rmtree(tmp, ignore_errors=True)
    rows = []
    for i, n in enumerate(sorted(step_counts)):
        row = {"steps": n}
        for mode in MEMORY_MODES:
            row[f"{mode}_rss_mb"] = out[mode][i]["rss_kb"] / 1024
            row[f"{mode}_hwm_mb"] = out[mode][i]["hwm_kb"] / 1024
            row[f"{mode}_arrow_mb"] = out[mode][i]["arrow"] / 2**20
        rows.append(row)
    print(
        "| steps | plain RSS | log_dir: RSS over plain | "
        "no log_dir: RSS over plain | log_dir: B/step since previous | "
        "no log_dir: B/step since previous | Arrow pool, log_dir / no log_dir |"
    )
    print("|---|---|---|---|---|---|---|")
    prev = None
    for r in rows:
        extra = {m: r[f"{m}_rss_mb"] - r["plain_rss_mb"] for m in ("log_dir", "memory")}
        grow = {
            m: (extra[m] - prev[m]) * 2**20 / (r["steps"] - prev["steps"]) if prev else None
            for m in extra
        }
        fmt = lambda v: "" if v is None else f"{v:+.0f}"  # noqa: E731
        print(
            f"| {r['steps']} | {r['plain_rss_mb']:.0f} MB | "
            f"{extra['log_dir']:+.1f} MB | {extra['memory']:+.1f} MB | "
            f"{fmt(grow['log_dir'])} | {fmt(grow['memory'])} | "
            f"{r['log_dir_arrow_mb']:.2f} / {r['memory_arrow_mb']:.2f} MB |",
            flush=True,
        )
        prev = {**extra, "steps": r["steps"]}
    print(f"rows in w.stats() at the end: {final_rows}")
    print(
        f"run directory after {rows[-1]['steps']} steps: {disk / 1e6:.2f} MB "
        f"({disk / rows[-1]['steps']:.0f} B/step)"
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


def report_part(step_counts: list[int], layers: int, keep: str | None = None) -> list[dict]:
    import gradwatch as gw
    import gradwatch.report.html  # noqa: F401 - plotly's import, once, outside the timings
    from gradwatch.diagnose import diagnose
    from gradwatch.report import html_report
    from gradwatch.store import RunWriter, judged, write_json

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
        diagnosis = diagnose(run.stats, run.meta)
        t2 = time.perf_counter()
        # As a closed watch leaves its directory: the whole run's findings, and which rows they
        # judged (meta.json's findings_of).
        diagnosis_findings, judged_rows = diagnosis.findings, judged(run.stats)
        writer.write_findings([f.to_dict() for f in diagnosis_findings], judged_rows)
        writer.write_meta(meta)
        del run, diagnosis
        t3 = time.perf_counter()
        path = html_report([tmp / "run"], tmp / "report.html")
        t4 = time.perf_counter()
        size = path.stat().st_size
        # The same directory without findings_of: the report runs the detectors itself.
        write_json(tmp / "run" / "meta.json", meta)
        t5 = time.perf_counter()
        html_report([tmp / "run"], tmp / "report2.html")
        t6 = time.perf_counter()
        if keep:  # the last run's directory, its findings stored, for bench/report_time.py
            writer.write_findings([f.to_dict() for f in diagnosis_findings], judged_rows)
            writer.write_meta(meta)
            shutil.rmtree(keep, ignore_errors=True)
            shutil.copytree(tmp / "run", keep)
        rows.append(
            {
                "steps": n,
                "rows": rows_n,
                "load_s": t1 - t0,
                "diagnose_s": t2 - t1,
                "report_s": t4 - t3,
                "report_diagnosing_s": t6 - t5,
                "html_mb": size / 1e6,
            }
        )
        r = rows[-1]
        print(
            f"  {n} steps ({rows_n} rows): load {r['load_s']:.2f} s, diagnose "
            f"{r['diagnose_s']:.2f} s, report {r['report_s']:.2f} s with the stored findings "
            f"({r['report_diagnosing_s']:.2f} s diagnosing again), HTML {r['html_mb']:.2f} MB",
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
    parser.add_argument("--memory-steps", default="1000,2000,5000,10000")
    parser.add_argument("--run-steps", default="1000,10000,100000")
    parser.add_argument("--run-layers", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--keep", help="copy the longest run's directory there (report part)")
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
        print("memory against steps (100 x Linear(8, 8), default watch):")
        memory_part(ints(args.memory_steps))
    if "report" in parts:
        print(f"load, diagnose and report against run length ({args.run_layers} layers):")
        report_part(ints(args.run_steps), args.run_layers, args.keep)


if __name__ == "__main__":
    main()
