"""Shared pieces of the probes that look at the forward pass: output tensors, batch sizes, hooks."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils.rnn import PackedSequence
from torch.utils.hooks import RemovableHandle


def first_tensor(output) -> torch.Tensor | None:
    """The tensor a module's output is about: itself, or the first tensor of a tuple/list/dict."""
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, PackedSequence):
        return output.data
    if isinstance(output, (tuple, list)):
        for item in output:
            t = first_tensor(item)
            if t is not None:
                return t
    if isinstance(output, dict):
        for item in output.values():
            t = first_tensor(item)
            if t is not None:
                return t
    return None


def time_major(module: nn.Module) -> bool:
    """A `batch_first=False` module (RNNs, older Transformer layers): its batch is dimension 1."""
    return getattr(module, "batch_first", True) is False


def batch_size(
    module: nn.Module, output, tensor: torch.Tensor, time_first: bool | None = None
) -> int:
    """Samples in `tensor`: its leading dimension, or dimension 1 for `batch_first=False` modules
    (`time_first`, when the caller knows it already: the attribute lookup is slow on a module)."""
    if isinstance(output, tuple) and output and isinstance(output[0], PackedSequence):
        return int(output[0].batch_sizes[0])
    if isinstance(output, PackedSequence):
        return int(output.batch_sizes[0])
    if tensor.dim() == 0:
        return 1
    if time_first is None:
        time_first = time_major(module)
    if time_first and tensor.dim() >= 3:
        return tensor.shape[1]
    return tensor.shape[0]


class Hooks:
    """Handles of hooks registered together, removed together (fastai's `Hooks`)."""

    def __init__(self) -> None:
        self._handles: list[RemovableHandle] = []

    def add(self, handle: RemovableHandle) -> None:
        self._handles.append(handle)

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()

    def __bool__(self) -> bool:
        return bool(self._handles)


def recording_forward() -> bool:
    """Only forward passes that will be back-propagated are measured (not validation, not
    no_grad)."""
    return torch.is_grad_enabled()
