"""TensorBoard: a scalar per layer and metric (`gradwatch/grad_norm/0`), findings as text."""

from __future__ import annotations

import os

from gradwatch.display.markdown import findings_markdown
from gradwatch.integrations._common import Listener, require, scalars


class TensorBoardExporter(Listener):
    def __init__(self, log_dir: str | os.PathLike | None = None, writer=None):
        if writer is None:
            require("tensorboard", "tensorboard")
            from torch.utils.tensorboard import SummaryWriter

            writer = SummaryWriter(log_dir=None if log_dir is None else str(log_dir))
            self._own = True
        else:
            self._own = False
        self.writer = writer

    def rows(self, rows) -> None:
        for step, values in scalars(rows):
            for tag, value in values.items():
                self.writer.add_scalar(tag, value, step)

    def close(self, watch) -> None:
        self.writer.add_text(
            "gradwatch/findings", findings_markdown(watch.diagnose().findings), watch.steps_seen
        )
        self.writer.flush()
        if self._own:
            self.writer.close()


def attach(watch, log_dir: str | os.PathLike | None = None, writer=None) -> TensorBoardExporter:
    """Send `watch`'s statistics to TensorBoard at every flush (a SummaryWriter of yours, or one
    made for `log_dir`); the diagnosis is written as text when the watch closes."""
    exporter = TensorBoardExporter(log_dir, writer)
    watch.add_listener(exporter)
    return exporter
