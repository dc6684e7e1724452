"""A watch's settings: one frozen `WatchOptions`, validated when it is made, and the `Cadence` on
which each forward probe records (decoded once here, not in the Watch's constructor)."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from gradwatch.diagnose import KINDS, Finding
from gradwatch.errors import WatchError

# The forward probes' default ("auto"): one recorded step in 10 during the first flush window, one
# in 50 after. With the update probe's turn on every other recorded step once settled, this keeps
# the 20-layer MLP of bench/overhead.py within 5% (bench/RESULTS.md, run I); at one in 25 or 50
# from the start, the diagnosis suite missed dying ReLUs that one in 10 finds (run H).
AUTO_CADENCE = (10, 50)
SETTLED_UPDATE_CADENCE = 2

FORWARD_PROBES = ("activations", "backflow", "through_time")


@dataclass(frozen=True)
class Cadence:
    """How often a probe records: one recorded step in `dense` during the run's first flush
    window (its first `flush_every` recorded steps), one in `settled` after. 0 means off."""

    dense: int  # one recorded step in N while the run is young; 0: the probe is off
    settled: int  # one recorded step in N once the run is past its first flush window

    @classmethod
    def parse(cls, name: str, value: bool | int | str | None) -> Cadence:
        """The cadence `gw.watch(name=value)` asks for: "auto" -> AUTO_CADENCE, True -> every
        recorded step, False/None/0 -> off, N -> one recorded step in N throughout."""
        if value == "auto":
            return cls(*AUTO_CADENCE)
        if value is True:
            value = 1
        if value is False or value is None:
            value = 0
        if not isinstance(value, int) or value < 0:
            raise WatchError(
                f'{name} must be "auto", True, False or a positive integer (record one step in N), '
                f"got {value!r}."
            )
        return cls(value, value)

    @property
    def on(self) -> bool:
        return self.dense > 0


OFF = Cadence(0, 0)


@dataclass(frozen=True)
class WatchOptions:
    """Everything `gw.watch(...)` was told, checked once. The forward probes' cadences may be given
    as `gw.watch` takes them ("auto", True, False or N) and are kept as `Cadence`s."""

    every: int = 1  # record every N-th optimizer step (step 0 always)
    log_dir: str | os.PathLike | None = None  # the run directory to write, or None
    flush_every: int = 50  # recorded steps kept on the device between copies to the host
    update_memory: float = 0.1  # fraction of the parameter bytes the update snapshots may hold
    activations: Cadence = field(default_factory=lambda: Cadence(*AUTO_CADENCE))  # saturation
    backflow: Cadence = field(default_factory=lambda: Cadence(*AUTO_CADENCE))  # dL/d(output)
    through_time: Cadence = field(default_factory=lambda: Cadence(*AUTO_CADENCE))  # dL/dh_t
    histograms: bool = True  # a 32-bin histogram of every activation's outputs
    on_finding: Callable[[Finding], None] | None = None  # called with each new finding at a flush
    raise_on: tuple[str, ...] = ()  # finding kinds that stop training with an exception
    overwrite: bool = False  # replace an existing run directory at log_dir
    dist_timeout: float = 60.0  # seconds a rank waits for the others at a flush's reduction
    budget: float | None = 0.03  # the settled run's share of step time the watch may take

    def __post_init__(self) -> None:
        for name in ("every", "flush_every"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise WatchError(f"{name} must be a positive integer, got {value!r}.")
        # A single kind given as a string is one kind, not a sequence of letters.
        raise_on = (self.raise_on,) if isinstance(self.raise_on, str) else tuple(self.raise_on)
        unknown = [k for k in raise_on if k not in KINDS]
        if unknown:
            raise WatchError(
                f"raise_on names unknown finding kinds {unknown}; choose from {', '.join(KINDS)}."
            )
        object.__setattr__(self, "raise_on", raise_on)
        memory = self.update_memory
        if not isinstance(memory, (int, float)) or isinstance(memory, bool) or not 0 < memory <= 1:
            raise WatchError(
                "update_memory must be a fraction of the parameter bytes in (0, 1] (0.1 keeps a "
                f"tenth of the weights per step), got {memory!r}."
            )
        budget = self.budget
        if budget is not None and (
            not isinstance(budget, (int, float)) or isinstance(budget, bool) or not budget > 0
        ):
            raise WatchError(
                "budget must be a positive fraction of the step time (0.03: the watch may take 3% "
                f"of it once the run has settled) or None (record every step), got {budget!r}."
            )
        for name in FORWARD_PROBES:
            value = getattr(self, name)
            if not isinstance(value, Cadence):
                object.__setattr__(self, name, Cadence.parse(name, value))

    @property
    def forward(self) -> bool:
        """Whether any forward-pass probe is on."""
        return any(getattr(self, name).on for name in FORWARD_PROBES)

    def without_forward(self) -> WatchOptions:
        """These options with every forward-pass probe off (a torch.compile'd model)."""
        return replace(self, **dict.fromkeys(FORWARD_PROBES, OFF))

    def settings(self, optimizer: Any, scaler: Any) -> dict:
        """The `settings` entry of meta.json."""
        cadences = {name: getattr(self, name) for name in FORWARD_PROBES}
        return {
            "every": self.every,
            "flush_every": self.flush_every,
            "update_memory": self.update_memory,
            "budget": self.budget,
            **{name: c.dense for name, c in cadences.items()},
            # From recorded step `flush_every` on (the run has settled): one recorded step in N.
            "settled": {
                **{name: c.settled for name, c in cadences.items()},
                "update": SETTLED_UPDATE_CADENCE,
            },
            "histograms": self.histograms,
            "optimizer": type(optimizer).__name__ if optimizer is not None else None,
            "scaler": type(scaler).__name__ if scaler is not None else None,
        }
