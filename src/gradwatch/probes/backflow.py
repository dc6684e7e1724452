"""Backflow probe: `backflow_norm`, the norm of ∂L/∂(layer output) per sample, for every layer.

A forward hook registers a pre-hook on the autograd node that produced the layer's output (a
tensor hook when the output is a leaf); autograd calls it with the gradient during backward. The
hook only reads it (returns None), so gradients are unchanged and no graph is kept alive. A hook
registered before an in-place op on the output receives the gradient of the value the layer
produced, which is what we want. Tuple outputs (LSTM, attention) use their first
tensor. Per sample: ‖g‖ / √batch, the root mean over every backward of the step.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from .base import ABSENT, Probe, StepTable
from .forward import Hooks, batch_size, first_tensor, recording_forward


class BackflowProbe(Probe):
    columns = ("backflow_sq",)

    def __init__(self, modules: dict[str, nn.Module], cadence: int = 1):
        self.modules = modules
        self.cadence = cadence
        self._hooks = Hooks()
        self._calls = [0] * len(modules)
        self._norms: list[tuple[int, torch.Tensor, float]] = []  # (row, ‖g‖, 1/batch) per backward call

    def rows(self) -> list[str]:
        return list(self.modules)

    def bind(self, table: StepTable) -> None:
        super().bind(table)
        self._rows = table.row_index(self.rows())
        self._col = table.column("backflow_sq")
        self._device = table.device

    def arm(self) -> None:
        if self._hooks:
            return
        for i, m in enumerate(self.modules.values()):
            self._hooks.add(m.register_forward_hook(self._forward_hook(i)))

    def disarm(self) -> None:
        self._hooks.remove()

    def _forward_hook(self, i: int):
        def hook(module, args, output):
            out = first_tensor(output)
            if out is None or not out.requires_grad or not recording_forward():
                return
            scale = 1.0 / batch_size(module, output, out)
            self._calls[i] += 1
            node = out.grad_fn
            if node is None:  # a leaf that requires grad (an input passed straight through)
                out.register_hook(lambda g: self._accumulate(i, g, scale))
            else:
                # A pre-hook on the node that produced `out` sees the same gradient as a tensor
                # hook on `out` (the node's output `output_nr`), at a third of the registration
                # cost: no Python handle, no per-tensor hook dict.
                k = out.output_nr
                node.register_prehook(lambda grads: self._accumulate(i, grads[k], scale))

        return hook

    def _accumulate(self, i: int, grad: torch.Tensor | None, scale: float) -> None:
        # One kernel per backward call; the squaring, scaling and pooling wait for `record`.
        if grad is None:  # this output got no gradient in this backward
            return
        grad = grad.detach()  # create_graph=True: no graph for our norm
        norm = torch.linalg.vector_norm(grad) if grad.dtype == torch.float32 else torch.linalg.vector_norm(grad, dtype=torch.float32)
        self._norms.append((i, norm, scale))

    @torch.no_grad()
    def record(self, slot: int) -> None:
        norms, self._norms = self._norms, []
        if not any(self._calls):
            return
        dev, f64 = self._device, torch.float64
        acc = torch.zeros(len(self.modules), dtype=f64, device=dev)
        if norms:
            per_norm = torch.tensor([(r, s) for r, _, s in norms], dtype=f64, device=dev)
            acc.index_add_(0, per_norm[:, 0].long(), torch.stack([n for _, n, _ in norms]).to(dev, f64).square() * per_norm[:, 1])
        # The mean over the step's calls; a row without a call is absent.
        calls, absent = torch.tensor([[c or 1, 0.0 if c else ABSENT] for c in self._calls], dtype=f64, device=dev).T
        self.table.write(slot, self._col, self._rows, torch.where(absent < 0, absent, acc / calls))
        self._calls = [0] * len(self.modules)

    def unscale(self, slot: int, inv_sq: torch.Tensor) -> None:
        # an absent entry is negative and stays negative
        self.table.data[slot, self._col] *= inv_sq.to(self.table.device)

    def discard(self) -> None:
        self._norms = []
        self._calls = [0] * len(self.modules)

    def finalize(self, raw: dict[str, np.ndarray]) -> list:
        sq = raw["backflow_sq"]
        with np.errstate(invalid="ignore"):
            value = np.where(sq < 0, ABSENT, np.sqrt(np.abs(sq)))
        return [("backflow_norm", self.table.rows, value)]

    def close(self) -> None:
        self.disarm()
