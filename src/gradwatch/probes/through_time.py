"""Through-time probe: `time_grad_norm`, ‖∂L/∂x_t‖ per sample at every time step t of a recurrent
layer.

∂L/∂x_t is the total effect of step t's input on the loss, through every later step, so its decay
towards early t is the vanishing gradient through time (Bengio et al. 1994). For `nn.RNN`,
`nn.LSTM`, `nn.GRU` (batch_first or not, packed sequences too) a forward pre-hook passes the layer
an alias of its input whose gradient a tensor hook reads; for `RNNCell`/`LSTMCell`/`GRUCell` the
same is done per call, the t-th call of a forward pass being time step t.

The alias is a view when the input already requires grad (gradients still reach the input's
producer unchanged) and a fresh leaf when it does not (the data: nothing upstream to reach).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torch.nn.utils.rnn import PackedSequence

from gradwatch._nn import ROOT_NAME
from gradwatch._tensor import stat_dtype
from gradwatch.probes.base import ABSENT, Probe
from gradwatch.probes.forward import Hooks, recording_forward

RECURRENT = (nn.RNNBase,)
CELLS = (nn.RNNCellBase,)


def _alias(x: torch.Tensor) -> torch.Tensor:
    return x.view_as(x) if x.requires_grad else x.detach().requires_grad_(True)


class ThroughTimeProbe(Probe):
    def __init__(self, model: nn.Module, cadence: int = 1):
        self.cadence = cadence
        self.model = model
        self.modules = {
            (n or ROOT_NAME): m
            for n, m in model.named_modules()
            if isinstance(m, RECURRENT + CELLS)
        }
        self._hooks = Hooks()
        self._series: dict[
            str, list[list[torch.Tensor]]
        ] = {}  # row -> forward passes -> [T] pieces
        self._records: list[tuple[int, str, torch.Tensor]] = []

    def rows(self) -> list[str]:
        return []  # its own storage: series of varying length

    def arm(self) -> None:
        if self._hooks or not self.modules:
            return
        self._hooks.add(self.model.register_forward_pre_hook(self.guard(self._new_pass)))
        for name, m in self.modules.items():
            hook = self._cell_hook(name) if isinstance(m, CELLS) else self._sequence_hook(name)
            self._hooks.add(m.register_forward_pre_hook(self.guard(hook)))

    def disarm(self) -> None:
        self._hooks.remove()

    def _new_pass(self, module, args):
        if recording_forward():
            for passes in self._series.values():
                if passes and passes[-1]:
                    passes.append([])

    def _passes(self, name: str) -> list[list[torch.Tensor]]:
        passes = self._series.setdefault(name, [[]])
        return passes

    def _sequence_hook(self, name: str):
        def hook(module, args):
            if not args or not recording_forward():
                return None
            x = args[0]
            passes = self._passes(name)
            if isinstance(x, PackedSequence):
                data = _alias(x.data)
                steps = torch.repeat_interleave(torch.arange(len(x.batch_sizes)), x.batch_sizes).to(
                    data.device
                )
                n_t, b = len(x.batch_sizes), int(x.batch_sizes[0])
                piece, slot = passes[-1], len(passes[-1])
                piece.append(None)
                data.register_hook(
                    self.guard(lambda g: self._packed(piece, slot, g, steps, n_t, b))
                )
                packed = PackedSequence(data, x.batch_sizes, x.sorted_indices, x.unsorted_indices)
                return (packed, *args[1:])
            if not isinstance(x, torch.Tensor) or x.dim() < 2:
                return None
            alias = _alias(x)
            time_dim = 1 if (module.batch_first and x.dim() == 3) else 0
            batch = (
                x.shape[0]
                if x.dim() == 3 and module.batch_first
                else (x.shape[1] if x.dim() == 3 else 1)
            )
            piece, slot = passes[-1], len(passes[-1])
            piece.append(None)
            dims = [d for d in range(x.dim()) if d != time_dim]
            alias.register_hook(self.guard(lambda g: self._dense(piece, slot, g, dims, batch)))
            return (alias, *args[1:])

        return hook

    def _cell_hook(self, name: str):
        def hook(module, args):
            if not args or not isinstance(args[0], torch.Tensor) or not recording_forward():
                return None
            x = args[0]
            alias = _alias(x)
            batch = x.shape[0] if x.dim() == 2 else 1
            piece = self._passes(name)[-1]
            slot = len(piece)
            piece.append(None)
            alias.register_hook(
                self.guard(
                    lambda g: self._dense(piece, slot, g, list(range(g.dim())), batch, scalar=True)
                )
            )
            return (alias, *args[1:])

        return hook

    @torch.no_grad()
    def _dense(self, piece, slot, g, dims, batch, scalar=False):
        sq = torch.linalg.vector_norm(g.float(), dim=dims).to(stat_dtype(g.device)).square() / batch
        piece[slot] = sq.reshape(1) if scalar else sq

    @torch.no_grad()
    def _packed(self, piece, slot, g, steps, n_t, batch):
        per_row = g.float().square().sum(tuple(range(1, g.dim()))).to(stat_dtype(g.device))
        piece[slot] = (
            torch.zeros(n_t, dtype=per_row.dtype, device=g.device).index_add_(0, steps, per_row)
            / batch
        )

    @torch.no_grad()
    def record(self, slot: int) -> None:
        for name, passes in self._series.items():
            series = [
                torch.cat([t for t in p if t is not None])
                for p in passes
                if any(t is not None for t in p)
            ]
            if not series:
                continue
            length = min(len(s) for s in series)
            mean_sq = torch.stack([s[:length] for s in series]).mean(0)
            self._records.append((slot, name, mean_sq.sqrt()))
        self._series.clear()

    def discard(self) -> None:
        self._series.clear()

    def unscale(self, slot: int, inv_sq: torch.Tensor) -> None:
        inv = inv_sq.sqrt()
        self._records = [
            (s, n, t * inv.to(t.device) if s == slot else t) for s, n, t in self._records
        ]

    def take(self, n: int) -> dict:
        recs, self._records = self._records, []
        return {
            "time": [(slot, name, t.cpu().numpy()) for slot, name, t in recs if slot < n],
            "n": n,
        }

    def finalize(self, raw: dict) -> list:
        recs = raw["time"]
        if not recs:
            return []
        rows = list(dict.fromkeys(name for _, name, _ in recs))
        n_slots = raw["n"]
        length = max(len(t) for _, _, t in recs)
        arr = np.full((n_slots, len(rows), length), ABSENT)
        for slot, name, t in recs:
            arr[slot, rows.index(name), : len(t)] = t
        return [("time_grad_norm", rows, arr)]

    def close(self) -> None:
        self.disarm()
