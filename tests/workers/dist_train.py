"""Trains a small MLP for a few steps under gradwatch: single process, or one rank of DDP / FSDP2.

Run under torchrun (`dist_train.py ddp,fsdp OUT_DIR`); the tests import `train` for the
single-process reference. Each rank takes its slice of the same global batch, so the averaged
gradients equal those of the single process on the whole batch.
"""

from __future__ import annotations

import os
import sys

import torch
import torch.distributed as dist
from torch import nn

import gradwatch as gw

STEPS = 5


def make_model() -> nn.Sequential:
    torch.manual_seed(0)
    # 3 outputs: the last layer's shards are uneven across 2 ranks
    return nn.Sequential(
        nn.Linear(6, 32), nn.Tanh(), nn.Linear(32, 32), nn.Tanh(), nn.Linear(32, 3)
    )


def batches(steps: int = STEPS, batch: int = 8):
    g = torch.Generator().manual_seed(1)
    return [
        (torch.randn(batch, 6, generator=g), torch.randn(batch, 3, generator=g))
        for _ in range(steps)
    ]


def train(model: nn.Module, log_dir, rank: int = 0, world: int = 1, **watch_kw):
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    w = gw.watch(model, opt, log_dir=log_dir, flush_every=3, **watch_kw)
    for x, y in batches():
        opt.zero_grad()
        loss = nn.functional.mse_loss(model(x.chunk(world)[rank]), y.chunk(world)[rank])
        loss.backward()
        opt.step()
    if os.environ.get("GRADWATCH_TEST_FAIL_RANK") == str(rank):
        # gone after training, before the last flush, quietly (a failure torchrun does not see,
        # so it cannot end the other rank): that rank must not hang in its flush
        os._exit(0)
    w.close()
    return w


def wrap(mode: str) -> nn.Module:
    model = make_model()
    if mode == "ddp":
        return nn.parallel.DistributedDataParallel(model)
    from torch.distributed.fsdp import fully_shard

    for layer in model:
        if isinstance(layer, nn.Linear):
            fully_shard(layer)
    return fully_shard(model)


def main() -> None:
    """`dist_train.py MODE[,MODE...] OUT_DIR`: one run directory OUT_DIR/MODE per mode, one
    launch."""
    modes, out = sys.argv[1].split(","), sys.argv[2]
    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    timeout = float(os.environ.get("GRADWATCH_TEST_TIMEOUT", "60"))
    for mode in modes:
        model = wrap(mode)
        train(model, os.path.join(out, mode), rank, world, dist_timeout=timeout)
    # Both ranks done (rank 0 writes the store last) before either tears gloo down: a rank that
    # destroys its group while the other still talks to it can abort in gloo's C++ teardown.
    # (In the dead-rank test there is no one left to meet.)
    if "GRADWATCH_TEST_FAIL_RANK" not in os.environ:
        dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
