"""The recorded steps on their way to the host: the slots of the on-device step table, the losses
logged for them, the flush that copies them in one transfer, what it keeps for `w.stats()`, and
the findings streamed at each flush.

What is kept for `w.stats()` (memory flat in steps when there is a run directory):
- with a `log_dir`, nothing beyond the last `RECENT` flushes (the streamed diagnosis's window):
  every flushed step is in the store, and `w.stats()` reads it back from there;
- without one (or once a write to the store failed), every flushed step, in memory, each flush
  as the Parquet bytes a run directory would hold (about one byte a row, against some 90 for an
  Arrow table and the pandas frame made from it: ~0.3 KB a step for 100 layers instead of
  ~50 KB). A watch without a run directory keeps all it recorded, since nothing else does; it
  grows that slowly, and a run directory makes it flat.

pandas and pyarrow are imported at the first flush, not with this module.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np
import torch

from gradwatch._tensor import is_sharded, to_host
from gradwatch.diagnose import Diagnosis, diagnose
from gradwatch.errors import TrainingStoppedError, WatchError
from gradwatch.monitor import distributed as _dist
from gradwatch.monitor.options import WatchOptions
from gradwatch.monitor.probeset import ProbeSet
from gradwatch.probes.base import ABSENT
from gradwatch.store import RunWriter, empty_stats, judged, long_table, normalize, to_frame

if TYPE_CHECKING:
    import pandas as pd
    import pyarrow as pa

# Flushes the streamed diagnosis looks back over: its cost per flush stays flat however long the
# run is, and so does what it keeps.
RECENT = 10
# Rows of consecutive flushes held in memory as they are until they are compressed together, into
# one buffer: each flush is encoded once, and each buffer's fixed cost (its footer) stays small.
HELD_ROWS = 1 << 16


class StepBuffer:
    """Fills the step table slot by slot (the Watch decides what each step records) and empties it
    at `flush()`: one copy to the host, rows in long format, to the store and the listeners."""

    def __init__(
        self,
        probes: ProbeSet,
        options: WatchOptions,
        writer: RunWriter | None,
        meta: Callable[[], dict],
        write_meta: Callable[[], None],
    ):
        self.table = probes.table
        self.probes = probes.all
        self.writer = writer
        self.meta = meta  # the watch's meta(), for the detectors
        self.write_meta = write_meta  # the watch's, once the forward order is known
        self.on_finding = options.on_finding
        self.raise_on = options.raise_on
        self.dist_timeout = options.dist_timeout
        # FSDP2 shards: their sums of squares are summed across ranks at flush.
        self.sharded = is_sharded([p for layer in probes.params.layers for p in layer.params])
        self.listeners: list = []
        self.slot = 0  # the next free slot of the table
        self.slot_steps: list[int] = []  # the optimizer step each filled slot holds
        self.flushing = False
        # Whether each flush runs the detectors over the last RECENT flushes' rows (kept here,
        # each with its pandas frame once one was built).
        self.streams = bool(self.on_finding is not None or self.raise_on or writer is not None)
        self.recent: deque[list] = deque(maxlen=RECENT)
        # Whether every flushed row is in the store (then w.stats() reads it from there), and
        # otherwise the flushed rows held here, compacted (see the module's docstring).
        self.stored = writer is not None
        self.held: list[pa.Buffer] = []
        self.held_rows: list[int] = []  # rows in each held buffer
        self.pending: list[pa.Table] = []  # flushes not compressed yet, fewer than HELD_ROWS rows
        self.pending_rows = 0
        # Losses logged since the last recorded step (device scalars or floats), then per slot;
        # averaged on the host at flush. A loss may be negative (a log-likelihood, a GAN's
        # critic), so it stays out of the table, whose "negative is absent" marker cannot tell.
        self.losses: list[torch.Tensor | float] = []
        self.slot_losses: list[list[torch.Tensor | float] | None] = [None] * options.flush_every
        self.reported: set[tuple[str, tuple[str, ...]]] = set()

    # ----------------------------------------------------------------- filling

    def commit(self, step: int) -> None:
        """The current slot holds optimizer step `step`; move to the next."""
        self.slot_steps.append(step)
        self.slot += 1

    def log_loss(self, loss: torch.Tensor | float) -> None:
        if not isinstance(loss, torch.Tensor):
            self.losses.append(float(loss))
            return
        if loss.numel() != 1:
            raise WatchError(
                "log_loss takes the scalar loss of the step; got a tensor of shape "
                f"{tuple(loss.shape)}: reduce it first (e.g. loss.mean())."
            )
        if loss.device.type == "cpu":
            # Read now: on the CPU a read waits for nothing, and a Python float is its own copy
            # (a tensor copy costs 10-20 us a step, a point or two of a small model's step).
            self.losses.append(loss.item())
            return
        # A copy (the caller may change its tensor in place), still on the device: no sync.
        self.losses.append(
            loss.detach().reshape(()).to(self.table.device, self.table.dtype, copy=True)
        )

    def commit_loss(self, slot: int) -> None:
        """The losses logged since the last recorded step belong to `slot` (averaged at flush)."""
        self.slot_losses[slot] = self.losses or None
        self.losses = []

    # ----------------------------------------------------------------- emptying

    def flush(self, step: int) -> None:
        """Copy the filled slots to the host (one transfer) and append them to the store; `step`
        is the watch's step count, for the message when a finding stops training."""
        n = self.slot
        if n == 0 or self.flushing:
            return
        self.flushing = True
        try:
            self._flush(n, step)
        finally:
            self.flushing = False

    def _flush(self, n: int, step: int) -> None:
        for probe in self.probes:
            probe.settle(n)
        if self.sharded and _dist.active():
            cols = [self.table.column(c) for c in _dist.SUMMED if c in self.table.columns]
            block = self.table.data[:n, cols]
            self.table.data[:n, cols] = _dist.reduce_sums(block, self.dist_timeout)
        raw = self.table.take(n)
        for probe in self.probes:
            raw.update(probe.take(n))
        loss, loss_present = self._take_losses(n)
        steps = np.asarray(self.slot_steps[:n], dtype=np.int64)
        self.slot, self.slot_steps = 0, self.slot_steps[n:]
        blocks = [block for probe in self.probes for block in probe.finalize(raw)]
        blocks.append(("loss", ["(model)"], loss[:, None], loss_present[:, None]))
        rows = long_table(blocks, steps)
        if self.streams:
            self.recent.append([rows, None])
        if not self.stored:
            self._hold(rows)
        if self.writer is not None:
            try:
                self.writer.append(rows)
            except BaseException:
                if self.stored:
                    self._hold_stored(rows)
                raise
            # Kept current (steps seen, forward order) so a killed run's meta.json is not stale.
            self.write_meta()
        if self.streams:
            self._stream_findings(step)
        for listener in self.listeners:
            listener.rows(rows)

    def _take_losses(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        """Each of the first `n` slots' mean logged loss (one copy from the device for all), and
        which slots have one."""
        slots, self.slot_losses = self.slot_losses[:n], self.slot_losses[n:] + [None] * n
        tensors = [v for vs in slots if vs for v in vs if isinstance(v, torch.Tensor)]
        host = iter(to_host(tensors).tolist())
        loss = np.full(n, ABSENT)
        for i, vs in enumerate(slots):
            if vs:
                # Summed in float64 in the order logged, as on the device before.
                total = 0.0
                for v in vs:
                    total += next(host) if isinstance(v, torch.Tensor) else v
                loss[i] = total / len(vs)
        return loss, np.array([bool(vs) for vs in slots])

    def _stream_findings(self, step: int) -> None:
        """Run the detectors over the recent past; report findings not reported before.

        A window of the last ten flushes keeps the cost per flush flat however long the run is.
        """
        recent = self.recent_frame()
        diagnosis = diagnose(recent, self.meta())
        if self.writer is not None:
            self.writer.write_findings([f.to_dict() for f in diagnosis.findings], judged(recent))
        for finding in diagnosis.findings:
            key = (finding.kind, finding.layers)
            if key in self.reported:
                continue
            self.reported.add(key)
            if self.on_finding is not None:
                self.on_finding(finding)
            # "nonfinite" is checked at every step, before the update, by the Watch.
            if (
                finding.kind in self.raise_on
                and finding.kind != "nonfinite"
                and finding.severity in ("warning", "error")
            ):
                raise TrainingStoppedError(
                    f"gradwatch stopped training at step {step} on {finding.kind} "
                    f"({finding.summary}) because raise_on includes it; see w.diagnose() for "
                    "remedies."
                )

    def _hold(self, rows: pa.Table) -> None:
        """Keep `rows`: as they are until HELD_ROWS rows have gathered, then compressed together
        into one Parquet buffer. (Re-encoding a growing buffer at every flush cost a small model
        4 ms a flush, a tenth of its step.)"""
        self.pending.append(rows)
        self.pending_rows += len(rows)
        if self.pending_rows >= HELD_ROWS:
            import pyarrow as pa

            self.held.append(_compact(pa.concat_tables(self.pending)))
            self.held_rows.append(self.pending_rows)
            self.pending, self.pending_rows = [], 0

    final: Diagnosis | None = None

    def finish(self) -> None:
        """At close, with a run directory: the diagnosis of the whole run to findings.json (and
        meta.json's `findings_of`), so that a report of the directory reads it instead of running
        the detectors again; `w.diagnose()` on the closed watch returns it."""
        if not self.stored:
            return
        stats = self.frame()
        self.final = diagnose(stats, self.meta())
        self.writer.write_findings([f.to_dict() for f in self.final.findings], judged(stats))

    def _hold_stored(self, rows: pa.Table) -> None:
        """A write to the store failed: from now on the flushed rows are held here, starting with
        those the store has (read back, so that w.stats() still has every step) and `rows`."""
        self.stored = False
        try:
            stored = self.writer.read_table()
            self.held, self.held_rows = [_compact(stored)], [len(stored)]
        except Exception:  # noqa: BLE001 - the store is failing; keep what can be kept
            self.held, self.held_rows = [], []
        self.pending, self.pending_rows = [], 0
        self._hold(rows)

    # ----------------------------------------------------------------- reading

    def frame(self) -> pd.DataFrame:
        """Every flushed row, as a DataFrame: read from the store, or from the rows held here."""
        if self.stored:
            return self.writer.read()
        if not self.held and not self.pending:
            return empty_stats()
        import pyarrow as pa

        return to_frame(pa.concat_tables([*(_expand(t) for t in self.held), *self.pending]))

    def recent_frame(self) -> pd.DataFrame:
        """The last RECENT flushes' rows, as a DataFrame (each converted once)."""
        import pandas as pd

        for entry in self.recent:
            if entry[1] is None:
                entry[1] = to_frame(entry[0])
        frames = [entry[1] for entry in self.recent]
        if not frames:
            return empty_stats()
        return (
            frames[0].copy()
            if len(frames) == 1
            else normalize(pd.concat(frames, ignore_index=True))
        )


def _compact(rows: pa.Table) -> pa.Buffer:
    """`rows` as Parquet bytes: the run directory's encoding, compressed, held in memory."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    sink = pa.BufferOutputStream()
    pq.write_table(rows, sink)
    return sink.getvalue()


def _expand(held: pa.Buffer) -> pa.Table:
    """The rows `_compact` encoded."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    return pq.read_table(pa.BufferReader(held))
