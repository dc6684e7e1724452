"""Remedies that need to find structure in a model: recurrent layers and residual branches."""

from __future__ import annotations

import torch
from torch import nn

from ._remedies_init import RemedyError, he_init, weight_layers

RECURRENT = (nn.RNN, nn.LSTM, nn.GRU)
# Children that carry a block's identity path, in the names torchvision and most code use.
SHORTCUT_NAMES = ("shortcut", "downsample", "skip", "residual", "identity")


def recurrent_orthogonal_init(
    model: nn.Module, gain: float = 1.0, generator: torch.Generator | None = None
) -> nn.Module:
    """Every hidden-to-hidden matrix of nn.RNN/LSTM/GRU becomes gain × orthogonal, per gate.

    The recurrent Jacobian's singular values are then all `gain` (times the nonlinearity's slope):
    the gradient through time neither shrinks nor grows from the weights (Saxe et al. 2014; Le et
    al. 2015; Vorontsov et al. 2017). Each gate's (H × H) block of weight_hh is orthogonal on its
    own. Input weights and biases are untouched. Returns `model`.
    """
    found = False
    with torch.no_grad():
        for mod in model.modules():
            if not isinstance(mod, RECURRENT):
                continue
            for name, p in mod.named_parameters(recurse=False):
                if name.startswith("weight_hh"):
                    h = p.shape[1]
                    for gate in range(p.shape[0] // h):
                        nn.init.orthogonal_(
                            p[gate * h : (gate + 1) * h], gain=gain, generator=generator
                        )
                    found = True
    if not found:
        raise RemedyError(
            "recurrent_orthogonal_init found no nn.RNN, nn.LSTM or nn.GRU in the model."
        )
    return model


def swap_recurrent(model: nn.Module, new: type[nn.Module] = nn.GRU) -> nn.Module:
    """Replace every vanilla nn.RNN by a freshly initialised `new` (nn.GRU or nn.LSTM) of the same
    sizes, layers, direction, bias, batch_first and dropout, in place; returns `model`.

    A gated unit's additive memory path keeps the gradient through time (Hochreiter & Schmidhuber
    1997; Cho et al. 2014). nn.GRU returns (out, h) like nn.RNN; nn.LSTM returns (out, (h, c)),
    which code that unpacks `out, _ = rnn(x)` accepts too.
    """
    if new not in (nn.GRU, nn.LSTM):
        raise RemedyError(
            f"swap_recurrent replaces nn.RNN by nn.GRU or nn.LSTM, not {getattr(new, '__name__', new)}."
        )
    sites = [
        (parent, name, child)
        for parent in model.modules()
        for name, child in parent._modules.items()
        if type(child) is nn.RNN
    ]
    if not sites:
        raise RemedyError("swap_recurrent found no vanilla nn.RNN submodule to replace.")
    for parent, name, rnn in sites:
        ref = rnn.weight_ih_l0
        fresh = new(
            rnn.input_size,
            rnn.hidden_size,
            num_layers=rnn.num_layers,
            bias=rnn.bias,
            batch_first=rnn.batch_first,
            dropout=rnn.dropout,
            bidirectional=rnn.bidirectional,
            device=ref.device,
            dtype=ref.dtype,
        )
        parent._modules[name] = fresh.train(rnn.training)
    return model


def residual_branches(model: nn.Module) -> list[list[nn.Module]]:
    """The weight layers of each residual branch: for every module with a child named like a
    shortcut (SHORTCUT_NAMES), its Linear/Conv layers outside that child, in registration order."""
    branches = []
    for mod in model.modules():
        shortcut = [c for n, c in mod.named_children() if n.lower() in SHORTCUT_NAMES]
        if not shortcut:
            continue
        skip = {id(m) for c in shortcut for m in c.modules()}
        layers = [m for m in weight_layers(mod) if id(m) not in skip]
        if layers:
            branches.append(layers)
    return branches


def _require_branches(model: nn.Module, scheme: str) -> list[list[nn.Module]]:
    branches = residual_branches(model)
    if not branches:
        raise RemedyError(
            f"{scheme} found no residual block (a module with a child named {', '.join(SHORTCUT_NAMES)}); "
            "pass the branches to fixup_init or zero_init_last yourself."
        )
    return branches


def _zero(layer: nn.Module) -> None:
    layer.weight.zero_()
    if layer.bias is not None:
        layer.bias.zero_()


def zero_init_residual(model: nn.Module) -> nn.Module:
    """Zero the last Linear/Conv of every residual branch found by `residual_branches`, so each block
    starts as its shortcut (Goyal et al. 2017; Zhang et al. 2019). Returns `model`."""
    with torch.no_grad():
        for layers in _require_branches(model, "zero_init_residual"):
            _zero(layers[-1])
    return model


def fixup_residual(model: nn.Module, generator: torch.Generator | None = None) -> nn.Module:
    """Fixup (Zhang et al. 2019) on the residual branches found by `residual_branches`: He init for
    every weight layer, the layers of each branch scaled by L^(-1/(2m-2)) (L branches, m layers in
    the branch), the last layer of each branch zeroed. Returns `model`."""
    branches = _require_branches(model, "fixup_residual")
    he_init(model, generator=generator)
    with torch.no_grad():
        for layers in branches:
            if len(layers) >= 2:
                scale = len(branches) ** (-1.0 / (2 * len(layers) - 2))
                for layer in layers:
                    layer.weight.mul_(scale)
            _zero(layers[-1])
    return model
