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

Each call leaves a few device scalars; at the optimizer step they are stacked into a handful of
device tensors (no host sync), and at flush every recorded step is copied to the host and pooled
over its calls (gradient accumulation) with numpy, where a small operation costs no kernel launch:
population std of the outputs, saturated fraction of inputs, dead fraction of units (see
`activation_specs`), and a 32-bin histogram of the outputs over the function's range (values
outside are counted in the edge bins), taken from at most 1,024 evenly strided outputs per call:
enough for a picture, at a fraction of the cost of binning them all.

On the CPU, with numba installed (`_cpu_kernels`), each call is measured at once by two fused
kernels instead, which leave plain numbers: the same statistics for a fraction of the dispatches.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from gradwatch._nn import ROOT_NAME
from gradwatch._tensor import WIDE_FLOATS, to_host
from gradwatch.probes import kernels as _cpu_kernels
from gradwatch.probes.activation_specs import (
    HIST_BINS,
    ActivationSpec,
    functional_spec,
    module_spec,
)
from gradwatch.probes.base import ABSENT, Probe, no_grad
from gradwatch.probes.forward import Hooks, recording_forward

HIST_SAMPLE = 1024


class _Call(NamedTuple):
    """What one activation call leaves for `record`: device scalars and a sample, no host sync."""

    row: int
    n: int  # elements of the output
    n_sat: int  # elements counted for `sat` (0: not a saturating function)
    units: int  # units counted for `peak` (0: not a rectifier)
    mean: torch.Tensor
    dev: torch.Tensor  # ‖y − mean‖
    sat: torch.Tensor | None  # elements in a flat tail (saturating functions)
    peak: torch.Tensor | None  # each unit's largest input over the batch (rectifiers)
    lo: float  # below it, a peak means a dead unit
    sample: torch.Tensor | None  # strided outputs for the histogram


class _HostCall(NamedTuple):
    """What one activation call leaves when the CPU kernels measured it: numbers, already final."""

    key: tuple  # (row, n, n_sat, units, sample): what the step's plan depends on
    mean: float
    dev: float
    sat: float | None
    dead: int | None
    counts: np.ndarray | None  # [bins + 1] histogram of the sample (the last bin stays empty)


class _Row:
    """One row of the probe: an activation module, or every activation call in one module's
    forward."""

    __slots__ = ("name", "spec", "index", "hist_bins")

    def __init__(self, name: str, spec: ActivationSpec, index: int):
        self.name, self.spec, self.index = name, spec, index
        # The histogram's lower end and bins per unit, in float32 as the torch path bins.
        lo, hi = (np.float32(b) for b in spec.hist_range)
        self.hist_bins = (lo, np.float32(HIST_BINS) / (hi - lo))


class _Plan(NamedTuple):
    """What a step's calls look like (their rows, sizes, bounds), on the host and, where a kernel
    needs it, on the device; cached, as the calls of one step are usually those of the last."""

    rows: np.ndarray  # [calls] row of each call
    n: np.ndarray  # [calls] elements of each call's output
    n_sat: np.ndarray
    units: np.ndarray
    sample: np.ndarray  # [calls] histogram sample size
    has_sat: np.ndarray  # [calls] bool: the calls of saturating functions
    has_peak: np.ndarray  # [calls] bool: the calls of rectifiers
    # What the device's kernels need (None where the CPU kernels measured the step):
    peaks_uniform: bool = True  # every peak has one size: one [peaks, units] comparison
    lo: torch.Tensor | None = (
        None  # [peaks, 1] dead-unit bound, in the peaks' dtype ([peak entries] if not uniform)
    )
    peak_call: torch.Tensor | None = (
        None  # the call each peak entry belongs to (peaks of mixed sizes)
    )
    hist_lo: torch.Tensor | None = None  # [calls, 1] lower end of each call's histogram range
    per_bin: torch.Tensor | None = None  # [calls, 1] bins per unit of output
    offsets: torch.Tensor | None = None  # [calls, 1] first bin of each call in the shared bincount
    pad: torch.Tensor | None = None  # [calls, sample] where a shorter sample was padded


def _plan_of(rows, n, n_sat, units, sample, has_sat, has_peak, **device) -> _Plan:
    """A plan from per-call lists; `device`: the device-side fields."""
    return _Plan(
        np.array(rows),
        *(np.array(v, dtype=np.float64) for v in (n, n_sat, units, sample)),
        np.array(has_sat, dtype=bool),
        np.array(has_peak, dtype=bool),
        **device,
    )


class _Step(NamedTuple):
    """One recorded step's raw numbers, still on the device (numpy arrays where the CPU kernels
    measured it); pooled into rows at flush."""

    slot: int
    plan: _Plan
    scalars: torch.Tensor | np.ndarray  # [3, calls]: mean, ‖y − mean‖, flat-tail count
    dead: torch.Tensor | np.ndarray | None  # [rectifier calls] dead units
    hist: (
        torch.Tensor | np.ndarray | None
    )  # [calls, bins + 1] sample counts (the last bin is padding)


class _FunctionalMode(TorchFunctionMode):
    def __init__(self, probe: ActivationProbe):
        super().__init__()
        self.probe = probe

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        spec = functional_spec(func, args, kwargs) if args else None
        if (
            spec is None
            or not self.probe._stack
            or self.probe._stack[-1] in self.probe._module_rows
        ):
            return func(*args, **kwargs)
        x = args[0]
        probe = self.probe
        pre = (
            probe.guard(probe._pre_stats)(spec, x.detach()) if isinstance(x, torch.Tensor) else None
        )
        y = func(*args, **kwargs)
        if pre is not None and isinstance(y, torch.Tensor):
            probe._found_functional = True
            probe.guard(probe._post_functional)(spec, pre, y.detach())
        return y


class ActivationProbe(Probe):
    def _post_functional(self, spec, pre, y: torch.Tensor) -> None:
        self._post_stats(self._row_for(self._stack[-1], spec), pre, y)

    def __init__(self, model: nn.Module, cadence: int = 1, histograms: bool = True):
        self.model = model
        self.cadence = cadence
        self.histograms = histograms
        self._module_rows: dict[str, tuple[nn.Module, ActivationSpec]] = {}
        for name, m in model.named_modules():
            spec = module_spec(m)
            if spec is not None:
                self._module_rows[name or ROOT_NAME] = (m, spec)
        self._rows: dict[str, _Row] = {}
        self._hooks = Hooks()
        self._mode_hooks = Hooks()
        self._stack: list[str] = []
        self._mode_depth = 0
        self._mode = _FunctionalMode(self)
        self._found_functional = False
        self._discovered = False  # a measured forward has run, so we know if functions are used
        self._pending: dict[int, tuple] = {}  # in-place modules: what their pre-hook read
        self._inplace: set[int] = (
            set()
        )  # modules seen to overwrite their input without `inplace=True`
        self._strides: dict[tuple, torch.Tensor] = {}
        self._calls: list[_Call] = []  # every activation call of the step

    def rows(self) -> list[str]:
        return list(self._module_rows)

    def measured_layers(self) -> list[str]:
        """Every layer an activation was measured in so far (functional calls included)."""
        return list(self._rows)

    def bind(self, table) -> None:
        super().bind(table)
        self._plans: dict[tuple, _Plan] = {}
        self._steps: list[_Step] = []  # recorded since the last flush
        self._bounds: dict[tuple[ActivationSpec, torch.dtype], tuple] = {}
        self._peaks: dict[tuple[int, np.dtype], np.ndarray] = {}
        self._kernels = None
        self._paths = _cpu_kernels.Paths(table.device, self.cadence)
        if self._paths.kernels is not None:
            self._use_kernels(self._paths.kernels)

    def _use_kernels(self, kernels) -> None:
        """Measure with the CPU kernels from the next forward on (a step boundary)."""
        self._kernels = kernels
        self._pre_stats, self._post_stats = self._pre_host, self._post_host

    # ------------------------------------------------------------ rows grow as activations appear

    def _row_for(self, name: str, spec: ActivationSpec) -> _Row:
        row = self._rows.get(name)
        if row is None:
            row = self._rows[name] = _Row(name, spec, len(self._rows))
        return row

    # ------------------------------------------------------------ hooks

    def arm(self) -> None:
        if not self._hooks:
            for name, (m, _) in self._module_rows.items():
                # One forward hook reads the input and the output of a module that leaves its input
                # intact; an in-place one needs its input read by a pre-hook before it is
                # overwritten.
                if getattr(m, "inplace", False) or id(m) in self._inplace:
                    self._hooks.add(m.register_forward_pre_hook(self.guard(self._module_pre(name))))
                self._hooks.add(
                    m.register_forward_hook(self.guard(self._module_post(name)), always_call=True)
                )
        if (self._found_functional or not self._discovered) and not self._mode_hooks:
            for name, m in self.model.named_modules():
                name = name or ROOT_NAME
                self._mode_hooks.add(m.register_forward_pre_hook(self.guard(self._push(name))))
                self._mode_hooks.add(
                    m.register_forward_hook(self.guard(self._pop), always_call=True)
                )
            self._mode_hooks.add(self.model.register_forward_pre_hook(self.guard(self._enter_mode)))
            self._mode_hooks.add(
                self.model.register_forward_hook(self.guard(self._exit_mode), always_call=True)
            )

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
        m, spec = self._module_rows[name]
        fixed = None if isinstance(m, nn.PReLU) else spec  # see _spec
        row = None  # the module's row, once it has one

        # Every activation module of every measured forward runs this: lookups are kept out of it.
        def hook(module, args, output):
            nonlocal row
            pending = self._pending.pop(id(module), None) if self._pending else None
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
                    self._hooks.add(
                        module.register_forward_pre_hook(self.guard(self._module_pre(name)))
                    )
                    return
                spec = fixed if fixed is not None else self._spec(name, module)
                pre = self._pre_stats(spec, x)
            else:
                spec, pre = pending
            if row is None:
                row = self._row_for(name, spec)
            self._post_stats(row, pre, output.detach())

        return hook

    # ------------------------------------------------------------ the numbers (no host sync)

    def _pre_stats(self, spec: ActivationSpec, x: torch.Tensor):
        """What needs the (detached) input, taken before an in-place activation overwrites it."""
        sat = _count_flat(spec, x) if spec.saturating else None
        if spec.rectifier:
            # A unit is dead when its largest input over the batch is in the flat tail; the
            # comparison with the bound waits for `record`, one kernel for every call of the step.
            peak = x.amax(0) if x.dim() > 1 else x
            units = math.prod(x.shape[1:]) if x.dim() > 1 else x.numel()
        else:
            peak, units = None, 0
        return x.numel(), (x.numel() if spec.saturating else 0), units, sat, peak, spec.lo

    def _post_stats(self, row: _Row, pre, y: torch.Tensor) -> None:
        # Every activation of every recorded forward pays this, so it is a handful of kernels on
        # detached tensors (no autograd, no grad-mode switch); the rest waits for `record`.
        n_elem, n_sat_elem, n_units, sat, peak, lo = pre
        y = y if y.dtype in WIDE_FLOATS else y.float()
        mean = y.mean()
        # Two passes (mean, then the norm of the deviations): exact for outputs far from zero mean,
        # where Σy² − (Σy)²/n in float32 would cancel. `dist` is ‖y − mean‖ in one call.
        dev = torch.dist(y, mean)
        sample = y.take(self._stride(y)) if self.histograms else None  # a copy: y is not kept alive
        self._calls.append(
            _Call(row.index, n_elem, n_sat_elem, n_units, mean, dev, sat, peak, lo, sample)
        )

    # ------------------------------------------------------------ the numbers on the CPU (numba)

    def _pre_host(self, spec: ActivationSpec, x: torch.Tensor):
        """`_pre_stats` by the fused kernels: the flat-tail count and the dead units, final."""
        n = x.numel()
        units = n // x.shape[0] if x.dim() > 1 and n else n
        sat = dead = None
        if n:
            a = _host_array(x)
            lo, hi, rect_lo, tails = self._bounds_for(spec, x.dtype, a.dtype)
            if spec.saturating:
                sat = self._kernels.flat_count(a, lo, hi, *tails)
            if spec.rectifier:
                peak = self._peaks.get((units, a.dtype))
                if peak is None:
                    peak = self._peaks[(units, a.dtype)] = np.empty(units, dtype=a.dtype)
                dead = self._kernels.dead_units(a.reshape(-1, units), rect_lo, peak)
        return n, (n if spec.saturating else 0), (units if spec.rectifier else 0), sat, dead

    def _post_host(self, row: _Row, pre, y: torch.Tensor) -> None:
        n, n_sat, units, sat, dead = pre
        if not n:
            return
        a = _host_array(y)
        counts = sample = None
        if self.histograms:
            stride = -(-a.size // HIST_SAMPLE)
            sample = -(-a.size // stride)
            lo, per_bin = row.hist_bins
            counts = np.zeros(HIST_BINS + 1, dtype=np.int64)
            mean, dev = self._kernels.post(a, stride, lo, per_bin, counts)
        else:
            mean, dev = self._kernels.moments(a)
        self._calls.append(
            _HostCall((row.index, n, n_sat, units, sample), mean, dev, sat, dead, counts)
        )

    def _bounds_for(self, spec: ActivationSpec, dtype: torch.dtype, host: np.dtype) -> tuple:
        """The flat-tail and dead-unit bounds as the torch path compares them, in the dtype the
        kernels read the input in, and which tails there are: (symmetric, has lower, has upper)."""
        hit = self._bounds.get((spec, dtype))
        if hit is None:
            # A flat tail is found by subtracting the bound in the op's compute dtype (float32 for
            # half inputs); the dead-unit bound is compared in the input's own dtype.
            rect = (
                spec.lo
                if math.isinf(spec.lo)
                else torch.tensor(spec.lo, dtype=torch.float64).to(dtype).item()
            )
            tails = (spec.lo == -spec.hi, not math.isinf(spec.lo), not math.isinf(spec.hi))
            hit = (host.type(spec.lo), host.type(spec.hi), host.type(rect), tails)
            self._bounds[(spec, dtype)] = hit
        return hit

    def _stride(self, y: torch.Tensor) -> torch.Tensor:
        """Flat indices of at most HIST_SAMPLE evenly strided elements of `y` (cached per size)."""
        key = (y.numel(), y.device)
        idx = self._strides.get(key)
        if idx is None:
            n = y.numel()
            idx = self._strides[key] = torch.arange(0, n, -(-n // HIST_SAMPLE), device=y.device)
        return idx

    @no_grad
    def record(self, slot: int) -> None:
        """Reduce the step's calls to a few device tensors (a dozen kernels, whatever the number
        of calls); pooling them into rows waits for the flush, where it costs no kernel launches."""
        if self._discovered and not self._found_functional:
            # Every activation is a module: the function mode and module stack cost for nothing.
            self._mode_hooks.remove()
        calls, self._calls = self._calls, []
        if self._paths.waiting and self._paths.poll(slot):
            # The kernels finished loading in the background: this step was measured by torch
            # operations, the next forward is measured by the kernels.
            self._use_kernels(self._paths.kernels)
        if not calls:
            return
        if isinstance(calls[0], _HostCall):
            self._steps.append(self._host_step(slot, calls))
            return
        # Each list once per step: the plan's key, the dead units and the histograms all read them.
        peaks = [c.peak.reshape(-1) for c in calls if c.peak is not None]
        samples = [
            c.sample if c.sample.dtype == torch.float32 else c.sample.float()
            for c in calls
            if c.sample is not None
        ]
        plan = self._plan(calls, peaks, samples)
        zero = None
        if not all(plan.has_sat):
            zero = torch.zeros((), dtype=calls[0].mean.dtype, device=calls[0].mean.device)
        scalars = torch.stack(
            [c.mean for c in calls]
            + [c.dev for c in calls]
            + [zero if c.sat is None else c.sat for c in calls]
        ).view(3, len(calls))
        self._steps.append(
            _Step(
                slot, plan, scalars, self._dead_units(peaks, plan), self._histograms(samples, plan)
            )
        )

    def _host_step(self, slot: int, calls: list[_HostCall]) -> _Step:
        """A step measured by the CPU kernels: its numbers gathered into the arrays `take` pools."""
        key = tuple(c.key for c in calls)
        plan = self._plans.get(key)
        if plan is None:
            if len(self._plans) > 64:
                self._plans.clear()
            rows, n, n_sat, units, sample = zip(*key, strict=True)
            sample = [s or 0 for s in sample]
            has_sat, has_peak = (
                [c.sat is not None for c in calls],
                [c.dead is not None for c in calls],
            )
            plan = self._plans[key] = _plan_of(rows, n, n_sat, units, sample, has_sat, has_peak)
        scalars = np.array([(c.mean, c.dev, 0.0 if c.sat is None else c.sat) for c in calls]).T
        dead = (
            np.array([c.dead for c in calls if c.dead is not None], dtype=np.float64)
            if plan.has_peak.any()
            else None
        )
        counts = np.stack([c.counts for c in calls]) if self.histograms else None
        return _Step(slot, plan, scalars, dead, counts)

    def discard(self) -> None:
        self._calls = []

    def _plan(
        self, calls: list[_Call], peaks: list[torch.Tensor], samples: list[torch.Tensor]
    ) -> _Plan:
        key = (
            tuple((c.row, c.n, c.n_sat, c.units, c.lo, c.sat is not None) for c in calls),
            tuple(p.numel() for p in peaks),
            None if not peaks else peaks[0].dtype,
            tuple(t.numel() for t in samples),
        )
        plan = self._plans.get(key)
        if plan is None:
            if len(self._plans) > 64:  # a PReLU's bound moves with its slope: keep the cache small
                self._plans.clear()
            plan = self._plans[key] = self._new_plan(calls, peaks, samples)
        return plan

    def _new_plan(
        self, calls: list[_Call], peaks: list[torch.Tensor], samples: list[torch.Tensor]
    ) -> _Plan:
        dev = calls[0].mean.device
        rows = list(self._rows.values())
        lo = peak_call = hist_lo = per_bin = offsets = pad = None
        uniform = len({p.numel() for p in peaks}) == 1
        if peaks:
            # The bound in the peaks' dtype, as a comparison with a Python float would round it.
            # (Rounded on the host: a device may have no float64.)
            bounds = torch.tensor(
                [c.lo for c in calls if c.peak is not None], dtype=torch.float64
            ).to(peaks[0].dtype)
            if uniform:
                lo = bounds.to(dev)[:, None]
            else:
                sizes = torch.tensor([p.numel() for p in peaks])
                lo = bounds.repeat_interleave(sizes).to(dev)
                peak_call = torch.arange(len(peaks)).repeat_interleave(sizes).to(dev)
        if samples:
            ranges = torch.tensor([rows[c.row].spec.hist_range for c in calls], dtype=torch.float32)
            hist_lo = ranges[:, :1].to(dev)
            per_bin = (HIST_BINS / (ranges[:, 1:] - ranges[:, :1])).to(dev)
            offsets = ((HIST_BINS + 1) * torch.arange(len(calls)))[:, None].to(dev)
            sizes = torch.tensor([t.numel() for t in samples])
            if len(set(sizes.tolist())) > 1:
                pad = (torch.arange(int(sizes.max())) >= sizes[:, None]).to(dev)
        return _plan_of(
            [c.row for c in calls],
            [c.n for c in calls],
            [c.n_sat for c in calls],
            [c.units for c in calls],
            [0 if c.sample is None else c.sample.numel() for c in calls],
            [c.sat is not None for c in calls],
            [c.peak is not None for c in calls],
            peaks_uniform=uniform,
            lo=lo,
            peak_call=peak_call,
            hist_lo=hist_lo,
            per_bin=per_bin,
            offsets=offsets,
            pad=pad,
        )

    def _dead_units(self, peaks: list[torch.Tensor], plan: _Plan) -> torch.Tensor | None:
        """Dead units of each call that has peaks (units whose peak input is in the flat tail)."""
        if not peaks:
            return None
        if plan.peaks_uniform:
            # Every rectifier call has the same number of units (the usual case): one matrix.
            return (torch.stack(peaks) < plan.lo).sum(1)
        flat = torch.cat(peaks)
        out = torch.zeros(len(peaks), dtype=torch.int64, device=flat.device)
        return out.index_add_(0, plan.peak_call, (flat < plan.lo).long())

    def _histograms(self, samples: list[torch.Tensor], plan: _Plan) -> torch.Tensor | None:
        """Every call's sample binned in one pass: samples padded into rows of one matrix, bins
        offset by call, one bincount. Padding goes to an extra bin per call, dropped at flush."""
        if not samples:
            return None
        values = (
            torch.stack(samples)
            if plan.pad is None
            else torch.nn.utils.rnn.pad_sequence(samples, batch_first=True)
        )
        # Values beyond the range count in the edge bins; NaN in the lowest (`nonfinite` reports
        # it). Clamped to [0, bins - 1] first, so that truncation to an integer is the floor.
        bins = (
            (values - plan.hist_lo)
            .mul_(plan.per_bin)
            .clamp_(0, HIST_BINS - 1)
            .nan_to_num_(0.0)
            .long()
        )
        if plan.pad is not None:
            bins.masked_fill_(plan.pad, HIST_BINS)
        bins += plan.offsets
        return torch.bincount(bins.view(-1), minlength=(HIST_BINS + 1) * len(samples)).view(
            len(samples), HIST_BINS + 1
        )

    def take(self, n: int) -> dict:
        steps = [s for s in self._steps if s.slot < n]
        self._steps = [s for s in self._steps if s.slot >= n]
        width = len(self._rows)
        out = np.full((n, width, 3), ABSENT)
        hist = np.full((n, width, HIST_BINS), ABSENT, dtype=np.float32) if self.histograms else None
        # Steps alike (the same calls, as usual) are pooled together: a few copies to the host.
        alike: dict[int, list[_Step]] = {}
        for step in steps:
            alike.setdefault(id(step.plan), []).append(step)
        for group in alike.values():
            plan = group[0].plan
            # Steps measured on the device are copied to the host together; the CPU kernels'
            # are there already.
            join = _stack if isinstance(group[0].scalars, np.ndarray) else to_host
            _pool(
                plan,
                join([s.scalars for s in group]),
                None if group[0].dead is None else join([s.dead for s in group]),
                None if group[0].hist is None else join([s.hist for s in group]),
                width,
                out,
                hist,
                [s.slot for s in group],
            )
        self._paths.flushed(n)
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
            "kernels": _cpu_kernels.name(self._kernels),
            "activation_kernels": self._paths.history(),
        }

    def close(self) -> None:
        self.disarm()


def _pool(
    plan: _Plan,
    scalars: np.ndarray,
    dead: np.ndarray | None,
    counts: np.ndarray | None,
    width: int,
    out: np.ndarray,
    hist: np.ndarray | None,
    slots: list[int],
) -> None:
    """Steps with the same calls, pooled into rows (several calls of a row: micro-batches, a module
    calling a function twice): `scalars` [steps, 3, calls], `dead` [steps, rectifier calls],
    `counts` [steps, calls, bins + 1], into `out[slots]` [rows, 3] (std, saturated, dead) and
    `hist[slots]` [rows, bins]."""
    steps = len(slots)
    rows, n = plan.rows, plan.n
    index = (np.arange(steps)[:, None] * width + rows).ravel()

    def per_row(weights: np.ndarray) -> np.ndarray:
        weights = np.broadcast_to(weights, (steps, len(rows)))
        return np.bincount(index, weights=weights.ravel(), minlength=steps * width).reshape(
            steps, width
        )

    mean, dev, sat = scalars[:, 0], scalars[:, 1], scalars[:, 2]
    total_n = per_row(n)
    active = np.bincount(rows, minlength=width) > 0
    safe_n = np.maximum(total_n, 1)
    # Parallel variance over the calls: M2 = Σ‖y − mean‖² + Σ n·mean² − (Σ n·mean)²/N.
    total = per_row(n * mean)
    m2 = per_row(dev * dev) + per_row(n * mean * mean) - total * total / safe_n
    std = np.sqrt(np.maximum(m2, 0) / safe_n)  # NaN stays NaN
    n_sat = per_row(plan.n_sat)
    sat_frac = np.where(
        n_sat > 0, per_row(np.where(plan.has_sat, sat, 0.0)) / np.maximum(n_sat, 1), ABSENT
    )
    dead_frac = np.full((steps, width), ABSENT)
    if dead is not None:
        units = per_row(plan.units)
        per_call = np.zeros((steps, len(rows)))
        per_call[:, plan.has_peak] = dead
        dead_frac = np.where(units > 0, per_row(per_call) / np.maximum(units, 1), ABSENT)
    out[np.ix_(slots, active)] = np.stack([std, sat_frac, dead_frac], 2)[:, active]
    if hist is not None and counts is not None:
        # Each call's sample scaled to its whole output, so that a row's bins sum to 1.
        weighted = counts[:, :, :HIST_BINS] * (n / np.maximum(plan.sample, 1))[:, None]
        onehot = np.zeros((len(rows), width))
        onehot[np.arange(len(rows)), rows] = 1.0
        binned = np.einsum("scb,cw->swb", weighted, onehot)
        hist[np.ix_(slots, active)] = (binned / safe_n[:, :, None])[:, active]


def _stack(arrays: list[np.ndarray]) -> np.ndarray:
    return np.stack(arrays).astype(np.float64)


def _host_array(t: torch.Tensor) -> np.ndarray:
    """A detached tensor as the flat, contiguous numpy array the kernels read: float32, or float64
    if it is (copied over from another device, in a model spread over several)."""
    if not t.is_cpu:
        t = t.cpu()
    if type(t) is not torch.Tensor:
        t = t.as_subclass(torch.Tensor)
    if t.dtype not in WIDE_FLOATS:
        t = t.float()
    return t.numpy().reshape(-1)  # a view, or a contiguous copy of a strided tensor


def _count_flat(spec: ActivationSpec, x: torch.Tensor) -> torch.Tensor:
    """Elements of `x` in a flat tail.

    A comparison writes a bool tensor, which on CPU costs several times an arithmetic op; the sign
    of the distance to the bound counts the same elements (Σ sign = above − below). Ties exactly at
    the bound (a measure-zero set for real inputs) count a half, a NaN makes the count NaN (the
    parameter probe's `nonfinite` says where), and beyond 2^24 elements the float32 sum makes the
    count approximate to about 1e-6 of it.
    """
    x = x if x.dtype in WIDE_FLOATS else x.float()  # a half-precision sum would round the count
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
