"""Layer-sequential unit-variance init (Mishkin & Matas 2016), measured with forward hooks."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from gradwatch._nn import call, untouched
from gradwatch._tensor import stat_dtype
from gradwatch.errors import RemedyError
from gradwatch.remedies.init import orthogonal_init, weight_layers


class _Stop(Exception):
    """Raised by a hook once the layer of interest has produced its output: the rest is not
    needed."""


def _forward(model: nn.Module, inputs: Any) -> None:
    """One forward that starts from, and leaves, the global RNG state as it is.

    So every measuring forward sees the same dropout masks, and the caller's RNG never moves.
    """
    cuda = sorted({p.device.index or 0 for p in model.parameters() if p.device.type == "cuda"})
    with torch.random.fork_rng(devices=cuda):
        call(model, inputs)


def _forward_order(model: nn.Module, layers: list[nn.Module], inputs: Any) -> list[nn.Module]:
    order: list[nn.Module] = []

    def record(module, args, output):
        if all(module is not seen for seen in order):
            order.append(module)

    handles = [layer.register_forward_hook(record) for layer in layers]
    try:
        _forward(model, inputs)
    finally:
        for h in handles:
            h.remove()
    return order


def _output_var(model: nn.Module, layer: nn.Module, inputs: Any) -> float:
    """Variance (over every element, population) of `layer`'s first output in one forward of
    `model`."""
    got: list[float] = []

    def grab(module, args, output):
        got.append(output.detach().to(stat_dtype(output.device)).var(correction=0).item())
        raise _Stop

    handle = layer.register_forward_hook(grab)
    try:
        _forward(model, inputs)
    except _Stop:
        pass
    finally:
        handle.remove()
    return got[0]


def lsuv_init(
    model: nn.Module,
    inputs: Any,
    tol: float = 0.1,
    max_iter: int = 10,
    generator: torch.Generator | None = None,
) -> nn.Module:
    """LSUV (Mishkin & Matas 2016): orthogonal init, then make each layer's output variance 1.

    Every Linear/Conv gets `orthogonal_init` (biases zero, drawn from `generator` or the global
    RNG); then, layer by layer in the order the forward pass reaches them, the weight is divided by
    √Var(output) until |Var(output) − 1| < `tol` or `max_iter` rescalings. Var is the population
    variance of all elements of the layer's output (before its activation) on `inputs` (a tensor, a
    tuple of positional tensors or a dict of keyword tensors). Forward passes run in the model's
    current train/eval mode (train mode is the paper's: BatchNorm uses batch statistics) without
    gradients, each starting from the caller's global RNG state (the same dropout masks every
    time); afterwards the global RNG, buffers (BatchNorm running statistics) and modes are as they
    were. Layers the forward never calls keep their orthogonal init.
    Returns `model`.
    """
    if tol <= 0 or max_iter < 1:
        raise RemedyError(
            f"lsuv_init needs tol > 0 and max_iter ≥ 1, not tol={tol}, max_iter={max_iter}."
        )
    layers = weight_layers(model)
    if not layers:
        raise RemedyError(
            "lsuv_init found no nn.Linear, nn.Conv* or nn.ConvTranspose* layer to initialise."
        )
    orthogonal_init(model, generator=generator)
    with torch.no_grad(), untouched(model):
        for layer in _forward_order(model, layers, inputs):
            for _ in range(max_iter):
                var = _output_var(model, layer, inputs)
                if not math.isfinite(var) or var == 0.0 or abs(var - 1.0) < tol:
                    break  # a zero or non-finite output cannot be rescaled to unit variance
                layer.weight.mul_(var**-0.5)
    return model
