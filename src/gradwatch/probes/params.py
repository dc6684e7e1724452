"""Parameter probe: per-layer gradient norm, weight norm and count of non-finite gradient entries."""

from __future__ import annotations

import numpy as np
import torch

from .._layers import ParamLayer
from .base import ABSENT, Probe, StepTable


def sq_norms(tensors: list[torch.Tensor], device: torch.device) -> torch.Tensor:
    """Squared L2 norms of `tensors` as one float64 vector on `device`.

    One `torch._foreach_norm` per (device, dtype) group, accumulated in float32 at least (bf16 norms
    would keep three digits), then squared in float64 so that large norms do not overflow.
    """
    if not tensors:
        return torch.zeros(0, dtype=torch.float64, device=device)
    dense = [t.coalesce()._values() if t.is_sparse else t for t in tensors]
    first = dense[0]
    if all(t.device == first.device and t.dtype == first.dtype for t in dense):
        groups = {(first.device, first.dtype): list(range(len(dense)))}
    else:
        groups = {}
        for i, t in enumerate(dense):
            groups.setdefault((t.device, t.dtype), []).append(i)
    parts, order = [], []
    for (dev, dtype), idx in groups.items():
        acc = torch.float64 if dtype == torch.float64 else torch.float32
        norms = torch._foreach_norm([dense[i] for i in idx], 2, dtype=acc)
        parts.append(torch.stack(norms).to(device=device, dtype=torch.float64))
        order.extend(idx)
    out = parts[0] if len(parts) == 1 else torch.cat(parts)
    if len(parts) > 1:
        out = out[torch.argsort(torch.tensor(order, device=device))]
    return out * out


def nonfinite_counts(tensors: list[torch.Tensor], sq: torch.Tensor) -> torch.Tensor:
    """How many NaN/Inf entries each tensor holds, given its squared norm.

    A tensor with a non-finite entry has a non-finite norm, so only those need counting. On the
    CPU reading that flag costs nothing; on an accelerator it would be a host sync, so there every
    tensor is counted on the device instead.
    """
    counts = torch.zeros_like(sq)
    if not tensors:
        return counts
    if sq.device.type == "cpu":
        bad = (~torch.isfinite(sq)).nonzero().flatten().tolist()
        for i in bad:
            counts[i] = _count_nonfinite(tensors[i])
        return counts
    return torch.stack([_count_nonfinite(t).to(sq.device, torch.float64) for t in tensors])


def _count_nonfinite(t: torch.Tensor) -> torch.Tensor:
    values = t.coalesce()._values() if t.is_sparse else t
    return torch.isfinite(values).logical_not_().sum()


class ParamProbe(Probe):
    """`grad_norm`, `weight_norm`, `nonfinite` for every module that owns parameters."""

    columns = ("grad_sq", "weight_sq", "nonfinite")

    def __init__(self, layers: list[ParamLayer]):
        self.layers = layers
        self._params: list[torch.nn.Parameter] = [p for layer in layers for p in layer.params]
        self._owner: list[int] = [i for i, layer in enumerate(layers) for _ in layer.params]
        self._cache: dict[tuple[int, ...], tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}

    def rows(self) -> list[str]:
        return [layer.name for layer in self.layers]

    def bind(self, table: StepTable) -> None:
        super().bind(table)
        self._rows = table.row_index(self.rows())
        self._owner_t = torch.tensor(self._owner, device=table.device)
        self._c_grad = table.column("grad_sq")
        self._c_weight = table.column("weight_sq")
        self._c_nonfinite = table.column("nonfinite")

    def _index_for(self, with_grad: tuple[int, ...]):
        """Owner rows of the parameters that have gradients, and which layers have any (cached)."""
        hit = self._cache.get(with_grad)
        if hit is None:
            dev = self.table.device
            owners = torch.tensor([self._owner[k] for k in with_grad], dtype=torch.long, device=dev)
            has = torch.zeros(len(self.layers), dtype=torch.bool, device=dev)
            has[owners] = True
            hit = (owners, has, torch.tensor(ABSENT, dtype=torch.float64, device=dev))
            self._cache[with_grad] = hit
        return hit

    @torch.no_grad()
    def record(self, slot: int) -> None:
        table = self.table
        with_grad, grads = [], []
        for k, p in enumerate(self._params):
            if p.grad is not None:
                with_grad.append(k)
                grads.append(p.grad)
        owners, has_grad, absent = self._index_for(tuple(with_grad))
        sq = sq_norms(grads + self._params, table.device)
        n_layers = len(self.layers)
        per_layer = torch.zeros(2 * n_layers, dtype=torch.float64, device=table.device)
        per_layer.index_add_(0, torch.cat([owners, self._owner_t + n_layers]), sq)
        bad = nonfinite_counts(grads, sq[: len(grads)])
        counts = torch.zeros(n_layers, dtype=torch.float64, device=table.device)
        counts.index_add_(0, owners, bad)
        table.write(slot, self._c_grad, self._rows, torch.where(has_grad, per_layer[:n_layers], absent))
        table.write(slot, self._c_weight, self._rows, per_layer[n_layers:])
        table.write(slot, self._c_nonfinite, self._rows, torch.where(has_grad, counts, absent))

    def finalize(self, raw: dict) -> list:
        rows = self.table.rows
        return [
            ("grad_norm", rows, root(raw["grad_sq"])),
            ("weight_norm", rows, root(raw["weight_sq"])),
            ("nonfinite", rows, raw["nonfinite"]),
        ]


def root(raw: np.ndarray) -> np.ndarray:
    """Square root that keeps the absent marker (negative) as it is."""
    with np.errstate(invalid="ignore"):
        return np.where(raw < 0, ABSENT, np.sqrt(np.abs(raw)))
