"""Per-step overhead of watching gradients: gradwatch against the tools users reach for today.

Every configuration trains its own deep copy of the same initial model with its own Adam
optimizer, all in this one process. After a warm-up, each repetition runs the configurations in a
freshly shuffled (seeded) order, timing a block of K consecutive training steps of each. The
figure per configuration is the median block time over the repetitions; it is printed as a ratio
to plain training, because on a shared, noisy machine only ratios measured side by side mean
anything.

    python bench/overhead.py                       # all models, all configurations
    python bench/overhead.py --models mlp --configs plain,gw1,lightning --quick
    python bench/overhead.py --markdown            # the tables of bench/RESULTS.md

Rare work would hide behind a median, and the first steps are not the usual ones, so gradwatch
is timed with care:

* It is timed once settled: its young run (the first 200 recorded steps, which its cost budget
  never thins) and one flush window after it (the default schedule runs the forward probes on
  one recorded step in 10 instead of 50 in its first window) run untimed at setup. Once past
  them, the budget may record one eligible step in N (`Watch._thin`): the period and the flush
  are counted in those steps.
* Its forward probes run on one recorded step in `cadence` (50 by default once settled) and the
  update probe on every other one, so its work repeats with a period of `every * cadence` steps.
  Blocks are cut so that they tile that period: a period of at most K steps is one block of K
  rounded up to whole periods (explicit cadence 10: blocks of 20); a longer one is cut into
  equal blocks of about K where it divides (`every=10`, period 500: 25 blocks of 20 per
  repetition, the per-step time being the sum over the block positions of the median block at
  that position, divided by the period), else timed whole (the default, period 50). Every
  configuration thus times blocks of about K steps, exposed alike to the machine's noise.
* Its flush copies the on-device table to the host once every `flush_every` recorded steps. Each
  flush is timed on its own and taken out of the block it fell in; the median flush time, spread
  over the `flush_every * every` steps it serves, is added back. Samples come from the run and
  from one calibration flush at setup (a manual-mode watch with the same settings on a copy of
  the model, trained forward and backward until its table is full), so that `every=10` is charged
  for a flush it would only reach after `flush_every * 10` steps.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import gc
import math
import os
import platform
import random
import shutil
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

# ----------------------------------------------------------------------------- models and data


class ConvNet(nn.Module):
    """4 conv layers 3→32→32→64→64 (3x3, BatchNorm, ReLU), two max-pools, a linear head."""

    def __init__(self, classes: int = 10):
        super().__init__()

        def block(a: int, b: int) -> list[nn.Module]:
            return [nn.Conv2d(a, b, 3, padding=1), nn.BatchNorm2d(b), nn.ReLU()]

        self.features = nn.Sequential(
            *block(3, 32),
            *block(32, 32),
            nn.MaxPool2d(2),
            *block(32, 64),
            *block(64, 64),
            nn.MaxPool2d(2),
        )
        self.head = nn.Linear(64 * 8 * 8, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).flatten(1))


class TokenTransformer(nn.Module):
    """Embedding (vocab 1000) → 4 TransformerEncoderLayers (d=128, 4 heads, ff 256) → token
    logits."""

    def __init__(self, vocab: int = 1000, d: int = 128, layers: int = 4):
        super().__init__()
        self.embed = nn.Embedding(vocab, d)
        layer = nn.TransformerEncoderLayer(
            d_model=d, nhead=4, dim_feedforward=256, dropout=0.0, batch_first=True
        )
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.head = nn.Linear(d, vocab)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(self.embed(tokens)))


# Wall time by default. `--clock cpu` reads the main thread's CPU time instead (with one torch
# thread every kernel runs on it): on a shared, loaded machine that still measures the work done,
# where wall time also counts the time the scheduler gave to other processes.
_CLOCKS = {"wall": time.perf_counter, "cpu": time.thread_time}
_clock = _CLOCKS["wall"]


def _mlp() -> nn.Module:
    layers: list[nn.Module] = []
    for _ in range(20):
        layers += [nn.Linear(256, 256), nn.ReLU()]
    return nn.Sequential(*layers, nn.Linear(256, 10))


def _tiny() -> nn.Module:
    """The small model people debug on (issue 23): where a fixed per-step cost shows most."""
    return nn.Sequential(
        nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10)
    )


def _deep() -> nn.Module:
    """1000 narrow layers (bench/scale.py's deepest): where a cost per layer per step shows."""
    layers: list[nn.Module] = []
    for _ in range(1000):
        layers += [nn.Linear(16, 16), nn.ReLU()]
    return nn.Sequential(*layers, nn.Linear(16, 10))


def _token_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return nn.functional.cross_entropy(logits.flatten(0, 1), target.flatten())


@dataclass
class ModelSpec:
    name: str
    build: Callable[[], nn.Module]
    make_batch: Callable[[torch.Generator], tuple[torch.Tensor, torch.Tensor]]
    loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = nn.functional.cross_entropy


MODELS: dict[str, ModelSpec] = {
    "mlp": ModelSpec(
        "mlp",
        _mlp,
        lambda g: (torch.randn(128, 256, generator=g), torch.randint(0, 10, (128,), generator=g)),
    ),
    "tiny": ModelSpec(
        "tiny",
        _tiny,
        lambda g: (torch.randn(64, 64, generator=g), torch.randint(0, 10, (64,), generator=g)),
    ),
    "deep": ModelSpec(
        "deep",
        _deep,
        lambda g: (torch.randn(32, 16, generator=g), torch.randint(0, 10, (32,), generator=g)),
    ),
    "cnn": ModelSpec(
        "cnn",
        ConvNet,
        lambda g: (
            torch.randn(32, 3, 32, 32, generator=g),
            torch.randint(0, 10, (32,), generator=g),
        ),
    ),
    "transformer": ModelSpec(
        "transformer",
        TokenTransformer,
        lambda g: (
            torch.randint(0, 1000, (16, 64), generator=g),
            torch.randint(0, 1000, (16, 64), generator=g),
        ),
        _token_loss,
    ),
}


class Task:
    """One model's initial weights and a small pool of fixed random batches, on one device."""

    N_BATCHES = 4

    def __init__(
        self, spec: ModelSpec, device: torch.device, seed: int = 0, calibrate: bool = True
    ):
        self.spec = spec
        self.device = device
        self.calibrate = calibrate  # configurations may time their rare work up front
        torch.manual_seed(seed)
        self.initial = spec.build().to(device)
        g = torch.Generator().manual_seed(seed + 1)
        self.batches = [
            tuple(t.to(device) for t in spec.make_batch(g)) for _ in range(self.N_BATCHES)
        ]

    def fresh_model(self) -> nn.Module:
        return copy.deepcopy(self.initial)

    def batch(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.batches[i % len(self.batches)]

    def loss(self, out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self.spec.loss(out, target)

    def param_bytes(self) -> int:
        return sum(p.numel() * p.element_size() for p in self.initial.parameters())


# ----------------------------------------------------------------------------- configurations


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Config:
    """One way of training: `setup(task)`, then `step()` many times, then `teardown()`.

    The base class is plain training (Adam, lr 1e-3). Subclasses add their watching around
    `after_backward` / `after_step`, or override `step`. A configuration may spend part of a block
    in amortised work (gradwatch's flush): `take_excluded()` returns those seconds of the last
    block, and `amortized_per_step()` what that work costs per step at its normal rate.
    """

    key = "plain"
    name = "plain"
    period = 1  # steps after which the configuration's per-step work repeats

    def setup(self, task: Task) -> None:
        self.task = task
        self.model = task.fresh_model()
        self.opt = torch.optim.Adam(self.model.parameters(), lr=1e-3)
        self.i = 0

    def forward_backward(self) -> torch.Tensor:
        x, y = self.task.batch(self.i)
        loss = self.task.loss(self.model(x), y)
        loss.backward()
        return loss

    def step(self) -> None:
        self.opt.zero_grad(set_to_none=True)
        loss = self.forward_backward()
        self.after_backward(loss)
        self.opt.step()
        self.after_step(loss)
        self.i += 1

    def after_backward(self, loss: torch.Tensor) -> None:
        pass

    def after_step(self, loss: torch.Tensor) -> None:
        pass

    def take_excluded(self) -> float:
        return 0.0

    def amortized_per_step(self) -> float:
        return 0.0

    def note(self) -> str:
        return ""

    def memory(self) -> dict | None:
        return None

    def teardown(self) -> None:
        pass


class Plain(Config):
    pass


class Gradwatch(Config):
    """`gw.watch(model, opt, **watch_kwargs)` open for the whole measurement.

    Its flushes are timed one by one (see the module docstring); its blocks are a whole number of
    its period (`every` x the settled cadences of its forward probes and update probe), so that
    every block holds the same mix of recorded, probed and unrecorded steps.
    """

    def __init__(self, key: str, name: str, **watch_kwargs):
        self.key, self.name = key, name
        self.watch_kwargs = watch_kwargs
        self.watch = None
        self._dirs: list[str] = []

    def setup(self, task: Task) -> None:
        import gradwatch as gw

        super().setup(task)
        self._flush_samples: list[float] = []
        self._calibration = 0
        self._flush_in_block = 0.0
        if task.calibrate:
            self._calibrate_flush(gw)
        self.watch = gw.watch(self.model, self.opt, **self._kwargs())
        if task.calibrate:
            # Timed once settled: the young run (the first THIN_AFTER recorded steps, which the
            # cost budget never thins) and one flush window after it run here, untimed (the
            # default schedule is denser there; run H's default column is what those steps cost).
            from gradwatch.monitor.budget import THIN_AFTER

            for _ in range((THIN_AFTER + self.watch.flush_every) * self.watch.every):
                self.step()
        original = self.watch.flush

        def timed_flush() -> None:
            _sync(task.device)  # queued device work belongs to the step, not to the flush
            t0 = _clock()
            original()
            dt = _clock() - t0
            self._flush_in_block += dt
            self._flush_samples.append(dt)

        self.watch.flush = timed_flush  # the instance attribute shadows the method

    def _kwargs(self) -> dict:
        kwargs = dict(self.watch_kwargs)
        if "log_dir" in kwargs:  # a run directory per watch, so that nothing is overwritten
            self._dirs.append(tempfile.mkdtemp(prefix="gwbench-run-"))
            kwargs["log_dir"] = self._dirs[-1]
        return kwargs

    def _calibrate_flush(self, gw) -> None:
        """Time one full flush: a manual-mode watch (same settings, every=1) on a copy of the
        model, trained forward and backward (no update) until its table is full."""
        model = copy.deepcopy(self.model)
        kwargs = self._kwargs()
        kwargs["every"] = 1
        w = gw.watch(model, None, **kwargs)
        original = w.flush

        def timed() -> None:
            _sync(self.task.device)
            t0 = _clock()
            original()
            self._flush_samples.append(_clock() - t0)

        w.flush = timed
        for i in range(w.flush_every + 1):  # the table fills at the last call's start
            model.zero_grad(set_to_none=True)
            x, y = self.task.batch(i)
            self.task.loss(model(x), y).backward()
            w.step()
        w.flush = original
        w.close()
        self._calibration = len(self._flush_samples)

    @property
    def period(self) -> int:
        """Steps after which the settled watch's work repeats."""
        cadence = 1
        for value in self.watch.meta()["settings"]["settled"].values():  # 0: a probe switched off
            if value > 0:
                cadence = math.lcm(cadence, value)
        return self.watch.every * self._thin() * cadence

    def _thin(self) -> int:
        """One eligible step in this many is recorded (the cost budget's, as set at the last
        flush; it may change at the next)."""
        return getattr(self.watch, "_thin", 1)

    def take_excluded(self) -> float:
        dt, self._flush_in_block = self._flush_in_block, 0.0
        return dt

    def flush_seconds(self) -> float:
        return statistics.median(self._flush_samples) if self._flush_samples else 0.0

    def amortized_per_step(self) -> float:
        return self.flush_seconds() / (self.watch.flush_every * self.watch.every * self._thin())

    def note(self) -> str:
        w = self.watch
        if not self._flush_samples:
            return "no flush timed (--quick): flush cost not included"
        return (
            f"recording 1 step in {w.every * self._thin()}, "
            f"incl. flush {self.flush_seconds() * 1e3:.1f} ms per "
            f"{w.flush_every * w.every * self._thin()} steps "
            f"= {self.amortized_per_step() * 1e6:.0f} µs/step "
            f"({self._calibration} calibration + {len(self._flush_samples) - self._calibration} "
            "in-run flushes)"
        )

    def memory(self) -> dict | None:
        if self.watch is None:
            return None
        extra = self.watch.update_extra_bytes
        total = self.task.param_bytes()
        return {"extra_bytes": extra, "param_bytes": total, "fraction": extra / total}

    def teardown(self) -> None:
        if self.watch is not None:
            self.watch.__dict__.pop("flush", None)  # back to the method
            self.watch.close()
        for d in self._dirs:
            shutil.rmtree(d, ignore_errors=True)


def gradwatch_config(key: str, name: str, **watch_kwargs) -> Callable[[], Config]:
    """A gradwatch configuration; new probe settings are one line: `gradwatch_config(...,
    probes=...)`."""
    return lambda: Gradwatch(key, name, **watch_kwargs)


class LightningGradNorm(Config):
    """`lightning.pytorch.utilities.grad_norm(model, norm_type=2)` every step after backward."""

    key, name = "lightning", "lightning grad_norm"

    def setup(self, task: Task) -> None:
        from lightning.pytorch.utilities import grad_norm

        self._grad_norm = grad_norm
        super().setup(task)

    def after_backward(self, loss: torch.Tensor) -> None:
        self._grad_norm(self.model, norm_type=2)


class WandbWatch(Config):
    """`wandb.watch(model, log="gradients", log_freq=1)` plus `wandb.log({"loss": ...})` each step.

    wandb's gradient hooks (tensor hooks on every parameter) compute a 64-bin histogram of each
    gradient during backward and stage it with `run._log(..., commit=False)`; only the next
    `wandb.log` commits the row to the (offline) run, so the loss is logged every step.
    """

    key, name = "wandb", "wandb.watch gradients"
    ENV = {"WANDB_SILENT": "true", "WANDB_MODE": "offline"}

    def setup(self, task: Task) -> None:
        self._saved_env = {k: os.environ.get(k) for k in self.ENV}
        os.environ.update(self.ENV)
        import wandb

        self._wandb = wandb
        self._dir = tempfile.mkdtemp(prefix="gwbench-wandb-")
        super().setup(task)
        settings = wandb.Settings(
            mode="offline",
            silent=True,
            console="off",
            disable_git=True,
            save_code=False,
            x_disable_stats=True,  # no background system-metrics sampler next to the other configs
        )
        self.run = wandb.init(
            mode="offline", dir=self._dir, project="gradwatch-bench", settings=settings
        )
        wandb.watch(self.model, log="gradients", log_freq=1)

    def after_step(self, loss: torch.Tensor) -> None:
        self._wandb.log({"loss": loss.item()})

    def teardown(self) -> None:
        run = getattr(self, "run", None)
        if run is not None:
            with contextlib.suppress(Exception):
                self._wandb.unwatch(self.model)
            run.finish()
        shutil.rmtree(getattr(self, "_dir", ""), ignore_errors=True)
        for k, v in getattr(self, "_saved_env", {}).items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


class TensorboardHistograms(Config):
    """`SummaryWriter.add_histogram(name, p.grad, step)` for every parameter every step."""

    key, name = "tensorboard", "tensorboard histograms"

    def setup(self, task: Task) -> None:
        from torch.utils.tensorboard import SummaryWriter

        super().setup(task)
        self._dir = tempfile.mkdtemp(prefix="gwbench-tb-")
        self.writer = SummaryWriter(self._dir)
        self._named = list(self.model.named_parameters())

    def after_backward(self, loss: torch.Tensor) -> None:
        for name, p in self._named:
            if p.grad is not None:
                self.writer.add_histogram(name, p.grad, self.i)

    def teardown(self) -> None:
        writer = getattr(self, "writer", None)
        if writer is not None:
            writer.close()
        shutil.rmtree(getattr(self, "_dir", ""), ignore_errors=True)


class DetectAnomaly(Config):
    """Forward and backward inside `torch.autograd.detect_anomaly()`."""

    key, name = "anomaly", "detect_anomaly"
    MESSAGE = r"Anomaly Detection has been enabled"

    def setup(self, task: Task) -> None:
        super().setup(task)
        warnings.filterwarnings("ignore", message=self.MESSAGE)
        self._filter = warnings.filters[0]

    def forward_backward(self) -> torch.Tensor:
        with torch.autograd.detect_anomaly():
            return super().forward_backward()

    def teardown(self) -> None:
        with contextlib.suppress(AttributeError, ValueError):
            warnings.filters.remove(self._filter)


CONFIGS: list[Callable[[], Config]] = [
    Plain,
    gradwatch_config("gw1", "gradwatch every=1", every=1),
    gradwatch_config("gw10", "gradwatch every=10", every=10),
    gradwatch_config(
        "gw1-params",
        "gradwatch every=1, forward probes off",
        every=1,
        activations=False,
        backflow=False,
        through_time=False,
    ),
    gradwatch_config(
        "gw1-all",
        "gradwatch every=1, every probe on every step",
        every=1,
        activations=True,
        backflow=True,
        through_time=True,
    ),
    gradwatch_config(
        "gw1-act",
        "gradwatch every=1, activations only every step",
        every=1,
        activations=True,
        backflow=False,
        through_time=False,
    ),
    gradwatch_config(
        "gw1-back",
        "gradwatch every=1, backflow only every step",
        every=1,
        activations=False,
        backflow=True,
        through_time=False,
    ),
    LightningGradNorm,
    WandbWatch,
    TensorboardHistograms,
    DetectAnomaly,
]


# ----------------------------------------------------------------------------- measurement


@dataclass
class Row:
    key: str
    name: str
    ratio: float | None = None
    ms: float | None = None
    note: str = ""
    error: str | None = None
    memory: dict | None = None
    blocks_ms: list[float] = field(default_factory=list)


@dataclass
class ModelResult:
    model: str
    device: str
    reps: int
    steps: int
    rows: list[Row]
    load: tuple[float, float] = (math.nan, math.nan)  # 1-minute load average before, after
    rounds: int | None = None  # --interleave: rounds of one step per configuration

    @property
    def plain_ms(self) -> float | None:
        return next((r.ms for r in self.rows if r.key == "plain"), None)


def _reason(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}".strip().splitlines()[0]
    return text[:160]


def block_plan(period: int, steps: int) -> tuple[int, int]:
    """(block length, blocks per period) so that blocks are about `steps` long and one period's
    blocks together hold exactly one period of the configuration's work."""
    if period <= steps:
        return -(-steps // period) * period, 1  # K rounded up to a whole period
    phases = -(-period // steps)
    if period % phases == 0:
        return period // phases, phases
    return period, 1


def measure(
    spec: ModelSpec,
    factories: Sequence[Callable[[], Config]],
    *,
    device: torch.device,
    reps: int,
    steps: int,
    warmup: int,
    seed: int = 0,
    calibrate: bool = True,
    align: bool = True,
    interleave: bool = False,
    log: Callable[[str], None] = lambda s: None,
) -> ModelResult:
    """Set every configuration up, warm each up, then time `reps` interleaved rounds of blocks.

    `interleave`: rounds of one step per configuration instead, in a fresh random order each
    round, for at least `reps * steps` rounds (a whole number of every configuration's period);
    each configuration's time per step is the mean over its steps. A burst of noise then lands on
    neighbouring steps of every configuration alike, which blocks of 20 steps cannot promise.
    """
    load_before = os.getloadavg()[0]
    task = Task(spec, device, seed, calibrate=calibrate)
    configs = [f() for f in factories]
    rows = {c.key: Row(c.key, c.name) for c in configs}
    started: list[Config] = []
    live: list[Config] = []
    plan: dict[str, tuple[int, int]] = {}  # key -> (block length, blocks per period)
    try:
        for c in configs:  # every configuration set up front, each with its own copy and optimizer
            log(f"{spec.name}: setting up {c.name}")
            started.append(c)
            try:
                c.setup(task)
                plan[c.key] = block_plan(max(1, int(c.period)) if align else 1, steps)
                live.append(c)
            except Exception as exc:  # noqa: BLE001 - a competitor that cannot run is reported
                rows[c.key].error = f"could not set up: {_reason(exc)}"

        def run_block(c: Config, n: int) -> float | None:
            try:
                c.take_excluded()
                _sync(device)
                t0 = _clock()
                for _ in range(n):
                    c.step()
                _sync(device)
                return _clock() - t0 - c.take_excluded()
            except Exception as exc:  # noqa: BLE001
                rows[c.key].error = f"failed while training: {_reason(exc)}"
                live.remove(c)
                return None

        for c in list(live):
            log(f"{spec.name}: warm-up {c.name}")
            run_block(c, warmup)
        rng = random.Random(seed + 2)
        if interleave:
            period = math.lcm(*(max(1, int(c.period)) if align else 1 for c in live)) if live else 1
            rounds = -(-reps * steps // period) * period
            for r in range(rounds):
                order = list(live)
                rng.shuffle(order)
                for c in order:
                    if c in live:
                        t = run_block(c, 1)
                        if t is not None:
                            rows[c.key].blocks_ms.append(t * 1e3)
                if (r + 1) % max(1, rounds // 10) == 0:
                    gc.collect()
                    log(f"{spec.name}: round {r + 1}/{rounds} done")
            for c in live:
                row = rows[c.key]
                row.ms = statistics.fmean(row.blocks_ms) + c.amortized_per_step() * 1e3
                row.note = c.note()
                row.memory = c.memory()
        for r in range(0 if interleave else reps):
            order = [c for c in live for _ in range(plan[c.key][1])]
            rng.shuffle(order)
            for c in order:
                if c not in live:  # it failed earlier in this repetition
                    continue
                gc.collect()
                t = run_block(c, plan[c.key][0])
                if t is not None:
                    rows[c.key].blocks_ms.append(t * 1e3)
            log(f"{spec.name}: repetition {r + 1}/{reps} done")
        for c in [] if interleave else live:
            row = rows[c.key]
            length, phases = plan[c.key]
            # a config's n-th block covers its steps [n*length, (n+1)*length) after the warm-up, so
            # blocks n and n+phases do the same work: median per phase, summed over one period
            per_period = sum(statistics.median(row.blocks_ms[p::phases]) for p in range(phases))
            row.ms = per_period / (length * phases) + c.amortized_per_step() * 1e3
            row.note = c.note()
            if phases > 1:
                row.note = (
                    f"period {length * phases} steps, timed as {phases} blocks of {length} "
                    "(median per block position, summed); " + row.note
                )
            elif length != steps:
                row.note = f"blocks of {length} steps (a whole period); " + row.note
            row.memory = c.memory()
    finally:
        for c in reversed(started):
            try:
                c.teardown()
            except Exception as exc:  # noqa: BLE001
                rows[c.key].note += f" (teardown failed: {_reason(exc)})"
    base = rows["plain"].ms if "plain" in rows else None
    for row in rows.values():
        if row.ms is not None and base:
            row.ratio = row.ms / base
    rows_out = [rows[c.key] for c in configs]
    load = (load_before, os.getloadavg()[0])
    return ModelResult(
        spec.name, str(device), reps, steps, rows_out, load, rounds if interleave else None
    )


# ----------------------------------------------------------------------------- output


def _fmt_ratio(row: Row) -> str:
    return f"{row.ratio:.3f}x" if row.ratio is not None else "n/a"


def _fmt_ms(row: Row) -> str:
    return f"{row.ms:.2f}" if row.ms is not None else "n/a"


def _title(res: ModelResult) -> str:
    plain = f"{res.plain_ms:.2f} ms/step" if res.plain_ms is not None else "n/a"
    if res.rounds:
        return f"{res.model}: plain {plain} on {res.device}, mean of {res.rounds} interleaved steps"
    return (
        f"{res.model}: plain {plain} on {res.device}, median of {res.reps} blocks of {res.steps} "
        "steps"
    )


def print_rich(results: list[ModelResult]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    for res in results:
        table = Table(title=_title(res), title_justify="left", caption=_load(res))
        table.add_column("configuration")
        table.add_column("ratio to plain", justify="right")
        table.add_column("ms/step", justify="right")
        table.add_column("notes", overflow="fold")
        for row in res.rows:
            table.add_row(row.name, _fmt_ratio(row), _fmt_ms(row), row.error or row.note)
        console.print(table)


def _load(res: ModelResult) -> str:
    start, end = res.load
    return f"1-minute load average {start:.2f} before, {end:.2f} after ({os.cpu_count()} CPUs)"


def environment() -> dict[str, str]:
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    from gradwatch.probes import kernels as _cpu_kernels

    kernels = _cpu_kernels.name(_cpu_kernels.load())
    kernels = "torch operations" if kernels == "torch" else f"{kernels} kernels"
    return {
        "cpu": f"{cpu}, {os.cpu_count()} logical cores",
        "torch": torch.__version__,
        "kernels": f"forward probes on the CPU by {kernels}",
        "threads": str(torch.get_num_threads()),
        "clock": "main thread's CPU time" if _clock is time.thread_time else "wall time",
        "python": platform.python_version(),
        "date": time.strftime("%Y-%m-%d"),
    }


def markdown_header() -> str:
    env = environment()
    return (
        f"Machine: {env['cpu']}; torch {env['torch']} ({env['threads']} threads, {env['clock']}); "
        f"{env['kernels']}; Python {env['python']}; {env['date']}.\n"
    )


def markdown_model(res: ModelResult) -> str:
    out = [f"### {_title(res)}", "", _load(res) + ".", ""]
    out += ["| configuration | ratio to plain | ms/step | notes |", "|---|---:|---:|---|"]
    for row in res.rows:
        note = (row.error or row.note).replace("|", "\\|")
        out.append(f"| {row.name} | {_fmt_ratio(row)} | {_fmt_ms(row)} | {note} |")
    return "\n".join(out) + "\n"


def markdown_memory(results: list[ModelResult]) -> str:
    mem = [(res, row) for res in results for row in res.rows if row.memory]
    if not mem:
        return ""
    out = ["### Memory: update-ratio snapshots", ""]
    out += [
        "| model | configuration | snapshot bytes | parameter bytes | fraction |",
        "|---|---|---:|---:|---:|",
    ]
    for res, row in mem:
        m = row.memory
        out.append(
            f"| {res.model} | {row.name} | {m['extra_bytes']:,} | {m['param_bytes']:,} | "
            f"{m['fraction']:.3f} |"
        )
    return "\n".join(out) + "\n"


def markdown(results: list[ModelResult]) -> str:
    parts = [markdown_header()] + [markdown_model(r) for r in results] + [markdown_memory(results)]
    return "\n".join(p for p in parts if p)


# ----------------------------------------------------------------------------- command line


def _select(names: str | None, table: dict, what: str) -> list:
    if not names:
        return list(table.values())
    picked = []
    for name in (n.strip() for n in names.split(",")):
        if name not in table:
            raise SystemExit(f"unknown {what} {name!r}; choose from {', '.join(table)}")
        picked.append(table[name])
    return picked


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    keys = {f().key: f().name for f in CONFIGS}
    p = argparse.ArgumentParser(
        description="Per-step overhead of watching gradients, as ratios to plain training."
    )
    p.add_argument("--models", default="mlp,cnn,transformer", help=f"from {', '.join(MODELS)}")
    p.add_argument(
        "--configs",
        default=None,
        help="subset, by key or name: " + ", ".join(f"{k} ({v})" for k, v in keys.items()),
    )
    p.add_argument("--reps", type=int, default=7, help="repetitions (blocks per config)")
    p.add_argument("--steps", type=int, default=20, help="training steps per timed block (K)")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps per config first")
    p.add_argument(
        "--quick",
        action="store_true",
        help="smoke test: 2 reps of 2 steps, no flush calibration, no period alignment",
    )
    p.add_argument("--device", choices=["cpu", "cuda"], default=None)
    p.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (CPU)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--clock",
        choices=list(_CLOCKS),
        default="wall",
        help="wall time, or the main thread's CPU time (needs --threads 1, CPU)",
    )
    p.add_argument("--markdown", action="store_true", help="print Markdown tables (RESULTS.md)")
    p.add_argument(
        "--interleave",
        action="store_true",
        help="time one step per configuration per round, shuffled each round (mean per step); "
        "steadier on a noisy machine",
    )
    args = p.parse_args(argv)
    if args.quick:
        args.reps, args.steps, args.warmup = 2, 2, 1
    if args.clock == "cpu" and (args.threads != 1 or args.device == "cuda"):
        p.error("--clock cpu measures one thread's CPU time: use it with --threads 1 on the CPU")
    if min(args.reps, args.steps) < 1 or args.warmup < 0:
        p.error("--reps and --steps must be >= 1, --warmup >= 0")
    return args


def main(argv: Sequence[str] | None = None) -> list[ModelResult]:
    args = parse_args(argv)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device available")
    by_key: dict[str, Callable[[], Config]] = {}
    for f in CONFIGS:
        c = f()
        by_key[c.key] = by_key[c.name] = f
    factories = list(dict.fromkeys(_select(args.configs, by_key, "configuration")))
    if Plain not in factories:  # every ratio is against plain, measured alongside
        factories.insert(0, Plain)
    specs = _select(args.models, MODELS, "model")

    global _clock
    _clock = _CLOCKS[args.clock]
    threads = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    if args.markdown:
        print(markdown_header(), flush=True)
    results = []
    try:
        for spec in specs:  # each model's table is printed as soon as it is measured
            res = measure(
                spec,
                factories,
                device=device,
                reps=args.reps,
                steps=args.steps,
                warmup=args.warmup,
                seed=args.seed,
                calibrate=not args.quick,
                align=not args.quick,
                interleave=args.interleave,
                log=lambda s: print(s, file=sys.stderr, flush=True),
            )
            results.append(res)
            if args.markdown:
                print(markdown_model(res), flush=True)
            else:
                print_rich([res])
    finally:
        torch.set_num_threads(threads)
    if args.markdown:
        print(markdown_memory(results), flush=True)
    return results


if __name__ == "__main__":
    main()
