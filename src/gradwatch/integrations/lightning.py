"""Lightning: `GradwatchCallback` watches a `lightning.pytorch.Trainer`'s model and optimizer.

Recording happens in the optimizer's own step hooks, so it sees what the optimizer sees: after
the closure ran, after AMP unscaling (the precision plugin's GradScaler is found and passed on),
once per optimizer step whatever `accumulate_grad_batches` is. Per-layer scalars go to the
trainer's loggers at each flush; the run directory goes to `log_dir` (default: the trainer's log
directory + `/gradwatch`).
"""

from __future__ import annotations

import collections
import contextlib
import os
import warnings
from pathlib import Path

import torch

from gradwatch.display.markdown import findings_markdown
from gradwatch.integrations._common import Listener, require, scalars

_pl = require("lightning.pytorch", "lightning")


class _TrainerLoggers(Listener):
    def __init__(self, trainer):
        self.trainer = trainer

    def rows(self, rows) -> None:
        for step, values in scalars(rows):
            for logger in self.trainer.loggers:
                logger.log_metrics(values, step=step)

    def close(self, watch) -> None:
        """Findings: a count per severity for every logger, and the text where the logger takes
        text."""
        findings = watch.diagnose().findings
        counts = {
            f"gradwatch/findings_{s}": float(sum(f.severity == s for f in findings))
            for s in ("info", "warning", "error")
        }
        text = findings_markdown(findings)
        for logger in self.trainer.loggers:
            logger.log_metrics(counts, step=watch.steps_seen)
            experiment = getattr(logger, "experiment", None)
            if hasattr(experiment, "add_text"):  # TensorBoard
                experiment.add_text("gradwatch/findings", text, watch.steps_seen)
            elif hasattr(
                logger, "log_text"
            ):  # WandbLogger; other loggers' log_text take other arguments
                with contextlib.suppress(TypeError):
                    logger.log_text(key="gradwatch/findings", columns=["findings"], data=[[text]])
            logger.save()


def _lightning_step(model, optimizer, batch):
    """One automatic-optimization step of a LightningModule copy: its own training_step."""
    optimizer.zero_grad(set_to_none=True)
    out = model.training_step(batch, 0)
    loss = out["loss"] if isinstance(out, dict) else out
    loss.backward()
    optimizer.step()
    return loss


def _detached(batch):
    if isinstance(batch, torch.Tensor):
        return batch.detach().clone()
    if isinstance(batch, list | tuple):
        return tuple(_detached(b) for b in batch)
    if isinstance(batch, dict):
        return {k: _detached(v) for k, v in batch.items()}
    return batch


class GradwatchCallback(_pl.Callback):
    def __init__(
        self,
        log_dir: str | os.PathLike | None = None,
        every: int = 1,
        log_to_loggers: bool = True,
        what_if: bool = False,
        what_if_steps: int = 100,
        what_if_batches: int = 8,
        **watch_kwargs,
    ):
        """`watch_kwargs` go to `gradwatch.watch` (flush_every, activations, raise_on, ...).

        `what_if=True` rehearses, when training ends, the remedies of the run's diagnosis: the
        module as training left it and each change, `what_if_steps` steps of its own
        `training_step` on copies, on the last `what_if_batches` training batches (they must be
        (inputs, target) pairs). The result is `callback.what_if_result` (a `RehearsedWhatIf`),
        printed, and sent as text to the loggers that take text. `callback.what_if()` does the
        same at any time, e.g. from another callback while training goes on."""
        if not isinstance(what_if_steps, int) or what_if_steps < 1:
            raise ValueError(f"what_if_steps must be a positive integer, got {what_if_steps!r}.")
        if not isinstance(what_if_batches, int) or what_if_batches < 1:
            raise ValueError(
                f"what_if_batches must be a positive integer, got {what_if_batches!r}."
            )
        self.log_dir = log_dir
        self.every = every
        self.log_to_loggers = log_to_loggers
        self.watch_kwargs = watch_kwargs
        self.watch = None
        self.what_if_enabled = what_if
        self.what_if_steps = what_if_steps
        self.what_if_result = None
        self._recent: collections.deque = collections.deque(maxlen=what_if_batches)
        self._trainer = None
        self._module = None

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self.what_if_enabled and self.watch is not None:
            self._recent.append(_detached(batch))

    def what_if(self, batches=None, steps: int | None = None, **kwargs):
        """Rehearse the diagnosis's remedies on copies of the module (its `training_step`) on
        `batches` (default: the last training batches seen; kept only with `what_if=True`).
        Training is not touched. Returns a `RehearsedWhatIf`; `kwargs` go to `Watch.what_if`."""
        from gradwatch.errors import WatchError

        if self.watch is None or self._module is None:
            raise WatchError(
                "callback.what_if() needs a fit under way or ended with this callback."
            )
        batches = list(self._recent) if batches is None else batches
        if not batches:
            raise WatchError(
                "callback.what_if() has no batches: pass batches=, or create the callback with "
                "what_if=True so it keeps the last training batches."
            )
        module, trainer = self._module, getattr(self._module, "_trainer", None)
        # The copies must not log to, or carry, the trainer: it is set aside while they are made.
        module._trainer = None
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                kwargs.setdefault("train_step", _lightning_step)
                return self.watch.what_if(batches, steps=steps or self.what_if_steps, **kwargs)
        finally:
            module._trainer = trainer

    def on_fit_start(self, trainer, pl_module) -> None:
        import gradwatch as gw

        if not trainer.optimizers:
            return
        if len(trainer.optimizers) > 1:
            warnings.warn(
                "gradwatch watches the first of the trainer's optimizers only.", stacklevel=2
            )
        log_dir, kwargs = self.log_dir, dict(self.watch_kwargs)
        if log_dir is None:
            log_dir = Path(trainer.log_dir or trainer.default_root_dir) / "gradwatch"
            kwargs.setdefault("overwrite", True)
        self._module = pl_module
        self.watch = gw.watch(
            pl_module,
            trainer.optimizers[0],
            every=self.every,
            log_dir=log_dir,
            scaler=getattr(trainer.precision_plugin, "scaler", None),
            **kwargs,
        )
        if self.log_to_loggers and trainer.loggers and trainer.is_global_zero:
            self.watch.add_listener(_TrainerLoggers(trainer))

    def on_before_backward(self, trainer, pl_module, loss) -> None:
        if self.watch is not None:
            if pl_module.automatic_optimization:
                # Lightning hands over the loss divided by accumulate_grad_batches (what backward
                # needs); the run records the loss the training step returned.
                loss = loss.detach() * trainer.accumulate_grad_batches
            self.watch.log_loss(loss)

    def _close(self) -> None:
        if self.watch is not None:
            self.watch.close()

    def on_fit_end(self, trainer, pl_module) -> None:
        if self.what_if_enabled and self.watch is not None and trainer.is_global_zero:
            self._rehearse(trainer)
        self._close()

    def _rehearse(self, trainer) -> None:
        try:
            self.what_if_result = self.what_if()
        except Exception as exc:  # noqa: BLE001 - a what-if must never fail the fit
            warnings.warn(f"gradwatch what-if did not run: {exc}", stacklevel=2)
            return
        text = str(self.what_if_result)
        _pl.utilities.rank_zero_info(text)
        for logger in trainer.loggers if self.log_to_loggers else ():
            experiment = getattr(logger, "experiment", None)
            if hasattr(experiment, "add_text"):  # TensorBoard
                experiment.add_text(
                    "gradwatch/what_if", f"<pre>{text}</pre>", self.watch.steps_seen
                )

    def on_exception(self, trainer, pl_module, exception) -> None:
        self._close()
