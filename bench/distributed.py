"""Cost per training step of gradwatch at 2 ranks (DDP and FSDP2, gloo on CPU), as a ratio.

    python bench/distributed.py                 # launches itself under torchrun, 2 ranks
    python bench/distributed.py --quick         # smoke test: seconds, numbers meaningless

Each rank trains its own model (an MLP of `--depth` Linear(`--width`) + ReLU layers, Adam, batch 64
per rank) twice side by side: plain, and under `gw.watch` with default settings. After a warm-up,
each repetition times a block of `--steps` steps of each configuration, in alternating order; the
figure is the median block time per step, and the ratio gradwatch / plain is what is printed.
Blocks end with a barrier, so a rank's time includes waiting for the slower one. gradwatch's
flushes (one collective for FSDP2) fall inside blocks: `flush_every` is set to the block length so
that each block holds one. Only ratios taken side by side mean anything on a shared machine.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path


def _launch(argv: list[str]) -> int:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    src = Path(__file__).resolve().parents[1] / "src"
    env["PYTHONPATH"] = os.pathsep.join([str(src), env.get("PYTHONPATH", "")])
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        __file__,
        *argv,
    ]
    return subprocess.call(cmd, env=env)


def _model(mode: str, width: int, depth: int):
    import torch
    from torch import nn

    torch.manual_seed(0)
    layers = []
    for _ in range(depth):
        layers += [nn.Linear(width, width), nn.ReLU()]
    model = nn.Sequential(*layers, nn.Linear(width, 10))
    if mode == "ddp":
        return nn.parallel.DistributedDataParallel(model)
    from torch.distributed.fsdp import fully_shard

    for layer in model:
        if isinstance(layer, nn.Linear):
            fully_shard(layer)
    return fully_shard(model)


def _worker(args) -> None:
    import torch
    import torch.distributed as dist

    import gradwatch as gw

    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    g = torch.Generator().manual_seed(rank)
    x, y = torch.randn(64, args.width, generator=g), torch.randint(0, 10, (64,), generator=g)

    for mode in args.modes.split(","):
        setups = {}
        for name in ("plain", "gradwatch"):
            model = _model(mode, args.width, args.depth)
            opt = torch.optim.Adam(model.parameters(), lr=1e-3)
            w = gw.watch(model, opt, flush_every=args.steps) if name == "gradwatch" else None
            setups[name] = (model, opt, w)

        def block(name: str, steps: int, setups=setups) -> float:
            model, opt, _ = setups[name]
            dist.barrier()
            t0 = time.perf_counter()
            for _ in range(steps):
                opt.zero_grad()
                torch.nn.functional.cross_entropy(model(x), y).backward()
                opt.step()
            dist.barrier()
            return (time.perf_counter() - t0) / steps

        for name in setups:
            block(name, args.steps)  # warm-up
        times: dict[str, list[float]] = {name: [] for name in setups}
        for rep in range(args.reps):
            order = list(setups) if rep % 2 == 0 else list(reversed(setups))
            for name in order:
                times[name].append(block(name, args.steps))
        for _, _, w in setups.values():
            if w is not None:
                w.close()
        if rank == 0:
            plain = statistics.median(times["plain"])
            watched = statistics.median(times["gradwatch"])
            load = os.getloadavg()
            print(
                f"{mode:5s} 2 ranks  plain {plain * 1e3:7.2f} ms/step  gradwatch "
                f"{watched * 1e3:7.2f} ms/step  ratio {watched / plain:.2f}x  (load average "
                f"{load[0]:.2f} {load[1]:.2f} {load[2]:.2f})",
                flush=True,
            )
    dist.destroy_process_group()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--modes", default="ddp,fsdp")
    parser.add_argument("--width", type=int, default=256)
    parser.add_argument("--depth", type=int, default=8)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--reps", type=int, default=7)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    if args.quick:
        args.width, args.depth, args.steps, args.reps = 32, 2, 3, 1
    if "RANK" not in os.environ:
        sys.exit(_launch(sys.argv[1:]))
    _worker(args)


if __name__ == "__main__":
    main()
