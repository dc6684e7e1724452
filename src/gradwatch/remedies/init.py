"""Initialisation schemes, each as its paper defines it, for every weight layer of a model.

Fans are those of the layer's computation, not of the weight tensor's memory layout:
fan_in is the number of inputs one output unit reads ((in_channels/groups)·kernel for a
convolution), fan_out the number of outputs one input feeds ((out_channels/groups)·kernel).
For groups=1 and a non-transposed layer these are PyTorch's own fans; for a transposed
convolution the stride is ignored (exact for stride 1).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Literal, TypeVar

import torch
from torch import nn
from torch.nn.modules.conv import _ConvNd, _ConvTransposeNd

from gradwatch._nn import WEIGHT_LAYERS, fans
from gradwatch.errors import RemedyError

T = TypeVar("T", nn.Module, Iterable[nn.Module])


def weight_layers(target: nn.Module | Iterable[nn.Module]) -> list[nn.Module]:
    """Every Linear/Conv/ConvTranspose in `target` (a module or modules), registration order, once
    each."""
    roots = [target] if isinstance(target, nn.Module) else list(target)
    seen: set[int] = set()
    out = []
    for root in roots:
        for m in root.modules():
            if isinstance(m, WEIGHT_LAYERS) and id(m) not in seen:
                if isinstance(m.weight, nn.parameter.UninitializedParameter):
                    raise RemedyError(
                        f"{type(m).__name__} is a lazy layer whose weight does not exist yet; run "
                        "one forward pass first."
                    )
                seen.add(id(m))
                out.append(m)
    return out


def _require_layers(target, scheme: str) -> list[nn.Module]:
    layers = weight_layers(target)
    if not layers:
        raise RemedyError(
            f"{scheme} found no nn.Linear, nn.Conv* or nn.ConvTranspose* layer to initialise; pass "
            "the model (or list of modules) that holds them."
        )
    return layers


def _fill(
    layer: nn.Module, var: float, distribution: str, generator: torch.Generator | None
) -> None:
    """Weights i.i.d. with mean 0 and variance `var`; bias zero."""
    with torch.no_grad():
        if distribution == "normal":
            nn.init.normal_(layer.weight, 0.0, math.sqrt(var), generator=generator)
        elif distribution == "uniform":
            bound = math.sqrt(3.0 * var)  # U[-b, b] has variance b²/3
            nn.init.uniform_(layer.weight, -bound, bound, generator=generator)
        else:
            raise RemedyError(f"distribution must be 'normal' or 'uniform', not {distribution!r}.")
        if layer.bias is not None:
            layer.bias.zero_()


def xavier_init(
    model: T,
    gain: float = 1.0,
    distribution: Literal["normal", "uniform"] = "normal",
    generator: torch.Generator | None = None,
) -> T:
    """Glorot & Bengio (2010): weight variance gain²·2/(fan_in + fan_out), biases zero.

    Keeps forward and backward signal variance roughly level for tanh/sigmoid nets (gain 1 is the
    paper's choice; `nn.init.calculate_gain("tanh")` = 5/3 compensates tanh's contraction).
    Draws from `generator` (on the parameters' device) or, when None, from the global RNG.
    Returns `model`, so calls chain.
    """
    for layer in _require_layers(model, "xavier_init"):
        fan_in, fan_out = fans(layer)
        _fill(layer, gain**2 * 2.0 / (fan_in + fan_out), distribution, generator)
    return model


def he_init(
    model: T,
    nonlinearity: str = "relu",
    a: float = 0.0,
    mode: Literal["fan_in", "fan_out"] = "fan_in",
    distribution: Literal["normal", "uniform"] = "normal",
    generator: torch.Generator | None = None,
) -> T:
    """He et al. (2015): weight variance 2/((1 + a²)·fan), biases zero.

    `a` is the negative slope of `nonlinearity="leaky_relu"` (0 for ReLU). `mode="fan_in"` keeps the
    forward variance level, `"fan_out"` the backward one. Any other nonlinearity PyTorch knows
    ("linear", "tanh", "selu", ...) gives variance calculate_gain(nonlinearity)²/fan.
    Draws from `generator` or, when None, the global RNG. Returns `model`.
    """
    if a != 0.0 and nonlinearity != "leaky_relu":
        raise RemedyError(
            f"a={a} is the negative slope of a leaky ReLU; pass nonlinearity='leaky_relu' with it."
        )
    if mode not in ("fan_in", "fan_out"):
        raise RemedyError(f"mode must be 'fan_in' or 'fan_out', not {mode!r}.")
    if nonlinearity in ("relu", "leaky_relu"):
        gain2 = 2.0 / (1.0 + a**2)
    else:
        try:
            gain2 = nn.init.calculate_gain(nonlinearity) ** 2
        except ValueError as e:
            raise RemedyError(
                f"unknown nonlinearity {nonlinearity!r}; use one nn.init.calculate_gain knows, "
                "such as 'relu'."
            ) from e
    for layer in _require_layers(model, "he_init"):
        fan = fans(layer)[0 if mode == "fan_in" else 1]
        _fill(layer, gain2 / fan, distribution, generator)
    return model


def lecun_init(
    model: T,
    distribution: Literal["normal", "uniform"] = "normal",
    generator: torch.Generator | None = None,
) -> T:
    """LeCun init: weight variance 1/fan_in, biases zero.

    With SELU activations this makes mean 0 / variance 1 the self-normalising fixed point
    (Klambauer et al. 2017). Draws from `generator` or the global RNG. Returns `model`.
    """
    for layer in _require_layers(model, "lecun_init"):
        _fill(layer, 1.0 / fans(layer)[0], distribution, generator)
    return model


def _orthogonal(layer: nn.Module, gain: float, generator: torch.Generator | None) -> None:
    with torch.no_grad():
        nn.init.orthogonal_(layer.weight, gain=gain, generator=generator)
        if layer.bias is not None:
            layer.bias.zero_()


def orthogonal_init(model: T, gain: float = 1.0, generator: torch.Generator | None = None) -> T:
    """Saxe et al. (2014): each weight, flattened to (dim 0, rest), is a gain-scaled
    (semi-)orthogonal matrix (orthonormal rows if wide, columns if tall); biases zero.

    A deep linear (or near-linear tanh) net then has all Jacobian singular values equal to
    gain^depth: no direction of the signal shrinks. Draws from `generator` or the global RNG.
    Returns `model`.
    """
    for layer in _require_layers(model, "orthogonal_init"):
        _orthogonal(layer, gain, generator)
    return model


def delta_orthogonal_init(
    model: T, gain: float = 1.0, generator: torch.Generator | None = None
) -> T:
    """Xiao et al. (2018): every convolution's kernel is zero except its centre tap, which maps the
    in_channels to the out_channels (per group) by a gain-scaled matrix with orthonormal columns.

    Each convolution is then a norm-preserving 1×1 map, so a deep linear CNN has Jacobian singular
    values all equal to gain^depth (dynamical isometry); this is what lets vanilla CNNs train at
    thousands of layers. Needs out_channels ≥ in_channels. The centre of an even kernel size k is
    index k//2. Linear layers (a 1-tap kernel) get `orthogonal_init`. Biases zero. Draws from
    `generator` or the global RNG. Returns `model`.
    """
    layers = _require_layers(model, "delta_orthogonal_init")
    convs = [m for m in layers if isinstance(m, _ConvNd)]
    if not convs:
        raise RemedyError(
            "delta_orthogonal_init is for convolutions and found none; use orthogonal_init for a "
            "model of Linear layers."
        )
    for m in convs:
        if m.out_channels < m.in_channels:
            raise RemedyError(
                f"delta_orthogonal_init needs out_channels ≥ in_channels, and a {type(m).__name__} "
                f"has {m.in_channels} → {m.out_channels}; a map to fewer channels cannot preserve "
                "norms, so use orthogonal_init."
            )
    for layer in layers:
        if isinstance(layer, _ConvNd):
            _delta_orthogonal(layer, gain, generator)
        else:
            _orthogonal(layer, gain, generator)
    return model


def _delta_orthogonal(conv: _ConvNd, gain: float, generator: torch.Generator | None) -> None:
    w = conv.weight
    groups = conv.groups
    n_out, n_in = conv.out_channels // groups, conv.in_channels // groups
    centre = tuple(k // 2 for k in w.shape[2:])
    with torch.no_grad():
        w.zero_()
        for g in range(groups):
            q = torch.empty(n_out, n_in, dtype=w.dtype, device=w.device)
            nn.init.orthogonal_(q, gain=gain, generator=generator)  # tall: orthonormal columns
            if isinstance(conv, _ConvTransposeNd):  # weight is (in, out/groups, *k): y = Wᵀx
                w[(slice(g * n_in, (g + 1) * n_in), slice(None)) + centre] = q.T
            else:
                w[(slice(g * n_out, (g + 1) * n_out), slice(None)) + centre] = q
        if conv.bias is not None:
            conv.bias.zero_()


_NORMS_WITH_GAMMA = (nn.modules.batchnorm._BatchNorm, nn.GroupNorm)


def _zero_last(block: nn.Module) -> nn.Module:
    candidates = [
        m
        for m in block.modules()
        if isinstance(m, WEIGHT_LAYERS)
        or (isinstance(m, _NORMS_WITH_GAMMA) and m.weight is not None)
    ]
    if not candidates:
        raise RemedyError(
            f"a residual branch ({type(block).__name__}) holds no Linear, Conv or BatchNorm layer "
            "to zero."
        )
    last = candidates[-1]
    with torch.no_grad():
        last.weight.zero_()
        if isinstance(last, WEIGHT_LAYERS) and last.bias is not None:
            last.bias.zero_()
    return last


def zero_init_last(blocks: Sequence[nn.Module]) -> Sequence[nn.Module]:
    """Zero the last weight layer of each residual branch, so every block starts as the identity.

    The last layer is the last Linear/Conv/BatchNorm/GroupNorm in registration order. If it is a
    norm layer its gamma (weight) is zeroed, its beta kept (Goyal et al. 2017); if it is a
    Linear/Conv its weight and bias are zeroed (Fixup). Only one layer per branch is zeroed: zeroing
    a conv *and* the norm after it would leave the branch with no gradient at all. Returns `blocks`.
    """
    if not blocks:
        raise RemedyError("zero_init_last needs a non-empty list of residual branch modules.")
    for block in blocks:
        _zero_last(block)
    return blocks


def fixup_init(
    model: nn.Module,
    blocks: Sequence[nn.Module],
    m: int = 2,
    head: nn.Module | None = None,
    generator: torch.Generator | None = None,
) -> nn.Module:
    """Fixup (Zhang et al. 2019) for a residual net without normalisation layers.

    `blocks` are the residual branches (the f in x + f(x)), L = len(blocks), m = weight layers per
    branch. Every weight layer of `model` gets He init (`he_init(model, generator=generator)`, in
    registration order), then the weight layers inside each branch are multiplied by
    L^(-1/(2m-2)) and the last layer of each branch is zeroed (see `zero_init_last`). `head`, if
    given (the classifier), is zeroed as the paper's rule 1 asks. The paper's scalar multipliers
    and biases are architecture, not init, and are left to the model. Returns `model`.
    """
    if m < 2:
        raise RemedyError(
            f"fixup_init needs m ≥ 2 layers per branch (the scale is L^(-1/(2m-2))), not m={m}."
        )
    if not blocks:
        raise RemedyError(
            "fixup_init needs the residual branches: pass blocks=[block.branch, ...]."
        )
    in_model = {id(x) for x in model.modules()}
    if any(id(b) not in in_model for b in blocks):
        raise RemedyError("every module in blocks must be a submodule of model.")
    he_init(model, generator=generator)
    scale = len(blocks) ** (-1.0 / (2 * m - 2))
    with torch.no_grad():
        for block in blocks:
            for layer in weight_layers(block):
                layer.weight.mul_(scale)
            _zero_last(block)
        if head is not None:
            for layer in _require_layers(head, "fixup_init's head"):
                layer.weight.zero_()
                if layer.bias is not None:
                    layer.bias.zero_()
    return model


def lstm_forget_bias(model: nn.Module, value: float = 1.0) -> nn.Module:
    """Set the forget-gate bias of every nn.LSTM / nn.LSTMCell (all layers, both directions) to
    `value`.

    PyTorch orders the gates (input, forget, cell, output), so the forget slice is [H:2H]; it is
    set to `value` in bias_ih and to 0 in bias_hh, so their sum is `value`. A positive forget bias
    keeps the cell state (and its gradient) by default (Gers et al. 2000; Jozefowicz et al. 2015).
    Other slices are untouched. Returns `model`.
    """
    found = False
    with torch.no_grad():
        for mod in model.modules():
            if not isinstance(mod, nn.LSTM | nn.LSTMCell) or not mod.bias:
                continue
            h = mod.hidden_size
            for name, p in mod.named_parameters(recurse=False):
                if name.startswith("bias_ih"):
                    p[h : 2 * h].fill_(value)
                    found = True
                elif name.startswith("bias_hh"):
                    p[h : 2 * h].zero_()
    if not found:
        raise RemedyError(
            "lstm_forget_bias found no nn.LSTM or nn.LSTMCell with biases in the model."
        )
    return model
