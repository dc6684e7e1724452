"""The recorded steps on their way to the host: the slots of the on-device step table, the losses
logged for them, the flush that copies them in one transfer, the chunks it keeps (and the stats
frames built from them on demand), and the findings streamed at each flush."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pandas as pd
import pyarrow as pa
import torch

from gradwatch._tensor import is_sharded, to_host
from gradwatch.diagnose import diagnose
from gradwatch.errors import TrainingStoppedError, WatchError
from gradwatch.monitor import distributed as _dist
from gradwatch.monitor.options import WatchOptions
from gradwatch.monitor.probeset import ProbeSet
from gradwatch.probes.base import ABSENT
from gradwatch.store import RunWriter, empty_stats, long_table, normalize, to_frame


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
        self.chunks: list[pa.Table] = []  # one per flush; pandas frames are built on demand
        self.frames: list[pd.DataFrame] = []
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
        self.chunks.append(rows)
        if self.writer is not None:
            self.writer.append(rows)
            # Kept current (steps seen, forward order) so a killed run's meta.json is not stale.
            self.write_meta()
        if self.on_finding is not None or self.raise_on or self.writer is not None:
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
        recent = self.frame(len(self.chunks) - 10)
        diagnosis = diagnose(recent, self.meta())
        if self.writer is not None:
            self.writer.write_findings([f.to_dict() for f in diagnosis.findings])
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

    # ----------------------------------------------------------------- reading

    def frame(self, first: int) -> pd.DataFrame:
        """The flushed rows from chunk `first` on, as a DataFrame (converted once per chunk)."""
        while len(self.frames) < len(self.chunks):
            self.frames.append(to_frame(self.chunks[len(self.frames)]))
        frames = self.frames[max(first, 0) :]
        if not frames:
            return empty_stats()
        return (
            frames[0].copy()
            if len(frames) == 1
            else normalize(pd.concat(frames, ignore_index=True))
        )
