"""Gradient clipping, called between `loss.backward()` and `optimizer.step()`.

Each function returns the total gradient norm *before* clipping as a 0-d tensor on the gradients'
device, without a host synchronisation, so it can be logged every step for free.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from gradwatch.errors import RemedyError

Params = torch.Tensor | Iterable[torch.Tensor] | nn.Module


def _params(parameters: Params) -> list[torch.Tensor]:
    if isinstance(parameters, nn.Module):
        return list(parameters.parameters())
    if isinstance(parameters, torch.Tensor):
        return [parameters]
    return list(parameters)


def _total_norm(grads: list[torch.Tensor], norm_type: float) -> torch.Tensor:
    get_total_norm = getattr(nn.utils, "get_total_norm", None)  # torch ≥ 2.6
    if get_total_norm is not None:
        return get_total_norm(grads, norm_type)
    if not grads:
        return torch.tensor(0.0)
    device = grads[0].device
    norms = [torch.linalg.vector_norm(g.detach(), norm_type).to(device) for g in grads]
    return torch.linalg.vector_norm(torch.stack(norms), norm_type)


def clip_by_norm(
    parameters: Params,
    max_norm: float,
    norm_type: float = 2.0,
    error_if_nonfinite: bool = False,
) -> torch.Tensor:
    """Pascanu et al. (2013): if ‖g‖ > max_norm then g ← max_norm·g/‖g‖, g all gradients together.

    `norm_type` is the p of the p-norm (inf allowed). Below the threshold the gradients are left
    exactly as they are. This is `torch.nn.utils.clip_grad_norm_` (which adds 1e-6 to ‖g‖ in the
    divisor). `parameters`: a module, a tensor or an iterable of tensors; those without .grad are
    skipped. A non-finite norm makes every gradient non-finite unless `error_if_nonfinite`, which
    raises instead. Returns ‖g‖ before clipping (0-d tensor, no host sync).
    """
    if max_norm <= 0:
        raise RemedyError(f"clip_by_norm needs max_norm > 0, not {max_norm}.")
    return nn.utils.clip_grad_norm_(
        _params(parameters), max_norm, norm_type, error_if_nonfinite=error_if_nonfinite
    )


def clip_by_value(parameters: Params, clip_value: float) -> torch.Tensor:
    """Clamp every gradient element to [-clip_value, clip_value].

    Cruder than norm clipping: it changes the gradient's direction. Returns the total L2 norm of
    the gradients before clipping (0-d tensor, no host sync).
    """
    if clip_value <= 0:
        raise RemedyError(f"clip_by_value needs clip_value > 0, not {clip_value}.")
    params = _params(parameters)
    total = _total_norm([p.grad for p in params if p.grad is not None], 2.0)
    nn.utils.clip_grad_value_(params, clip_value)
    return total


def unitwise_norm(x: torch.Tensor) -> torch.Tensor:
    """L2 norm per output unit: over all dims but 0 (kept, broadcastable) for ndim > 1, whole tensor
    otherwise."""
    if x.ndim <= 1:
        return torch.linalg.vector_norm(x)
    return torch.linalg.vector_norm(x, dim=tuple(range(1, x.ndim)), keepdim=True)


def adaptive_clip(parameters: Params, clipping: float = 0.01, eps: float = 1e-3) -> torch.Tensor:
    """Adaptive gradient clipping, AGC (Brock et al. 2021), unit-wise.

    For each unit i (a row of a Linear weight, an output channel of a conv weight (dim 0 of the
    weight tensor); a bias or other vector is one unit): if ‖G_i‖ ≥ λ·max(‖W_i‖, ε) then
    G_i ← λ·max(‖W_i‖, ε)·G_i/‖G_i‖, with λ = `clipping`, ε = `eps`; other units are untouched
    (zero gradients too). As in the reference implementation, ‖G_i‖ is floored at 1e-6 in the
    divisor. The paper leaves the final classifier layer unclipped: pass the other parameters.
    Vectorised per tensor. Returns the total L2 norm of the gradients before clipping (0-d, no
    sync).
    """
    if clipping <= 0 or eps <= 0:
        raise RemedyError(
            f"adaptive_clip needs clipping > 0 and eps > 0, not clipping={clipping}, eps={eps}."
        )
    params = [p for p in _params(parameters) if p.grad is not None]
    total = _total_norm([p.grad for p in params], 2.0)
    with torch.no_grad():
        for p in params:
            g = p.grad
            max_norm = unitwise_norm(p.detach()).clamp(min=eps).mul_(clipping)
            g_norm = unitwise_norm(g)
            clipped = g * (max_norm / g_norm.clamp(min=1e-6))
            g.copy_(torch.where(g_norm < max_norm, g, clipped))
    return total
