"""Load a factory named on the command line: it returns `(model, inputs[, target[, loss_fn]])`
or a dict with the keys `model`, `inputs` and any of `target`, `loss_fn`, `optimizer`."""

from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path

import torch
from torch import nn

from gradwatch.errors import FactoryError

KEYS = ("model", "inputs", "target", "loss_fn", "optimizer")


def load_factory(target: str):
    """`path/file.py:factory` or `package.module:factory` -> (model, inputs, target, loss_fn,
    optimizer).
    """
    if ":" not in target:
        raise FactoryError(
            f"'{target}' names no factory; write path/file.py:factory or package.module:factory."
        )
    where, _, name = target.rpartition(":")
    if where.endswith(".py") or "/" in where or where.startswith("."):
        path = Path(where)
        if not path.is_file():
            raise FactoryError(f"No file '{where}'; check the path (relative to {Path.cwd()}).")
        spec = importlib.util.spec_from_file_location(f"_gradwatch_target_{path.stem}", path)
        module = importlib.util.module_from_spec(spec)
        sys.path.insert(0, str(path.parent.resolve()))
        try:
            spec.loader.exec_module(module)
        except Exception as exc:  # noqa: BLE001 - the user's file
            raise FactoryError(
                f"Importing '{where}' raised {type(exc).__name__}: {_line(exc)}; "
                "fix the file and retry."
            ) from None
        finally:
            sys.path.pop(0)
    else:
        try:
            module = importlib.import_module(where)
        except ModuleNotFoundError as exc:
            raise FactoryError(
                f"No module '{where}' ({_line(exc)}); check the name or install the package."
            ) from None
        except Exception as exc:  # noqa: BLE001
            raise FactoryError(
                f"Importing '{where}' raised {type(exc).__name__}: {_line(exc)}; "
                "fix the module and retry."
            ) from None
    factory = getattr(module, name, None)
    if factory is None:
        public = sorted(
            n for n in vars(module) if callable(vars(module)[n]) and not n.startswith("_")
        )
        raise FactoryError(
            f"'{where}' has no callable '{name}'"
            + (f"; it has {', '.join(public[:8])}." if public else ".")
        )
    if not callable(factory):
        raise FactoryError(
            f"'{name}' in '{where}' is not callable; "
            "it must be a function returning (model, inputs)."
        )
    try:
        made = factory()
    except Exception as exc:  # noqa: BLE001
        raise FactoryError(
            f"The factory '{name}' raised {type(exc).__name__}: {_line(exc)}; fix it and retry."
        ) from None
    if isinstance(made, dict):
        return _from_dict(made, name)
    if isinstance(made, nn.Module):
        raise FactoryError(
            f"The factory '{name}' returned only a model; "
            "return (model, inputs) so there is something to run."
        )
    if not isinstance(made, tuple) or not 2 <= len(made) <= 4 or not isinstance(made[0], nn.Module):
        raise FactoryError(
            f"The factory '{name}' must return (model, inputs), (model, inputs, target), "
            "(model, inputs, target, loss_fn) "
            "or a dict with the keys model, inputs and any of target, loss_fn, optimizer."
        )
    model, inputs, *rest = made
    target_value = rest[0] if rest else None
    loss_fn = rest[1] if len(rest) > 1 else None
    return model, inputs, target_value, loss_fn, None


def _from_dict(made: dict, name: str):
    unknown = sorted(str(k) for k in made if k not in KEYS)
    if unknown:
        raise FactoryError(
            f"The factory '{name}' returned unknown key(s) {', '.join(unknown)}; "
            f"use {', '.join(KEYS)}."
        )
    if not isinstance(made.get("model"), nn.Module) or "inputs" not in made:
        raise FactoryError(
            f"The dict the factory '{name}' returned needs 'model' (a torch.nn.Module) "
            "and 'inputs'."
        )
    optimizer = made.get("optimizer")
    if optimizer is not None and not isinstance(optimizer, torch.optim.Optimizer):
        raise FactoryError(
            f"The factory '{name}' returned an 'optimizer' that is a "
            f"{type(optimizer).__name__}, not a torch.optim.Optimizer."
        )
    return made["model"], made["inputs"], made.get("target"), made.get("loss_fn"), optimizer


def _line(exc: Exception) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0][:200] if lines else "no message"
