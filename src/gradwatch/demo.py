"""The main job on built-in data: break a deep net, watch its gradients vanish, fix it, compare.

A sigmoid MLP of 12 hidden layers (13 Linear layers) with PyTorch's default init trains on
scikit-learn's digits under `gw.watch`; its first layer's gradient is about 1e-9 of its last. The
same net with ReLU and He init trains to ~95% accuracy with gradients level across depth. Both
runs are written to disk.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from torch import nn

from gradwatch._nn import ROOT_NAME
from gradwatch.diagnose import Diagnosis
from gradwatch.display.terminal import runs_view
from gradwatch.errors import RunError, RunExistsError
from gradwatch.lab.models import mlp
from gradwatch.lab.tasks import digits
from gradwatch.monitor import watch
from gradwatch.remedies import he_init
from gradwatch.report.data import from_stats
from gradwatch.report.html import write
from gradwatch.store import META, STATS_DIR

DEPTH, WIDTH, EPOCHS, BATCH, LR = 12, 64, 20, 64, 0.02
RUNS = ("broken", "fixed")  # the run directories inside `out`


@dataclass
class DemoRun:
    name: str
    description: str
    accuracy: float
    final_loss: float
    stats: pd.DataFrame
    layers: list[str]
    types: dict[str, str]
    path: Path
    diagnosis: Diagnosis
    meta: dict | None = None


def _train(
    name, description, model, data, out: Path, progress: Progress, seed: int, overwrite: bool
) -> DemoRun:
    opt = torch.optim.SGD(model.parameters(), lr=LR, momentum=0.9)
    n = len(data.x_train)
    steps_per_epoch = -(-n // BATCH)
    task = progress.add_task(description, total=EPOCHS * steps_per_epoch)
    gen = torch.Generator().manual_seed(seed)
    loss = torch.tensor(float("nan"))
    with watch(model, opt, log_dir=out / name, overwrite=overwrite) as w:
        for _ in range(EPOCHS):
            perm = torch.randperm(n, generator=gen)
            for i in range(0, n, BATCH):
                idx = perm[i : i + BATCH]
                opt.zero_grad()
                loss = nn.functional.cross_entropy(model(data.x_train[idx]), data.y_train[idx])
                loss.backward()
                w.log_loss(loss)
                opt.step()
                progress.advance(task)
    with torch.no_grad():
        acc = (model(data.x_test).argmax(1) == data.y_test).float().mean().item()
    types = {name or ROOT_NAME: type(m).__name__ for name, m in model.named_modules()}
    return DemoRun(
        name,
        description,
        acc,
        loss.item(),
        w.stats(),
        w.layers(),
        types,
        w.log_dir,
        w.diagnose(),
        w.meta(),
    )


def run_demo(
    out: str | Path = "runs/demo",
    seed: int = 0,
    console: Console | None = None,
    overwrite: bool = False,
) -> list[DemoRun]:
    """Train the broken and the fixed net, print the comparison, write it as an HTML report
    (`out/report.html`), return both runs.

    Runs a previous demo left in `out` are replaced only with `overwrite=True`; `out` is checked
    before anything is trained.
    """
    console = console or Console()
    out = Path(out)
    check_out(out, overwrite)
    data = digits(seed)
    console.print(
        f"[bold]gradwatch demo[/]: an MLP of {DEPTH} hidden layers ({DEPTH + 1} Linear) on "
        "scikit-learn's digits "
        f"({len(data.x_train)} train / {len(data.x_test)} test images), {EPOCHS} epochs of SGD."
    )
    runs = []
    # These nets are small: one thread is faster than two and immune to a busy machine.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        runs = _both(data, out, seed, console, overwrite)
    finally:
        torch.set_num_threads(threads)
    _show(runs, console, out)
    return runs


def check_out(out: Path, overwrite: bool) -> None:
    """Raise a one-sentence RunError when `out` cannot take the demo's runs and report."""
    if out.exists() and not out.is_dir():
        raise RunExistsError(f"--out '{out}' is a file; pass a directory for the demo's runs.")
    if not overwrite:
        held = [n for n in RUNS if (out / n / META).exists() or (out / n / STATS_DIR).exists()]
        if held:
            raise RunExistsError(
                f"--out '{out}' already holds a demo run ({', '.join(held)}); pass another "
                "directory, or --overwrite (overwrite=True) to replace it."
            )
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise RunError(
            f"--out '{out}' cannot be created ({exc.strerror}); pass a directory you can write to."
        ) from None
    if not os.access(out, os.W_OK):
        raise RunError(f"--out '{out}' is not writable; pass a directory you can write to.")


def _both(data, out: Path, seed: int, console: Console, overwrite: bool) -> list[DemoRun]:
    runs = []
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=True,
    ) as progress:
        torch.manual_seed(seed)
        broken = mlp(data.n_features, data.n_classes, DEPTH, WIDTH, nn.Sigmoid)
        runs.append(
            _train("broken", "sigmoid, default init", broken, data, out, progress, seed, overwrite)
        )
        torch.manual_seed(seed)
        fixed = he_init(mlp(data.n_features, data.n_classes, DEPTH, WIDTH, nn.ReLU))
        runs.append(_train("fixed", "ReLU, He init", fixed, data, out, progress, seed, overwrite))
    return runs


def _show(runs: list[DemoRun], console: Console, out: Path) -> None:
    shown = [
        from_stats(r.stats, r.meta, name=r.name, path=r.path, diagnosis=r.diagnosis) for r in runs
    ]
    console.print(runs_view(shown))
    console.print()
    for r in runs:
        g = r.stats[r.stats["metric"] == "grad_norm"].groupby("layer")["value"].median()
        first, last = g.get(r.layers[0]), g.get(r.layers[-1])
        console.print(
            f"[bold]{escape(r.name)}[/] ({r.description}): test accuracy "
            f"[bold]{r.accuracy:.1%}[/], final loss {r.final_loss:.3f}; "
            f"first layer's gradient is {first / last:.1e} of the last's."
        )
    a, b = runs
    console.print(
        f"Runs written to [bold]{escape(str(a.path))}[/] and [bold]{escape(str(b.path))}[/] "
        "(read with gw.load).",
        highlight=False,
    )
    report = write(shown, out / "report.html")
    console.print(
        f"Report of both runs, side by side: [bold]{escape(str(report))}[/]",
        soft_wrap=True,
        highlight=False,
    )
