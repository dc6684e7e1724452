"""The step table probes write into, and the shape every probe has.

Probes keep their numbers on the model's device in one preallocated table, `capacity` steps deep.
Nothing reaches the host until the monitor flushes the table (one copy for all probes).
"""

from __future__ import annotations

import numpy as np
import torch

ABSENT = -1.0
"""Raw columns hold non-negative numbers (squares, counts, fractions), NaN or +inf; a negative
entry means "not measured at this step", so a NaN that was measured is never mistaken for a gap."""


class StepTable:
    """A device tensor `[capacity, columns, rows]` of raw per-layer numbers, one slot per step."""

    def __init__(self, capacity: int, device: torch.device):
        self.capacity = capacity
        self.device = device
        # float64: squared norms of exploding gradients overflow float32 long before the norm does.
        self.dtype = torch.float32 if device.type == "mps" else torch.float64
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

    def write_sums(self, slot: int, column: int, rows: torch.Tensor, values: torch.Tensor) -> None:
        """Write, per distinct row of `rows`, the sum of its `values` (a layer's parameters)."""
        cell = self.data[slot, column]
        cell.index_fill_(0, rows, 0.0).index_add_(0, rows, values.to(self.data.dtype))

    def take(self, n: int) -> dict[str, np.ndarray]:
        """Copy the first `n` slots to the host (the only host sync) and clear them."""
        host = self.data[:n].cpu().numpy().copy()
        self.data[:n].fill_(ABSENT)
        return {c: host[:, i, :] for i, c in enumerate(self.columns)}


class Probe:
    """One kind of measurement. Subclasses override what they need.

    Lifecycle per recorded step: `arm()` before its forward pass, `record(slot)` when the optimizer
    is about to step (gradients are final), `after_update(slot)` once it has stepped, `disarm()`.
    At flush, `take(n)` copies whatever the probe keeps outside the shared table to the host, and
    `finalize(raw)` turns raw numbers into blocks `(metric, rows, values)`: values `[steps, rows]`,
    or `[steps, rows, index]` for a series within a step, negative where nothing was measured.
    """

    columns: tuple[str, ...] = ()
    cadence: int = 1  # measure on one recorded step in `cadence`

    def rows(self) -> list[str]:
        return []

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

    def discard(self) -> None:
        """Forget what was gathered for a step that will not be recorded (a skipped or failed step)."""

    def unscale(self, slot: int, inv_sq: torch.Tensor) -> None:
        """Undo a GradScaler's loss scale on what this probe read during backward (1/scale² given)."""

    def take(self, n: int) -> dict:
        return {}

    def finalize(self, raw: dict) -> list[tuple[str, list[str], np.ndarray]]:
        return []

    def meta(self) -> dict:
        return {}

    def close(self) -> None:
        pass
