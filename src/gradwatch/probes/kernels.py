"""Fused CPU kernels for the forward probes, compiled by numba when it is installed.

On the CPU a torch operation costs a few microseconds to dispatch before it touches any data, and
each statistic of an activation call takes one or two (the largest input per unit, the mean, the
norm of the deviations, a strided sample, then its binning): on a model of small layers that is
most of what watching activations costs. These kernels read each tensor once or twice in one
call, and return plain numbers: on the CPU a result is there when the call returns, so nothing
waits for the step's end. They compute what `ActivationProbe` computes with torch operations
(the same bounds, rounded the same way; the same histogram sample and bins), with sums
accumulated in float64.

`load()` returns the kernels, compiled for float32 and float64, or None where numba is missing
(`pip install gradwatch[fast]`), switched off with GRADWATCH_NUMBA=0, or fails to compile (with a
warning); the probes then use torch operations. Getting them ready takes seconds: about 4 s to
compile the first time on a machine, and still 1-3 s in every new process with numba's on-disk
cache warm (importing numba, starting LLVM, loading the cached code). A background loader was
tried and taken back (numba's compiler swaps the process-wide warning filters, which raced with
the user's warnings), and loading lazily per kernel blocks the first measured forward for most
of the same time. So the kernels are loaded before the first step, and only by a probe that
measures often enough to earn that back (`KERNEL_CADENCE`): the default watch never loads them.
"""

from __future__ import annotations

import importlib.util
import os
import threading
import warnings
from types import SimpleNamespace

import numpy as np


def load(wait: bool = True) -> SimpleNamespace | None:
    """The kernels, or None where they cannot be had. `wait=False`: never block; None while they
    are still loading (`loading()` says whether to ask again), the first call starts that."""
    if os.environ.get("GRADWATCH_NUMBA", "1") == "0":
        return None
    with _lock:
        if _state.thread is None:
            if not _installed("numba"):  # no thread for nothing
                _state.kernels, _state.done = None, True
                _state.thread = threading.current_thread()
            else:
                _state.thread = threading.Thread(
                    target=_load_into_state, name="gradwatch-numba", daemon=True
                )
                _state.thread.start()
    if not _state.done and wait:
        _state.thread.join()
    return _state.kernels if _state.done else None


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a finder that refuses it, a broken install
        return False


def loading() -> bool:
    """Whether the kernels are still being loaded (a later `load(wait=False)` may return them)."""
    return _state.thread is not None and not _state.done


def reset() -> None:
    """Forget the loaded kernels (tests): the next `load()` loads them again."""
    with _lock:
        if _state.thread is not None and not _state.done:
            _state.thread.join()
        _state.thread, _state.kernels, _state.done = None, None, False


_lock = threading.Lock()
# thread: the loader (None: not started); kernels: its result, valid once `done`.
_state = SimpleNamespace(thread=None, kernels=None, done=False)


def _load_into_state() -> None:
    try:
        _state.kernels = _load()
    finally:
        _state.done = True


def _load() -> SimpleNamespace | None:
    try:
        import numba
    except ImportError:
        return None
    try:
        try:
            kernels = _compile(numba, cache=True)
        except RuntimeError:  # no writable place for numba's cache: compile in memory
            kernels = _compile(numba, cache=False)
        _warm(kernels)
    except Exception as exc:  # noqa: BLE001 - any failure leaves the torch path, which always works
        warnings.warn(
            f"gradwatch's numba kernels did not compile ({exc}); using torch operations instead.",
            stacklevel=2,
        )
        return None
    return kernels


# The sparsest cadence (one recorded step in N, in the first flush window) whose probe uses the
# kernels. Loading them costs 1-5 s in every new process (numba's import and LLVM's start, with
# the on-disk cache warm: bench/first_steps.py); they save some microseconds per activation call
# on a measured step. At the default cadence (one step in 10, then 50) the default watch read the
# same with and without them (bench/RESULTS.md, run J: 1.045x vs 1.043x), so it never loads them,
# and its first steps cost what the torch path costs; a probe asked for every step (True, or
# 1-2) loads them, where they took every probe on every step from 1.183x to 1.141x.
KERNEL_CADENCE = 2


class Paths:
    """Which path computes a probe's numbers on a device, and since which recorded step.

    On the CPU the probe starts with the kernels if they are loaded already, else with torch
    operations while they load; `poll()` at each recorded step's end says when to switch. The
    switch is at a step boundary, so every step is computed by one path; `history()` is the run
    metadata's record of it: `[[first recorded step, path], ...]`, where recorded steps count
    from 0 across flushes (with `every=1`, the optimizer step).
    """

    def __init__(self, device, cadence: int = 1) -> None:
        cpu = getattr(device, "type", device) == "cpu"
        # Loaded before the first step, not beside it: numba's compiler enters
        # warnings.catch_warnings(), which swaps the process-wide warning filters and would race
        # with the user's own code (and pytest.warns) if it ran in a background thread. And only
        # for a probe that measures often enough to earn back the seconds that loading takes.
        self.kernels = load() if cpu and cadence <= KERNEL_CADENCE else None
        self.waiting = cpu and self.kernels is None and loading()
        self._flushed = 0  # recorded steps flushed before the current window
        self._history = [[0, name(self.kernels)]]

    def poll(self, slot: int) -> bool:
        """At the end of recorded step `slot` (of the current window): whether the kernels have
        become ready, to be used from the next step on."""
        kernels = load(wait=False)
        if kernels is None:
            self.waiting = loading()
            return False
        self.kernels, self.waiting = kernels, False
        self._history.append([self._flushed + slot + 1, name(kernels)])
        return True

    def flushed(self, n: int) -> None:
        self._flushed += n

    def history(self) -> list[list]:
        return [list(h) for h in self._history]


def name(kernels: SimpleNamespace | None) -> str:
    """What computed the forward probes' numbers, as run metadata records it."""
    return "torch" if kernels is None else kernels.name


def _warm(k: SimpleNamespace) -> None:
    """Compile every kernel for both dtypes now, not inside the first measured forward."""
    for dtype in (np.float32, np.float64):
        x = np.linspace(-3, 3, 12, dtype=dtype)
        b = dtype(1.0)
        k.flat_count(x, -b, b, True, True, True)
        k.dead_units(x.reshape(3, 4), b, np.empty(4, dtype=dtype))
        k.moments(x)
        k.post(x, 2, np.float32(-4), np.float32(4), np.zeros(33, dtype=np.int64))
        k.sum_sq(x)


def _compile(numba, cache: bool) -> SimpleNamespace:
    # Sums may be reordered (`reassoc`), which lets them run in SIMD lanes; nothing may assume
    # finite values, so a NaN still propagates. Binning is compiled without it, so that each
    # sample's bin is computed exactly as the torch path computes it. Loops index their arrays:
    # numba vectorizes `for i in range(n): ... y[i]` but not `for v in y` (9x slower).
    summing = numba.njit(cache=cache, nogil=True, error_model="numpy", fastmath={"reassoc"})
    exact = numba.njit(cache=cache, nogil=True, error_model="numpy")

    @summing
    def flat_count(x, lo, hi, symmetric, has_lo, has_hi):
        """Elements of `x` in a flat tail: 1 beyond a bound, ½ exactly on it, NaN for a NaN
        (the torch path's Σ sign, element by element). Bounds come in `x`'s dtype."""
        count = 0.0
        if symmetric:
            for i in range(x.size):
                count += (np.sign(abs(x[i]) - hi) + 1.0) * 0.5
            return count
        if has_hi:
            for i in range(x.size):
                count += (np.sign(x[i] - hi) + 1.0) * 0.5
        if has_lo:
            for i in range(x.size):
                count += (1.0 - np.sign(x[i] - lo)) * 0.5
        return count

    @exact
    def dead_units(x, lo, peak):
        """Units (columns of `x`, [batch, units]) whose largest input is below `lo`; a NaN input
        makes its unit's peak NaN, which is not below anything. `peak`: scratch of `units`."""
        peak[:] = x[0]
        for i in range(1, x.shape[0]):
            row = x[i]
            for j in range(x.shape[1]):
                v = row[j]
                if v > peak[j] or v != v:
                    peak[j] = v
        dead = 0
        for j in range(x.shape[1]):
            if peak[j] < lo:
                dead += 1
        return dead

    @summing
    def moments(y):
        """Mean and ‖y − mean‖, two passes in float64."""
        total = 0.0
        for i in range(y.size):
            total += y[i]
        mean = total / y.size
        sq = 0.0
        for i in range(y.size):
            d = y[i] - mean
            sq += d * d
        return mean, np.sqrt(sq)

    @exact
    def histogram(y, stride, lo, per_bin, counts):
        """Every `stride`-th element binned as the torch path bins it: (v − lo)·per_bin in
        float32, clamped to the bins, NaN in the lowest, truncated."""
        top = np.float32(counts.size - 2)
        for k in range(0, y.size, stride):
            b = (np.float32(y[k]) - lo) * per_bin
            if b != b or b < 0:
                b = np.float32(0.0)
            elif b > top:
                b = top
            counts[int(b)] += 1

    @summing
    def sum_sq(x):
        """Σx² in float64 (a backward signal's squared norm)."""
        sq = 0.0
        for i in range(x.size):
            v = np.float64(x[i])
            sq += v * v
        return sq

    @exact
    def post(y, stride, lo, per_bin, counts):
        histogram(y, stride, lo, per_bin, counts)
        return moments(y)

    kernels = dict(
        flat_count=flat_count, dead_units=dead_units, moments=moments, post=post, sum_sq=sum_sq
    )
    return SimpleNamespace(**kernels, name=f"numba {numba.__version__}")
