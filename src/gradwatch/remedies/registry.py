"""The named remedies: what each does, when it fits a model, and how to apply it to a copy.

`applicable(model)` names the remedies that fit a model and `apply(name, model)` tries one on a
deep copy, leaving the user's model untouched; `REMEDIES` describes each name.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.nn.modules.conv import _ConvNd

from gradwatch._nn import WEIGHT_LAYERS
from gradwatch.activations import HE_INIT_MODULES as RECTIFIERS
from gradwatch.activations import SATURATING_MODULES as SATURATING
from gradwatch.activations import TANH_LIKE_MODULES as TANH_LIKE
from gradwatch.errors import RemedyError
from gradwatch.remedies.init import (
    delta_orthogonal_init,
    he_init,
    lecun_init,
    lstm_forget_bias,
    orthogonal_init,
    weight_layers,
    xavier_init,
)
from gradwatch.remedies.lsuv import lsuv_init
from gradwatch.remedies.normalization import _insertion_points, insert_norm
from gradwatch.remedies.recurrent import recurrent_orthogonal_init, swap_recurrent
from gradwatch.remedies.residual import fixup_residual, residual_branches, zero_init_residual
from gradwatch.remedies.swap import _swap

NORMS = (
    nn.modules.batchnorm._BatchNorm,
    nn.LayerNorm,
    nn.GroupNorm,
    nn.modules.instancenorm._InstanceNorm,
    nn.LocalResponseNorm,
)


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
            "swap_activation:relu found no hidden sigmoid/tanh module "
            "(one before a weight layer) to replace."
        )
    return result


def _lsuv(model: nn.Module, inputs: Any, generator: torch.Generator | None) -> nn.Module:
    if inputs is None:
        raise RemedyError(
            "lsuv_init measures output variances, "
            "so apply('lsuv_init', model, inputs) needs inputs."
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
            "Xavier/Glorot-normal init (variance 2/(fan_in+fan_out)), biases zero: "
            "for sigmoid/tanh modules",
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
            "delta-orthogonal convolutions (orthogonal centre tap): "
            "for CNNs whose convs never reduce channels",
            lambda m, x: _square_convs(m),
            lambda m, x, g: delta_orthogonal_init(m, generator=g),
        ),
        _spec(
            "lsuv_init",
            "LSUV: orthogonal init, then each layer's output variance on the inputs set to 1 "
            "(needs inputs)",
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
            "BatchNorm after every Linear/Conv followed by an activation, "
            "in an nn.Sequential without norm layers",
            lambda m, x: _sequential_without_norm(m),
            lambda m, x, g: insert_norm(m, "batch"),
        ),
        _spec(
            "insert_norm:layer",
            "LayerNorm (GroupNorm(1, C) for convs) after every Linear/Conv "
            "followed by an activation, "
            "in an nn.Sequential without norm layers",
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
            "last Linear/Conv of every residual branch zeroed, "
            "so each block starts as its shortcut",
            lambda m, x: bool(residual_branches(m)),
            lambda m, x, g: zero_init_residual(m),
        ),
        _spec(
            "fixup_residual",
            "Fixup: He init, residual branches scaled by L^(-1/(2m-2)), their last layer zeroed",
            lambda m, x: bool(residual_branches(m)),
            lambda m, x, g: fixup_residual(m, generator=g),
        ),
    ]
)
"""Every remedy `apply` knows, by name. "fixup_residual" and "zero_init_residual" find the residual
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
    """Apply the remedy `name` to a `copy.deepcopy` of `model` and return the copy; `model` is
    untouched.

    For a "what-if": train or check the copy and compare. `inputs` is needed by "lsuv_init";
    `generator` seeds random inits (the global RNG is used without one). Raises RemedyError (a
    ValueError) for an unknown name or a remedy that does not fit the model.
    """
    spec = REMEDIES.get(name)
    if spec is None:
        raise RemedyError(f"unknown remedy {name!r}; known ones are {', '.join(REMEDIES)}.")
    return spec.fn(copy.deepcopy(model), inputs, generator)
