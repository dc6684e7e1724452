"""`Program`: one small, self-contained training run (model, optimizer, data, loss, loop body).

Every case module builds one with `build(fixed: bool, seed: int) -> Program`. The loop body is
the program's own (`train_step`), so a bug in the loop itself (a missing `zero_grad`, a loss cut
from the graph) is part of the program, not of the runner. A loop body calls `program.report(loss)`
after `backward()` and before `optimizer.step()`; the runner uses that hook to hand the loss to
gradwatch at the right step.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

Batch = tuple[Any, torch.Tensor]


def call_model(model: nn.Module, inputs: Any) -> Any:
    """Inputs that are a tuple go in as positional arguments, anything else as one argument."""
    return model(*inputs) if isinstance(inputs, tuple) else model(inputs)


def default_train_step(program: Program, batch: Batch) -> torch.Tensor:
    """zero_grad, forward, loss, backward, (report), step."""
    inputs, target = batch
    program.optimizer.zero_grad()
    loss = program.loss_fn(call_model(program.model, inputs), target)
    loss.backward()
    program.report(loss)
    program.optimizer.step()
    return loss


@dataclass
class Program:
    model: nn.Module
    optimizer: torch.optim.Optimizer
    # A list of (inputs, target) batches, cycled through; or a callable returning an iterable of
    # batches (called once per run, cycled through as well).
    batches: list[Batch] | Callable[[], Iterable[Batch]]
    loss_fn: Callable[..., torch.Tensor]
    steps: int = 60
    train_step: Callable[[Program, Batch], torch.Tensor] = default_train_step
    # Task error (lower is better) measured on the model outside training, with one definition
    # for the buggy and the fixed version: where the fix changes the loss function, the two
    # losses cannot be compared, the error can. None: compare the losses.
    error: Callable[[nn.Module], float] | None = None
    error_name: str = ""
    # Where the loop body's loss goes (the runner sets it; None: nowhere).
    on_loss: Callable[[torch.Tensor], None] | None = field(default=None, repr=False)

    def report(self, loss: torch.Tensor) -> None:
        if self.on_loss is not None:
            self.on_loss(loss)

    def iter_batches(self) -> Iterator[Batch]:
        """`steps` batches, cycling through the data."""
        source = self.batches
        data = list(source() if callable(source) else source)
        if not data:
            raise ValueError("a program needs at least one batch")
        for step in range(self.steps):
            yield data[step % len(data)]

    def first_batch(self) -> Batch:
        return next(self.iter_batches())


def evaluating(model: nn.Module, fn: Callable[[], float]) -> float:
    """fn() under eval mode and no_grad, the model's modes restored after."""
    modes = {m: m.training for m in model.modules()}
    model.eval()
    try:
        with torch.no_grad():
            return float(fn())
    finally:
        for m, mode in modes.items():
            m.training = mode


def classification_error(x: Any, y: torch.Tensor, predict: Callable[[Any], torch.Tensor]):
    """An `error` callable: the fraction of samples where predict(model output) != y."""

    def error(model: nn.Module) -> float:
        return evaluating(model, lambda: (predict(call_model(model, x)) != y).float().mean())

    return error


def regression_error(x: Any, y: torch.Tensor, transform: Callable | None = None):
    """An `error` callable: mean squared error of the (transformed) output against y."""

    def error(model: nn.Module) -> float:
        def mse():
            out = call_model(model, x)
            out = transform(out) if transform is not None else out
            return ((out.reshape(y.shape) - y) ** 2).mean()

        return evaluating(model, mse)

    return error


def minibatches(x: torch.Tensor, y: torch.Tensor, size: int, seed: int) -> list[Batch]:
    """Shuffled (with `seed`) minibatches of `size` covering x and y once."""
    gen = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(x), generator=gen)
    return [(x[order[i : i + size]], y[order[i : i + size]]) for i in range(0, len(x), size)]
