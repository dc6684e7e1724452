"""gradwatch: see, diagnose, predict and fix vanishing and exploding gradients in PyTorch.

The public names are these; `theory`, `remedies`, `report` and the rest load on first use, so that
`import gradwatch` costs no more than a watch needs.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from gradwatch._version import __version__
from gradwatch.errors import GradwatchError

if TYPE_CHECKING:
    from gradwatch import remedies, report, theory
    from gradwatch.checks import check
    from gradwatch.diagnose import Diagnosis, Finding, Remedy
    from gradwatch.monitor import Watch, watch
    from gradwatch.store import Run, load

# public name -> module that defines it (None: the name is a subpackage)
_LAZY = {
    "watch": "gradwatch.monitor",
    "Watch": "gradwatch.monitor",
    "check": "gradwatch.checks",
    "load": "gradwatch.store",
    "Run": "gradwatch.store",
    "Diagnosis": "gradwatch.diagnose",
    "Finding": "gradwatch.diagnose",
    "Remedy": "gradwatch.diagnose",
    "theory": None,
    "remedies": None,
    "report": None,
}


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module 'gradwatch' has no attribute {name!r}")
    module = _LAZY[name]
    value = (
        importlib.import_module(f"gradwatch.{name}")
        if module is None
        else getattr(importlib.import_module(module), name)
    )
    globals()[name] = value  # looked up once
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


__all__ = [
    "watch",
    "check",
    "load",
    "Watch",
    "Diagnosis",
    "Finding",
    "Remedy",
    "Run",
    "theory",
    "remedies",
    "report",
    "GradwatchError",
    "__version__",
]
