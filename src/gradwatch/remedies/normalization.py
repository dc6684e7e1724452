"""Insert normalisation layers into an nn.Sequential (Ioffe & Szegedy 2015)."""

from __future__ import annotations

from collections import OrderedDict

from torch import nn

from gradwatch._nn import WEIGHT_LAYERS
from gradwatch.activations import ACTIVATION_MODULES
from gradwatch.errors import RemedyError


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
        if isinstance(mods[i], WEIGHT_LAYERS) and isinstance(mods[i + 1], ACTIVATION_MODULES)
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
    """A new nn.Sequential with a normalisation layer after every Linear/Conv directly followed by
    an activation (Ioffe & Szegedy 2015: normalise the pre-activation), nested Sequentials included.

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
