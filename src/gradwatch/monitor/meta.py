"""What the run directory says about the model and the optimizer: layers in forward order, their
types and sizes, and how each weight was initialised (read once, when watching starts)."""

from __future__ import annotations

import math

import torch
from torch import nn

from gradwatch._nn import ROOT_NAME, ParamLayer
from gradwatch._tensor import local


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
    return {"class": type(optimizer).__name__, "lr": lrs}


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
