"""Things that change a model: init schemes, activation swap, normalisation, clipping (norm/value/AGC).

Each function follows its paper's definition (see its docstring) and returns the model (or the
object it was given) so calls chain. Random inits draw from an optional `generator` (on the
parameters' device); without one they use the global RNG, as `torch.nn.init` does.

`applicable(model)` names the remedies that fit a model and `apply(name, model)` tries one on a
deep copy, leaving the user's model untouched; `REMEDIES` describes each name.
"""

from __future__ import annotations

import copy
from collections import OrderedDict
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.nn.modules.conv import _ConvNd

from ._remedies_clip import adaptive_clip, clip_by_norm, clip_by_value, unitwise_norm
from ._remedies_init import (
    WEIGHT_LAYERS,
    RemedyError,
    delta_orthogonal_init,
    fixup_init,
    he_init,
    lecun_init,
    lstm_forget_bias,
    orthogonal_init,
    weight_layers,
    xavier_init,
    zero_init_last,
)
from ._remedies_lsuv import lsuv_init
from ._remedies_recurrent import (
    fixup_residual,
    recurrent_orthogonal_init,
    residual_branches,
    swap_recurrent,
    zero_init_residual,
)

__all__ = [
    "RemedyError",
    "xavier_init",
    "he_init",
    "lecun_init",
    "orthogonal_init",
    "delta_orthogonal_init",
    "lsuv_init",
    "fixup_init",
    "zero_init_last",
    "lstm_forget_bias",
    "recurrent_orthogonal_init",
    "swap_recurrent",
    "residual_branches",
    "zero_init_residual",
    "fixup_residual",
    "swap_activation",
    "insert_norm",
    "clip_by_norm",
    "clip_by_value",
    "adaptive_clip",
    "unitwise_norm",
    "RemedySpec",
    "REMEDIES",
    "applicable",
    "apply",
]

RECTIFIERS = (
    nn.ReLU,
    nn.ReLU6,
    nn.LeakyReLU,
    nn.PReLU,
    nn.RReLU,
    nn.ELU,
    nn.CELU,
    nn.GELU,
    nn.SiLU,
    nn.Mish,
    nn.Hardswish,
)
SATURATING = (nn.Sigmoid, nn.Tanh, nn.Hardsigmoid, nn.Softsign)
TANH_LIKE = (nn.Tanh, nn.Softsign)
ACTIVATIONS = (
    RECTIFIERS
    + SATURATING
    + (nn.SELU, nn.Hardtanh, nn.Softplus, nn.LogSigmoid, nn.Tanhshrink, nn.Threshold, nn.GLU)
)
NORMS = (
    nn.modules.batchnorm._BatchNorm,
    nn.LayerNorm,
    nn.GroupNorm,
    nn.modules.instancenorm._InstanceNorm,
    nn.LocalResponseNorm,
)


# ---------------------------------------------------------------- activation swap


def _swap(model: nn.Module, old, new, skip: Collection[int] = ()) -> tuple[nn.Module, int]:
    """(model or its replacement, number of modules replaced). One new module per old instance."""
    sites = [
        (parent, name, child)
        for parent in model.modules()
        for name, child in parent._modules.items()
        if isinstance(child, old) and id(child) not in skip
    ]
    root_matches = isinstance(model, old) and id(model) not in skip
    made: dict[int, nn.Module] = {}

    def replacement(mod: nn.Module) -> nn.Module:
        if id(mod) not in made:
            fresh = new()
            if not isinstance(fresh, nn.Module):
                raise RemedyError(
                    f"new must be an nn.Module class or a factory returning one, and it returned {type(fresh).__name__}."
                )
            ref = next((p for p in model.parameters() if p.is_floating_point()), None)
            if ref is not None:
                fresh.to(device=ref.device, dtype=ref.dtype)
            made[id(mod)] = fresh.train(mod.training)
        return made[id(mod)]

    for parent, name, child in sites:
        parent._modules[name] = replacement(child)  # keeps the name and the position in containers
    if root_matches:
        model = replacement(model)
    return model, len(made)


def swap_activation(
    model: nn.Module,
    old: type[nn.Module] | tuple[type[nn.Module], ...] = nn.Sigmoid,
    new: type[nn.Module] | Callable[[], nn.Module] = nn.ReLU,
) -> nn.Module:
    """Replace every submodule that is an instance of `old` by a fresh `new()`, in place.

    Works at any depth (Sequential, ModuleList, ModuleDict, plain attributes); names, order, other
    modules and all parameters are untouched, and a module registered twice is replaced by one
    shared new module. `new` is a class or a zero-argument factory (`lambda: nn.LeakyReLU(0.1)`);
    the new module takes the old one's train/eval mode and the model's device/dtype. Activations
    inside nn.RNN/LSTM/GRU and functional calls (`torch.sigmoid` in a forward) are not modules and
    are not swapped. Returns `model` (or the new module, if `model` itself is an `old`); raises
    RemedyError (a ValueError) if nothing matched. Usual use: sigmoid/tanh → ReLU, then `he_init`.
    """
    result, count = _swap(model, old, new)
    if count == 0:
        names = old.__name__ if isinstance(old, type) else ", ".join(c.__name__ for c in old)
        raise RemedyError(
            f"swap_activation found no {names} module in the model, so nothing was replaced."
        )
    return result


# ---------------------------------------------------------------- normalisation


def _norm_after(layer: nn.Module, kind: str) -> nn.Module:
    dev = {"device": layer.weight.device, "dtype": layer.weight.dtype}
    if isinstance(layer, nn.Linear):
        n = layer.out_features
        return nn.BatchNorm1d(n, **dev) if kind == "batch" else nn.LayerNorm(n, **dev)
    n = layer.out_channels
    if kind == "layer":
        return nn.GroupNorm(1, n, **dev)  # LayerNorm over (C, *spatial) per sample
    return {1: nn.BatchNorm1d, 2: nn.BatchNorm2d, 3: nn.BatchNorm3d}[len(layer.kernel_size)](
        n, **dev
    )


def _insertion_points(seq: nn.Sequential) -> list[int]:
    mods = list(seq._modules.values())
    return [
        i
        for i in range(len(mods) - 1)
        if isinstance(mods[i], WEIGHT_LAYERS) and isinstance(mods[i + 1], ACTIVATIONS)
    ]


def _with_norms(seq: nn.Sequential, kind: str) -> tuple[nn.Sequential, int]:
    points = set(_insertion_points(seq))
    items: list[tuple[str, nn.Module]] = []
    count = 0
    for i, (name, mod) in enumerate(seq._modules.items()):
        if type(mod) is nn.Sequential:
            mod, inner = _with_norms(mod, kind)
            count += inner
        items.append((name, mod))
        if i in points:
            items.append((f"{name}_norm", _norm_after(mod, kind).train(seq.training)))
            count += 1
    if all(name == str(i) for i, (name, _) in enumerate(seq._modules.items())):
        items = [(str(i), mod) for i, (_, mod) in enumerate(items)]  # keep a plain Sequential plain
    return nn.Sequential(OrderedDict(items)).train(seq.training), count


def insert_norm(model: nn.Sequential, kind: str = "batch") -> nn.Sequential:
    """A new nn.Sequential with a normalisation layer after every Linear/Conv directly followed by an
    activation (Ioffe & Szegedy 2015: normalise the pre-activation), nested Sequentials included.

    kind="batch": BatchNorm1d/2d/3d matching the layer (num_features = its out_features or
    out_channels); kind="layer": LayerNorm(out_features) after a Linear, GroupNorm(1, channels)
    (LayerNorm over channels and space) after a conv. The input is not changed, but the new
    Sequential holds the *same* layer objects, so parameters are shared with it: deep-copy first
    (as `apply` does) for an independent model. Numbered Sequentials are renumbered; named ones keep
    their names and the norm after `x` is named `x_norm`. Layer biases are kept (redundant before
    BatchNorm, harmless). Raises RemedyError (a ValueError) for a model that is not exactly
    nn.Sequential or has nowhere to insert a norm.
    """
    if type(model) is not nn.Sequential:
        raise RemedyError(
            f"insert_norm rebuilds an nn.Sequential, and the model is a {type(model).__name__}; "
            "add the normalisation layers in its __init__ and forward instead."
        )
    if kind not in ("batch", "layer"):
        raise RemedyError(f"kind must be 'batch' or 'layer', not {kind!r}.")
    result, count = _with_norms(model, kind)
    if count == 0:
        raise RemedyError(
            "insert_norm found no Linear or Conv layer directly followed by an activation module."
        )
    return result


# ---------------------------------------------------------------- what applies to a model


def _has(model: nn.Module, classes) -> bool:
    return any(isinstance(m, classes) for m in model.modules())


def _hidden_saturating(model: nn.Module) -> list[nn.Module]:
    """Saturating activation modules that some weight layer comes after in registration order.

    Those with no weight layer after them are taken for the output nonlinearity (a sigmoid on a
    binary classifier's logit), which is part of the loss, not a cause of vanishing gradients.
    """
    mods = list(model.modules())
    last_weight = max((i for i, m in enumerate(mods) if isinstance(m, WEIGHT_LAYERS)), default=-1)
    return [m for i, m in enumerate(mods) if isinstance(m, SATURATING) and i < last_weight]


def _has_weights(model: nn.Module) -> bool:
    return bool(weight_layers(model))


def _sequential_without_norm(model: nn.Module) -> bool:
    if type(model) is not nn.Sequential or _has(model, NORMS):
        return False
    stack, found = [model], False
    while stack and not found:
        seq = stack.pop()
        found = bool(_insertion_points(seq))
        stack += [m for m in seq if type(m) is nn.Sequential]
    return found


def _square_convs(model: nn.Module) -> bool:
    convs = [m for m in model.modules() if isinstance(m, _ConvNd)]
    return bool(convs) and all(c.out_channels >= c.in_channels for c in convs)


def _lstm_with_bias(model: nn.Module) -> bool:
    return any(isinstance(m, nn.LSTM | nn.LSTMCell) and m.bias for m in model.modules())


def _swap_hidden_to_relu(model: nn.Module) -> nn.Module:
    hidden = {id(m) for m in _hidden_saturating(model)}
    skip = {id(m) for m in model.modules() if id(m) not in hidden}
    result, count = _swap(model, SATURATING, nn.ReLU, skip=skip)
    if count == 0:
        raise RemedyError(
            "swap_activation:relu found no hidden sigmoid/tanh module (one before a weight layer) to replace."
        )
    return result


def _lsuv(model: nn.Module, inputs: Any, generator: torch.Generator | None) -> nn.Module:
    if inputs is None:
        raise RemedyError(
            "lsuv_init measures output variances, so apply('lsuv_init', model, inputs) needs inputs."
        )
    return lsuv_init(model, inputs, generator=generator)


@dataclass(frozen=True)
class RemedySpec:
    """One named remedy: what it does, when it fits a model, and how to apply it (in place)."""

    name: str
    summary: str
    applies: Callable[[nn.Module, Any], bool]
    fn: Callable[[nn.Module, Any, torch.Generator | None], nn.Module]


def _spec(name: str, summary: str, applies, fn) -> tuple[str, RemedySpec]:
    return name, RemedySpec(name, summary, applies, fn)


REMEDIES: dict[str, RemedySpec] = dict(
    [
        _spec(
            "he_init",
            "He-normal init (variance 2/fan_in), biases zero: for ReLU-family activation modules",
            lambda m, x: _has(m, RECTIFIERS) and _has_weights(m),
            lambda m, x, g: he_init(m, generator=g),
        ),
        _spec(
            "xavier_init",
            "Xavier/Glorot-normal init (variance 2/(fan_in+fan_out)), biases zero: for sigmoid/tanh modules",
            lambda m, x: _has(m, SATURATING) and _has_weights(m),
            lambda m, x, g: xavier_init(m, generator=g),
        ),
        _spec(
            "lecun_init",
            "LeCun-normal init (variance 1/fan_in), biases zero: for SELU modules",
            lambda m, x: _has(m, nn.SELU) and _has_weights(m),
            lambda m, x, g: lecun_init(m, generator=g),
        ),
        _spec(
            "orthogonal_init",
            "orthogonal weights, biases zero: for tanh-like activation modules",
            lambda m, x: _has(m, TANH_LIKE) and _has_weights(m),
            lambda m, x, g: orthogonal_init(m, generator=g),
        ),
        _spec(
            "delta_orthogonal_init",
            "delta-orthogonal convolutions (orthogonal centre tap): for CNNs whose convs never reduce channels",
            lambda m, x: _square_convs(m),
            lambda m, x, g: delta_orthogonal_init(m, generator=g),
        ),
        _spec(
            "lsuv_init",
            "LSUV: orthogonal init, then each layer's output variance on the inputs set to 1 (needs inputs)",
            lambda m, x: x is not None and _has_weights(m),
            _lsuv,
        ),
        _spec(
            "swap_activation:relu",
            "replace hidden sigmoid/tanh modules by ReLU (an output sigmoid is kept)",
            lambda m, x: bool(_hidden_saturating(m)),
            lambda m, x, g: _swap_hidden_to_relu(m),
        ),
        _spec(
            "insert_norm",
            "BatchNorm after every Linear/Conv followed by an activation, in an nn.Sequential without norm layers",
            lambda m, x: _sequential_without_norm(m),
            lambda m, x, g: insert_norm(m, "batch"),
        ),
        _spec(
            "insert_norm:layer",
            "LayerNorm (GroupNorm(1, C) for convs) after every Linear/Conv followed by an activation, in an nn.Sequential without norm layers",
            lambda m, x: _sequential_without_norm(m),
            lambda m, x, g: insert_norm(m, "layer"),
        ),
        _spec(
            "lstm_forget_bias",
            "LSTM forget-gate bias set to 1",
            lambda m, x: _lstm_with_bias(m),
            lambda m, x, g: lstm_forget_bias(m, 1.0),
        ),
        # Composites: a remedy whose companion is part of it (ReLU without He init still vanishes).
        _spec(
            "swap_activation:relu+he_init",
            "hidden sigmoid/tanh modules replaced by ReLU, then He init",
            lambda m, x: bool(_hidden_saturating(m)),
            lambda m, x, g: he_init(_swap_hidden_to_relu(m), generator=g),
        ),
        _spec(
            "recurrent_orthogonal_init",
            "orthogonal hidden-to-hidden weights (per gate) in nn.RNN/LSTM/GRU",
            lambda m, x: _has(m, (nn.RNN, nn.LSTM, nn.GRU)),
            lambda m, x, g: recurrent_orthogonal_init(m, generator=g),
        ),
        _spec(
            "swap_recurrent:gru",
            "every vanilla nn.RNN replaced by an nn.GRU of the same sizes",
            lambda m, x: any(type(c) is nn.RNN for c in m.modules()),
            lambda m, x, g: swap_recurrent(m, nn.GRU),
        ),
        _spec(
            "swap_recurrent:lstm",
            "every vanilla nn.RNN replaced by an nn.LSTM of the same sizes, forget-gate bias 1",
            lambda m, x: any(type(c) is nn.RNN for c in m.modules()),
            lambda m, x, g: lstm_forget_bias(swap_recurrent(m, nn.LSTM), 1.0),
        ),
        _spec(
            "zero_init_residual",
            "last Linear/Conv of every residual branch zeroed, so each block starts as its shortcut",
            lambda m, x: bool(residual_branches(m)),
            lambda m, x, g: zero_init_residual(m),
        ),
        _spec(
            "fixup_init",
            "Fixup: He init, residual branches scaled by L^(-1/(2m-2)), their last layer zeroed",
            lambda m, x: bool(residual_branches(m)),
            lambda m, x, g: fixup_residual(m, generator=g),
        ),
    ]
)
"""Every remedy `apply` knows, by name. "fixup_init" and "zero_init_residual" find the residual
branches by the name of their shortcut child (`residual_branches`); for other models call
`fixup_init(model, blocks)` or `zero_init_last(blocks)` with the branches yourself."""


def applicable(model: nn.Module, inputs: Any = None) -> list[str]:
    """Names (keys of REMEDIES) of the remedies that fit `model`, in REMEDIES order.

    Judged from the model's modules only (functional activations such as `F.relu` in a forward are
    not seen); "lsuv_init" is listed only when `inputs` is given.
    """
    return [name for name, spec in REMEDIES.items() if spec.applies(model, inputs)]


def apply(
    name: str, model: nn.Module, inputs: Any = None, generator: torch.Generator | None = None
) -> nn.Module:
    """Apply the remedy `name` to a `copy.deepcopy` of `model` and return the copy; `model` is untouched.

    For a "what-if": train or check the copy and compare. `inputs` is needed by "lsuv_init";
    `generator` seeds random inits (the global RNG is used without one). Raises RemedyError (a
    ValueError) for an unknown name or a remedy that does not fit the model.
    """
    spec = REMEDIES.get(name)
    if spec is None:
        raise RemedyError(f"unknown remedy {name!r}; known ones are {', '.join(REMEDIES)}.")
    return spec.fn(copy.deepcopy(model), inputs, generator)
