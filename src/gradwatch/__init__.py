"""gradwatch: see, diagnose, predict and fix vanishing and exploding gradients in PyTorch."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("gradwatch")
except PackageNotFoundError:  # running from a source tree without installing
    __version__ = "0.0.0+unknown"

from . import remedies, theory  # noqa: E402
from .check import check  # noqa: E402
from .diagnose import Diagnosis, Finding, Remedy  # noqa: E402
from .errors import GradwatchError  # noqa: E402
from .monitor import Watch, watch  # noqa: E402
from .store import Run, load  # noqa: E402

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
    "GradwatchError",
    "__version__",
]
