"""Backflow probe: `backflow_norm`, the norm of ∂L/∂(layer output) per sample, for every layer.

A forward hook registers a pre-hook on the autograd node that produced the layer's output (a
tensor hook when the output is a leaf); autograd calls it with the gradient during backward. The
hook only reads it (returns None), so gradients are unchanged and no graph is kept alive. A hook
registered before an in-place op on the output receives the gradient of the value the layer
produced, which is what we want. Tuple outputs (LSTM, attention) use their first
tensor. Per sample: ‖g‖ / √batch, the root mean over every backward of the step. A step's norms
are stacked on the device (one kernel); squaring, scaling and pooling them happen on the host at
flush, with every recorded step's norms brought over in one copy. On the CPU, with numba
installed, a numba kernel sums the squares instead and leaves a number, not a tensor.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from gradwatch._tensor import WIDE_FLOATS, to_host
from gradwatch.probes import kernels as _cpu_kernels
from gradwatch.probes.base import ABSENT, Probe, StepTable, no_grad
from gradwatch.probes.forward import Hooks, batch_size, first_tensor, recording_forward, time_major


class BackflowProbe(Probe):
    def __init__(self, modules: dict[str, nn.Module], cadence: int = 1):
        self.modules = modules
        self.cadence = cadence
        self._hooks = Hooks()
        self._calls = [0] * len(modules)
        self._norms: list[
            tuple[int, torch.Tensor, float]
        ] = []  # (row, ‖g‖, 1/batch) per backward call
        # Recorded steps, pooled at flush: (slot, rows, scales, calls per row, stacked norms).
        self._steps: list[tuple[int, np.ndarray, np.ndarray, np.ndarray, torch.Tensor | None]] = []
        self._inv_sq: dict[int, torch.Tensor] = {}  # slot → 1/scale² of a GradScaler

    def rows(self) -> list[str]:
        return list(self.modules)

    def bind(self, table: StepTable) -> None:
        super().bind(table)
        self._table_rows = table.row_index(self.rows()).cpu().numpy()
        self._paths = _cpu_kernels.Paths(table.device, self.cadence)
        self._kernels = self._paths.kernels

    def arm(self) -> None:
        if self._hooks:
            return
        for i, m in enumerate(self.modules.values()):
            self._hooks.add(
                m.register_forward_hook(self.guard(self._forward_hook(i, time_major(m))))
            )

    def disarm(self) -> None:
        self._hooks.remove()

    def _forward_hook(self, i: int, time_first: bool):
        def hook(module, args, output):
            out = output if type(output) is torch.Tensor else first_tensor(output)
            if out is None or not out.requires_grad or not recording_forward():
                return
            scale = 1.0 / batch_size(module, output, out, time_first)
            self._calls[i] += 1
            node = out.grad_fn
            if node is None:  # a leaf that requires grad (an input passed straight through)
                out.register_hook(self.guard(lambda g: self._accumulate(i, g, scale)))
            else:
                # A pre-hook on the node that produced `out` sees the same gradient as a tensor
                # hook on `out` (the node's output `output_nr`), at a third of the registration
                # cost: no Python handle, no per-tensor hook dict.
                k = out.output_nr
                node.register_prehook(
                    self.guard(lambda grads: self._accumulate(i, grads[k], scale))
                )

        return hook

    def _accumulate(self, i: int, grad: torch.Tensor | None, scale: float) -> None:
        # One kernel per backward call (every watched module pays this, so no more Python than
        # needed); the squaring, scaling and pooling wait for `record`.
        if grad is None:  # this output got no gradient in this backward
            return
        if grad.requires_grad:  # create_graph=True: no graph for our norm
            grad = grad.detach()
        if (
            self._kernels is not None
            and grad.dtype in WIDE_FLOATS
            and type(grad) is torch.Tensor
            and grad.is_contiguous()
        ):
            self._norms.append(
                (i, math.sqrt(self._kernels.sum_sq(grad.numpy().reshape(-1))), scale)
            )
            return
        # Half-precision signals are summed in float32; float64 ones keep their own precision.
        norm = (
            torch.linalg.vector_norm(grad)
            if grad.dtype in WIDE_FLOATS
            else torch.linalg.vector_norm(grad, dtype=torch.float32)
        )
        self._norms.append((i, norm, scale))

    @no_grad
    def record(self, slot: int) -> None:
        """One kernel per step (the norms stacked); squaring, scaling and pooling wait for the
        flush."""
        norms, self._norms = self._norms, []
        calls, self._calls = np.array(self._calls, dtype=np.float64), [0] * len(self.modules)
        kernels = self._kernels  # the path this step's norms were computed by
        if self._paths.waiting and self._paths.poll(slot):
            self._kernels = self._paths.kernels  # from the next backward on
        if not calls.any():
            return
        rows = np.array([r for r, _, _ in norms], dtype=np.int64)
        scales = np.array([s for _, _, s in norms], dtype=np.float64)
        if kernels is not None:  # on the CPU: numbers, or tensors that need no sync to read
            stacked = np.array(
                [n if type(n) is float else n.item() for _, n, _ in norms], dtype=np.float64
            )
        else:
            stacked = torch.stack([n for _, n, _ in norms]) if norms else None
        self._steps.append((slot, rows, scales, calls, stacked))

    def unscale(self, slot: int, inv_sq: torch.Tensor) -> None:
        self._inv_sq[slot] = inv_sq

    def discard(self) -> None:
        self._norms = []
        self._calls = [0] * len(self.modules)

    def take(self, n: int) -> dict:
        steps = [s for s in self._steps if s[0] < n]
        self._steps = [s for s in self._steps if s[0] >= n]
        inv_sq = {k: v for k, v in self._inv_sq.items() if k < n}
        self._inv_sq = {k: v for k, v in self._inv_sq.items() if k >= n}
        out = np.full((n, len(self.table.rows)), ABSENT)
        # Every step's norms reach the host in one copy (in their own dtype: MPS has no float64).
        # (Numbers already, for steps the CPU kernels measured.)
        norms = [s[4].reshape(-1) for s in steps if isinstance(s[4], torch.Tensor)]
        host = to_host(norms, join=torch.cat) if norms else None
        at, width = 0, len(self.modules)
        for slot, rows, scales, calls, stacked in steps:
            acc = np.zeros(width)
            if isinstance(stacked, np.ndarray):
                norm = stacked
            elif stacked is not None:
                norm = host[at : at + len(rows)]
                at += len(rows)
            if stacked is not None:
                acc = np.bincount(rows, weights=norm * norm * scales, minlength=width)
            # The mean over the step's calls; a row without a call is absent.
            out[slot, self._table_rows] = np.where(calls > 0, acc / np.maximum(calls, 1), ABSENT)
        if steps and inv_sq:
            values = to_host([v.reshape(()) for v in inv_sq.values()])
            for slot, value in zip(inv_sq, values, strict=True):
                measured = out[slot] >= 0
                out[slot, measured] *= value
        self._paths.flushed(n)
        return {"backflow_sq": out}

    def finalize(self, raw: dict[str, np.ndarray]) -> list:
        sq = raw["backflow_sq"]
        with np.errstate(invalid="ignore"):
            value = np.where(sq < 0, ABSENT, np.sqrt(np.abs(sq)))
        return [("backflow_norm", self.table.rows, value)]

    def meta(self) -> dict:
        return {
            "kernels": _cpu_kernels.name(self._kernels),
            "backflow_kernels": self._paths.history(),
        }

    def close(self) -> None:
        self.disarm()
