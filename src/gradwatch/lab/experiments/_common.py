"""Helpers the lab experiments share: seeding, JSON-safe numbers, and reading gradwatch's stats."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

import pandas as pd
import torch
from torch import nn

from gradwatch.monitor import watch


def generator(seed: int) -> torch.Generator:
    """A CPU generator seeded with `seed`; also seeds the global RNG (module inits draw from it)."""
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def num(x: float | torch.Tensor | None) -> float | None:
    """A JSON-safe float: NaN and ±inf become None (the judges read None as 'non-finite')."""
    if x is None:
        return None
    x = float(x)
    return x if math.isfinite(x) else None


def nums(xs: Iterable[float | torch.Tensor]) -> list[float | None]:
    return [num(x) for x in xs]


def finite(x: float | None) -> bool:
    return x is not None and math.isfinite(x)


def ratio(a: float | None, b: float | None) -> float | None:
    """a / b, or None when either is missing, non-finite, or b is 0."""
    if not (finite(a) and finite(b)) or b == 0:
        return None
    return num(a / b)


def metric(stats: pd.DataFrame, name: str, step: int | None = None) -> dict[str, float]:
    """layer -> value of one per-layer metric (index -1) at `step` (the first recorded when
    None)."""
    rows = stats[(stats["metric"] == name) & (stats["index"] == -1)]
    if rows.empty:
        return {}
    step = int(rows["step"].min()) if step is None else step
    rows = rows[rows["step"] == step]
    return dict(zip(rows["layer"], rows["value"].astype(float), strict=True))


def series(stats: pd.DataFrame, name: str, layer: str) -> tuple[list[int], list[float]]:
    """(steps, values) of one per-layer metric over the run."""
    rows = stats[
        (stats["metric"] == name) & (stats["layer"] == layer) & (stats["index"] == -1)
    ].sort_values("step")
    return rows["step"].astype(int).tolist(), rows["value"].astype(float).tolist()


def time_series(stats: pd.DataFrame, layer: str, step: int | None = None) -> list[float]:
    """`time_grad_norm` of a recurrent layer at `step` (first recorded when None), t = 0, 1, ..."""
    rows = stats[(stats["metric"] == "time_grad_norm") & (stats["layer"] == layer)]
    if rows.empty:
        return []
    step = int(rows["step"].min()) if step is None else step
    rows = rows[rows["step"] == step].sort_values("index")
    return rows["value"].astype(float).tolist()


def group_norm(per_layer: dict[str, float], prefix: str) -> float:
    """√(Σ v²) over the layers whose name starts with `prefix`: one norm for a block of modules."""
    return math.sqrt(
        sum(v * v for k, v in per_layer.items() if k == prefix or k.startswith(prefix + "."))
    )


def one_backward(
    model: nn.Module, loss_of: Callable[[nn.Module], torch.Tensor], **watch_kw
) -> pd.DataFrame:
    """gradwatch's statistics of one forward and backward of `loss_of(model)`; no update is taken.

    Gradients are left on the parameters (zeroed before), so callers can read them afterwards too.
    """
    kw = {
        "activations": False,
        "backflow": False,
        "through_time": False,
        "update_memory": 1e-9,
        "flush_every": 1,
    }
    kw.update(watch_kw)
    model.zero_grad(set_to_none=True)
    w = watch(model, **kw)
    try:
        loss = loss_of(model)
        loss.backward()
        w.log_loss(loss.detach())
        w.step()
        w.forget_update()
    finally:
        w.close()
    return w.stats()
