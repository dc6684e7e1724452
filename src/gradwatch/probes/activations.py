"""Activation probe: `act_std`, `saturated_frac`, `dead_frac` and a histogram per activation.

Activation modules (`nn.ReLU`, `nn.Tanh`, ...) are hooked directly: one forward hook reads their
input and output, and a module that overwrites its input (`inplace=True`, or caught doing so, which
leaves that one call unmeasured) also gets a pre-hook that reads the input first. Activation
*functions* called inside a forward (`F.relu`, `torch.tanh`, ...) are seen by a `TorchFunctionMode`
pushed around the root module's forward, and belong to the module whose forward called them (a
stack of module names kept by forward hooks). The mode costs a Python call per torch function, so
it is dropped when the first measured forward finds no functional activation, and pushed again for
the first measured forward after each flush (a forward that starts calling them later is measured
from then on).

Statistics accumulate on the device over every forward of a step (gradient accumulation) and are
written out at the optimizer step: population std of the outputs, saturated fraction of inputs,
dead fraction of units (see `activation_specs`), and a 32-bin histogram of the outputs over the
function's range (values outside are counted in the edge bins), taken from at most 1,024 evenly
strided outputs per call: enough for a picture, at a fraction of the cost of binning them all.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from .activation_specs import HIST_BINS, ActivationSpec, functional_spec, module_spec
from .base import ABSENT, Probe
from .forward import Hooks, recording_forward

HIST_SAMPLE = 1024


class _Call(NamedTuple):
    """What one activation call leaves for `record`: device scalars and a sample, no host sync."""

    row: int
    n: int
    mean: torch.Tensor
    dev: torch.Tensor  # ‖y − mean‖
    sat: torch.Tensor | None  # elements in a flat tail (saturating functions)
    peak: torch.Tensor | None  # each unit's largest input over the batch (rectifiers)
    lo: float  # below it, a peak means a dead unit (counted in `record`, all calls at once)
    sample: torch.Tensor | None  # strided outputs for the histogram


class _Row:
    """One row of the probe: an activation module, or every activation call in one module's forward."""

    __slots__ = ("name", "spec", "n_elem", "n_sat_elem", "n_units", "calls", "index")

    def __init__(self, name: str, spec: ActivationSpec, index: int):
        self.name, self.spec, self.index = name, spec, index
        self.reset()

    def reset(self) -> None:
        self.n_elem = self.n_sat_elem = self.n_units = self.calls = 0


class _FunctionalMode(TorchFunctionMode):
    def __init__(self, probe: ActivationProbe):
        super().__init__()
        self.probe = probe

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        spec = functional_spec(func, args, kwargs) if args else None
        if spec is None or not self.probe._stack or self.probe._stack[-1] in self.probe._module_rows:
            return func(*args, **kwargs)
        x = args[0]
        pre = self.probe._pre_stats(spec, x.detach()) if isinstance(x, torch.Tensor) else None
        y = func(*args, **kwargs)
        if pre is not None and isinstance(y, torch.Tensor):
            self.probe._found_functional = True
            self.probe._post_stats(self.probe._row_for(self.probe._stack[-1], spec), pre, y.detach())
        return y


class ActivationProbe(Probe):
    def __init__(self, model: nn.Module, cadence: int = 1, histograms: bool = True):
        self.model = model
        self.cadence = cadence
        self.histograms = histograms
        self._module_rows: dict[str, tuple[nn.Module, ActivationSpec]] = {}
        for name, m in model.named_modules():
            spec = module_spec(m)
            if spec is not None:
                self._module_rows[name or "(root)"] = (m, spec)
        self._rows: dict[str, _Row] = {}
        self._hooks = Hooks()
        self._mode_hooks = Hooks()
        self._stack: list[str] = []
        self._mode_depth = 0
        self._mode = _FunctionalMode(self)
        self._found_functional = False
        self._discovered = False  # a measured forward has run, so we know if functions are used
        self._pending: dict[int, tuple] = {}  # in-place modules: what their pre-hook read
        self._inplace: set[int] = set()  # modules seen to overwrite their input without `inplace=True`
        self._strides: dict[tuple, torch.Tensor] = {}
        self._calls: list[_Call] = []  # every activation call of the step

    def rows(self) -> list[str]:
        return list(self._module_rows)

    def bind(self, table) -> None:
        super().bind(table)
        self._device = table.device
        self._capacity = table.capacity
        self._out = torch.full((self._capacity, 0, 3), ABSENT, dtype=torch.float64, device=self._device)
        self._hist = torch.full((self._capacity, 0, HIST_BINS), ABSENT, dtype=torch.float32, device=self._device)

    # ------------------------------------------------------------ rows grow as activations appear

    def _row_for(self, name: str, spec: ActivationSpec) -> _Row:
        row = self._rows.get(name)
        if row is None:
            row = self._rows[name] = _Row(name, spec, len(self._rows))
            grow = len(self._rows) - self._out.shape[1]
            if grow > 0:
                self._out = torch.cat([self._out, torch.full((self._capacity, grow, 3), ABSENT, dtype=self._out.dtype, device=self._device)], 1)
                self._hist = torch.cat([self._hist, torch.full((self._capacity, grow, HIST_BINS), ABSENT, dtype=self._hist.dtype, device=self._device)], 1)
        return row

    # ------------------------------------------------------------ hooks

    def arm(self) -> None:
        if not self._hooks:
            for name, (m, _) in self._module_rows.items():
                # One forward hook reads the input and the output of a module that leaves its input
                # intact; an in-place one needs its input read by a pre-hook before it is overwritten.
                if getattr(m, "inplace", False) or id(m) in self._inplace:
                    self._hooks.add(m.register_forward_pre_hook(self._module_pre(name)))
                self._hooks.add(m.register_forward_hook(self._module_post(name), always_call=True))
        if (self._found_functional or not self._discovered) and not self._mode_hooks:
            for name, m in self.model.named_modules():
                name = name or "(root)"
                self._mode_hooks.add(m.register_forward_pre_hook(self._push(name)))
                self._mode_hooks.add(m.register_forward_hook(self._pop, always_call=True))
            self._mode_hooks.add(self.model.register_forward_pre_hook(self._enter_mode))
            self._mode_hooks.add(self.model.register_forward_hook(self._exit_mode, always_call=True))

    def disarm(self) -> None:
        self._hooks.remove()
        self._mode_hooks.remove()
        while self._mode_depth:
            self._exit_mode()
        self._stack.clear()
        self._pending.clear()

    def _push(self, name):
        def hook(module, args):
            self._stack.append(name)

        return hook

    def _pop(self, module, args, output):
        if self._stack:
            self._stack.pop()

    def _enter_mode(self, module, args):
        if recording_forward():
            self._mode.__enter__()
            self._mode_depth += 1

    def _exit_mode(self, *unused):
        if self._mode_depth:
            self._mode_depth -= 1
            self._mode.__exit__(None, None, None)
            if self._mode_depth == 0:
                self._discovered = True

    def _spec(self, name: str, module: nn.Module) -> ActivationSpec:
        # PReLU's slope is learned, so whether its negative side is flat can change.
        return module_spec(module) if isinstance(module, nn.PReLU) else self._module_rows[name][1]

    def _module_pre(self, name):
        def hook(module, args):
            if args and isinstance(args[0], torch.Tensor) and recording_forward():
                spec = self._spec(name, module)
                self._pending[id(module)] = (spec, self._pre_stats(spec, args[0].detach()))

        return hook

    def _module_post(self, name):
        def hook(module, args, output):
            pending = self._pending.pop(id(module), None)
            if not isinstance(output, torch.Tensor):
                return
            if pending is None:
                if not (args and isinstance(args[0], torch.Tensor) and recording_forward()):
                    return
                x = args[0].detach()
                if output.data_ptr() == x.data_ptr():
                    # In place without saying so (no `inplace=True`): its input is gone, so this
                    # call goes unmeasured; from its next call on a pre-hook reads the input.
                    self._inplace.add(id(module))
                    self._hooks.add(module.register_forward_pre_hook(self._module_pre(name)))
                    return
                spec = self._spec(name, module)
                pre = self._pre_stats(spec, x)
            else:
                spec, pre = pending
            self._post_stats(self._row_for(name, spec), pre, output.detach())

        return hook

    # ------------------------------------------------------------ the numbers (no host sync)

    def _pre_stats(self, spec: ActivationSpec, x: torch.Tensor):
        """What needs the (detached) input, taken before an in-place activation overwrites it."""
        sat = _count_flat(spec, x) if spec.saturating else None
        if spec.rectifier:
            # A unit is dead when its largest input over the batch is in the flat tail; the
            # comparison with the bound waits for `record`, one kernel for every call of the step.
            peak = x.amax(0) if x.dim() > 1 else x
            units = x[0].numel() if x.dim() > 1 else x.numel()
        else:
            peak, units = None, 0
        return x.numel(), (x.numel() if spec.saturating else 0), units, sat, peak, spec.lo

    def _post_stats(self, row: _Row, pre, y: torch.Tensor) -> None:
        # Every activation of every recorded forward pays this, so it is a handful of kernels on
        # detached tensors (no autograd, no grad-mode switch); the pooling over calls and rows,
        # and the histogram binning, happen once per step in `record`.
        n_elem, n_sat_elem, n_units, sat, peak, lo = pre
        y = y if y.dtype in (torch.float32, torch.float64) else y.float()
        mean = y.mean()
        # Two passes (mean, then the norm of the deviations): exact for outputs far from zero mean,
        # where Σy² − (Σy)²/n in float32 would cancel.
        dev = torch.linalg.vector_norm(y - mean)
        sample = y.take(self._stride(y)) if self.histograms else None  # a copy: y is not kept alive
        self._calls.append(_Call(row.index, n_elem, mean, dev, sat, peak, lo, sample))
        row.n_elem += n_elem
        row.n_sat_elem += n_sat_elem
        row.n_units += n_units
        row.calls += 1

    def _stride(self, y: torch.Tensor) -> torch.Tensor:
        """Flat indices of at most HIST_SAMPLE evenly strided elements of `y` (cached per size)."""
        key = (y.numel(), y.device)
        idx = self._strides.get(key)
        if idx is None:
            n = y.numel()
            idx = self._strides[key] = torch.arange(0, n, -(-n // HIST_SAMPLE), device=y.device)
        return idx

    @torch.no_grad()
    def record(self, slot: int) -> None:
        if self._discovered and not self._found_functional:
            # Every activation is a module: the function mode and module stack cost for nothing.
            self._mode_hooks.remove()
        calls, self._calls = self._calls, []
        rows = list(self._rows.values())
        dev, f64 = self._device, torch.float64
        # The step's host-side numbers reach the device as one table per rows and one per calls.
        per_row = torch.tensor([[float(r.n_sat_elem), float(r.n_units), float(r.calls > 0)] for r in rows], dtype=f64, device=dev)
        for r in rows:
            r.reset()
        if not calls:
            return
        width = len(rows)
        per_call = torch.tensor(
            [
                [c.row, c.n, 0 if c.sample is None else c.sample.numel(), *rows[c.row].spec.hist_range, c.lo, 0 if c.peak is None else c.peak.numel()]
                for c in calls
            ],
            dtype=f64,
            device=dev,
        )
        call_row, call_n = per_call[:, 0].long(), per_call[:, 1]
        mean = torch.stack([c.mean for c in calls]).to(dev, f64)
        m2 = torch.stack([c.dev for c in calls]).to(dev, f64).square()
        zero = torch.zeros((), dtype=f64, device=calls[0].mean.device)
        sat_calls = torch.stack([zero if c.sat is None else c.sat for c in calls]).to(dev, f64)
        # One pooling for every per-call column: row sums over the calls of the step.
        sums = torch.zeros(width, 5, dtype=f64, device=dev).index_add_(
            0, call_row, torch.stack([call_n, call_n * mean, m2, call_n * mean * mean, sat_calls], 1)
        )
        # Parallel variance over the calls: M2 = Σ m2 + Σ n·mean² − (Σ n·mean)²/N.
        n = sums[:, 0].clamp_min(1)
        total = sums[:, 1]
        std = ((sums[:, 2] + sums[:, 3] - total * total / n).clamp_min(0) / n).sqrt()
        sat_n, units, active = per_row[:, 0], per_row[:, 1], per_row[:, 2:] > 0
        absent = torch.full((width,), ABSENT, dtype=f64, device=dev)
        sat = torch.where(sat_n > 0, sums[:, 4] / sat_n.clamp_min(1), absent)
        dead = torch.where(units > 0, self._dead_units(calls, per_call, width) / units.clamp_min(1), absent)
        # Rows without a call this step keep what the slot holds (absent).
        self._out[slot] = torch.where(active, torch.stack([std, sat, dead], 1), self._out[slot])
        if self.histograms:
            hist = (self._histograms(calls, per_call, width) / n[:, None]).float()
            self._hist[slot] = torch.where(active, hist, self._hist[slot])

    def _dead_units(self, calls: list[_Call], per_call: torch.Tensor, width: int) -> torch.Tensor:
        """Per row, units whose peak input lies below the row's flat-tail bound, over every call."""
        dev = self._device
        have = [c for c in calls if c.peak is not None]
        if not have:
            return torch.zeros(width, dtype=torch.float64, device=dev)
        peaks = [c.peak if c.peak.dim() == 1 else c.peak.reshape(-1) for c in have]
        # The bound in the peaks' dtype, as a comparison with a Python float would round it.
        if len(have) == len(calls) and len({p.numel() for p in peaks}) == 1:
            # Every call has the same number of units (the usual case): one [calls, units] matrix.
            peaks = torch.stack(peaks).to(dev)
            lo = per_call[:, 5].to(peaks.dtype)
            dead = (peaks < lo[:, None]).sum(1).double()
            return torch.zeros(width, dtype=torch.float64, device=dev).index_add_(0, per_call[:, 0].long(), dead)
        peaks = torch.cat(peaks).to(dev)
        sizes = per_call[:, 6].long()
        lo = per_call[:, 5].to(peaks.dtype).repeat_interleave(sizes, output_size=peaks.numel())
        rows = per_call[:, 0].long().repeat_interleave(sizes, output_size=peaks.numel())
        return torch.zeros(width, dtype=torch.float64, device=dev).index_add_(0, rows, (peaks < lo).double())

    def _histograms(self, calls: list[_Call], per_call: torch.Tensor, width: int) -> torch.Tensor:
        """Every call's sample binned in one pass: samples padded into rows of one matrix, bins
        offset by call, one bincount. Padding goes to an extra bin per call that is dropped."""
        dev, f64, n_calls = self._device, torch.float64, len(calls)
        samples = [c.sample if c.sample.dtype == torch.float32 else c.sample.float() for c in calls]
        sizes = per_call[:, 2]
        full = len({t.numel() for t in samples}) == 1  # no padding (the usual case)
        values = (torch.stack(samples) if full else torch.nn.utils.rnn.pad_sequence(samples, batch_first=True)).to(dev)
        ranges = per_call[:, 3:5].float()
        lo, per_bin = ranges[:, :1], HIST_BINS / (ranges[:, 1:] - ranges[:, :1])
        # Values beyond the range count in the edge bins; NaN in the lowest (`nonfinite` reports it).
        scaled = torch.nan_to_num((values - lo) * per_bin, nan=0.0, posinf=HIST_BINS, neginf=0.0)
        bins = scaled.floor_().clamp_(0, HIST_BINS - 1).long()
        if not full:
            bins.masked_fill_(torch.arange(values.shape[1], device=dev) >= sizes[:, None], HIST_BINS)
        bins += (HIST_BINS + 1) * torch.arange(n_calls, device=dev)[:, None]
        counts = torch.bincount(bins.view(-1), minlength=(HIST_BINS + 1) * n_calls).view(n_calls, HIST_BINS + 1)
        # Scaled to the whole output, so each call's histogram sums to its element count.
        scale = per_call[:, 1] / sizes
        weighted = counts[:, :HIST_BINS].to(f64) * scale[:, None]
        return torch.zeros(width, HIST_BINS, dtype=f64, device=dev).index_add_(0, per_call[:, 0].long(), weighted)

    def take(self, n: int) -> dict:
        out = self._out[:n].cpu().numpy().copy()
        hist = self._hist[:n].cpu().numpy().copy() if self.histograms else None
        self._out[:n].fill_(ABSENT)
        self._hist[:n].fill_(ABSENT)
        if not self._found_functional:
            # A forward may start calling activation functions later (a branch, a schedule): the
            # first measured forward after each flush looks again, at the function mode's cost.
            self._discovered = False
        return {"activations": out, "act_hist": hist}

    def finalize(self, raw: dict) -> list:
        rows = list(self._rows)
        out = raw["activations"][:, : len(rows)]
        blocks = [
            ("act_std", rows, out[:, :, 0]),
            ("saturated_frac", rows, out[:, :, 1]),
            ("dead_frac", rows, out[:, :, 2]),
        ]
        if raw["act_hist"] is not None:
            blocks.append(("act_hist", rows, raw["act_hist"][:, : len(rows)].astype(np.float64)))
        return blocks

    def meta(self) -> dict:
        return {
            "activations": {
                r.name: {
                    "function": r.spec.name,
                    "hist_range": list(r.spec.hist_range),
                    "flat_below": _finite_or_none(r.spec.lo),
                    "flat_above": _finite_or_none(r.spec.hi),
                }
                for r in self._rows.values()
            },
            "hist_bins": HIST_BINS,
        }

    def close(self) -> None:
        self.disarm()


def _count_flat(spec: ActivationSpec, x: torch.Tensor) -> torch.Tensor:
    """Elements of `x` in a flat tail.

    A comparison writes a bool tensor, which on CPU costs several times an arithmetic op; the sign
    of the distance to the bound counts the same elements (Σ sign = above − below). Ties exactly at
    the bound (a measure-zero set for real inputs) count a half, a NaN makes the count NaN (the
    parameter probe's `nonfinite` says where), and beyond 2^24 elements the float32 sum makes the
    count approximate to about 1e-6 of it.
    """
    x = x if x.is_floating_point() else x.float()
    n = x.numel()
    if spec.lo == -spec.hi:
        return (n + x.abs().sub_(spec.hi).sign_().sum()) / 2
    count = torch.zeros((), device=x.device)
    if not math.isinf(spec.hi):
        count = count + (n + (x - spec.hi).sign_().sum()) / 2
    if not math.isinf(spec.lo):
        count = count + (n - (x - spec.lo).sign_().sum()) / 2
    return count


def _finite_or_none(x: float) -> float | None:
    return x if np.isfinite(x) else None
