"""MLflow: per-layer metrics with the optimizer step as MLflow's step, findings as a JSON
artifact."""

from __future__ import annotations

import re
import time

from gradwatch.integrations._common import Listener, require, scalars

_BATCH = 1000  # MLflow's limit of metrics per log_batch call


def _key(tag: str) -> str:
    # MLflow keys allow letters, digits, _ - . space / only; "(root)" would be refused
    return re.sub(r"[^\w\-. /]", "_", tag)


class MlflowExporter(Listener):
    def __init__(self, run_id: str | None = None):
        mlflow = require("mlflow", "mlflow")
        if run_id is None:
            active = mlflow.active_run()
            if active is None:
                from gradwatch.errors import IntegrationError

                raise IntegrationError(
                    "No MLflow run is active; call mlflow.start_run() first or pass run_id=."
                )
            run_id = active.info.run_id
        self.run_id = run_id
        self.client = mlflow.tracking.MlflowClient()
        self._Metric = mlflow.entities.Metric

    def rows(self, rows) -> None:
        now = int(time.time() * 1000)
        metrics = [
            self._Metric(_key(tag), value, now, step)
            for step, values in scalars(rows)
            for tag, value in values.items()
        ]
        for i in range(0, len(metrics), _BATCH):
            self.client.log_batch(self.run_id, metrics=metrics[i : i + _BATCH])

    def close(self, watch) -> None:
        self.client.log_dict(self.run_id, watch.diagnose().to_dict(), "gradwatch/findings.json")


def attach(watch, run_id: str | None = None) -> MlflowExporter:
    """Log `watch`'s statistics to an MLflow run (the active one unless `run_id`) at every flush."""
    exporter = MlflowExporter(run_id)
    watch.add_listener(exporter)
    return exporter
