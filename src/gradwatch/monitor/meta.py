"""What the run directory's meta.json says: versions, device, settings, the model (layers in forward
order, their types and sizes, how each weight was initialised, read once when watching starts),
the optimizer, the probes and how far the run got."""

from __future__ import annotations

import datetime as _dt
import math
import platform

import torch
from torch import nn

from gradwatch._nn import ROOT_NAME, ParamLayer, model_device, param_bytes
from gradwatch._tensor import local
from gradwatch._version import __version__
from gradwatch.probes.base import Probe


class RunMeta:
    """One watch's meta.json: what is fixed when watching starts (versions, device, settings, the
    weights' init), completed at each call with what the run has learnt since (forward order,
    probes, steps seen)."""

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer | None,
        layers: list[ParamLayer],
        settings: dict,
    ):
        self.model = model
        self.optimizer = optimizer
        self.layers = layers
        self.settings = settings
        self.device = model_device(model)
        self.init = init_stats(model, layers)
        self.started = now()

    def collect(
        self,
        order: list[str],
        probes: list[Probe],
        steps_seen: int,
        finished: bool = False,
        thinned: list[tuple[int, int]] = (),
    ) -> dict:
        """meta.json's content; `finished` stamps the time the run ended; `thinned`: the steps from
        which the settled run was recorded on one eligible step in N, as (step, N)."""
        probe_meta: dict = {}
        for probe in probes:
            probe_meta.update(probe.meta())
        return {
            "format": 1,
            "gradwatch_version": __version__,
            "torch_version": torch.__version__,
            "python_version": platform.python_version(),
            "device": str(self.device),
            "started": self.started,
            "finished": now() if finished else None,
            "settings": self.settings,
            "thinned": [list(change) for change in thinned],
            "model": {
                **model_summary(self.model, self.layers, order, self.init),
                "param_bytes": param_bytes(self.model),
            },
            "optimizer": optimizer_summary(self.optimizer),
            "probes": probe_meta,
            "layer_order": order,
            "steps_seen": steps_seen,
        }


def now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


@torch.no_grad()
def init_stats(model: nn.Module, layers: list[ParamLayer]) -> dict[str, dict]:
    """fan_in, fan_out and weight std of each layer that has a matrix-like `weight`.

    Diagnosis compares std·√fan_in with the standard inits (PyTorch default 0.577, He 1.414, ...).
    Read once at the start: a host sync, but not in the training loop.
    """
    out = {}
    for layer in layers:
        module = model if layer.name == ROOT_NAME else model.get_submodule(layer.name)
        w = getattr(module, "weight", None)
        if not isinstance(w, torch.Tensor) or w.dim() < 2 or w.numel() < 2 or w.is_meta:
            continue
        receptive = math.prod(w.shape[2:])
        # An FSDP2 shard: its entries are a sample of the same init, and gathering the whole weight
        # would be a collective outside a flush.
        shard = local(w.detach())
        out[layer.name] = {
            "fan_in": int(w.shape[1] * receptive),
            "fan_out": int(w.shape[0] * receptive),
            "weight_std": float(shard.float().std()) if shard.numel() > 1 else float("nan"),
        }
    return out


def optimizer_summary(optimizer: torch.optim.Optimizer | None) -> dict | None:
    if optimizer is None:
        return None
    lrs = []
    for group in optimizer.param_groups:
        lr = group.get("lr")
        lrs.append(float(lr) if not isinstance(lr, torch.Tensor) else float(lr.detach().cpu()))
    out = {"class": type(optimizer).__name__, "lr": lrs}
    # A scheduler keeps the rate it will return to (warm-up starts below it).
    initial = [g["initial_lr"] for g in optimizer.param_groups if "initial_lr" in g]
    if initial and all(isinstance(x, (int, float)) for x in initial):
        out["initial_lr"] = [float(x) for x in initial]
    return out


def model_summary(
    model: nn.Module, layers: list[ParamLayer], order: list[str], init: dict[str, dict]
) -> dict:
    types = {name or ROOT_NAME: type(m).__name__ for name, m in model.named_modules()}
    by_name = {layer.name: layer for layer in layers}
    rows = []
    for name in order:
        row = {
            "name": name,
            "type": types.get(name, "?"),
            "n_params": by_name[name].n_params if name in by_name else 0,
            "n_trainable": by_name[name].n_trainable if name in by_name else 0,
        }
        row.update(init.get(name, {}))
        rows.append(row)
    return {
        "class": type(model).__name__,
        "n_params": sum(layer.n_params for layer in layers),
        "layers": rows,
    }
