"""Model helpers several packages share: which modules are layers, which parameters each owns, the
order the forward pass visits them, running a model on inputs of any shape, and leaving it
untouched."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.nn.modules.conv import _ConvNd
from torch.utils.hooks import RemovableHandle

ROOT_NAME = "(root)"
"""The layer name of the model itself (named_modules() names it "")."""
WEIGHT_LAYERS = (nn.Linear, _ConvNd)  # _ConvNd covers Conv1/2/3d and ConvTranspose1/2/3d


def unwrap(model: nn.Module) -> nn.Module:
    """The user's own module inside `torch.compile` and DistributedDataParallel wrappers.

    Layer names are then those the user sees in `model.named_modules()` of their own model, without
    `_orig_mod.` or `module.` prefixes.
    """
    while True:
        inner = getattr(model, "_orig_mod", None)  # torch.compile's OptimizedModule
        if isinstance(inner, nn.Module):
            model = inner
            continue
        if isinstance(model, nn.parallel.DistributedDataParallel | nn.DataParallel):
            model = model.module
            continue
        return model


@dataclass(frozen=True)
class ParamLayer:
    """A module that owns parameters directly, with the parameters it owns.

    A parameter shared by several modules (tied weights) belongs to the first of them in
    `named_modules()` order, so it is counted once.
    """

    name: str
    type: str
    params: tuple[nn.Parameter, ...]

    @property
    def n_params(self) -> int:
        return sum(p.numel() for p in self.params)

    @property
    def n_trainable(self) -> int:
        return sum(p.numel() for p in self.params if p.requires_grad)


def param_layers(model: nn.Module) -> list[ParamLayer]:
    """Modules owning parameters directly, in registration order; shared parameters counted once."""
    seen: set[int] = set()
    layers = []
    for name, module in model.named_modules():
        own = []
        for p in module.parameters(recurse=False):
            if id(p) not in seen:
                seen.add(id(p))
                own.append(p)
        if own:
            layers.append(ParamLayer(name or ROOT_NAME, type(module).__name__, tuple(own)))
    return layers


def display_name(name: str) -> str:
    return name or ROOT_NAME


class ForwardOrder:
    """Records the order in which modules are first called, then removes its hooks.

    Modules that own parameters but are never called themselves (`nn.MultiheadAttention` reads
    `out_proj.weight` without calling `out_proj`) are placed right after their parent, which is
    where their computation happens.
    """

    def __init__(self, model: nn.Module):
        self._model = model
        self._called: dict[str, int] = {}
        self._handles: list[RemovableHandle] = []
        for name, module in model.named_modules():
            self._handles.append(module.register_forward_pre_hook(self._hook_for(name)))

    def _hook_for(self, name: str):
        def hook(module, args):
            if name not in self._called:
                self._called[name] = len(self._called)

        return hook

    @property
    def active(self) -> bool:
        return bool(self._handles)

    @property
    def seen_any(self) -> bool:
        return bool(self._called)

    def finish(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()

    def sort_key(self) -> dict[str, tuple[int, ...]]:
        """A key per module name; sorting by it gives the forward order."""
        keys: dict[str, tuple[int, ...]] = {}
        for reg_index, (name, _) in enumerate(self._model.named_modules()):
            if name in self._called:
                keys[name] = (self._called[name],)
            else:
                parent = name.rpartition(".")[0] if name else None
                base = keys.get(parent, (len(self._called),)) if parent is not None else (-1,)
                keys[name] = base + (reg_index,)
        return keys

    def order(self, names: list[str]) -> list[str]:
        keys = self.sort_key()
        raw = {display_name(n): n for n in keys}
        return sorted(names, key=lambda n: keys.get(raw.get(n, n), (1 << 30,)))


def param_bytes(model: nn.Module) -> int:
    seen: set[int] = set()
    total = 0
    for p in model.parameters():
        if id(p) not in seen:
            seen.add(id(p))
            total += p.numel() * p.element_size()
    return total


def model_device(model: nn.Module) -> torch.device:
    for p in model.parameters():
        return p.device
    for b in model.buffers():
        return b.device
    return torch.device("cpu")


def call(model: nn.Module, inputs: Any) -> Any:
    """`model(inputs)`, spreading a mapping as keywords and a tuple/list as positional arguments."""
    if isinstance(inputs, Mapping):
        return model(**inputs)
    if isinstance(inputs, (tuple, list)):
        return model(*inputs)
    return model(inputs)


@contextlib.contextmanager
def untouched(model: nn.Module) -> Iterator[None]:
    """Restore everything a forward/backward in train mode can change: gradients, buffers
    (BatchNorm running statistics), train/eval flags and the global RNG state."""
    grads = {p: p.grad for p in model.parameters()}
    buffers = {name: b.detach().clone() for name, b in model.named_buffers()}
    modes = {m: m.training for m in model.modules()}
    cpu_rng = torch.get_rng_state()
    cuda_rng = (
        torch.cuda.get_rng_state_all()
        if torch.cuda.is_available() and torch.cuda.is_initialized()
        else None
    )
    for p in grads:
        p.grad = None
    try:
        yield
    finally:
        for p, g in grads.items():
            p.grad = g
        with torch.no_grad():
            for name, b in model.named_buffers():
                if name in buffers:
                    b.copy_(buffers[name])
        for m, mode in modes.items():
            m.training = mode
        torch.set_rng_state(cpu_rng)
        if cuda_rng is not None:
            torch.cuda.set_rng_state_all(cuda_rng)


def fans(layer: nn.Module) -> tuple[int, int]:
    """(fan_in, fan_out) of a Linear or convolution: inputs per output unit, outputs per input
    unit."""
    if isinstance(layer, nn.Linear):
        return layer.in_features, layer.out_features
    k = math.prod(layer.kernel_size)
    return layer.in_channels // layer.groups * k, layer.out_channels // layer.groups * k
