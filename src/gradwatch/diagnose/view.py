"""A read-only view of a stats table and its meta that detectors share: pivots in forward order,
layer types, activation functions and how each layer was initialised."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np
import pandas as pd

from gradwatch.activations import RECTIFIERS, SATURATING  # noqa: F401 - read by the detectors

NORM_TYPES = {
    "BatchNorm1d",
    "BatchNorm2d",
    "BatchNorm3d",
    "LayerNorm",
    "GroupNorm",
    "InstanceNorm1d",
    "InstanceNorm2d",
    "RMSNorm",
    "SyncBatchNorm",
}
RECURRENT_TYPES = {"RNN", "LSTM", "GRU", "RNNCell", "LSTMCell", "GRUCell"}
# Optimizers whose step is set by the learning rate, not the gradient's size.
ADAPTIVE = {
    "Adam",
    "AdamW",
    "Adamax",
    "NAdam",
    "RAdam",
    "RMSprop",
    "Adagrad",
    "Adadelta",
    "SparseAdam",
    "Adafactor",
    "LBFGS",
}
WEIGHT_TYPES = {
    "Linear",
    "Conv1d",
    "Conv2d",
    "Conv3d",
    "ConvTranspose1d",
    "ConvTranspose2d",
    "Bilinear",
    "LazyLinear",
}


@dataclass
class View:
    stats: pd.DataFrame
    meta: dict = field(default_factory=dict)

    @cached_property
    def order(self) -> list[str]:
        # pd.unique keeps first-seen order, without iterating an Arrow column in Python.
        present = [str(n) for n in pd.unique(self.stats["layer"].to_numpy(dtype=object))]
        order = self.meta.get("layer_order") or present
        seen = set(order)
        return list(order) + [n for n in present if n not in seen]

    @cached_property
    def layer_meta(self) -> dict[str, dict]:
        return {d["name"]: d for d in self.meta.get("model", {}).get("layers", [])}

    def type_of(self, layer: str) -> str:
        return self.layer_meta.get(layer, {}).get("type", "")

    @cached_property
    def activations(self) -> dict[str, str]:
        """Activation layer -> function name (from the activation probe's meta)."""
        acts = self.meta.get("probes", {}).get("activations", {})
        return {name: info.get("function", "") for name, info in acts.items()}

    @cached_property
    def scalar(self) -> pd.DataFrame:
        return self.stats[self.stats["index"] == -1]

    @cached_property
    def _codes(self) -> tuple:
        """The scalar rows as integer codes (metric, step, layer) and values, factorised once: each
        metric's table is then a numpy scatter, with no per-metric groupby or string work."""
        s = self.scalar
        metric_codes, metric_names = pd.factorize(s["metric"].to_numpy(dtype=object))
        step_codes, steps = pd.factorize(s["step"].to_numpy(), sort=True)
        layer_codes, layers = pd.factorize(s["layer"].to_numpy(dtype=object))
        metric_of = {str(m): i for i, m in enumerate(metric_names)}
        return (
            metric_of,
            metric_codes,
            step_codes,
            steps,
            layer_codes,
            np.asarray(layers, dtype=object),
            s["value"].to_numpy(dtype=float),
        )

    @cached_property
    def _pivots(self) -> dict[str, pd.DataFrame]:
        return {}

    def metric(self, name: str) -> pd.DataFrame:
        """`[step x layer]` table of one per-layer metric, columns in forward order (cached)."""
        table = self._pivots.get(name)
        if table is None:
            table = self._table(name)
            if not table.empty:
                table = table[[c for c in self.order if c in table.columns]].sort_index()
            self._pivots[name] = table
        return table

    def _table(self, name: str) -> pd.DataFrame:
        metric_of, metric_codes, step_codes, steps, layer_codes, layers, values = self._codes
        code = metric_of.get(name)
        if code is None:
            return pd.DataFrame()
        rows = np.flatnonzero(metric_codes == code)
        if not len(rows):
            return pd.DataFrame()
        sc, lc = step_codes[rows], layer_codes[rows]
        used_steps, si = np.unique(sc, return_inverse=True)
        used_layers, li = np.unique(lc, return_inverse=True)
        if len(np.unique(si * len(used_layers) + li)) != len(rows):
            # A (step, layer) recorded twice: keep the last non-missing value, as pivot_table does.
            frame = self.scalar.iloc[rows]
            return frame.pivot_table(
                index="step", columns="layer", values="value", aggfunc="last", dropna=False
            )
        table = np.full((len(used_steps), len(used_layers)), np.nan)
        table[si.reshape(-1), li.reshape(-1)] = values[rows]
        return pd.DataFrame(
            table,
            index=pd.Index(steps[used_steps], name="step"),
            columns=pd.Index(layers[used_layers].tolist(), name="layer"),
        )

    def series(self, name: str) -> pd.DataFrame:
        """Rows of an indexed metric (index >= 0)."""
        rows = self.stats[(self.stats["metric"] == name) & (self.stats["index"] >= 0)]
        return rows.sort_values(["step", "layer", "index"])

    @cached_property
    def steps(self) -> list[int]:
        return sorted(self.stats["step"].unique().tolist())

    @property
    def n_steps(self) -> int:
        return len(self.steps)

    @cached_property
    def param_layers(self) -> list[str]:
        grads = self.metric("grad_norm")
        return list(grads.columns) if not grads.empty else []

    def init_of(self, layer: str) -> str | None:
        """How a layer's weight was initialised, judged from std·√fan_in recorded at the start."""
        info = self.layer_meta.get(layer, {})
        std, fan_in, fan_out = info.get("weight_std"), info.get("fan_in"), info.get("fan_out")
        if not std or not fan_in:
            return None
        s = std * math.sqrt(fan_in)
        xavier = math.sqrt(2 * fan_in / (fan_in + fan_out)) if fan_out else None
        if abs(s - 1 / math.sqrt(3)) < 0.06:
            return "pytorch_default"
        if abs(s - math.sqrt(2)) < 0.1:
            return "he"
        if xavier and abs(s - xavier) < 0.06 * xavier and abs(xavier - 1) > 0.05:
            return "xavier"
        if abs(s - 1) < 0.06:
            return "lecun_or_xavier"
        return "small" if s < 0.5 else "large" if s > 2 else "other"

    def of_types(self, types: set[str]) -> list[str]:
        return [n for n in self.order if self.type_of(n) in types]

    @cached_property
    def weight_layers(self) -> list[str]:
        return self.of_types(WEIGHT_TYPES)

    @cached_property
    def has_norm(self) -> bool:
        return any(d.get("type") in NORM_TYPES for d in self.layer_meta.values())

    @cached_property
    def unjudged(self) -> set[str]:
        """Layers whose size relative to their own weights says nothing: norm layers (gains sit near
        1 and move slowly by design), embeddings (sparse rows), and layers that started at zero
        (Fixup's zeroed branches: any step or gradient is huge next to nothing until the weights
        have grown)."""
        out = {
            n for n in self.order if self.type_of(n) in NORM_TYPES or self.type_of(n) == "Embedding"
        }
        w = self.metric("weight_norm")
        for c in w.columns:
            start = w[c].dropna()
            if len(start) and not start.iloc[0] > 0:
                out.add(c)
        return out

    @cached_property
    def gradient_at_init(self) -> float | None:
        """Median over the judged layers of ‖g‖/‖w‖ at step 0 (before any update), where the
        optimizer's step follows the gradient's size (not Adam-like, whose step is the rate's):
        None where the run did not start at step 0 or the optimizer normalises its steps."""
        kind = str(self.optimizer.get("class") or self.optimizer.get("type") or "")
        if kind in ADAPTIVE or not self.steps or self.steps[0] != 0:
            return None
        g, w = self.metric("grad_norm"), self.metric("weight_norm")
        if g.empty or w.empty or 0 not in g.index or 0 not in w.index:
            return None
        cols = [c for c in self.moving(g.columns) if c in w.columns]
        with np.errstate(divide="ignore", invalid="ignore"):
            rel = g.loc[0, cols].to_numpy(dtype=float) / w.loc[0, cols].to_numpy(dtype=float)
        rel = rel[np.isfinite(rel)]
        return float(np.median(rel)) if len(rel) else None

    def moving(self, columns) -> list:
        """The columns that a relative update or gradient can be judged on (see `unjudged`)."""
        return [c for c in columns if c not in self.unjudged]

    @cached_property
    def optimizer(self) -> dict:
        return self.meta.get("optimizer") or {}


def fit_log_slope(values: np.ndarray) -> tuple[float, float]:
    """Least-squares slope and intercept of log10(values) against position (0, 1, 2, ...)."""
    y = np.log10(values)
    x = np.arange(len(y), dtype=float)
    if len(y) < 2:
        return 0.0, float(y[0]) if len(y) else 0.0
    slope, intercept = np.polyfit(x, y, 1)
    return float(slope), float(intercept)
