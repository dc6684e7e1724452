"""What every integration shares: importing its framework lazily, and a flush's rows as scalars."""

from __future__ import annotations

import importlib
import re
from collections.abc import Iterator
from types import ModuleType

import pyarrow as pa

from gradwatch.errors import IntegrationError


def require(module: str, extra: str) -> ModuleType:
    """Import `module`, or say which extra to install (one sentence, no traceback chain)."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise IntegrationError(
            f"This integration needs the {module.split('.')[0]} package; install it with pip "
            f"install 'gradwatch[{extra}]'."
        ) from None


def tag(metric: str, layer: str) -> str:
    """The one key of a layer's metric on every route (TensorBoard, W&B, MLflow, the trainers'
    loggers): characters some of them refuse or rewrite become "_", so the model-level loss is
    `gradwatch/loss/_model_` everywhere."""
    return re.sub(r"[^\w\-./]", "_", f"gradwatch/{metric}/{layer}")


def scalars(rows: pa.Table) -> Iterator[tuple[int, dict[str, float]]]:
    """Per recorded step, `{tag: value}` for every per-layer scalar (series and histograms left
    out: they are rows with an index, which dashboards show poorly as scalars)."""
    frame = rows.to_pandas()
    frame = frame[frame["index"] == -1]
    for step, group in frame.groupby("step", sort=True):
        yield (
            int(step),
            {
                tag(m, la): float(v)
                for m, la, v in zip(group["metric"], group["layer"], group["value"], strict=True)
            },
        )


class Listener:
    """Receives each flush's rows and the closed watch (see `Watch.add_listener`)."""

    def rows(self, rows: pa.Table) -> None:
        pass

    def close(self, watch) -> None:
        pass
