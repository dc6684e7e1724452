"""One way to make results JSON-ready, for findings, diagnoses and the lab's results."""

from __future__ import annotations

import math
from dataclasses import is_dataclass
from typing import Any


def jsonable(obj: Any) -> Any:
    """Plain JSON types only: dicts (keys as str), lists, str, bool, None and finite numbers.

    A result object (a dataclass with `to_dict()`) is written as its dict; numpy and torch scalars
    as numbers; NaN and ±inf as None, since JSON has no such numbers; anything else as its str.
    """
    if is_dataclass(obj) and not isinstance(obj, type) and hasattr(obj, "to_dict"):
        return jsonable(obj.to_dict())
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [jsonable(v) for v in obj]
    if obj is None or isinstance(obj, bool | str | int):
        return obj
    if hasattr(obj, "item") and not isinstance(obj, bytes):
        try:
            obj = obj.item()
        except (ValueError, RuntimeError):  # an array of several numbers
            return str(obj)
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, bool | int | str):
        return obj
    return str(obj)
