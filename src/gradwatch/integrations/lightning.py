"""Lightning: `GradwatchCallback` watches a `lightning.pytorch.Trainer`'s model and optimizer.

Recording happens in the optimizer's own step hooks, so it sees what the optimizer sees: after
the closure ran, after AMP unscaling (the precision plugin's GradScaler is found and passed on),
once per optimizer step whatever `accumulate_grad_batches` is. Per-layer scalars go to the
trainer's loggers at each flush; the run directory goes to `log_dir` (default: the trainer's log
directory + `/gradwatch`).
"""

from __future__ import annotations

import contextlib
import os
import warnings
from pathlib import Path

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


class GradwatchCallback(_pl.Callback):
    def __init__(
        self,
        log_dir: str | os.PathLike | None = None,
        every: int = 1,
        log_to_loggers: bool = True,
        **watch_kwargs,
    ):
        """`watch_kwargs` go to `gradwatch.watch` (flush_every, activations, raise_on, ...)."""
        self.log_dir = log_dir
        self.every = every
        self.log_to_loggers = log_to_loggers
        self.watch_kwargs = watch_kwargs
        self.watch = None

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
        self._close()

    def on_exception(self, trainer, pl_module, exception) -> None:
        self._close()
