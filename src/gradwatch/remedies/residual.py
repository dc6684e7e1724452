"""Remedies for residual networks: find the branches, zero their last layer, Fixup's rescaling."""

from __future__ import annotations

import torch
from torch import nn

from gradwatch.errors import RemedyError
from gradwatch.remedies.init import he_init, weight_layers

# Children that carry a block's identity path, in the names torchvision and most code use.
SHORTCUT_NAMES = ("shortcut", "downsample", "skip", "residual", "identity")


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
            f"{scheme} found no residual block (a module with a child named "
            f"{', '.join(SHORTCUT_NAMES)}); pass the branches to fixup_init or zero_init_last "
            "yourself."
        )
    return branches


def _zero(layer: nn.Module) -> None:
    layer.weight.zero_()
    if layer.bias is not None:
        layer.bias.zero_()


def zero_init_residual(model: nn.Module) -> nn.Module:
    """Zero the last Linear/Conv of every residual branch found by `residual_branches`, so each
    block starts as its shortcut (Goyal et al. 2017; Zhang et al. 2019). Returns `model`."""
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
