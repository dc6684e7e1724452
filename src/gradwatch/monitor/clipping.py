"""Gradient clipping seen from the watch: the gradients are recorded as backward produced them.

`clip_grad_norm_` and `clip_grad_value_` change the gradients between `backward()` and the
optimizer step, where the watch records; an explosion would show as a flat norm at the clip value
and the remedy offered would be the clipping already in place. While a watch is open, torch's two
functions (looked up as `torch.nn.utils.clip_grad_norm_`, as Lightning, accelerate and most loops
do) are wrapped: before they clip, each open watch whose parameters they touch records the
gradient norms of the step under way; after, it keeps `clip_coef` (layer "(model)"), the factor
clipping shrank the gradients' total norm by (1: nothing clipped), as a device tensor. No value
is read on the host: the cost per step is one or two norms on the device, only when the user
clips. A name imported before the watch opened (`from torch.nn.utils import clip_grad_norm_`)
is not wrapped.
"""

from __future__ import annotations

import functools
import weakref

import numpy as np
import torch
import torch.nn.utils
import torch.nn.utils.clip_grad

from gradwatch._tensor import to_host
from gradwatch.probes.base import ABSENT, Probe

# The watches open now, in the order they opened; weak, so a watch never closed does not keep its
# model alive (torch's functions come back once none is left).
_OPEN: list[weakref.ref] = []
_REAL: dict[str, object] = {}  # torch's functions, while ours stand in their place
_NAMES = ("clip_grad_norm_", "clip_grad_value_")
_EPS = 1e-6  # torch's own, in clip_grad_norm_'s coefficient


class ClipProbe(Probe):
    """`clip_coef`: ‖g after clipping‖ / ‖g before‖ over the clipped parameters, at the steps where
    the user clipped (the product when they clipped twice)."""

    def __init__(self) -> None:
        self._coefs: dict[int, torch.Tensor] = {}  # slot → factor, on the device

    def clipped(self, slot: int, coef: torch.Tensor) -> None:
        coef = coef.detach().reshape(())
        self._coefs[slot] = coef if slot not in self._coefs else self._coefs[slot] * coef

    def forget(self, slot: int) -> None:
        self._coefs.pop(slot, None)

    def take(self, n: int) -> dict:
        values = np.full(n, ABSENT)
        slots = sorted(s for s in self._coefs if s < n)
        if slots:
            host = to_host([self._coefs.pop(s).float() for s in slots]).tolist()
            values[slots] = host
        self._coefs = {s - n: c for s, c in self._coefs.items()}
        return {"clip_coef": values}

    def finalize(self, raw: dict) -> list:
        return [("clip_coef", ["(model)"], raw["clip_coef"][:, None])]


def track(watch) -> None:
    """Route torch's clip functions through the open watches while `watch` is open."""
    if not _OPEN:
        for name in _NAMES:
            _REAL[name] = getattr(torch.nn.utils, name)
            for module in (torch.nn.utils, torch.nn.utils.clip_grad):
                setattr(module, name, _WRAPPERS[name])
    _OPEN.append(weakref.ref(watch, _untrack_ref))


def untrack(watch) -> None:
    for ref in [r for r in _OPEN if r() is watch]:
        _untrack_ref(ref)


def _untrack_ref(ref: weakref.ref) -> None:
    if ref in _OPEN:
        _OPEN.remove(ref)
        if not _OPEN:
            for name in _NAMES:
                for module in (torch.nn.utils, torch.nn.utils.clip_grad):
                    if getattr(module, name) is _WRAPPERS[name]:
                        setattr(module, name, _REAL[name])


def _listed(parameters) -> list[torch.Tensor]:
    return [parameters] if isinstance(parameters, torch.Tensor) else list(parameters)


def _watching(params: list[torch.Tensor]) -> list:
    ids = {id(p) for p in params}
    watches = [ref() for ref in list(_OPEN)]
    return [w for w in watches if w is not None and w.before_clip(ids)]


def _total_norm(params: list[torch.Tensor]) -> torch.Tensor | None:
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return None
    return torch.linalg.vector_norm(torch.stack([n.float() for n in torch._foreach_norm(grads, 2)]))


@functools.wraps(torch.nn.utils.clip_grad_norm_)
def clip_grad_norm_(parameters, max_norm, *args, **kwargs):
    params = _listed(parameters)
    watches = _watching(params)
    total = _REAL["clip_grad_norm_"](params, max_norm, *args, **kwargs)
    if watches:
        # torch's own coefficient, clamped as torch clamps it: no `if clip_coef < 1` on the host
        coef = torch.clamp(float(max_norm) / (total.float() + _EPS), max=1.0)
        for w in watches:
            w.after_clip(coef)
    return total


@functools.wraps(torch.nn.utils.clip_grad_value_)
def clip_grad_value_(parameters, clip_value, *args, **kwargs):
    params = _listed(parameters)
    watches = _watching(params)
    before = _total_norm(params) if watches else None
    out = _REAL["clip_grad_value_"](params, clip_value, *args, **kwargs)
    if before is not None:
        coef = _total_norm(params) / before.clamp_min(torch.finfo(before.dtype).tiny)
        for w in watches:
            w.after_clip(coef)
    return out


_WRAPPERS = {"clip_grad_norm_": clip_grad_norm_, "clip_grad_value_": clip_grad_value_}
