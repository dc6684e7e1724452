"""Hugging Face: `GradwatchCallback` for `transformers.Trainer`.

The Trainer's optimizer (accelerate's wrapper around a torch optimizer) is hooked; its GradScaler,
when fp16 is on, is found on the wrapper, so statistics are of unscaled gradients and overflow
steps are `skipped`. One record per optimizer step, however many accumulation steps it takes. The
run directory goes to `log_dir` (default: `args.output_dir/gradwatch`).
"""

from __future__ import annotations

import os
from pathlib import Path

from gradwatch.integrations._common import require

_tf = require("transformers", "transformers")


class GradwatchCallback(_tf.TrainerCallback):
    def __init__(self, log_dir: str | os.PathLike | None = None, every: int = 1, **watch_kwargs):
        """`watch_kwargs` go to `gradwatch.watch` (flush_every, activations, raise_on, ...)."""
        self.log_dir = log_dir
        self.every = every
        self.watch_kwargs = watch_kwargs
        self.watch = None

    def on_train_begin(self, args, state, control, model=None, optimizer=None, **kwargs):
        import gradwatch as gw
        from gradwatch.probes.scaler import inner_optimizer

        log_dir, options = self.log_dir, dict(self.watch_kwargs)
        if log_dir is None:
            log_dir = Path(args.output_dir) / "gradwatch"
            options.setdefault("overwrite", True)
        self.watch = gw.watch(
            model,
            inner_optimizer(optimizer),
            every=self.every,
            log_dir=log_dir,
            scaler=getattr(optimizer, "scaler", None),
            **options,
        )

    def on_train_end(self, args, state, control, **kwargs):
        if self.watch is not None:
            self.watch.close()
