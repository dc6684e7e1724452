"""Singular values of the input-output Jacobian at initialisation (Pennington et al. 2017).

J is the Jacobian of the model's whole (flattened) output with respect to its whole (flattened)
input for one batch. For a model that treats samples independently it is block diagonal, so its
singular values are those of all per-sample Jacobians together; with BatchNorm in train mode the
coupling between samples is part of it, as it is of training. All products with J come from one
forward pass: vector-Jacobian products by backward, Jacobian-vector products by the
double-backward trick (J v is the gradient of ⟨Jᵀu, v⟩ with respect to u), so a model with dropout
is measured with one fixed mask.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from gradwatch._nn import call
from gradwatch._tensor import stat_dtype
from gradwatch.errors import JacobianError

EXACT_MAX = 512  # build J exactly when its smaller side is at most this
PROBES = 32


@dataclass(frozen=True)
class JacobianSpectrum:
    """Singular values σ of J and the moments of σ² (the spectrum of JJᵀ).

    singular_values: descending; all min(m, n) of them when `exact`, else estimates of the top `k`.
    mean_sq: mean of σ² over the min(m, n) singular values, tr(JᵀJ)/min(m, n) (1 at isometry).
    var_sq: variance of σ² over them; spread = var_sq / mean_sq², 0 when every σ is equal
        (dynamical isometry), large when a few directions dominate.
    """

    singular_values: np.ndarray
    mean_sq: float
    var_sq: float
    exact: bool
    shape: tuple[int, int]

    @property
    def spread(self) -> float:
        return self.var_sq / self.mean_sq**2 if self.mean_sq > 0 else math.inf

    def to_dict(self) -> dict:
        s = self.singular_values
        return {
            "exact": self.exact,
            "shape": list(self.shape),
            "mean_sq": self.mean_sq,
            "var_sq": self.var_sq,
            "spread": self.spread,
            "max": float(s[0]) if len(s) else None,
            "min": float(s[-1]) if len(s) and self.exact else None,
        }


def _input_tensor(inputs: Any) -> tuple[torch.Tensor, Callable[[torch.Tensor], Any]]:
    """The first floating tensor of `inputs`, and how to rebuild `inputs` with it replaced."""
    if isinstance(inputs, torch.Tensor):
        if inputs.is_floating_point():
            return inputs, lambda x: x
    elif isinstance(inputs, (tuple, list)):
        for i, v in enumerate(inputs):
            if isinstance(v, torch.Tensor) and v.is_floating_point():
                return v, lambda x, i=i: type(inputs)(
                    x if j == i else w for j, w in enumerate(inputs)
                )
    elif isinstance(inputs, dict):
        for k, v in inputs.items():
            if isinstance(v, torch.Tensor) and v.is_floating_point():
                return v, lambda x, k=k: {**inputs, k: x}
    raise JacobianError(
        "The Jacobian needs a floating-point input tensor, and the inputs hold none (token ids "
        "have no Jacobian)."
    )


def _first_output(out: Any) -> torch.Tensor | None:
    if isinstance(out, torch.Tensor):
        return out if out.is_floating_point() else None
    items = out.values() if isinstance(out, dict) else out if isinstance(out, (tuple, list)) else ()
    for item in items:
        t = _first_output(item)
        if t is not None:
            return t
    return None


def jacobian_spectrum(
    model: nn.Module,
    inputs: Any,
    exact: bool | None = None,
    k: int = PROBES,
    generator: torch.Generator | None = None,
) -> JacobianSpectrum:
    """Singular values of ∂(output)/∂(input) for one batch, with the mean and spread of σ².

    exact=None builds J exactly when min(output size, input size) ≤ 512 (one batched backward or
    double-backward per row or column), else estimates: mean and variance of σ² from `k`
    Rademacher probes (Hutchinson: E‖Jv‖² = tr JᵀJ, E‖JᵀJv‖² = tr (JᵀJ)²) and the top-`k` singular
    values by a randomized range finder with one power iteration (Halko et al. 2011). `inputs` is a
    tensor, a tuple of positional arguments or a dict of keyword arguments; the first floating
    tensor is the input. Weights are not changed; gradients of parameters are not touched (only the
    input's are taken).
    """
    x0, rebuild = _input_tensor(inputs)
    x = x0.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        y = _first_output(call(model, rebuild(x)))
        if y is None or not y.requires_grad:
            raise JacobianError(
                "The model's output does not depend differentiably on its input, so it has no "
                "Jacobian to measure."
            )
        m, n = y.numel(), x.numel()
        use_exact = min(m, n) <= EXACT_MAX if exact is None else exact
        u = torch.zeros_like(y, requires_grad=True)
        # Jᵀu as a function of u: differentiating it again gives J v without forward-mode support.
        jt_u = torch.autograd.grad(y, x, u, create_graph=True)[0]

        def vjp(vs: torch.Tensor) -> torch.Tensor:  # rows of vs (r, *y.shape) -> (r, n)
            return _batched(
                lambda v, b: torch.autograd.grad(y, x, v, retain_graph=True, is_grads_batched=b)[0],
                vs,
            ).reshape(len(vs), n)

        def jvp(vs: torch.Tensor) -> torch.Tensor:  # (r, *x.shape) -> (r, m)
            return _batched(
                lambda v, b: torch.autograd.grad(jt_u, u, v, retain_graph=True, is_grads_batched=b)[
                    0
                ],
                vs,
            ).reshape(len(vs), m)

        wide = stat_dtype(x.device)  # float64 where the device has it
        if use_exact:
            if m <= n:
                jac = vjp(torch.eye(m, dtype=y.dtype, device=y.device).reshape(m, *y.shape))
            else:
                jac = jvp(torch.eye(n, dtype=x.dtype, device=x.device).reshape(n, *x.shape)).T
            s = torch.linalg.svdvals(jac.to(wide)).cpu().numpy()
            s2 = s**2
            return JacobianSpectrum(s, float(s2.mean()), float(s2.var()), True, (m, n))
        g = generator or torch.Generator(device="cpu").manual_seed(0)
        k = max(2, min(k, m, n))
        v = (torch.randint(0, 2, (k, n), generator=g) * 2 - 1).to(x.device, x.dtype)
        jv = jvp(v.reshape(k, *x.shape))
        jtjv = vjp(jv.reshape(k, *y.shape))
        r = min(m, n)
        mean_sq = float(jv.to(wide).pow(2).sum(1).mean()) / r
        m2 = float(jtjv.to(wide).pow(2).sum(1).mean()) / r
        # One power iteration: J(JᵀJ)v leans far more on the top directions than Jv does.
        top = jvp((jtjv / jtjv.norm(dim=1, keepdim=True).clamp_min(1e-30)).reshape(k, *x.shape))
        q, _ = torch.linalg.qr(top.T.to(wide))  # (m, k): a basis of J's top range
        b = vjp(q.T.to(y.dtype).reshape(k, *y.shape))  # Qᵀ J, (k, n)
        s = torch.linalg.svdvals(b.to(wide)).cpu().numpy()
        return JacobianSpectrum(s, mean_sq, max(m2 - mean_sq**2, 0.0), False, (m, n))


def _batched(
    fn: Callable[[torch.Tensor, bool], torch.Tensor], vs: torch.Tensor, chunk: int = 128
) -> torch.Tensor:
    """fn over the rows of vs: batched backward in chunks where autograd can, else one by one."""
    out = []
    for start in range(0, len(vs), chunk):
        part = vs[start : start + chunk]
        try:
            out.append(fn(part, True))
        except Exception:  # noqa: BLE001 - some ops have no batching rule; the loop always works
            out.append(torch.stack([fn(v, False) for v in part]))
    return torch.cat(out)
