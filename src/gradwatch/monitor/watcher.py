"""`Watch`: owns the probes, the step counter, the on-device step table and flushing to the store."""

from __future__ import annotations

import datetime as _dt
import os
import platform
import sys
import warnings
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import torch
from torch import nn

from gradwatch._nn import (
    ROOT_NAME,
    ForwardOrder,
    ParamLayer,
    model_device,
    param_bytes,
    param_layers,
    unwrap,
)
from gradwatch._tensor import to_host
from gradwatch._version import __version__
from gradwatch.diagnose import KINDS, Diagnosis, Finding, diagnose
from gradwatch.errors import NonFiniteGradientError, TrainingStoppedError, WatchError
from gradwatch.monitor import distributed as _dist
from gradwatch.monitor.meta import init_stats, model_summary, optimizer_summary
from gradwatch.probes.activation_specs import module_spec
from gradwatch.probes.activations import ActivationProbe
from gradwatch.probes.backflow import BackflowProbe
from gradwatch.probes.base import ABSENT, Probe, StepTable
from gradwatch.probes.loop import LoopProbe
from gradwatch.probes.params import ParamProbe
from gradwatch.probes.scaler import ScalerHandle, SkippedProbe, inner_optimizer, inverse_scale_sq
from gradwatch.probes.through_time import ThroughTimeProbe
from gradwatch.probes.updates import UpdateProbe
from gradwatch.store import RunWriter, empty_stats, long_table, normalize, to_frame

# The forward probes' default ("auto"): one recorded step in 10 during the first flush window, one
# in 50 after. With the update probe's turn on every other recorded step once settled, this keeps
# the 20-layer MLP of bench/overhead.py within 5% (bench/RESULTS.md, run I); at one in 25 or 50
# from the start, the diagnosis suite missed dying ReLUs that one in 10 finds (run H).
AUTO_CADENCE = (10, 50)
SETTLED_UPDATE_CADENCE = 2


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
    ):
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
        for name, value in (("every", every), ("flush_every", flush_every)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise WatchError(f"{name} must be a positive integer, got {value!r}.")
        raise_on = tuple(raise_on)
        unknown = [k for k in raise_on if k not in KINDS]
        if unknown:
            raise WatchError(
                f"raise_on names unknown finding kinds {unknown}; choose from {', '.join(KINDS)}."
            )
        cadences, settled = {}, {}
        for name, value in (
            ("activations", activations),
            ("backflow", backflow),
            ("through_time", through_time),
        ):
            if value == "auto":
                cadences[name], settled[name] = AUTO_CADENCE
                continue
            if value is True:
                value = 1
            if value is False or value is None:
                value = 0
            if not isinstance(value, int) or value < 0:
                raise WatchError(
                    f'{name} must be "auto", True, False or a positive integer (record one step in N), got {value!r}.'
                )
            cadences[name] = settled[name] = value
        self.model = unwrap(model)
        if _is_compiled(model) and any(cadences.values()):
            warnings.warn(
                "gradwatch measures parameters of a torch.compile'd model but not its forward pass "
                "(activations, backflow, through-time): hooks inside a compiled graph would force "
                "recompilation. Watch the uncompiled model, or gw.check() it, for those.",
                stacklevel=3,
            )
            cadences = dict.fromkeys(cadences, 0)
            settled = dict(cadences)
        self.optimizer = optimizer
        self.every = every
        self.flush_every = flush_every
        self._player: list[ParamLayer] = param_layers(self.model)
        if not self._player:
            raise WatchError("The model has no parameters, so there is no gradient to watch.")
        self._order = ForwardOrder(self.model)
        self._init = init_stats(self.model, self._player)
        self._table = StepTable(flush_every, model_device(self.model))
        self._params_probe = ParamProbe(self._player)
        stepped = (
            {id(p) for g in optimizer.param_groups for p in g["params"]}
            if optimizer is not None
            else None
        )
        self._update_probe = UpdateProbe(self._player, update_memory, stepped)
        self._probes: list[Probe] = [
            self._params_probe,
            self._update_probe,
        ]  # this order: see ParamProbe.record
        self._update_probe.settled = SETTLED_UPDATE_CADENCE
        forward: dict[str, Probe] = {}
        if cadences["backflow"]:
            watched = {layer.name: _module(self.model, layer.name) for layer in self._player}
            for name, m in self.model.named_modules():
                if module_spec(m) is not None:
                    watched.setdefault(name or ROOT_NAME, m)
            forward["backflow"] = BackflowProbe(watched, cadences["backflow"])
        if cadences["activations"]:
            forward["activations"] = ActivationProbe(
                self.model, cadences["activations"], histograms
            )
        if cadences["through_time"]:
            forward["through_time"] = ThroughTimeProbe(self.model, cadences["through_time"])
        for name, probe in forward.items():
            probe.settled = settled[name]
            self._probes.append(probe)
        self._scaler = scaler
        self._skipped = SkippedProbe(flush_every) if scaler is not None else None
        if self._skipped is not None:
            self._probes.append(self._skipped)
        self._loop = LoopProbe(self.model, optimizer)  # the loss graph, inputs, zero_grad
        self._probes.append(self._loop)
        for probe in self._probes:
            self._table.declare(probe.columns, probe.rows())
        self._table.allocate()
        for probe in self._probes:
            probe.bind(self._table)
        self._settings = {
            "every": every,
            "flush_every": flush_every,
            "update_memory": update_memory,
            "activations": cadences["activations"],
            "backflow": cadences["backflow"],
            "through_time": cadences["through_time"],
            # From recorded step `flush_every` on (the run has settled): one recorded step in N.
            "settled": {**settled, "update": SETTLED_UPDATE_CADENCE},
            "histograms": histograms,
            "optimizer": type(optimizer).__name__ if optimizer is not None else None,
            "scaler": type(scaler).__name__ if scaler is not None else None,
        }
        self._sharded = self._params_probe._sharded
        self._dist_timeout = dist_timeout
        self._listeners: list = []
        self._steps_taken = 0  # optimizer steps that actually ran (a GradScaler may skip some)
        self._step = 0
        self._slot = 0
        self._slot_steps: list[int] = []
        self._in_update: int | None = None  # slot whose optimizer update is under way
        self._step_frame = None  # the frame running the hooks of the optimizer step under way
        self._pending: int | None = None  # manual mode: slot whose update the next step() measures
        self._chunks: list[pa.Table] = []  # one per flush; pandas frames are built on demand
        self._frames: list[pd.DataFrame] = []
        # Losses logged since the last recorded step (device scalars or floats), then per slot;
        # averaged on the host at flush. A loss may be negative (a log-likelihood, a GAN's
        # critic), so it stays out of the table, whose "negative is absent" marker cannot tell.
        self._losses: list[torch.Tensor | float] = []
        self._slot_losses: list[list[torch.Tensor | float] | None] = [None] * flush_every
        self._on_finding = on_finding
        self._raise_on = raise_on
        self._reported: set[tuple[str, tuple[str, ...]]] = set()
        self._closed = False
        self._started = _now()
        # Under torch.distributed every rank measures and reduces; rank 0 alone writes the store.
        write = log_dir is not None and _dist.rank() == 0
        self._writer = RunWriter(log_dir, overwrite=overwrite) if write else None
        self._handles = []
        if optimizer is not None:
            self._handles.append(optimizer.register_step_pre_hook(self._on_pre_step))
            self._handles.append(optimizer.register_step_post_hook(self._on_post_step))
        if scaler is not None:
            self._handles.append(
                ScalerHandle(scaler, optimizer, lambda: self._steps_taken, self._on_skipped)
            )
        self._write_meta()
        self._arm()

    # ----------------------------------------------------------------- the step lifecycle

    def _recording(self) -> bool:
        return self._step % self.every == 0

    def _active(self, probe: Probe) -> bool:
        if not self._recording():
            return False
        k = self._step // self.every
        # Dense while the run is young (its first flush window), when most gradient pathologies
        # show and the first findings are made; sparser once it has settled.
        cadence = probe.cadence if k < self.flush_every or probe.settled is None else probe.settled
        return k % cadence == 0

    def _arm(self) -> None:
        for probe in self._probes:
            probe.arm() if self._active(probe) else probe.disarm()

    def _record(self) -> int:
        if self._order.active and self._order.seen_any:
            self._order.finish()
        slot = self._slot
        for probe in self._probes:
            if self._active(probe):
                probe.record(slot)
        inv_sq = inverse_scale_sq(self._scaler) if self._scaler is not None else None
        if inv_sq is not None:
            # Backward signals were read during a backward of the scaled loss; the parameter
            # gradients were unscaled by the scaler before the optimizer's hooks ran.
            for probe in self._probes:
                probe.unscale(slot, inv_sq)
        self._commit_loss(slot)
        if "nonfinite" in self._raise_on:
            self._stop_if_nonfinite(slot)
        return slot

    def _commit_loss(self, slot: int) -> None:
        """The losses logged since the last recorded step belong to `slot` (averaged at flush)."""
        self._slot_losses[slot] = self._losses or None
        self._losses = []

    def _on_skipped(self) -> None:
        """The GradScaler found inf/NaN and skipped the optimizer step: a `skipped` row, no
        gradient statistics (they are those of an overflow in float16, not of the model)."""
        for probe in self._probes:
            probe.discard()
        self._in_update = None
        slot = self._slot
        self._skipped.mark_skipped(slot)
        self._commit_loss(slot)
        self._commit(slot)
        self._advance()

    def _stop_if_nonfinite(self, slot: int) -> None:
        """The opt-in per-step check: reads one flag from the device (a sync, which the user asked for)."""
        self._params_probe.settle(
            slot + 1
        )  # its side log into the table (earlier slots are in already)
        counts = self._table.data[slot, self._table.column("nonfinite")]
        grads = self._table.data[slot, self._table.column("grad_sq")]
        bad = (counts > 0) | ~torch.isfinite(grads)
        if not bool(bad.any()):
            return
        rows = [self._table.rows[i] for i in bad.nonzero().flatten().tolist()]
        layers = [n for n in self.layers() if n in rows]
        step = self._step
        self._update_probe.discard()
        self._in_update = None
        self._commit(slot)
        self.flush()
        raise NonFiniteGradientError(
            f"Non-finite gradients at step {step} in layer(s) {', '.join(repr(n) for n in layers)}; "
            "the optimizer step was not taken. Lower the learning rate, clip gradients, or run one "
            "step under torch.autograd.detect_anomaly() to find the operation."
        )

    def _commit(self, slot: int) -> None:
        self._slot_steps.append(self._step)
        self._slot += 1

    def _advance(self) -> None:
        self._step += 1
        if self._slot == self.flush_every and self._pending is None:
            self.flush()
        self._arm()

    def _on_pre_step(self, optimizer, args, kwargs) -> None:
        frame = sys._getframe(1)
        if self._step_frame is not None and _encloses(self._step_frame, frame):
            # A subclass's step() that calls its parent's: torch runs the hooks again inside (once
            # the parent class has been instantiated anywhere). It is one optimizer step.
            return None
        self._step_frame = frame
        if self._in_update is not None:  # the previous step() raised before finishing
            self._update_probe.discard()
            self._in_update = None
        if not self._recording():
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
                    self._in_update = self._record()
                return out

            if "closure" in kwargs:
                return args, {**kwargs, "closure": record_after}
            return (args[0], record_after, *args[2:]), kwargs
        self._in_update = self._record()
        return None

    def _on_post_step(self, optimizer, args, kwargs) -> None:
        if sys._getframe(1) is not self._step_frame:  # the hooks of a nested parent step()
            return
        self._step_frame = None
        self._steps_taken += 1
        if self._in_update is not None:
            slot, self._in_update = self._in_update, None
            for probe in self._probes:
                probe.after_update(slot)
            self._commit(slot)
        self._advance()

    def step(self) -> None:
        """Mark one optimizer step when no optimizer was given: call after `backward()`.

        The update ratio of a step is measured at the next call (the weights have changed by then).
        """
        self._check_open()
        if self.optimizer is not None:
            raise WatchError(
                "This watch hooks the optimizer's step already; remove the call to w.step()."
            )
        self._finish_pending()
        if self._recording():
            slot = self._record()
            self._commit(slot)
            self._pending = slot
        self._advance()

    def forget_update(self) -> None:
        """No optimizer step follows the last `step()` (a check at init, one measured backward):
        there is no update ratio to measure, so the pending snapshot is dropped."""
        self._pending = None

    def _finish_pending(self) -> None:
        if self._pending is not None:
            slot, self._pending = self._pending, None
            for probe in self._probes:
                probe.after_update(slot)
        if self._slot == self.flush_every:
            self.flush()

    def log_loss(self, loss: torch.Tensor | float) -> None:
        """Record the training loss of the current step (before or after backward, before the
        optimizer step). Stays on the device; several calls in one step (accumulation) are
        averaged. The first loss with a graph has its autograd graph read once (how the output
        layer meets the loss; before backward the graph still holds the target)."""
        self._loop.note_loss(loss)
        if not isinstance(loss, torch.Tensor):
            self._losses.append(float(loss))
            return
        if loss.numel() != 1:
            raise WatchError(
                f"log_loss takes the scalar loss of the step; got a tensor of shape {tuple(loss.shape)}: reduce it first (e.g. loss.mean())."
            )
        # A copy (the caller may change its tensor in place), still on the device: no sync.
        self._losses.append(
            loss.detach().reshape(()).to(self._table.device, self._table.dtype, copy=True)
        )

    # ----------------------------------------------------------------- results

    _flushing = False

    def flush(self) -> None:
        """Copy the recorded steps to the host (one transfer) and append them to the store."""
        n = self._slot
        if n == 0 or self._flushing:
            return
        self._flushing = True
        try:
            self._flush(n)
        finally:
            self._flushing = False

    def _flush(self, n: int) -> None:
        for probe in self._probes:
            probe.settle(n)
        if self._sharded and _dist.active():
            cols = [self._table.column(c) for c in _dist.SUMMED if c in self._table.columns]
            block = self._table.data[:n, cols]
            self._table.data[:n, cols] = _dist.reduce_sums(block, self._dist_timeout)
        raw = self._table.take(n)
        for probe in self._probes:
            raw.update(probe.take(n))
        loss, loss_present = self._take_losses(n)
        steps = np.asarray(self._slot_steps[:n], dtype=np.int64)
        self._slot, self._slot_steps = 0, self._slot_steps[n:]
        blocks = [block for probe in self._probes for block in probe.finalize(raw)]
        blocks.append(("loss", ["(model)"], loss[:, None], loss_present[:, None]))
        rows = long_table(blocks, steps)
        self._chunks.append(rows)
        if self._writer is not None:
            if len(self._chunks) == 1:
                self._write_meta()  # the forward order is known now
            self._writer.append(rows)
        if self._on_finding is not None or self._raise_on or self._writer is not None:
            self._stream_findings()
        for listener in self._listeners:
            listener.rows(rows)

    def _take_losses(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        """Each of the first `n` slots' mean logged loss (one copy from the device for all), and
        which slots have one."""
        slots, self._slot_losses = self._slot_losses[:n], self._slot_losses[n:] + [None] * n
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

    def _stream_findings(self) -> None:
        """Run the detectors over the recent past; report findings not reported before.

        A window of the last ten flushes keeps the cost per flush flat however long the run is.
        """
        recent = self._frame(len(self._chunks) - 10)
        diagnosis = diagnose(recent, self.meta())
        if self._writer is not None:
            self._writer.write_findings([f.to_dict() for f in diagnosis.findings])
        for finding in diagnosis.findings:
            key = (finding.kind, finding.layers)
            if key in self._reported:
                continue
            self._reported.add(key)
            if self._on_finding is not None:
                self._on_finding(finding)
            # "nonfinite" is checked at every step, before the update, by _stop_if_nonfinite.
            if (
                finding.kind in self._raise_on
                and finding.kind != "nonfinite"
                and finding.severity in ("warning", "error")
            ):
                raise TrainingStoppedError(
                    f"gradwatch stopped training at step {self._step} on {finding.kind} ({finding.summary}) "
                    f"because raise_on includes it; see w.diagnose() for remedies."
                )

    _final: Diagnosis | None = None

    def diagnose(self) -> Diagnosis:
        """The diagnosis of everything recorded so far (runs the detectors; flushes first). Once
        the watch is closed nothing changes, so the detectors run once and every caller (each
        integration's close among them) gets that diagnosis."""
        if self._closed:
            if self._final is None:
                self._final = diagnose(self._all_stats(), self.meta())
            return self._final
        return diagnose(self.stats(), self.meta())

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

    def _all_stats(self) -> pd.DataFrame:
        return self._frame(0)

    def _frame(self, first: int) -> pd.DataFrame:
        """The flushed rows from chunk `first` on, as a DataFrame (converted once per chunk)."""
        while len(self._frames) < len(self._chunks):
            self._frames.append(to_frame(self._chunks[len(self._frames)]))
        frames = self._frames[max(first, 0) :]
        if not frames:
            return empty_stats()
        return (
            frames[0].copy()
            if len(frames) == 1
            else normalize(pd.concat(frames, ignore_index=True))
        )

    def stats(self) -> pd.DataFrame:
        """Every recorded number so far, long format: step, layer, metric, value, index."""
        if not self._closed and self._pending is None and not self._flushing:
            self.flush()
        return self._all_stats()

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
        return self._update_probe.extra_bytes

    # ----------------------------------------------------------------- closing

    def close(self) -> None:
        """Flush what is left, remove every hook and finish the run directory. Idempotent."""
        if self._closed:
            return
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
        self._order.finish()
        for probe in self._probes:
            probe.disarm()
            probe.close()
        self._closed = True
        if self._writer is not None:
            self._writer.compact()
            self._write_meta(finished=True)
        for listener in self._listeners:
            listener.close(self)

    def add_listener(self, listener) -> None:
        """Integrations (TensorBoard, W&B, MLflow, Lightning) get each flush's rows
        (`listener.rows(table)`) and the closed watch (`listener.close(watch)`)."""
        self._listeners.append(listener)

    def _check_open(self) -> None:
        if self._closed:
            raise WatchError("This watch is closed; start a new one with gw.watch().")

    def __enter__(self) -> Watch:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return f"<Watch {type(self.model).__name__} step={self._step} layers={len(self._table.rows)} {state}>"

    # ----------------------------------------------------------------- metadata

    def meta(self) -> dict:
        """What the run directory's meta.json holds (model summary in forward order, settings...)."""
        order = self.layers()
        probes: dict = {}
        for probe in self._probes:
            probes.update(probe.meta())
        return {
            "format": 1,
            "gradwatch_version": __version__,
            "torch_version": torch.__version__,
            "python_version": platform.python_version(),
            "device": str(self._table.device),
            "started": self._started,
            "finished": None,
            "settings": self._settings,
            "model": {
                **model_summary(self.model, self._player, order, self._init),
                "param_bytes": param_bytes(self.model),
            },
            "optimizer": optimizer_summary(self.optimizer),
            "probes": probes,
            "layer_order": order,
            "steps_seen": self._step,
        }

    def _write_meta(self, finished: bool = False) -> None:
        if self._writer is None:
            return
        meta = self.meta()
        if finished:
            meta["finished"] = _now()
        self._writer.write_meta(meta)


def _encloses(outer, frame) -> bool:
    """Whether `outer` is one of the frames that called `frame` (still running below it)."""
    frame = frame.f_back
    while frame is not None:
        if frame is outer:
            return True
        frame = frame.f_back
    return False


def _is_compiled(model: nn.Module) -> bool:
    return isinstance(getattr(model, "_orig_mod", None), nn.Module)


def _module(model: nn.Module, name: str) -> nn.Module:
    return model if name == ROOT_NAME else model.get_submodule(name)


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


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
        ratio's snapshot is also taken on every other recorded step only. The default keeps the
        whole watch within 5% of plain training on the 20-layer MLP of bench/overhead.py.
    histograms: keep a 32-bin histogram of every activation's outputs (metric `act_hist`).
    on_finding: called with each new Finding as the detectors run at every flush.
    raise_on: finding kinds that stop training with an exception. "nonfinite" is checked at every
        step, before the optimizer applies the update (one host sync per step, opt-in); the others
        at each flush.
    scaler: the `torch.amp.GradScaler` that steps `optimizer`: statistics are of the unscaled
        gradients, and a step it skips (inf/NaN) is recorded as `skipped` = 1, not measured.
    dist_timeout: seconds a rank waits for the others when statistics are reduced at a flush
        (FSDP2 shards); after that it warns and keeps its own numbers.
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
    )
