"""Parameter probe: per-layer gradient norm, weight norm and count of non-finite gradient
entries."""

from __future__ import annotations

import math

import numpy as np
import torch

from gradwatch._nn import ParamLayer
from gradwatch._tensor import is_sharded, local, stat_dtype
from gradwatch.probes.base import (
    ABSENT,
    NormLog,
    Probe,
    StepTable,
    by_kind,
    foreach_norms,
    no_grad,
    widest_accumulator,
)


def sq_norms(
    tensors: list[torch.Tensor], device: torch.device, homogeneous: bool = False
) -> torch.Tensor:
    """Squared L2 norms of `tensors` as one vector on `device`, in its statistics dtype (float64).

    `homogeneous=True` promises dense tensors of one device and dtype (skips the grouping).

    One `torch._foreach_norm` per (device, dtype) group, accumulated in float32 at least (bf16 norms
    would keep three digits), then squared in float64 so that large norms do not overflow.
    """
    stat = stat_dtype(device)
    if not tensors:
        return torch.zeros(0, dtype=stat, device=device)
    if homogeneous:
        dense, first = tensors, tensors[0]
        groups = {(first.device, first.dtype): range(len(dense))}
    else:
        dense = [t.coalesce()._values() if t.is_sparse else t for t in tensors]
        groups = by_kind(dense)
    parts, order = [], []
    for (_dev, dtype), idx in groups.items():
        norms = foreach_norms([dense[i] for i in idx], dtype)
        parts.append(torch.stack(norms).to(device=device, dtype=stat))
        order.extend(idx)
    out = parts[0] if len(parts) == 1 else torch.cat(parts)
    if len(parts) > 1:
        out = out[torch.argsort(torch.tensor(order, device=device))]
    return out * out


FREE_READS = {"cpu"}
"""Device types where reading a number on the host costs no synchronisation with the device."""


def nonfinite_counts(tensors: list[torch.Tensor], sq: torch.Tensor) -> torch.Tensor:
    """How many NaN/Inf entries each tensor holds, given its squared norm.

    A tensor with a non-finite entry has a non-finite norm, so only those need counting. On the
    CPU reading that flag costs nothing; on an accelerator it would be a host sync, so there every
    tensor is counted on the device instead.
    """
    counts = torch.zeros_like(sq)
    if not tensors:
        return counts
    if sq.device.type in FREE_READS:
        if math.isfinite(sq.sum()):
            return counts
        for i in (~torch.isfinite(sq)).nonzero().flatten().tolist():
            counts[i] = _count_nonfinite(tensors[i])
        return counts
    return torch.stack([_count_nonfinite(t).to(sq.device, sq.dtype) for t in tensors])


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
        self._cache: dict[tuple[int, ...], tuple] = {}
        self._weights_due = True  # all weight norms once per flush, at its first recorded step
        self._sharded = is_sharded(
            self._params
        )  # FSDP2: measure the local shards, reduced at flush
        first = self._params[0]
        self._homogeneous = all(
            p.device == first.device and p.dtype == first.dtype and p.layout == torch.strided
            for p in self._params
        )

    def rows(self) -> list[str]:
        return [layer.name for layer in self.layers]

    def bind(self, table: StepTable) -> None:
        super().bind(table)
        self._rows = table.row_index(self.rows())
        self._c_first = table.column("grad_sq")
        assert table.columns[self._c_first : self._c_first + 3] == list(self.columns)
        self._param_rows = self._rows[
            torch.tensor(self._owner, dtype=torch.long, device=self._rows.device)
        ]
        # The usual step (see record) keeps its norms aside and sums them into the table at flush.
        self._fast = self._homogeneous and not self._sharded
        if self._fast:
            self._log = NormLog(table, len(self._params), dtype=widest_accumulator(self._params))
            self._free_reads = table.device.type in FREE_READS
            if self._free_reads:  # a non-finite norm is seen at once; the general path counts it
                self._plan = self._log.plan(
                    self._c_first, self._param_rows, self._params, zero=self._c_first + 2
                )
            else:  # no look without a sync: every step counts the finite entries on the device
                self._plan = self._log.plan(self._c_first, self._param_rows, self._params)
                self._counts = NormLog(table, len(self._params), counts=True)
                self._count_plan = self._counts.plan(
                    self._c_first + 2, self._param_rows, self._params
                )

    def _index_for(self, with_grad: tuple[int, ...], weights: bool):
        """Index tensors for the parameters that have gradients now (cached: usually always the
        same).

        `into`: where each squared norm (gradients, then weights when measured, then non-finite
        counts) lands in a `[3, layers]` block; `has`: which layers have any gradient.
        """
        hit = self._cache.get((with_grad, weights))
        if hit is None:
            dev, n = self.table.device, len(self.layers)
            owners = torch.tensor([self._owner[k] for k in with_grad], dtype=torch.long, device=dev)
            has = torch.zeros(n, dtype=torch.bool, device=dev)
            has[owners] = True
            parts = [owners]
            if weights:
                parts.append(torch.tensor(self._owner, dtype=torch.long, device=dev) + n)
            parts.append(owners + 2 * n)
            hit = (torch.cat(parts), has)
            self._cache[(with_grad, weights)] = hit
        return hit

    @no_grad
    def record(self, slot: int) -> None:
        """Gradient norms and non-finite counts at every recorded step.

        Weight norms move slowly and reading every weight doubles the cost, so all of them are read
        at the first recorded step of each flush only (not slot 0: a step a GradScaler skipped can
        hold that slot); in between, the update probe writes those of the layers it snapshots.
        """
        table, n = self.table, len(self.layers)
        if self._fast:
            if not self._weights_due and self._usual_step(slot):
                return
            self._log.forget(slot)
            if not self._free_reads:
                self._counts.forget(slot)
        with_grad, grads = [], []
        for k, p in enumerate(self._params):
            g = p.grad
            if g is not None:
                with_grad.append(k)
                grads.append(local(g) if self._sharded else g)
        weights, self._weights_due = self._weights_due, False
        params = [local(p) for p in self._params] if self._sharded else self._params
        homogeneous = (
            self._homogeneous
            and len(grads) == len(self._params)
            and all(
                g.dtype == p.dtype and not g.is_sparse for g, p in zip(grads, params, strict=True)
            )
        )
        sq = sq_norms(grads + params if weights else grads, table.device, homogeneous)
        bad = nonfinite_counts(grads, sq[: len(grads)])
        into, has_grad = self._index_for(tuple(with_grad), weights)
        block = torch.zeros(3 * n, dtype=table.dtype, device=table.device)
        block.index_add_(0, into, torch.cat([sq, bad]))
        block = block.view(3, n)
        block[0].masked_fill_(~has_grad, ABSENT)
        block[2].masked_fill_(~has_grad, ABSENT)
        if not weights:
            block[1].fill_(ABSENT)
        table.data[slot, self._c_first : self._c_first + 3].index_copy_(1, self._rows, block)

    def _usual_step(self, slot: int) -> bool:
        """The usual step, in one stack into the side log: every layer has a dense gradient of its
        parameter's dtype. Where reading is free (the CPU), every norm must be finite too, and a
        step with a non-finite one takes the general path, which counts the bad entries; on an
        accelerator the non-finite entries of every gradient are counted here, two kernels each:
        g·0 is 0 where g is finite and NaN where it is not, and its L0 norm counts the NaNs."""
        grads = [p.grad for p in self._params]
        # No check per parameter (Python work per parameter per step, the cost on a model of
        # many small layers): torch keeps a gradient in its parameter's dtype and on its device,
        # and `_foreach_norm` refuses what else the general path handles (a missing gradient:
        # TypeError; a sparse one: NotImplementedError), before anything is written.
        try:
            row = self._log.write(slot, self._plan, grads)
        except (TypeError, NotImplementedError):
            return False
        if not self._free_reads:
            dtype = self.table.dtype
            self._counts.put(
                slot,
                self._count_plan,
                [torch.linalg.vector_norm(g * 0, 0, dtype=dtype) for g in grads],
            )
            return True
        # The CPU row read in place, no kernel: a float64 sum of float32 norms cannot overflow.
        return math.isfinite(sum(row.tolist()))

    def forget(self, slot: int) -> None:
        """Drop what `record(slot)` wrote: the step was recorded early (before the user clipped
        its gradients) and then skipped by the GradScaler."""
        if self._fast:
            self._log.forget(slot)
            if not self._free_reads:
                self._counts.forget(slot)
        self.table.data[slot, self._c_first : self._c_first + 3].fill_(ABSENT)
        self._weights_due = True

    def settle(self, n: int) -> None:
        if self._fast:
            self._log.settle(n)
            if not self._free_reads:
                self._counts.settle(n)

    def take(self, n: int) -> dict:
        self._weights_due = True
        return {}

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
