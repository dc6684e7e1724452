"""The working tree's overhead against an earlier revision's, measured side by side in one process.

Ratios from separate runs of `overhead.py` move by a few points with the machine's state (a plain
step of the 20-layer MLP took 22 ms one hour and 29 ms the next on the same idle machine). To see
what a change bought, this script imports the earlier revision's `gradwatch` under another name
(`git archive` of its `src/gradwatch` into a temporary directory) next to the working tree's, and
interleaves a block of `--block` steps of every model copy per round, shuffled each round:
plain training, then each configuration under both revisions. One torch thread; each step is
timed with the main thread's CPU clock; the figure is the mean per step after a warm-up, as a
ratio to plain. Two copies of identical code were seen to differ by a point (memory placement),
so every configuration runs in `--copies` copies per revision, made in ABBA order, and the copies
are averaged.

    python bench/compare_revisions.py bc77eb9                  # mlp, default and all probes
    python bench/compare_revisions.py HEAD~3 --models cnn --rounds 300
    python bench/compare_revisions.py dbfcc78 a5e1fd7 1a92fe2 --models tiny   # a bisect, one run
    python bench/compare_revisions.py HEAD --models tiny --peers lightning,wandb,tensorboard,anomaly

Several revisions are timed side by side in the same rounds (a bisect in one process, where
separate runs would each drift with the machine).
"""

from __future__ import annotations

import argparse
import copy
import importlib
import io
import random
import re
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import overhead  # noqa: E402  (the models and batches of bench/overhead.py)

CONFIGS = {
    "default": {},
    "params": {"activations": False, "backflow": False, "through_time": False},
    "all": {"activations": True, "backflow": True, "through_time": True},
}


def import_revision(rev: str, into: Path):
    """`gradwatch` as it was at `rev`, imported as the package `gradwatch_<rev>`."""
    root = Path(__file__).resolve().parent.parent
    try:
        archive = subprocess.run(
            ["git", "archive", rev, "src/gradwatch"], cwd=root, check=True, capture_output=True
        ).stdout
    except subprocess.CalledProcessError as exc:
        sys.exit(
            f"git archive {rev} failed ({exc.stderr.decode().strip()}); name a commit of this "
            "repository."
        )
    name = "gradwatch_" + "".join(c if c.isalnum() else "_" for c in rev)
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(into, filter="data")
    (into / "src" / "gradwatch").rename(into / name)
    # Revisions since the house moves import themselves absolutely (`from gradwatch.x import y`):
    # point those imports at the revision's own copy, not at the working tree's package.
    # And the module paths the lazy `__init__` imports by name ("gradwatch.monitor",
    # f"gradwatch.{name}"): left alone, `gradwatch_<rev>.watch` was the working tree's watch, and
    # every revision since the lazy __init__ was timed as the working tree itself.
    absolute = re.compile(r"^(\s*(?:from|import) )gradwatch(?=[.\s])", re.M)
    quoted = re.compile(r"""(f?["'])gradwatch(?=\.)""")
    for path in (into / name).rglob("*.py"):
        text = absolute.sub(rf"\g<1>{name}", path.read_text())
        path.write_text(quoted.sub(rf"\g<1>{name}", text))
    sys.path.insert(0, str(into))
    return importlib.import_module(name)


class Run:
    """One model copy with its own Adam optimizer, watched by `module` with `kwargs` (or plain)."""

    def __init__(
        self,
        label: str,
        task: overhead.Task,
        module=None,
        kwargs: dict | None = None,
        foreach: bool | None = None,
    ):
        self.label, self.task, self.i, self.times, self.walls = label, task, 0, [], []
        self.model = copy.deepcopy(task.initial)
        self.opt = torch.optim.Adam(self.model.parameters(), lr=1e-3, foreach=foreach)
        self.watch = module.watch(self.model, self.opt, **kwargs) if module is not None else None

    def step(self) -> None:
        x, y = self.task.batch(self.i)
        w0, t0 = time.perf_counter(), time.thread_time()
        self.opt.zero_grad(set_to_none=True)
        loss = self.task.loss(self.model(x), y)
        loss.backward()
        if self.watch is not None:
            self.watch.log_loss(loss)
        self.opt.step()
        self.times.append(time.thread_time() - t0)
        # The wall clock too: work a library hands to its own threads (pyarrow compresses a
        # flush in its pool) is not the training thread's CPU time, yet the step waits for it.
        self.walls.append(time.perf_counter() - w0)
        self.i += 1


class PeerRun(Run):
    """One model copy trained by another tool's configuration of bench/overhead.py (Lightning's
    grad_norm, wandb.watch, TensorBoard histograms, detect_anomaly), timed as a Run is."""

    def __init__(self, key: str, task: overhead.Task):
        (factory,) = [f for f in overhead.CONFIGS if f().key == key]
        self.config = factory()
        self.config.setup(task)
        self.label, self.task, self.i, self.times, self.walls = self.config.name, task, 0, [], []
        self.watch = None

    def step(self) -> None:
        w0, t0 = time.perf_counter(), time.thread_time()
        self.config.step()
        self.times.append(time.thread_time() - t0)
        self.walls.append(time.perf_counter() - w0)


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("rev", nargs="+", help="the earlier revision(s) (commits, tags or branches)")
    p.add_argument("--models", default="mlp", help=f"from {', '.join(overhead.MODELS)}")
    p.add_argument("--configs", default="default,all", help=f"from {', '.join(CONFIGS)}")
    p.add_argument("--rounds", type=int, default=600)
    p.add_argument("--warmup", type=int, default=100, help="rounds left out of the mean")
    p.add_argument(
        "--copies",
        type=int,
        default=2,
        help="model copies per configuration and revision, made in ABBA order and averaged (two "
        "copies of identical code can differ by a point)",
    )
    p.add_argument(
        "--block",
        type=int,
        default=20,
        help="consecutive steps of one copy per turn. A watch times its own share of the step "
        "from the period between steps (its budget); in a run of other copies' steps each single "
        "step's period holds them all, so blocks, and the watch takes the median period",
    )
    p.add_argument(
        "--peers",
        default="",
        help="other tools timed in the same rounds, from bench/overhead.py: "
        "lightning,wandb,tensorboard,anomaly",
    )
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    import gradwatch

    with tempfile.TemporaryDirectory(prefix="gwbench-rev-") as tmp:
        olds = [(rev, import_revision(rev, Path(tmp) / str(k))) for k, rev in enumerate(args.rev)]
        for name in args.models.split(","):
            task = overhead.Task(overhead.MODELS[name], torch.device("cpu"), calibrate=False)
            runs = [Run("plain", task) for _ in range(args.copies)]
            for config in args.configs.split(","):
                pair = [(f"{config} @ {rev}", old) for rev, old in olds]
                pair.append((f"{config} @ working tree", gradwatch))
                for k in range(args.copies):
                    for label, module in pair if k % 2 == 0 else pair[::-1]:
                        runs.append(Run(label, task, module, CONFIGS[config]))
            runs += [PeerRun(key, task) for key in filter(None, args.peers.split(","))]
            rng = random.Random(0)
            for _ in range(-(-args.rounds // args.block)):
                order = runs[:]
                rng.shuffle(order)
                for run in order:
                    for _ in range(args.block):
                        run.step()
            means: dict[str, list[float]] = {}
            walls: dict[str, list[float]] = {}
            for run in runs:
                means.setdefault(run.label, []).append(statistics.mean(run.times[args.warmup :]))
                walls.setdefault(run.label, []).append(statistics.mean(run.walls[args.warmup :]))
            plain = statistics.mean(means["plain"])
            plain_wall = statistics.mean(walls["plain"])
            print(
                f"\n{name}: plain {plain * 1e3:.2f} ms/step, mean of {args.rounds - args.warmup} "
                f"steps in interleaved blocks of {args.block}, {args.copies} copies each"
            )
            print(
                "| configuration | ratio to plain | ms/step | each copy | wall-clock ratio |\n"
                "|---|---:|---:|---|---:|"
            )
            for label, each in means.items():
                mean = statistics.mean(each)
                copies = " / ".join(f"{m / plain:.3f}x" for m in each)
                wall = statistics.mean(walls[label]) / plain_wall
                print(
                    f"| {label} | {mean / plain:.3f}x | {mean * 1e3:.2f} | {copies} | {wall:.3f}x |"
                )
            for run in runs:
                if run.watch is not None:
                    run.watch.close()
                if isinstance(run, PeerRun):
                    run.config.teardown()


if __name__ == "__main__":
    main()
