"""gradwatch: see, diagnose, predict and fix vanishing and exploding gradients in PyTorch."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("gradwatch")
except PackageNotFoundError:  # running from a source tree without installing
    __version__ = "0.0.0+unknown"

from .monitor import Watch, watch  # noqa: E402
from .store import Run, load  # noqa: E402
from .errors import GradwatchError  # noqa: E402

__all__ = ["watch", "load", "Watch", "Run", "GradwatchError", "__version__"]
