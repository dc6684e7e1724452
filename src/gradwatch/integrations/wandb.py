"""Weights & Biases: per-layer scalars against their own x-axis `gradwatch/step`, findings as a
table and in the run summary. NaN/Inf are logged as they are, never dropped.

W&B's step belongs to the user: a row committed by gradwatch would move it, so that the user's
next `wandb.log(..., step=s)` is dropped as "too old" and their plain `wandb.log` rows shift. So
gradwatch never commits a row while training: each recorded step's scalars are added, with
`commit=False`, to the row the user is logging, one recorded step per optimizer step (a flush
brings `flush_every` of them at once; they wait in a queue). `define_metric` plots them against
`gradwatch/step`, whichever W&B row carries them. What is still queued when the watch closes
(the last flush's steps, after the last optimizer step) is logged then, as rows of its own.
"""

from __future__ import annotations

import warnings
from collections import deque

from gradwatch.integrations._common import Listener, require, scalars


class WandbExporter(Listener):
    def __init__(self, run=None):
        wandb = require("wandb", "wandb")
        run = run if run is not None else wandb.run
        if run is None:
            from gradwatch.errors import IntegrationError

            raise IntegrationError("No W&B run is active; call wandb.init() first or pass run=.")
        self.run = run
        self._wandb = wandb
        self._queue: deque[dict[str, float]] = deque()  # recorded steps not yet handed to W&B
        self._hook = None
        self._paused = False  # W&B failed once while training: nothing more is sent until close
        run.define_metric("gradwatch/step")
        run.define_metric("gradwatch/*", step_metric="gradwatch/step")

    def hook(self, optimizer) -> None:
        """Hand one queued step to W&B after each of `optimizer`'s steps (with the user's row)."""
        if optimizer is not None:
            self._hook = optimizer.register_step_post_hook(lambda *_: self._paced())

    def _paced(self) -> None:
        try:
            self._hand_one()
        except Exception as exc:  # W&B's trouble must not end the user's training
            self._paused = True
            warnings.warn(
                f"gradwatch stopped sending statistics to W&B ({type(exc).__name__}: {exc}); "
                "the run directory and w.stats() still have them.",
                RuntimeWarning,
                stacklevel=2,
            )

    def _hand_one(self) -> None:
        if self._queue and not self._paused:
            self.run.log(self._queue.popleft(), commit=False)

    def rows(self, rows) -> None:
        self._queue.extend({"gradwatch/step": step, **values} for step, values in scalars(rows))
        if self._hook is None:  # no optimizer to pace it: one step per flush joins the user's row
            self._hand_one()

    def close(self, watch) -> None:
        if self._hook is not None:
            self._hook.remove()
            self._hook = None
        while self._queue:  # training is over: what is left gets rows of its own
            self.run.log(self._queue.popleft())
        findings = watch.diagnose().findings
        table = self._wandb.Table(columns=["severity", "kind", "layers", "summary"])
        for f in findings:
            table.add_data(f.severity, f.kind, ", ".join(f.layers), f.summary)
        self.run.log({"gradwatch/findings": table}, commit=False)
        self.run.summary["gradwatch/findings"] = [f.to_dict() for f in findings]


def attach(watch, run=None) -> WandbExporter:
    """Log `watch`'s statistics to a W&B run (the active one unless `run` is given), one recorded
    step with each optimizer step's row, never moving W&B's step."""
    exporter = WandbExporter(run)
    exporter.hook(watch.optimizer)
    watch.add_listener(exporter)
    return exporter
