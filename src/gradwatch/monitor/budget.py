"""The watch's share of the training time, held under a budget once the run has settled.

A watch's cost per recorded step is mostly fixed (a few dozen kernel launches and their Python
around them, whatever the layer sizes), so on a model whose step takes a millisecond it is a
quarter of the step (bench/RESULTS.md, issue 23): no batching of those launches brings it near
the budget, short of measuring less. So once the run is past its first `THIN_AFTER` recorded
steps, which are always recorded in full (most gradient pathologies show there, the first findings
are made from them, and a short debugging run is all young), the watch records one eligible step
in `thin`, with `thin` set at each flush from what it measured of its own time and of the whole
step's. A model whose steps are long enough keeps `thin` = 1: the budget changes nothing there.
The losses of the steps in between are still logged (averaged into the next recorded step), so
the loss curve loses nothing.
"""

from __future__ import annotations

import math
import statistics
import time

THIN_AFTER = 200
"""Recorded steps always kept in full before any thinning: the young run, where most gradient
pathologies show and the first findings are made (and all of a short debugging run)."""

MAX_THIN = 32
"""The sparsest settled recording: one eligible step in 32 (a 3-layer MLP of 1 ms a step needs
about that at the default budget; a step of a tenth of that would need more, and is then watched
at more than the budget rather than hardly at all)."""


MIN_PERIODS = 5
"""Periods of recorded and of unrecorded steps each, at least, to compare their medians."""


class CostBudget:
    """Times the watch's own work in its step hooks and the step's period (end of one optimizer
    step to the end of the next, so the user's data loading, forward and backward count too), and
    at each flush says how thinly to record the settled run to stay within `budget` of it."""

    def __init__(self, budget: float | None, every: int):
        self.budget = budget
        self.every = every
        self.thin = 1
        self.changes: list[tuple[int, int]] = []  # (optimizer step, thin from that step on)
        self._own = 0.0  # seconds in the step hooks of recorded steps since the last retune
        self._idle = 0.0  # seconds in the hooks of unrecorded steps and in log_loss (every step)
        self._flush: float | None = None  # seconds per recorded step of the last flush
        self._flushes = 0  # flushes timed
        self._periods: list[float] = []
        self._was_recorded: list[bool] = []  # whether the step of each period was recorded
        self._last_end: float | None = None

    def spent(self, seconds: float) -> None:
        """Time of a recorded step's work (its step hooks, the forward probes' hooks)."""
        self._own += seconds

    def idle(self, seconds: float) -> None:
        """Time the watch takes whether a step is recorded or not (the hooks of an unrecorded
        step, `log_loss`)."""
        self._idle += seconds

    def flushed(self, seconds: float, rows: int) -> None:
        # The first flush imports pandas and pyarrow (a few hundred ms): not the flush's cost.
        self._flushes += 1
        if self._flushes > 1 and rows:
            self._flush = seconds / rows

    def step_ended(self, recorded: bool) -> None:
        now = time.perf_counter()
        if self._last_end is not None:
            self._periods.append(now - self._last_end)
            self._was_recorded.append(recorded)
        self._last_end = now

    def retune(self, step: int, recorded_so_far: int) -> int:
        """`thin` for the coming steps, from the steps since the last retune."""
        periods, flags = self._periods, self._was_recorded
        own, idle, recorded = self._own, self._idle, sum(flags)
        self._periods, self._was_recorded = [], []
        self._own, self._idle = 0.0, 0.0
        if self.budget is None or recorded_so_far < THIN_AFTER or len(periods) < 2 or not recorded:
            return self.thin
        steps = len(periods)
        in_step = own / recorded  # the hooks' time, inside the periods of the recorded steps
        fixed = idle / steps  # paid at every step, recorded or not
        # The step without the watch. The median period: a pause (validation, a checkpoint, the
        # flush, or the other runs of an interleaved benchmark) is not a step.
        base = statistics.median(periods) - in_step * recorded / steps - fixed
        # Once thinned, what a recorded step really adds is also the difference of the median
        # periods of recorded and unrecorded steps: it holds what no hook times (a forward
        # probe's function mode, which every torch call of the forward goes through).
        on = [p for p, r in zip(periods, flags, strict=True) if r]
        off = [p for p, r in zip(periods, flags, strict=True) if not r]
        if len(on) >= MIN_PERIODS and len(off) >= MIN_PERIODS:
            base = statistics.median(off) - fixed
            in_step = max(in_step, statistics.median(on) - statistics.median(off))
        per_recorded = in_step + (self._flush or 0.0)
        if base <= 0:  # the watch took the whole period: a clock oddity, not a measurement
            return self.thin
        # Per optimizer step: fixed + per_recorded / (every * thin) <= budget * base.
        room = self.budget * base - fixed
        if room <= 0:
            thin = MAX_THIN
        else:
            thin = max(1, min(MAX_THIN, math.ceil(per_recorded / (self.every * room))))
        if thin != self.thin:
            self.thin = thin
            self.changes.append((step, thin))
        return thin
