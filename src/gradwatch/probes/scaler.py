"""Mixed precision: the `skipped` metric, and knowing which optimizer steps a GradScaler skipped.

`GradScaler.step` unscales the gradients and then calls `optimizer.step()` only when they are all
finite; otherwise it skips the step and lowers the scale. The optimizer's own hooks therefore see
unscaled gradients, and a skipped step is simply a step whose hooks never ran. Wrapping the
scaler's `step` (on the instance, removed by the handle) tells the two apart without reading
anything from the device.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from gradwatch._tensor import stat_dtype
from gradwatch.probes.base import ABSENT, Probe


class SkippedProbe(Probe):
    """`skipped`: 1 at a step the scaler skipped (inf/NaN in the scaled gradients), 0 at a recorded
    step."""

    def __init__(self, capacity: int):
        self._flags = np.full(capacity, ABSENT)

    def record(self, slot: int) -> None:
        self._flags[slot] = 0.0

    def mark_skipped(self, slot: int) -> None:
        self._flags[slot] = 1.0

    def take(self, n: int) -> dict:
        flags = self._flags[:n].copy()
        self._flags[:n] = ABSENT
        return {"skipped": flags}

    def finalize(self, raw: dict) -> list:
        return [("skipped", ["(model)"], raw["skipped"][:, None])]


class ScalerHandle:
    """Wraps `scaler.step` so that `on_skip()` runs when a call did not step `optimizer`."""

    def __init__(
        self,
        scaler,
        optimizer: torch.optim.Optimizer,
        stepped: Callable[[], int],
        on_skip: Callable[[], None],
    ):
        self.scaler = scaler
        self._had_own = "step" in vars(scaler)
        self._previous = scaler.step

        def step(opt, *args, **kwargs):
            if inner_optimizer(opt) is not optimizer or not scaler.is_enabled():
                return self._previous(opt, *args, **kwargs)
            before = stepped()
            out = self._previous(opt, *args, **kwargs)
            if stepped() == before:
                on_skip()
            return out

        scaler.step = step

    def remove(self) -> None:
        if self.scaler is None:
            return
        if self._had_own:
            self.scaler.step = self._previous
        else:
            del self.scaler.step
        self.scaler = None


def inner_optimizer(opt):
    """The torch optimizer inside a framework's wrapper (accelerate's AcceleratedOptimizer, itself
    an Optimizer subclass without hooks of its own; Lightning's LightningOptimizer)."""
    for _ in range(4):
        nxt = getattr(opt, "optimizer", None) or getattr(opt, "_optimizer", None)
        if not isinstance(nxt, torch.optim.Optimizer):
            break
        opt = nxt
    return opt


def inverse_scale_sq(scaler) -> torch.Tensor | None:
    """1/scale² as a device tensor (no sync), or None when the scaler is off or not yet used."""
    scale = getattr(scaler, "_scale", None)
    if scale is None or not scaler.is_enabled():
        return None
    return scale.to(stat_dtype(scale.device)).reciprocal().square()
