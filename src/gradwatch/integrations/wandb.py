"""Weights & Biases: per-layer scalars against their own x-axis `gradwatch/step`, findings as a
table and in the run summary. NaN/Inf are logged as they are, never dropped."""

from __future__ import annotations

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
        # the user's own wandb.log calls keep their step; ours have their own axis
        run.define_metric("gradwatch/step")
        run.define_metric("gradwatch/*", step_metric="gradwatch/step")

    def rows(self, rows) -> None:
        for step, values in scalars(rows):
            self.run.log({"gradwatch/step": step, **values})

    def close(self, watch) -> None:
        findings = watch.diagnose().findings
        table = self._wandb.Table(columns=["severity", "kind", "layers", "summary"])
        for f in findings:
            table.add_data(f.severity, f.kind, ", ".join(f.layers), f.summary)
        self.run.log({"gradwatch/findings": table})
        self.run.summary["gradwatch/findings"] = [f.to_dict() for f in findings]


def attach(watch, run=None) -> WandbExporter:
    """Log `watch`'s statistics to a W&B run (the active one unless `run` is given) at every
    flush."""
    exporter = WandbExporter(run)
    watch.add_listener(exporter)
    return exporter
