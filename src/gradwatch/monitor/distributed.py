"""Statistics of the global model under torch.distributed, reduced at flush only.

DDP keeps a full replica on every rank and averages gradients in backward, so each rank already
holds the global numbers and nothing is reduced. FSDP2 (`fully_shard`) keeps a shard of every
parameter and gradient (DTensors) on each rank: the probes measure their local shards, and at
flush the sums of squares (and non-finite counts) are summed across ranks, then the square root is
taken as usual. One collective per flush, never per step, with a timeout so that a rank that died
cannot make the others wait forever.
"""

from __future__ import annotations

import warnings
from datetime import timedelta

import torch
import torch.distributed as dist

from gradwatch.probes.base import ABSENT

SUMMED = ("grad_sq", "weight_sq", "nonfinite", "update_sq")
"""Raw step-table columns that are additive over shards."""


def active() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if active() else 0


def reduce_sums(data: torch.Tensor, timeout_s: float) -> torch.Tensor:
    """Sum `[steps, columns, rows]` raw numbers across ranks; negative entries mean "absent".

    An entry is absent in the result only when every rank had it absent. Returns the local numbers,
    with a warning, when another rank does not answer within `timeout_s` seconds.
    """
    if data.device.type == "cpu" and dist.get_backend() == "nccl":
        return data  # nccl cannot reduce host tensors; the monitor keeps its table on the device
    present = (data >= 0).to(data.dtype)
    both = torch.stack([data.clamp_min(0), present])
    try:
        work = dist.all_reduce(both, op=dist.ReduceOp.SUM, async_op=True)
        work.wait(timeout=timedelta(seconds=timeout_s))
    except Exception as exc:  # a rank failed or timed out: keep training, say what is lost
        warnings.warn(
            f"gradwatch could not reduce statistics across ranks ({type(exc).__name__}: {exc}); "
            "this flush holds this rank's shard only.",
            stacklevel=3,
        )
        return data
    return torch.where(both[1] > 0, both[0], data.new_tensor(ABSENT))
