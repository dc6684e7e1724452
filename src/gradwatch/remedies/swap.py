"""Replace activation modules in a model, in place (sigmoid/tanh -> ReLU, usually)."""

from __future__ import annotations

from collections.abc import Callable, Collection

from torch import nn

from gradwatch.errors import RemedyError


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
                    "new must be an nn.Module class or a factory returning one, and it returned "
                    f"{type(fresh).__name__}."
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
