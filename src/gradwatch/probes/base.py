"""The step table probes write into, and the shape every probe has.

Probes keep their numbers on the model's device in one preallocated table, `capacity` steps deep.
Nothing reaches the host until the monitor flushes the table (one copy for all probes).
"""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from gradwatch._tensor import stat_dtype


def no_grad(fn):
    """`fn` run with autograd off, as `@torch.no_grad()` does, for a method that runs every step.

    `torch.no_grad()` as a decorator builds a new context manager at each call (about 3 µs on
    the CPU, a tenth of a small model's whole watch cost per step); this sets the flag directly.
    """

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        prev = torch.is_grad_enabled()
        torch._C._set_grad_enabled(False)
        try:
            return fn(*args, **kwargs)
        finally:
            torch._C._set_grad_enabled(prev)

    return wrapper


ABSENT = -1.0
"""Raw columns hold non-negative numbers (squares, counts, fractions), NaN or +inf; a negative
entry means "not measured at this step", so a NaN that was measured is never mistaken for a gap."""


class StepTable:
    """A device tensor `[capacity, columns, rows]` of raw per-layer numbers, one slot per step."""

    def __init__(self, capacity: int, device: torch.device):
        self.capacity = capacity
        self.device = device
        self.dtype = stat_dtype(device)
        self.columns: list[str] = []
        self.rows: list[str] = []
        self.data: torch.Tensor | None = None
        self._row_index: dict[str, int] = {}

    def declare(self, columns: tuple[str, ...], rows: list[str]) -> None:
        """Called by each probe before `allocate()`: the raw columns and layer rows it writes."""
        for c in columns:
            if c not in self.columns:
                self.columns.append(c)
        for r in rows:
            if r not in self._row_index:
                self._row_index[r] = len(self.rows)
                self.rows.append(r)

    def allocate(self) -> None:
        self.data = torch.full(
            (self.capacity, len(self.columns), max(len(self.rows), 1)),
            ABSENT,
            dtype=self.dtype,
            device=self.device,
        )

    def column(self, name: str) -> int:
        return self.columns.index(name)

    def row_index(self, names: list[str]) -> torch.Tensor:
        return torch.tensor([self._row_index[n] for n in names], device=self.device)

    def take(self, n: int) -> dict[str, np.ndarray]:
        """Copy the first `n` slots to the host (the only host sync) and clear them."""
        host = self.data[:n].cpu().numpy().copy()
        self.data[:n].fill_(ABSENT)
        return {c: host[:, i, :] for i, c in enumerate(self.columns)}


class NormLog:
    """Vectors of norms written as they come, one `stack` per step, and summed into the table at
    flush.

    A step's statistics over many tensors (a layer's weight and bias, every layer at once) would
    take a dozen small kernels to square, sum per layer and write into the table's cells; on a
    step that costs milliseconds, their dispatch is most of what watching costs. Instead each step
    stacks its raw norms into one row of a `[capacity, width]` buffer, and `settle(n)` squares and
    sums every stored step per layer into the table in a few vectorised operations (on the device,
    before the table is reduced across ranks and copied to the host). A log can hold counts
    instead (`put`), summed as they are.

    The buffer holds the norms in the dtype they come in (`dtype`: float32 for float32 tensors),
    widened to the table's at `settle`: a `stack` that converts as it writes costs several times
    one that copies.
    """

    def __init__(
        self, table: StepTable, width: int, counts: bool = False, dtype: torch.dtype | None = None
    ):
        self.table = table
        self.counts = counts  # summed as they are, not squared
        dtype = table.dtype if dtype is None or dtype.itemsize > table.dtype.itemsize else dtype
        self._buf = torch.empty(table.capacity, max(width, 1), dtype=dtype, device=table.device)
        self._used = np.full(table.capacity, -1)  # the plan each slot's row was written with
        self._plans: list[_NormPlan] = []

    def plan(
        self, column: int, rows: torch.Tensor, tensors: list[torch.Tensor], zero: int | None = None
    ) -> int:
        """A fixed way of writing: tensor k's squared norm (its count, in a log of counts) is summed
        into (`column`, `rows[k]`); column `zero`, if given, is set to 0 in the same cells.

        `tensors` are examples of what `write` will get (only their device and dtype count); the
        norms are grouped by those, one `_foreach_norm` per group.
        """
        assert tensors, "a plan writes at least one norm"
        groups = [(dev, dtype, idx, None) for (dev, dtype), idx in by_kind(tensors).items()]
        if not self.counts:
            groups = _stack_alike(groups, tensors)
        order = [k for _, _, idx, _ in groups for k in idx]
        rows = rows[torch.tensor(order, dtype=torch.long, device=rows.device)]
        rows = rows.cpu().numpy()
        cleared = np.unique(rows)
        clear = (np.full(len(cleared), column), cleared)
        if zero is not None:
            clear = (
                np.concatenate([clear[0], np.full(len(cleared), zero)]),
                np.concatenate([cleared, cleared]),
            )
        self._plans.append(
            _NormPlan(
                width=len(order),
                groups=groups,
                whole=len(groups) == 1
                and groups[0][3] is None
                and tensors[0].device == self.table.device,
                sums=(np.full(len(order), column), rows),
                clear=clear,
            )
        )
        return len(self._plans) - 1

    def write(self, slot: int, plan_id: int, tensors: list[torch.Tensor]) -> torch.Tensor:
        """The norms of `tensors` (in the order the plan was made with) into `slot`'s row; returns
        that row (grouped as the plan groups them)."""
        plan = self._plans[plan_id]
        row = self._buf[slot, : plan.width]
        if plan.whole:
            torch.stack(foreach_norms(tensors, plan.groups[0][1]), out=row)
        else:
            at = 0
            for dev, dtype, idx, dims in plan.groups:
                part = [tensors[k] for k in idx]
                if dims is not None:  # same shape: one stack, one norm
                    acc = accumulator(dtype)
                    stacked = torch.stack(part)
                    norms = (
                        torch.linalg.vector_norm(stacked, dim=dims)
                        if acc == dtype
                        else torch.linalg.vector_norm(stacked, dim=dims, dtype=acc)
                    )
                    row[at : at + len(idx)].copy_(norms)
                else:
                    norms = foreach_norms(part, dtype)
                    if dev != self.table.device:
                        norms = [x.to(self.table.device) for x in norms]
                    torch.stack(norms, out=row[at : at + len(idx)])
                at += len(idx)
        self._used[slot] = plan_id
        return row

    def put(self, slot: int, plan_id: int, values: list[torch.Tensor]) -> None:
        """Device scalars (counts) into `slot`'s row, for a plan of one group (no reordering)."""
        assert self.counts and self._plans[plan_id].whole
        torch.stack(values, out=self._buf[slot, : self._plans[plan_id].width])
        self._used[slot] = plan_id

    def forget(self, slot: int) -> None:
        self._used[slot] = -1

    def settle(self, n: int) -> None:
        """Square and sum the rows of the first `n` slots into the table's cells (a few operations
        for every step and plan together)."""
        used = self._used[:n]
        slots = np.flatnonzero(used >= 0)
        if not len(slots):
            return
        plans = [self._plans[k] for k in used[slots]]
        widths = np.array([p.width for p in plans])
        # Where each stored norm sits in the buffer, and which table cell its square adds into.
        at_slot = np.repeat(slots, widths)
        at_pos = np.concatenate([np.arange(w) for w in widths])
        clear_slot = np.repeat(slots, [len(p.clear[1]) for p in plans])
        data = self.table.data

        def cells(*parts):
            return tuple(
                torch.as_tensor(np.concatenate(a) if isinstance(a, list) else a, device=data.device)
                for a in parts
            )

        data.index_put_(
            cells(clear_slot, [p.clear[0] for p in plans], [p.clear[1] for p in plans]),
            torch.zeros((), dtype=data.dtype, device=data.device),
        )
        values = self._buf[cells(at_slot, at_pos)].to(data.dtype)
        if not self.counts:
            values = values * values
        data.index_put_(
            cells(at_slot, [p.sums[0] for p in plans], [p.sums[1] for p in plans]),
            values,
            accumulate=True,
        )
        self._used[:n] = -1


STACK_ALIKE = 16
"""On the CPU, `_foreach_norm` runs one norm per tensor (about 4-6 µs each to dispatch); this many
tensors of one shape or more are stacked and normed in one call instead (5x faster for 1000
gradients of a `Linear(16, 16)`; the stack copies them, a cost in elements, not in tensors, that
a model of many small layers does not notice)."""

STACK_MAX_NUMEL = 4096
"""Tensors of more elements than this are never stacked: the copy then costs more than the
dispatch it saves (20 gradients of a `Linear(256, 256)`, 5 MB copied per step, took the 20-layer
MLP of bench/overhead.py from 1.047x to 1.066x, bench/compare_revisions.py)."""


def _stack_alike(groups: list[tuple], tensors: list[torch.Tensor]) -> list[tuple]:
    """Split each CPU (device, dtype) group: shapes shared by `STACK_ALIKE` tensors or more get a
    group of their own, normed over `dims` (all but the stacking one); the rest stays a foreach
    group (dims None). Elsewhere `_foreach_norm` is one fused kernel: nothing to gain."""
    out = []
    for dev, dtype, idx, _ in groups:
        if dev.type != "cpu":
            out.append((dev, dtype, idx, None))
            continue
        shapes: dict[tuple, list[int]] = {}
        for k in idx:
            shapes.setdefault(tuple(tensors[k].shape), []).append(k)

        stack = {
            shape
            for shape, members in shapes.items()
            if len(members) >= STACK_ALIKE and math.prod(shape) <= STACK_MAX_NUMEL
        }
        rest = [k for k in idx if tuple(tensors[k].shape) not in stack]
        for shape, members in shapes.items():
            if shape in stack and len(shape) >= 1:
                out.append((dev, dtype, members, tuple(range(1, len(shape) + 1))))
            elif shape in stack:  # 0-d tensors: not stacked
                rest += members
        if rest:
            out.append((dev, dtype, sorted(rest), None))
    return out


@dataclass
class _NormPlan:
    width: int
    groups: list[
        tuple[torch.device, torch.dtype, list[int], tuple[int, ...] | None]
    ]  # the tensors' device and dtype, their positions, the dims to norm over if stacked
    whole: bool  # one group, in the order given: no reordering at write
    sums: tuple[
        np.ndarray, np.ndarray
    ]  # the table cell each norm's square adds into: (columns, rows)
    clear: tuple[np.ndarray, np.ndarray]  # the cells set to 0 first: (columns, rows)


def by_kind(tensors: list[torch.Tensor]) -> dict[tuple[torch.device, torch.dtype], list[int]]:
    """Positions of `tensors` grouped by (device, dtype): one `_foreach_norm` per group."""
    groups: dict[tuple[torch.device, torch.dtype], list[int]] = {}
    for k, t in enumerate(tensors):
        groups.setdefault((t.device, t.dtype), []).append(k)
    return groups


def accumulator(dtype: torch.dtype) -> torch.dtype:
    """Norms accumulate in float32 at least (a bf16 norm would keep three digits)."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def foreach_norms(tensors: list[torch.Tensor], dtype: torch.dtype) -> list[torch.Tensor]:
    """L2 norms of `tensors` (all of `dtype`), accumulated in `accumulator(dtype)`. Asking for the
    dtype the tensors already have takes a slower path through `_foreach_norm`, with the same
    result."""
    acc = accumulator(dtype)
    return (
        torch._foreach_norm(tensors, 2)
        if acc == dtype
        else torch._foreach_norm(tensors, 2, dtype=acc)
    )


def widest_accumulator(tensors: list[torch.Tensor]) -> torch.dtype:
    """The dtype that holds the norms of all of `tensors` exactly."""
    return torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32


class Probe:
    """One kind of measurement. Subclasses override what they need.

    Lifecycle per recorded step: `arm()` before its forward pass, `record(slot)` when the optimizer
    is about to step (gradients are final), `after_update(slot)` once it has stepped, `disarm()`.
    At flush, `take(n)` copies whatever the probe keeps outside the shared table to the host, and
    `finalize(raw)` turns raw numbers into blocks `(metric, rows, values)`: values `[steps, rows]`,
    or `[steps, rows, index]` for a series within a step, negative where nothing was measured.
    """

    columns: tuple[str, ...] = ()
    # Called with an error raised inside one of the probe's hooks (the watch detaches itself);
    # None: the error propagates (a probe used without a watch).
    fault: Callable[[Exception], None] | None = None
    cadence: int = 1  # measure on one recorded step in `cadence`
    settled: int | None = (
        None  # the cadence once the run is past its first flush window (None: `cadence`)
    )

    def rows(self) -> list[str]:
        return []

    # Called with the seconds each hook took, when the watch holds its cost under a budget.
    spent: Callable[[float], None] | None = None

    def guard(self, fn: Callable) -> Callable:
        """`fn` as a hook that cannot break the user's forward or backward: an error of the
        probe's own goes to `fault`, and the hook then changes nothing (returns None). Its time
        goes to `spent`, if set."""

        def hook(*args, **kwargs):
            spent = self.spent
            start = time.perf_counter() if spent is not None else 0.0
            try:
                return fn(*args, **kwargs)
            except Exception as exc:
                if self.fault is None:
                    raise
                self.fault(exc)
                return None
            finally:
                if spent is not None:
                    spent(time.perf_counter() - start)

        return hook

    def bind(self, table: StepTable) -> None:
        self.table = table

    def arm(self) -> None:
        pass

    def disarm(self) -> None:
        pass

    def record(self, slot: int) -> None:
        pass

    def after_update(self, slot: int) -> None:
        pass

    def settle(self, n: int) -> None:
        """At flush, before the table is read: write into it what was kept aside for the first `n`
        slots."""

    def discard(self) -> None:
        """Forget what was gathered for a step that will not be recorded (a skipped or failed
        step)."""

    def unscale(self, slot: int, inv_sq: torch.Tensor) -> None:
        """Undo a GradScaler's loss scale on what this probe read during backward (1/scale²
        given)."""

    def take(self, n: int) -> dict:
        return {}

    def finalize(self, raw: dict) -> list[tuple[str, list[str], np.ndarray]]:
        return []

    def meta(self) -> dict:
        return {}

    def close(self) -> None:
        pass
