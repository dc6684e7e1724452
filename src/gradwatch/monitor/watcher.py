"""`Watch`: the optimizer's step hooks decide which steps the probes record and when the buffer
flushes; the settings (options.py), the probes (probeset.py), the flush (buffer.py) and the run's
metadata (meta.py) are each their own module."""

from __future__ import annotations

import contextlib
import functools
import os
import sys
import time
import warnings
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from gradwatch._nn import ForwardOrder, ParamLayer, param_layers, unwrap
from gradwatch.diagnose import Diagnosis, Finding, diagnose
from gradwatch.errors import NonFiniteGradientError, TrainingStoppedError, WatchError
from gradwatch.monitor import clipping as _clipping
from gradwatch.monitor import distributed as _dist
from gradwatch.monitor.budget import CostBudget
from gradwatch.monitor.buffer import StepBuffer
from gradwatch.monitor.caveats import FROZEN, caveats
from gradwatch.monitor.meta import RunMeta
from gradwatch.monitor.options import WatchOptions
from gradwatch.monitor.probeset import attach_probes
from gradwatch.probes.activations import ActivationProbe
from gradwatch.probes.base import Probe
from gradwatch.probes.scaler import ScalerHandle, inner_optimizer, inverse_scale_sq
from gradwatch.store import RunWriter

if TYPE_CHECKING:
    import pandas as pd

# Thinning past this (one eligible step in 8) stretches the settled forward probes' cadence too.
STRETCH_AFTER = 8

# Stops the user asked for (raise_on): they reach the training loop. Any other exception raised by
# gradwatch's own code while training runs detaches the watch instead (see Watch._fail).
_REQUESTED_STOPS = (NonFiniteGradientError, TrainingStoppedError)


def _never_breaks_training(method):
    """Run a hook or per-step method of the Watch so that an error of gradwatch's own detaches the
    watch, with one warning, instead of reaching the user's training loop."""

    @functools.wraps(method)
    def guarded(self, *args, **kwargs):
        try:
            return method(self, *args, **kwargs)
        except _REQUESTED_STOPS:
            raise
        except Exception as exc:
            self._fail(exc)
            return None

    return guarded


class Watch:
    """Watches one model's training. Create it with `gradwatch.watch(...)`.

    Every `every`-th optimizer step is recorded (step 0, the first update, always is). With an
    optimizer the recording happens in its step hooks; without one, call `step()` after
    `backward()` and before the optimizer changes the weights.
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer | None = None,
        *,
        every: int = 1,
        log_dir: str | os.PathLike | None = None,
        flush_every: int = 50,
        update_memory: float = 0.1,
        activations: bool | int | str = "auto",
        backflow: bool | int | str = "auto",
        through_time: bool | int | str = "auto",
        histograms: bool = True,
        on_finding: Callable[[Finding], None] | None = None,
        raise_on: Iterable[str] = (),
        overwrite: bool = False,
        scaler: Any = None,
        dist_timeout: float = 60.0,
        budget: float | None = 0.03,
    ):
        optimizer = _checked_optimizer(model, optimizer, scaler)
        options = WatchOptions(
            every=every,
            log_dir=log_dir,
            flush_every=flush_every,
            update_memory=update_memory,
            activations=activations,
            backflow=backflow,
            through_time=through_time,
            histograms=histograms,
            on_finding=on_finding,
            raise_on=raise_on,
            overwrite=overwrite,
            dist_timeout=dist_timeout,
            budget=budget,
        )
        self.model = unwrap(model)
        if _is_compiled(model) and options.forward:
            warnings.warn(_COMPILED, stacklevel=3)
            options = options.without_forward()
        self.optimizer, self._scaler = optimizer, scaler
        # Read at every step: plain attributes, not the options' fields.
        self.every, self.flush_every, self._raise_on = every, flush_every, options.raise_on
        self._player: list[ParamLayer] = param_layers(self.model)
        if not self._player:
            raise WatchError("The model has no parameters, so there is no gradient to watch.")
        if not any(p.requires_grad for layer in self._player for p in layer.params):
            warnings.warn(FROZEN, stacklevel=3)
        self._order = ForwardOrder(self.model)
        self._run = RunMeta(
            self.model, optimizer, self._player, options.settings(optimizer, scaler)
        )
        self._probeset = attach_probes(self.model, self._player, optimizer, options, scaler)
        self._probes, self._table = self._probeset.all, self._probeset.table
        for probe in self._probes:  # an error in a forward or backward hook detaches the watch
            probe.fault = self._fail
        # Per step only the probes that do something at that point are called (in their order):
        # on a small model each call of a method that does nothing is a tenth of a point.
        self._recorders = [p for p in self._probes if _overrides(p, "record")]
        self._updaters = [p for p in self._probes if _overrides(p, "after_update")]
        self._switched = [p for p in self._probes if _overrides(p, "arm", "disarm")]
        self._scheduled = list(dict.fromkeys(self._recorders + self._switched))
        self._records = True  # whether the coming step is recorded (see _arm)
        self._due: list[Probe] = []  # the probes that measure at the coming step (see _arm)
        self._due_record: list[Probe] = []  # those of them whose record() does something
        self._armed: list[Probe] = []  # the switched probes armed now
        self._param_ids = {id(p) for layer in self._player for p in layer.params}
        self._early: int | None = None  # slot whose gradients were recorded before clipping
        # Under torch.distributed every rank measures and reduces; rank 0 alone writes the store.
        write = log_dir is not None and _dist.rank() == 0
        self._writer = RunWriter(log_dir, overwrite=overwrite) if write else None
        self._buffer = StepBuffer(
            self._probeset, options, self._writer, self.meta, self._write_meta
        )
        self._steps_taken = 0  # optimizer steps that actually ran (a GradScaler may skip some)
        self._step = 0
        self._recorded = 0  # steps recorded so far (the budget never thins the first 200)
        # Thinning the settled run's recording needs the optimizer's hooks to time the step, the
        # same steps on every rank (their flushes reduce together), and no per-step check asked.
        self._budget = CostBudget(options.budget, every)
        self._timed = (
            options.budget is not None
            and optimizer is not None
            and "nonfinite" not in options.raise_on
            and not _dist.active()
        )
        self._thin = 1  # once settled, one eligible step in `_thin` is recorded
        self._anchors = sorted({p.settled or p.cadence for p in self._switched})
        if self._timed:  # the forward probes' hooks are a recorded step's cost too
            for probe in self._switched:
                probe.spent = self._budget.spent
        self._in_update: int | None = None  # slot whose optimizer update is under way
        self._step_frame = None  # the frame running the hooks of the optimizer step under way
        self._pending: int | None = None  # manual mode: slot whose update the next step() measures
        self._closed = False
        self._handles = self._hook(optimizer, scaler)
        _clipping.track(self)
        self._write_meta()
        self._arm()

    def _hook(self, optimizer: torch.optim.Optimizer | None, scaler: Any) -> list:
        """The optimizer's step hooks (and the GradScaler's), each with the handle close()
        removes."""
        handles = []
        if optimizer is not None:
            handles.append(optimizer.register_step_pre_hook(self._on_pre_step))
            handles.append(optimizer.register_step_post_hook(self._on_post_step))
        if scaler is not None:
            handles.append(
                ScalerHandle(scaler, optimizer, lambda: self._steps_taken, self._on_skipped)
            )
        return handles

    # ----------------------------------------------------------------- the step lifecycle

    def _recording(self) -> bool:
        k, rest = divmod(self._step, self.every)
        # Thinned, a step a sparse forward probe measures (one in 50 once settled) is still
        # recorded: the dead units and saturation a run ends with are read from the steps they
        # are read from without the budget (all of them, or where the thinning is deep, one in
        # `_stretch()`). A probe denser than the thinning is thinned with the rest.
        if rest or self._thin == 1 or k % self._thin == 0:
            return rest == 0
        stretch = self._stretch()
        return any(k % (c * stretch) == 0 for c in self._anchors if c > self._thin)

    def _stretch(self) -> int:
        """How much sparser the settled forward probes run under deep thinning: on a model of
        1 ms a step, their one measured step in 50 costs more than the whole budget by itself
        (about 1.9 ms each, for a 3-layer MLP's activations and backflow)."""
        return max(1, self._thin // STRETCH_AFTER)

    def _arm(self) -> None:
        """Decide, once per step, whether the coming step is recorded and which probes record at
        it; arm those of them that hook the forward pass, disarm the others that were armed."""
        self._records = self._recording()
        if not self._records:
            if not self._due and not self._armed:  # most steps of a thinned run: nothing to do
                return
            due = []
        else:
            k = self._step // self.every
            # Dense while the run is young (its first flush window), when most gradient
            # pathologies show and the first findings are made; sparser once it has settled.
            young = k < self.flush_every
            stretch = self._stretch()
            due = [
                p
                for p in self._scheduled
                if k % (p.cadence if young or p.settled is None else self._settled(p, stretch)) == 0
            ]
        self._due = due
        self._due_record = [p for p in due if p in self._recorders]
        armed = []
        for probe in self._switched:
            if probe in due:
                probe.arm()
                armed.append(probe)
            elif probe in self._armed:
                probe.disarm()
        self._armed = armed

    def _settled(self, probe: Probe, stretch: int) -> int:
        return probe.settled * stretch if probe in self._switched else probe.settled

    def _record(self) -> int:
        if self._order.active and self._order.seen_any:
            self._order.finish()
        slot = self._buffer.slot
        early, self._early = self._early == slot, None
        params = self._probeset.params
        for probe in self._due_record:
            if not (early and probe is params):
                probe.record(slot)
        inv_sq = inverse_scale_sq(self._scaler) if self._scaler is not None else None
        if inv_sq is not None:
            # Backward signals were read during a backward of the scaled loss; the parameter
            # gradients were unscaled by the scaler before the optimizer's hooks ran.
            for probe in self._probes:
                probe.unscale(slot, inv_sq)
        self._buffer.commit_loss(slot)
        if "nonfinite" in self._raise_on:
            self._stop_if_nonfinite(slot)
        return slot

    @_never_breaks_training
    def _on_skipped(self) -> None:
        """The GradScaler found inf/NaN and skipped the optimizer step: a `skipped` row, no
        gradient statistics (they are those of an overflow in float16, not of the model)."""
        for probe in self._probes:
            probe.discard()
        self._in_update = None
        slot = self._buffer.slot
        if self._early == slot:  # recorded before the user clipped: an overflow's gradients
            self._probeset.params.forget(slot)
            self._probeset.clip.forget(slot)
        self._early = None
        self._probeset.skipped.mark_skipped(slot)
        self._buffer.commit_loss(slot)
        self._buffer.commit(self._step)
        self._advance()

    def _stop_if_nonfinite(self, slot: int) -> None:
        """The opt-in per-step check: reads one flag from the device (a sync, which the user asked
        for)."""
        # The params probe's side log into the table (earlier slots are in already).
        self._probeset.params.settle(slot + 1)
        counts = self._table.data[slot, self._table.column("nonfinite")]
        grads = self._table.data[slot, self._table.column("grad_sq")]
        bad = (counts > 0) | ~torch.isfinite(grads)
        if not bool(bad.any()):
            return
        rows = [self._table.rows[i] for i in bad.nonzero().flatten().tolist()]
        layers = [n for n in self.layers() if n in rows]
        step = self._step
        self._probeset.update.discard()
        self._in_update = None
        self._buffer.commit(step)
        self.flush()
        names = ", ".join(repr(n) for n in layers)
        raise NonFiniteGradientError(
            f"Non-finite gradients at step {step} in layer(s) {names}; "
            "the optimizer step was not taken. Lower the learning rate, clip gradients, or run one "
            "step under torch.autograd.detect_anomaly() to find the operation."
        )

    def _advance(self) -> float:
        """Move to the next step (flushing a full table); returns the seconds the flush took."""
        recorded = self._records
        self._recorded += recorded
        self._step += 1
        flushed = 0.0
        full = self._buffer.slot == self.flush_every and self._pending is None
        if full:
            start = time.perf_counter()
            self.flush()
            flushed = time.perf_counter() - start
        if self._timed:
            if full:
                self._budget.flushed(flushed, self.flush_every)
            self._budget.step_ended(recorded)
            if full:
                self._thin = self._budget.retune(self._step, self._recorded)
        self._arm()
        return flushed

    @_never_breaks_training
    def _on_pre_step(self, optimizer, args, kwargs) -> None:
        frame = sys._getframe(2)  # 1 is the guard, _never_breaks_training
        start = time.perf_counter()
        if self._step_frame is not None and _encloses(self._step_frame, frame):
            # A subclass's step() that calls its parent's: torch runs the hooks again inside (once
            # the parent class has been instantiated anywhere). It is one optimizer step.
            return None
        self._step_frame = frame
        if self._in_update is not None:  # the previous step() raised before finishing
            self._probeset.update.discard()
            self._in_update = None
        if not self._records:
            if self._timed:
                self._budget.idle(time.perf_counter() - start)
            return None
        # args are those of Optimizer.step, the optimizer itself first
        closure = kwargs.get("closure", args[1] if len(args) > 1 else None)
        if callable(closure):
            # optimizer.step(closure) computes the gradients inside step (LBFGS, Lightning): record
            # once the first call of the closure has run, at the weights the step starts from.
            recorded = False

            def record_after(*a, **kw):
                nonlocal recorded
                out = closure(*a, **kw)
                if not recorded:
                    recorded = True
                    self._record_update()
                return out

            if "closure" in kwargs:
                return args, {**kwargs, "closure": record_after}
            return (args[0], record_after, *args[2:]), kwargs
        self._in_update = self._timed_record()
        return None

    @_never_breaks_training
    def _record_update(self) -> None:
        self._in_update = self._timed_record()

    def _timed_record(self) -> int:
        if not self._timed:
            return self._record()
        start = time.perf_counter()
        slot = self._record()
        self._budget.spent(time.perf_counter() - start)
        return slot

    @_never_breaks_training
    def _on_post_step(self, optimizer, args, kwargs) -> None:
        # the hooks of a nested parent step() (frame 1 is the guard)
        if sys._getframe(2) is not self._step_frame:
            return
        start = time.perf_counter()
        self._step_frame = None
        self._steps_taken += 1
        recorded = self._in_update is not None
        if recorded:
            slot, self._in_update = self._in_update, None
            for probe in self._updaters:
                probe.after_update(slot)
            self._buffer.commit(self._step)
        flushed = self._advance()
        if self._timed:
            seconds = time.perf_counter() - start - flushed
            (self._budget.spent if recorded else self._budget.idle)(seconds)

    def step(self) -> None:
        """Mark one optimizer step when no optimizer was given: call after `backward()`.

        The update ratio of a step is measured at the next call (the weights have changed by then).
        """
        if self._failed:
            return  # detached after an error of its own; training goes on unwatched
        self._check_open()
        if self.optimizer is not None:
            raise WatchError(
                "This watch hooks the optimizer's step already; remove the call to w.step()."
            )
        self._manual_step()

    @_never_breaks_training
    def _manual_step(self) -> None:
        self._finish_pending()
        if self._records:
            slot = self._record()
            self._buffer.commit(self._step)
            self._pending = slot
        self._advance()

    def before_clip(self, param_ids: set[int]) -> bool:
        """torch is about to clip the gradients of `param_ids`: record this step's gradient norms
        now, as backward produced them (see monitor/clipping.py). Whether this watch keeps the
        clip's coefficient."""
        params = self._probeset.params
        if self._closed or param_ids.isdisjoint(self._param_ids) or params not in self._due:
            return False
        try:
            # Without an optimizer the last w.step()'s update is measured, and a full table
            # flushed, at the next w.step(); the weights have moved by now, so do it here.
            self._finish_pending()
            slot = self._buffer.slot
            if self._early != slot:
                self._probeset.params.record(slot)
                self._early = slot
        except Exception as exc:
            self._fail(exc)
            return False
        return True

    def after_clip(self, coef: torch.Tensor) -> None:
        """The factor (a device scalar) clipping shrank this step's gradients' total norm by."""
        try:
            self._probeset.clip.clipped(self._buffer.slot, coef)
        except Exception as exc:
            self._fail(exc)

    def forget_update(self) -> None:
        """No optimizer step follows the last `step()` (a check at init, one measured backward):
        there is no update ratio to measure, so the pending snapshot is dropped."""
        self._pending = None

    def _finish_pending(self) -> None:
        if self._pending is not None:
            slot, self._pending = self._pending, None
            for probe in self._updaters:
                probe.after_update(slot)
        if self._buffer.slot == self.flush_every:
            self.flush()

    def log_loss(self, loss: torch.Tensor | float) -> None:
        """Record the training loss of the current step (before or after backward, before the
        optimizer step). Stays on the device; several calls in one step (accumulation) are
        averaged. The first loss with a graph has its autograd graph read once (how the output
        layer meets the loss; before backward the graph still holds the target)."""
        start = time.perf_counter()
        self._probeset.loop.note_loss(loss)
        self._buffer.log_loss(loss)
        if self._timed:
            self._budget.idle(time.perf_counter() - start)

    # ----------------------------------------------------------------- results

    def flush(self) -> None:
        """Copy the recorded steps to the host (one transfer) and append them to the store."""
        self._buffer.flush(self._step)

    _final: Diagnosis | None = None

    def diagnose(self) -> Diagnosis:
        """The diagnosis of everything recorded so far (runs the detectors; flushes first). Once
        the watch is closed nothing changes, so the detectors run once and every caller (each
        integration's close among them) gets that diagnosis."""
        if self._closed:
            if self._final is None:
                final = self._buffer.final
                if final is None:
                    final = diagnose(self._buffer.frame(), self.meta())
                self._final = _with_caveats(final)
            return self._final
        return _with_caveats(diagnose(self.stats(), self.meta()))

    def what_if(
        self,
        batches,
        steps: int = 100,
        *,
        loss_fn: Callable | None = None,
        seeds: tuple[int, ...] = (0, 1),
        max_seconds: float | None = None,
        train_step: Callable | None = None,
        metric: Callable | None = None,
    ):
        """Rehearse the remedies of this watch's diagnosis on `batches` ((inputs, target) pairs):
        the model as it is now and each change, `steps` steps each, on copies; training goes on
        untouched. Returns a `gradwatch.checks.rehearsed.RehearsedWhatIf`, best change first.
        `loss_fn(output, target)` defaults to cross-entropy for integer targets, else MSE;
        `train_step(model, optimizer, batch) -> loss` is the loop body; `metric(model) -> float`
        (lower is better, e.g. a validation error) ranks the changes instead of the loss."""
        # checks sit above monitor: imported here, as report is for w.report()
        from gradwatch.checks.rehearsed import rehearse_what_if, training_loss

        if self.optimizer is None:
            raise WatchError("w.what_if() rehearses optimizer steps: watch with optimizer=.")
        return rehearse_what_if(
            self.model,
            self.optimizer,
            batches,
            loss_fn=training_loss(loss_fn),
            diagnosis=self.diagnose(),
            steps=steps,
            seeds=seeds,
            max_seconds=max_seconds,
            train_step=train_step,
            metric=metric,
        )

    def report(self, path: str | os.PathLike = "report.html", name: str | None = None) -> Path:
        """Write the self-contained HTML report of everything recorded so far; returns its path."""
        from gradwatch.report.data import from_watch
        from gradwatch.report.html import write

        return write(
            [from_watch(self, name or (self.log_dir.name if self.log_dir else "run"))], path
        )

    def _repr_html_(self) -> str:
        from gradwatch.display.notebook import watch_html

        return watch_html(self)

    def stats(self) -> pd.DataFrame:
        """Every recorded number so far, long format: step, layer, metric, value, index."""
        if not self._closed and not self._buffer.flushing:
            if self._pending is not None:
                # Without an optimizer the last step's update ratio waits for the next w.step();
                # reading now gives that one ratio up (absent) so every step so far can be read.
                self._probeset.update.discard()
                self._pending = None
            self.flush()
        return self._buffer.frame()

    def layers(self) -> list[str]:
        """Layer names in forward order (registration order until the first forward pass).

        Layers are the modules that own parameters, activation modules, and modules whose forward
        calls an activation function.
        """
        names = list(self._table.rows)
        for probe in self._probes:
            if isinstance(probe, ActivationProbe):
                names += [n for n in probe.measured_layers() if n not in names]
        return self._order.order(names)

    @property
    def steps_seen(self) -> int:
        """Optimizer steps seen so far (recorded or not; `every` decides which are recorded)."""
        return self._step

    @property
    def log_dir(self):
        return self._writer.path if self._writer is not None else None

    @property
    def update_extra_bytes(self) -> int:
        """Peak extra memory the update-ratio snapshots hold (bytes)."""
        return self._probeset.update.extra_bytes

    # ----------------------------------------------------------------- closing

    def close(self) -> None:
        """Flush what is left, remove every hook and finish the run directory. Idempotent."""
        if self._closed:
            return
        try:
            self._finish()
        except _REQUESTED_STOPS:
            raise
        except Exception as exc:
            self._fail(exc)

    def _finish(self) -> None:
        if self._pending is not None:
            slot, self._pending = self._pending, None
            for probe in self._probes:
                probe.after_update(slot)
        self._in_update = None
        self._step_frame = None
        self.flush()
        for h in self._handles:
            h.remove()
        self._handles.clear()
        _clipping.untrack(self)
        self._order.finish()
        for probe in self._probes:
            probe.disarm()
            probe.close()
        self._closed = True
        if self._writer is not None:
            self._buffer.finish()  # the whole run's findings, for reports of the directory
            self._writer.compact()
            self._write_meta(finished=True)
        for listener in self._buffer.listeners:
            listener.close(self)

    _failed = False

    def _fail(self, exc: Exception) -> None:
        """An error of gradwatch's own while training: warn once, keep what was recorded, remove
        every hook and let training go on unwatched."""
        if self._failed:
            return
        self._closed = self._failed = True  # first: nothing below is reported twice
        warnings.warn(
            f"gradwatch stopped watching at step {self._step} after an error of its own "
            f"({type(exc).__name__}: {exc}); training goes on unwatched, and w.stats() keeps "
            "the steps recorded so far.",
            RuntimeWarning,
            stacklevel=4,
        )
        for h in self._handles:
            with contextlib.suppress(Exception):
                h.remove()
        self._handles.clear()
        _clipping.untrack(self)
        self._pending = self._in_update = self._step_frame = None
        with contextlib.suppress(Exception):
            self._probeset.update.discard()
        with contextlib.suppress(Exception):
            self._buffer.flush(self._step)  # the steps committed before the error, if it can
        for probe in self._probes:
            with contextlib.suppress(Exception):
                probe.disarm()
            with contextlib.suppress(Exception):
                probe.close()
        with contextlib.suppress(Exception):
            self._order.finish()
        with contextlib.suppress(Exception):
            self._write_meta(finished=True)

    def add_listener(self, listener) -> None:
        """Integrations (TensorBoard, W&B, MLflow, Lightning) get each flush's rows
        (`listener.rows(table)`) and the closed watch (`listener.close(watch)`)."""
        self._buffer.listeners.append(listener)

    def _check_open(self) -> None:
        if self._closed:
            raise WatchError("This watch is closed; start a new one with gw.watch().")

    def __enter__(self) -> Watch:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        name, n = type(self.model).__name__, len(self._table.rows)
        return f"<Watch {name} step={self._step} layers={n} {state}>"

    # ----------------------------------------------------------------- metadata

    def meta(self) -> dict:
        """What the run directory's meta.json holds (model summary in forward order,
        settings...)."""
        return self._run.collect(self.layers(), self._probes, self._step, thinned=self._thinned())

    def _write_meta(self, finished: bool = False) -> None:
        if self._writer is not None:
            meta = self._run.collect(
                self.layers(), self._probes, self._step, finished, thinned=self._thinned()
            )
            self._writer.write_meta(meta)

    def _thinned(self) -> list[tuple[int, int]]:
        # Read by __init__'s first _write_meta, before the budget exists.
        budget = getattr(self, "_budget", None)
        return list(budget.changes) if budget is not None else []


def _with_caveats(diagnosis: Diagnosis) -> Diagnosis:
    """`diagnosis` with what the run gave no detector to judge in `summary["warnings"]`."""
    if diagnosis.stats is not None and diagnosis.meta is not None:
        found = caveats(diagnosis.stats, diagnosis.meta)
        if found:
            diagnosis.summary["warnings"] = found
    return diagnosis


def _overrides(probe: Probe, *methods: str) -> bool:
    """Whether `probe`'s class replaces any of `methods` of `Probe` (whose own do nothing)."""
    return any(getattr(type(probe), m) is not getattr(Probe, m) for m in methods)


def _encloses(outer, frame) -> bool:
    """Whether `outer` is one of the frames that called `frame` (still running below it)."""
    frame = frame.f_back
    while frame is not None:
        if frame is outer:
            return True
        frame = frame.f_back
    return False


def _checked_optimizer(model: Any, optimizer: Any, scaler: Any) -> torch.optim.Optimizer | None:
    """The optimizer to hook (a wrapper's inner one), once model, optimizer and scaler fit."""
    if not isinstance(model, nn.Module):
        raise WatchError(f"gw.watch() needs a torch.nn.Module, got {type(model).__name__}.")
    optimizer = inner_optimizer(optimizer) if optimizer is not None else None
    if optimizer is not None and not isinstance(optimizer, torch.optim.Optimizer):
        raise WatchError(
            f"optimizer must be a torch.optim.Optimizer, got {type(optimizer).__name__}; "
            "pass optimizer=None and call w.step() yourself."
        )
    if scaler is not None and optimizer is None:
        raise WatchError("scaler= needs the optimizer it steps: pass optimizer= as well.")
    return optimizer


_COMPILED = (
    "gradwatch measures parameters of a torch.compile'd model but not its forward pass "
    "(activations, backflow, through-time): hooks inside a compiled graph would force "
    "recompilation. Watch the uncompiled model, or gw.check() it, for those."
)


def _is_compiled(model: nn.Module) -> bool:
    return isinstance(getattr(model, "_orig_mod", None), nn.Module)


def watch(
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    *,
    every: int = 1,
    log_dir: str | os.PathLike | None = None,
    flush_every: int = 50,
    update_memory: float = 0.1,
    activations: bool | int | str = "auto",
    backflow: bool | int | str = "auto",
    through_time: bool | int | str = "auto",
    histograms: bool = True,
    on_finding: Callable[[Finding], None] | None = None,
    raise_on: Iterable[str] = (),
    overwrite: bool = False,
    scaler: Any = None,
    dist_timeout: float = 60.0,
    budget: float | None = 0.03,
) -> Watch:
    """Watch `model`'s gradient flow while it trains; use as a context manager or call `close()`.

    every: record every N-th optimizer step (step 0 always).
    log_dir: write a run directory there (meta.json, stats.parquet/); read it with `gw.load`.
    flush_every: recorded steps kept on the device between copies to the host.
    update_memory: the update ratio snapshots at most this fraction of the parameter bytes per
        step (the layers take turns), instead of a copy of the whole model.
    activations, backflow, through_time: the forward-pass probes. "auto" (the default) measures
        them on one recorded step in 10 until the first flush (`flush_every` recorded steps),
        then on one in 50; True on every recorded step, an integer N on one recorded step in N
        throughout, False switches one off. Once the run is past its first flush the update
        ratio's snapshot is also taken on every other recorded step only.
    histograms: keep a 32-bin histogram of every activation's outputs (metric `act_hist`).
    on_finding: called with each new Finding as the detectors run at every flush.
    raise_on: finding kinds that stop training with an exception. "nonfinite" is checked at every
        step, before the optimizer applies the update (one host sync per step, opt-in); the others
        at each flush.
    scaler: the `torch.amp.GradScaler` that steps `optimizer`: statistics are of the unscaled
        gradients, and a step it skips (inf/NaN) is recorded as `skipped` = 1, not measured.
    dist_timeout: seconds a rank waits for the others when statistics are reduced at a flush
        (FSDP2 shards); after that it warns and keeps its own numbers.
    budget: the share of the step time the watch may take once the run is past its first 200
        recorded steps. Where its (mostly fixed) cost per recorded step is more than that, as on a
        model of a few small layers, it then records one eligible step in N (N ≤ 16, set at each
        flush from its own measured time and the step's); losses are still logged every
        step. meta.json's `thinned` lists each change as (step, N). None records every eligible
        step whatever it costs; so do a watch without an optimizer, one with raise_on="nonfinite"
        and one under torch.distributed.
    """
    return Watch(
        model,
        optimizer,
        every=every,
        log_dir=log_dir,
        flush_every=flush_every,
        update_memory=update_memory,
        activations=activations,
        backflow=backflow,
        through_time=through_time,
        histograms=histograms,
        on_finding=on_finding,
        raise_on=raise_on,
        overwrite=overwrite,
        scaler=scaler,
        dist_timeout=dist_timeout,
        budget=budget,
    )
