"""What the feed-forward experiments share: train a classifier on digits under `gw.watch`, and read
per-layer profiles out of the stats table.

Every number an experiment reports about gradients comes from gradwatch's own statistics
(`grad_norm`, `backflow_norm`, `act_std`), recorded by `gw.watch` into a run directory.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch
from torch import nn

from gradwatch.lab.experiments._common import metric as _metric
from gradwatch.lab.tasks import Split, digits
from gradwatch.monitor import watch


@functools.lru_cache(maxsize=4)
def data(seed: int) -> Split:
    return digits(seed)


@dataclass
class Trained:
    """One training run: test accuracy (fraction), mean training loss per epoch, stats, layer
    order."""

    accuracy: float
    losses: list[float]
    stats: pd.DataFrame
    layers: list[str]
    path: str

    @property
    def final_loss(self) -> float:
        return self.losses[-1]


def linear_layers(model: nn.Module, order: Sequence[str]) -> list[str]:
    """Names of the nn.Linear modules, in forward order."""
    linear = {n for n, m in model.named_modules() if isinstance(m, nn.Linear)}
    return [n for n in order if n in linear]


def profile(stats: pd.DataFrame, layers: Sequence[str], metric: str, step: int = 0) -> list[float]:
    """`metric` of each of `layers` at `step` (NaN where it was not recorded), in the given
    order."""
    values = _metric(stats, metric, step)
    return [values.get(n, math.nan) for n in layers]


def train(
    model: nn.Module,
    split: Split,
    *,
    epochs: int,
    lr: float,
    seed: int,
    log_dir: Path,
    batch: int = 64,
    momentum: float = 0.9,
    optimizer: str = "sgd",
    every: int = 5,
    progress: Callable[[float], None] = lambda f: None,
) -> Trained:
    """Minibatch SGD with momentum (or Adam) on cross-entropy, watched; accuracy on the held-out
    split.

    Every `every`-th step is recorded (step 0, the gradient at init, always is): the lab trains
    many small nets, and recording one step in five keeps the stored runs and their diagnosis cheap.
    """
    if optimizer == "adam":
        opt: torch.optim.Optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    else:
        opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum)
    n = len(split.x_train)
    gen = torch.Generator().manual_seed(seed)
    steps = epochs * -(-n // batch)
    done = 0
    losses = []
    with watch(model, opt, every=every, log_dir=log_dir, overwrite=True, flush_every=100) as w:
        for _ in range(epochs):
            perm = torch.randperm(n, generator=gen)
            total = torch.zeros(())
            for i in range(0, n, batch):
                idx = perm[i : i + batch]
                opt.zero_grad()
                loss = nn.functional.cross_entropy(model(split.x_train[idx]), split.y_train[idx])
                loss.backward()
                w.log_loss(loss)
                opt.step()
                total += loss.detach() * len(idx)
                done += 1
                progress(done / steps)
            losses.append(float(total) / n)
    model.eval()
    with torch.no_grad():
        acc = float((model(split.x_test).argmax(1) == split.y_test).float().mean())
    model.train()
    return Trained(acc, losses, w.stats(), w.layers(), str(w.log_dir))


def first_last_ratio(values: Sequence[float]) -> float:
    """first / last of a per-layer profile (NaN when either is missing or the last is zero)."""
    if not values or not values[-1] or math.isnan(values[-1]):
        return math.nan
    return values[0] / values[-1]


def sub_progress(progress: Callable[[float], None], i: int, n: int) -> Callable[[float], None]:
    """A progress callback for part `i` of `n` equal parts of a whole."""
    return lambda f: progress((i + min(max(f, 0.0), 1.0)) / n)


def at_init(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    log_dir: Path | None,
    loss_fn: Callable | None = None,
) -> tuple[pd.DataFrame, list[str]]:
    """One forward and backward at initialisation under `gw.watch` (no update): (stats, layer
    order).

    Step 0 of the stats holds every probe's numbers (grad_norm, backflow_norm, act_std, ...).
    """
    loss_fn = loss_fn or nn.functional.cross_entropy
    with watch(
        model, log_dir=log_dir, overwrite=True, activations=True, backflow=True, histograms=False
    ) as w:
        loss = loss_fn(model(x), y)
        loss.backward()
        w.log_loss(loss)
        w.step()
        w.forget_update()
    model.zero_grad(set_to_none=True)
    return w.stats(), w.layers()
