"""Update probe: ‖w_after − w_before‖ / ‖w_before‖ of each optimizer step, within a memory budget.

Snapshotting every weight before every step would double the model's memory. Instead the layers
are packed into groups whose parameters fit in `memory` × (parameter bytes), and each recorded
step snapshots one group, in turn. Every layer's ratio is then exact, measured every
`len(groups)` recorded steps; a layer bigger than the budget forms a group of its own, so the peak
extra memory is max(budget, largest layer).

The same turn also gives the weight norms of the group's layers (`weight_sq`, the update ratio's
denominator): they are read while the snapshot is taken, so the parameter probe need not read every
weight on every step.
"""

from __future__ import annotations

import numpy as np
import torch

from gradwatch._nn import ParamLayer
from gradwatch._tensor import is_sharded, local
from gradwatch.probes.base import (
    ABSENT,
    NormLog,
    Probe,
    StepTable,
    no_grad,
    widest_accumulator,
)


def pack_groups(sizes: list[int], budget: float) -> list[list[int]]:
    """Greedily pack consecutive items into groups whose total size is at most `budget`."""
    groups: list[list[int]] = []
    current: list[int] = []
    used = 0
    for i, size in enumerate(sizes):
        if current and used + size > budget:
            groups.append(current)
            current, used = [], 0
        current.append(i)
        used += size
    if current:
        groups.append(current)
    return groups


class UpdateProbe(Probe):
    columns = ("update_sq", "weight_sq")

    def __init__(self, layers: list[ParamLayer], memory: float = 0.1, only: set[int] | None = None):
        """`only`: ids of the parameters the hooked optimizer updates; the others (a GAN's other
        network, stepped by another optimizer) do not change in this step and get no ratio."""
        if memory <= 0:
            raise ValueError(
                "update_memory must be > 0 (a fraction of the model's parameter bytes)"
            )
        self.layers = [
            (i, [p for p in layer.params if p.requires_grad and (only is None or id(p) in only)])
            for i, layer in enumerate(layers)
        ]
        self.layers = [(i, ps) for i, ps in self.layers if ps]
        self._names = [layers[i].name for i, _ in self.layers]
        # Parameters of a layer the optimizer does not step (a frozen bias) still count in its norm.
        self._unstepped = [
            [p for p in layers[i].params if not any(p is q for q in ps)] for i, ps in self.layers
        ]
        self.covered = {i for i, _ in self.layers}
        self._sharded = is_sharded([p for layer in layers for p in layer.params])
        # FSDP2: each rank snapshots its own shards (sizes and views are those of the local
        # tensors).
        sizes = [sum(local(p).numel() * p.element_size() for p in ps) for _, ps in self.layers]
        total = sum(local(p).numel() * p.element_size() for layer in layers for p in layer.params)
        self.groups = pack_groups(sizes, memory * total)
        self.extra_bytes = max((sum(sizes[i] for i in g) for g in self.groups), default=0)
        self._turn = 0
        self._pending: tuple[int, int] | None = None

    def rows(self) -> list[str]:
        return self._names

    def bind(self, table: StepTable) -> None:
        super().bind(table)
        self._col = table.column("update_sq")
        self._col_w = table.column("weight_sq")
        # One flat buffer per (device, dtype), sized for the largest group; views are cut per group.
        need: dict[tuple[torch.device, torch.dtype], int] = {}
        for group in self.groups:
            used: dict[tuple[torch.device, torch.dtype], int] = {}
            for j in group:
                for p in self.layers[j][1]:
                    key = (p.device, p.dtype)
                    used[key] = used.get(key, 0) + local(p).numel()
            for key, n in used.items():
                need[key] = max(need.get(key, 0), n)
        self._flat = {k: torch.empty(n, device=k[0], dtype=k[1]) for k, n in need.items()}
        width = max(
            (sum(len(self.layers[j][1]) + len(self._unstepped[j]) for j in g) for g in self.groups),
            default=0,
        )
        dtype = widest_accumulator(
            [p for _, ps in self.layers for p in ps] + [p for ps in self._unstepped for p in ps]
        )
        self._weights = NormLog(table, width, dtype=dtype)
        self._updates = NormLog(table, width, dtype=dtype)
        self._plans = [self._plan(group) for group in self.groups]

    def _plan(self, group: list[int]):
        offsets = dict.fromkeys(self._flat, 0)
        params, views, owners, extra, extra_owners = [], [], [], [], []
        for pos, j in enumerate(group):
            for p in self.layers[j][1]:
                key = (p.device, p.dtype)
                start, shard = offsets[key], local(p)
                views.append(self._flat[key][start : start + shard.numel()].view_as(shard))
                offsets[key] = start + shard.numel()
                params.append(p)
                owners.append(pos)
            extra += self._unstepped[j]
            extra_owners += [pos] * len(self._unstepped[j])
        rows = self.table.row_index([self._names[j] for j in group])
        # Update norms: one per snapshot; weight norms: the snapshots, then the unstepped
        # parameters.
        weights = self._weights.plan(
            self._col_w, rows[owners + extra_owners], views + [local(p) for p in extra]
        )
        updates = self._updates.plan(self._col, rows[owners], views)
        # What the foreach operations read each step, made once: the parameters themselves (read
        # under no_grad, so no detach; a per-step list of detached views is Python work per
        # parameter), or under FSDP2 their local shards, which must be looked up each step.
        sources = None if self._sharded else list(params)
        extra_sources = None if self._sharded else views + list(extra)
        return params, views, extra, weights, updates, sources, extra_sources

    @no_grad
    def record(self, slot: int) -> None:
        """Snapshot this turn's group just before the optimizer changes it."""
        if not self.groups:
            return
        g = self._turn % len(self.groups)
        params, views, extra, weights, _, sources, extra_sources = self._plans[g]
        if sources is not None:
            torch._foreach_copy_(views, sources)
            self._weights.write(slot, weights, extra_sources)
        else:
            torch._foreach_copy_(views, [local(p.detach()) for p in params])
            self._weights.write(
                slot, weights, views + [local(p.detach()) for p in extra] if extra else views
            )
        self._updates.forget(slot)
        self._pending = (slot, g)

    @no_grad
    def after_update(self, slot: int) -> None:
        if self._pending is None or self._pending[0] != slot:
            return
        _, g = self._pending
        self._pending = None
        self._turn += 1
        params, views, _, _, updates, sources, _ = self._plans[g]
        # views now hold w_before - w_after
        torch._foreach_sub_(
            views, sources if sources is not None else [local(p.detach()) for p in params]
        )
        self._updates.write(slot, updates, views)

    def settle(self, n: int) -> None:
        if self.groups:
            self._weights.settle(n)
            self._updates.settle(n)

    def discard(self) -> None:
        """Forget a snapshot whose update never happened (the optimizer step raised)."""
        self._pending = None

    def finalize(self, raw: dict) -> list:
        upd, w = raw["update_sq"], raw["weight_sq"]
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio = np.sqrt(np.abs(upd)) / np.sqrt(np.abs(w))
        return [("update_ratio", self.table.rows, np.where((upd < 0) | (w < 0), ABSENT, ratio))]

    def meta(self) -> dict:
        return {"update_groups": len(self.groups), "update_extra_bytes": self.extra_bytes}
