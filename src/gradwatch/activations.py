"""The one registry of activation functions: what each is, and what every part of gradwatch reads.

Probes read which activations saturate (report `saturated_frac`) or die (report `dead_frac`) and
the range their histogram covers; the diagnosis reads the family to word its advice; remedies read
the family and the init that fits; theory reads the name mean-field theory knows the function by.

Families:
- `saturating`: bounded, flat at both ends (sigmoid, tanh, ...): gradients vanish in saturation;
  Xavier init, or a swap to a rectifier for hidden layers.
- `rectifier`: zero or nearly linear on the negative side (ReLU, leaky ReLU, ELU, ...): units can
  die; He init.
- `smooth`: smooth rectifiers (GELU, SiLU, Mish, Softplus, Hardswish): He init.
- `self_normalising`: SELU with LeCun-normal init (Klambauer et al. 2017).
- `other`: activation modules gradwatch only recognises as activations (GLU, Tanhshrink, ...).

`saturates` is separate from the family: ELU and SELU are rectifier-like for advice, but their
negative tail is flat (−α), and that tail is where the probes count saturation. ReLU6 both dies
(x ≤ 0) and saturates (x ≥ 6).
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

FAMILIES = ("saturating", "rectifier", "smooth", "self_normalising", "other")


@dataclass(frozen=True)
class Activation:
    """One activation function.

    name: the name probes record and the diagnosis reads (`meta.json` activation names).
    modules: the torch.nn classes that compute it (most specific first where they subclass).
    family: one of FAMILIES, which decides the advice and the init that fits.
    saturates: it has a flat tail that counts as saturation (probes report `saturated_frac`).
    dies: units can sit in a flat lower tail for every sample (probes report `dead_frac`).
    init: the init scheme that keeps variance through it: "he", "xavier", "lecun" or None.
    theory: its name in `gradwatch.theory` (mean field), or None where the theory has none.
    linear_at_zero: φ(0) = 0 and φ'(0) = 1, so orthogonal weights give dynamical isometry near
        q* → 0 (Pennington et al. 2017): tanh-like functions.
    hist_range: the range of the 32-bin histogram of its outputs.
    """

    name: str
    modules: tuple[type[nn.Module], ...]
    family: str
    saturates: bool = False
    dies: bool = False
    init: str | None = None
    theory: str | None = None
    linear_at_zero: bool = False
    hist_range: tuple[float, float] = (-4.0, 4.0)


REGISTRY: tuple[Activation, ...] = (
    Activation(
        "sigmoid",
        (nn.Sigmoid,),
        "saturating",
        saturates=True,
        init="xavier",
        theory="sigmoid",
        hist_range=(0.0, 1.0),
    ),
    Activation(
        "tanh",
        (nn.Tanh,),
        "saturating",
        saturates=True,
        init="xavier",
        theory="tanh",
        linear_at_zero=True,
        hist_range=(-1.0, 1.0),
    ),
    Activation(
        "softsign",
        (nn.Softsign,),
        "saturating",
        saturates=True,
        init="xavier",
        linear_at_zero=True,
        hist_range=(-1.0, 1.0),
    ),
    Activation(
        "hardsigmoid",
        (nn.Hardsigmoid,),
        "saturating",
        saturates=True,
        init="xavier",
        hist_range=(0.0, 1.0),
    ),
    Activation(
        "logsigmoid",
        (nn.LogSigmoid,),
        "saturating",
        saturates=True,
        init="xavier",
        hist_range=(-6.0, 0.0),
    ),
    Activation(
        "relu6",
        (nn.ReLU6,),
        "rectifier",
        saturates=True,
        dies=True,
        init="he",
        hist_range=(0.0, 6.0),
    ),
    # After ReLU6, which subclasses it; its histogram range is its own (min_val, max_val).
    Activation(
        "hardtanh",
        (nn.Hardtanh,),
        "saturating",
        saturates=True,
        init="xavier",
        linear_at_zero=True,
    ),
    Activation("relu", (nn.ReLU,), "rectifier", dies=True, init="he", theory="relu"),
    Activation(
        "leaky_relu", (nn.LeakyReLU,), "rectifier", dies=True, init="he", theory="leaky_relu"
    ),
    Activation("prelu", (nn.PReLU,), "rectifier", dies=True, init="he"),
    Activation("rrelu", (nn.RReLU,), "rectifier", dies=True, init="he"),
    Activation("elu", (nn.ELU,), "rectifier", saturates=True, init="he", theory="elu"),
    Activation("celu", (nn.CELU,), "rectifier", saturates=True, init="he"),
    Activation("gelu", (nn.GELU,), "smooth", dies=True, init="he", theory="gelu"),
    Activation("silu", (nn.SiLU,), "smooth", dies=True, init="he", theory="silu"),
    Activation("mish", (nn.Mish,), "smooth", dies=True, init="he"),
    Activation("hardswish", (nn.Hardswish,), "smooth", dies=True, init="he"),
    Activation("softplus", (nn.Softplus,), "smooth", dies=True, init="he", theory="softplus"),
    Activation("selu", (nn.SELU,), "self_normalising", saturates=True, init="lecun", theory="selu"),
    Activation("tanhshrink", (nn.Tanhshrink,), "other"),
    Activation("threshold", (nn.Threshold,), "other"),
    Activation("glu", (nn.GLU,), "other"),
)

BY_NAME: dict[str, Activation] = {a.name: a for a in REGISTRY}


def _modules(keep) -> tuple[type[nn.Module], ...]:
    return tuple(m for a in REGISTRY if keep(a) for m in a.modules)


def _names(keep) -> frozenset[str]:
    return frozenset(a.name for a in REGISTRY if keep(a))


ACTIVATION_MODULES = _modules(lambda a: True)
"""Every module class that is an activation (a Linear followed by one is a pre-activation)."""

SATURATING_MODULES = _modules(lambda a: a.family == "saturating")
HE_INIT_MODULES = _modules(lambda a: a.init == "he")
TANH_LIKE_MODULES = _modules(lambda a: a.linear_at_zero)

SATURATING = _names(lambda a: a.family == "saturating")
"""Names whose family is saturating: sigmoid/tanh advice (swap hidden ones, Xavier init)."""
RECTIFIERS = _names(lambda a: a.family in ("rectifier", "smooth", "self_normalising"))
"""Names of the ReLU-like families: He (or LeCun) init advice, dying-unit advice."""


def lookup(module: nn.Module) -> Activation | None:
    """The registry entry of an activation module (by class, subclasses first), or None."""
    for act in REGISTRY:
        if isinstance(module, act.modules):
            return act
    return None
