"""What each activation function is, where it is flat, and how its values are binned.

The flat region is defined from the derivative: where |φ'(x)| is below 5% of its maximum, in a
tail reaching to −∞ or +∞ (a derivative that merely crosses zero, as GELU's does near −0.75, is not
a flat region). The tail bounds are computed numerically from φ itself, once per parameter set:

    sigmoid  |x| > 4.36        tanh      |x| > 2.18        softsign  |x| > 3.47
    relu     x ≤ 0             gelu      x < −2.28          silu      x < −3.93
    leaky_relu with slope < 0.05 counts its negative side as flat; with slope ≥ 0.05 it has none.

A *saturating* function reports `saturated_frac`: the fraction of all elements in a flat tail.
A *rectifier* reports `dead_frac`: the fraction of units (every position after the batch
dimension) whose input lies in the lower flat tail for every sample of the batch.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from gradwatch.activations import BY_NAME

FLAT = 0.05
HIST_BINS = 32


@dataclass(frozen=True)
class ActivationSpec:
    name: str
    saturating: bool
    rectifier: bool
    lo: float  # flat for x < lo (−inf: no lower flat tail)
    hi: float  # flat for x > hi (+inf: no upper flat tail)
    hist_range: tuple[float, float]

    def flat(self, x: torch.Tensor) -> torch.Tensor:
        if math.isinf(self.lo):
            return x > self.hi
        if math.isinf(self.hi):
            return x < self.lo
        if self.lo == -self.hi:
            return x.abs() > self.hi
        return (x < self.lo) | (x > self.hi)


def _fn(name: str, p: tuple) -> callable:
    return {
        "sigmoid": torch.sigmoid,
        "tanh": torch.tanh,
        "relu": torch.relu,
        "relu6": F.relu6,
        "leaky_relu": lambda x: F.leaky_relu(x, p[0]),
        "prelu": lambda x: torch.where(x > 0, x, p[0] * x),
        "rrelu": lambda x: F.leaky_relu(x, p[0]),
        "elu": lambda x: F.elu(x, p[0]),
        "celu": lambda x: F.celu(x, p[0]),
        "selu": F.selu,
        "gelu": lambda x: F.gelu(x, approximate=p[0]),
        "silu": F.silu,
        "mish": F.mish,
        "hardswish": F.hardswish,
        "hardsigmoid": F.hardsigmoid,
        "hardtanh": lambda x: F.hardtanh(x, p[0], p[1]),
        "softsign": F.softsign,
        "softplus": lambda x: F.softplus(x, p[0], p[1]),
        "logsigmoid": F.logsigmoid,
    }[name]


def _same(t: torch.Tensor) -> torch.Tensor:
    return t


@functools.lru_cache(maxsize=256)
def spec(name: str, params: tuple = ()) -> ActivationSpec:
    """The spec of activation `name` with its parameters (slope, alpha, bounds...)."""
    # The first call can come from inside the user's forward: under no_grad (a reentrant
    # torch.utils.checkpoint) or under saved-tensor hooks (a non-reentrant one, which would keep
    # this grid and then find it missing when it recomputes). Our own autograd, our own hooks.
    with torch.enable_grad(), torch.autograd.graph.saved_tensors_hooks(_same, _same):
        x = torch.linspace(-60, 60, 240_001, dtype=torch.float64, requires_grad=True)
        (d,) = torch.autograd.grad(_fn(name, params)(x).sum(), x)
    d = d.abs()
    flat = d < FLAT * float(d.max())
    xs = x.detach()
    lo = -math.inf
    if flat[0]:
        first_steep = int((~flat).nonzero()[0]) if (~flat).any() else len(xs)
        lo = float(xs[first_steep]) if first_steep < len(xs) else math.inf
    hi = math.inf
    if flat[-1]:
        last_steep = int((~flat).nonzero()[-1])
        hi = float(xs[last_steep])
    act = BY_NAME[name]
    return ActivationSpec(name, act.saturates, act.dies, lo, hi, _range(name, params))


def _range(name: str, p: tuple) -> tuple[float, float]:
    if name == "hardtanh":
        return (float(p[0]), float(p[1]))
    return BY_NAME[name].hist_range


def module_spec(module: nn.Module) -> ActivationSpec | None:
    """The spec for an activation module, or None if `module` is not one."""
    m = module
    if isinstance(m, nn.Sigmoid):
        return spec("sigmoid")
    if isinstance(m, nn.Tanh):
        return spec("tanh")
    if isinstance(m, nn.ReLU6):
        return spec("relu6")
    if isinstance(m, nn.ReLU):
        return spec("relu")
    if isinstance(m, nn.LeakyReLU):
        return spec("leaky_relu", (float(m.negative_slope),))
    if isinstance(m, nn.PReLU):
        return spec("prelu", (round(float(m.weight.detach().abs().max()), 3),))
    if isinstance(m, nn.RReLU):
        return spec("rrelu", ((m.lower + m.upper) / 2,))
    if isinstance(m, nn.ELU):
        return spec("elu", (float(m.alpha),))
    if isinstance(m, nn.CELU):
        return spec("celu", (float(m.alpha),))
    if isinstance(m, nn.SELU):
        return spec("selu")
    if isinstance(m, nn.GELU):
        return spec("gelu", (m.approximate,))
    if isinstance(m, nn.SiLU):
        return spec("silu")
    if isinstance(m, nn.Mish):
        return spec("mish")
    if isinstance(m, nn.Hardswish):
        return spec("hardswish")
    if isinstance(m, nn.Hardsigmoid):
        return spec("hardsigmoid")
    if isinstance(m, nn.Hardtanh):  # after ReLU6, which subclasses it
        return spec("hardtanh", (float(m.min_val), float(m.max_val)))
    if isinstance(m, nn.Softsign):
        return spec("softsign")
    if isinstance(m, nn.Softplus):
        return spec("softplus", (float(m.beta), float(m.threshold)))
    if isinstance(m, nn.LogSigmoid):
        return spec("logsigmoid")
    return None


def _arg(args, kwargs, i: int, name: str, default):
    if len(args) > i:
        return args[i]
    return kwargs.get(name, default)


# Functions a forward may call directly, and how to read their parameters from the call.
_FUNCTIONAL = {
    "relu": (
        [F.relu, torch.relu, torch.relu_, torch.Tensor.relu, torch.Tensor.relu_, F.relu_],
        lambda a, k: (),
    ),
    "relu6": ([F.relu6], lambda a, k: ()),
    "sigmoid": (
        [torch.sigmoid, torch.Tensor.sigmoid, torch.sigmoid_, torch.Tensor.sigmoid_, F.sigmoid],
        lambda a, k: (),
    ),
    "tanh": (
        [torch.tanh, torch.Tensor.tanh, torch.tanh_, torch.Tensor.tanh_, F.tanh],
        lambda a, k: (),
    ),
    "leaky_relu": (
        [F.leaky_relu, F.leaky_relu_],
        lambda a, k: (float(_arg(a, k, 1, "negative_slope", 0.01)),),
    ),
    "elu": ([F.elu, F.elu_], lambda a, k: (float(_arg(a, k, 1, "alpha", 1.0)),)),
    "celu": ([F.celu, F.celu_], lambda a, k: (float(_arg(a, k, 1, "alpha", 1.0)),)),
    "selu": ([F.selu, torch.selu, torch.selu_, F.selu_], lambda a, k: ()),
    "gelu": ([F.gelu], lambda a, k: (_arg(a, k, 1, "approximate", "none"),)),
    "silu": ([F.silu], lambda a, k: ()),
    "mish": ([F.mish], lambda a, k: ()),
    "hardswish": ([F.hardswish], lambda a, k: ()),
    "hardsigmoid": ([F.hardsigmoid], lambda a, k: ()),
    "hardtanh": (
        [F.hardtanh, F.hardtanh_],
        lambda a, k: (float(_arg(a, k, 1, "min_val", -1.0)), float(_arg(a, k, 2, "max_val", 1.0))),
    ),
    "softsign": ([F.softsign], lambda a, k: ()),
    "softplus": (
        [F.softplus],
        lambda a, k: (float(_arg(a, k, 1, "beta", 1.0)), float(_arg(a, k, 2, "threshold", 20.0))),
    ),
    "logsigmoid": ([F.logsigmoid], lambda a, k: ()),
}
FUNCTIONAL: dict[object, tuple[str, callable]] = {
    fn: (name, params) for name, (fns, params) in _FUNCTIONAL.items() for fn in fns
}


def functional_spec(func, args, kwargs) -> ActivationSpec | None:
    """The spec of a functional activation call seen by a TorchFunctionMode, or None."""
    hit = FUNCTIONAL.get(func)
    if hit is None:
        return None
    name, params = hit
    return spec(name, params(args, kwargs or {}))
