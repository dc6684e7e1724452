"""Hugging Face: `GradwatchCallback` for `transformers.Trainer`.

The Trainer's optimizer (accelerate's wrapper around a torch optimizer) is hooked; its GradScaler,
when fp16 is on, is found on the wrapper, so statistics are of unscaled gradients and overflow
steps are `skipped`. One record per optimizer step, however many accumulation steps it takes, with
the loss the Trainer itself accumulates for that step. At each flush the latest recorded step's
scalars go to the `on_log` of every `report_to` logger callback (as `Trainer.log` sends them).
The run directory goes to `log_dir` (default: `args.output_dir/gradwatch`).

A callback sees no event when training ends in an exception or an interrupt, so the callback
wraps its Trainer's `train` (found from the callback's caller) to flush and detach the watch then.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from gradwatch.integrations._common import Listener, require, scalars

_tf = require("transformers", "transformers")


def _calling_trainer():
    """The Trainer whose callback handler called us (a callback is not handed its Trainer)."""
    frame = sys._getframe(2)
    while frame is not None:
        candidate = frame.f_locals.get("self")
        if isinstance(candidate, _tf.Trainer):
            return candidate
        frame = frame.f_back
    return None


class _ReportTo(Listener):
    """Each flush's latest recorded step, to the `on_log` of the Trainer's `report_to` logger
    callbacks: the mechanism `Trainer.log` uses, minus the console printers (a line of every
    layer's numbers at each flush) and `state.log_history` (saved in every checkpoint)."""

    def __init__(self, trainer):
        from transformers.integrations import get_reporting_integration_callbacks

        self.trainer = trainer
        kinds = tuple(get_reporting_integration_callbacks(trainer.args.report_to))
        self.loggers = [
            cb for cb in trainer.callback_handler.callbacks if kinds and isinstance(cb, kinds)
        ]

    def rows(self, rows) -> None:
        steps = list(scalars(rows))
        if not steps or not self.loggers:
            return
        step, values = steps[-1]
        t = self.trainer
        for logger in self.loggers:
            logger.on_log(t.args, t.state, t.control, logs={**values, "gradwatch/step": step})


class GradwatchCallback(_tf.TrainerCallback):
    def __init__(
        self,
        log_dir: str | os.PathLike | None = None,
        every: int = 1,
        log_to_loggers: bool = True,
        **watch_kwargs,
    ):
        """`watch_kwargs` go to `gradwatch.watch` (flush_every, activations, raise_on, ...);
        `log_to_loggers=False` keeps gradwatch's scalars out of the Trainer's loggers."""
        self.log_dir = log_dir
        self.every = every
        self.log_to_loggers = log_to_loggers
        self.watch_kwargs = watch_kwargs
        self.watch = None
        self._trainer = None
        self._loss = None  # the Trainer's loss of the optimizer step under way, on the device

    def _adopt(self, trainer) -> None:
        """Wrap `trainer.train` (flush and detach on an exception) and `trainer.training_step`
        (sum each micro-batch's loss, as the Trainer does for its own log)."""
        if trainer is None or trainer.__dict__.get("_gradwatch_callback") is self:
            return
        self._trainer = trainer
        trainer._gradwatch_callback = self
        train, training_step = trainer.train, trainer.training_step

        def guarded_train(*args, **kwargs):
            try:
                return train(*args, **kwargs)
            except BaseException:
                self._close()  # what was recorded is flushed; no hook stays on the optimizer
                raise

        def summed_training_step(*args, **kwargs):
            loss = training_step(*args, **kwargs)
            if self.watch is not None and hasattr(loss, "detach"):
                loss = loss.detach()
                self._loss = loss if self._loss is None else self._loss + loss
            return loss

        trainer.train = guarded_train
        trainer.training_step = summed_training_step

    def on_init_end(self, args, state, control, **kwargs):
        self._adopt(_calling_trainer())

    def on_train_begin(self, args, state, control, model=None, optimizer=None, **kwargs):
        import gradwatch as gw
        from gradwatch.probes.scaler import inner_optimizer

        self._adopt(_calling_trainer())  # a callback added with trainer.add_callback
        log_dir, options = self.log_dir, dict(self.watch_kwargs)
        if log_dir is None:
            log_dir = Path(args.output_dir) / "gradwatch"
            options.setdefault("overwrite", True)
        self._loss = None
        self.watch = gw.watch(
            model,
            inner_optimizer(optimizer),
            every=self.every,
            log_dir=log_dir,
            scaler=getattr(optimizer, "scaler", None),
            **options,
        )
        if self.log_to_loggers and self._trainer is not None and state.is_world_process_zero:
            self.watch.add_listener(_ReportTo(self._trainer))

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        if self.watch is not None and self._loss is not None:
            self.watch.log_loss(self._loss)
        self._loss = None

    def _close(self) -> None:
        if self.watch is not None:
            self.watch.close()

    def on_train_end(self, args, state, control, **kwargs):
        self._close()
