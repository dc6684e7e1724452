"""Tensor helpers several packages share: which dtype statistics are kept in, one copy to the
host."""

from __future__ import annotations

import sys

import numpy as np
import torch

NO_FLOAT64 = {"mps"}
"""Device types without float64 (Apple's MPS): statistics are kept in float32 there."""

WIDE_FLOATS = (torch.float32, torch.float64)  # reduced in their own dtype; narrower ones in float32


def stat_dtype(device: torch.device) -> torch.dtype:
    """The dtype statistics are computed and kept in on `device`: float64, as squared norms of
    exploding gradients overflow float32 long before the norm does, where the device has it."""
    return torch.float32 if device.type in NO_FLOAT64 else torch.float64


def to_host(tensors: list[torch.Tensor], join=torch.stack) -> np.ndarray:
    """Device tensors joined (`torch.stack`, or `torch.cat`) and brought to the host in one copy,
    then widened to float64 there (a device may have no float64; numpy has no bfloat16)."""
    if not tensors:
        return np.zeros(0)
    host = join(tensors).cpu()
    if host.is_floating_point() and host.dtype not in WIDE_FLOATS:
        host = host.float()
    return host.numpy().astype(np.float64)


def _dtensor_type() -> type | None:
    # No DTensor can exist before torch.distributed.tensor is imported, and importing it costs
    # seconds; so it is looked up, never imported, here.
    module = sys.modules.get("torch.distributed.tensor")
    return getattr(module, "DTensor", None)


def local(t: torch.Tensor) -> torch.Tensor:
    """The part of `t` this rank holds (the tensor itself unless it is a sharded DTensor)."""
    dtensor = _dtensor_type()
    return t._local_tensor if dtensor is not None and isinstance(t, dtensor) else t


def is_sharded(params) -> bool:
    dtensor = _dtensor_type()
    return dtensor is not None and any(isinstance(p, dtensor) for p in params)
