"""The version, in one place: the installed distribution's, or a marker in an uninstalled tree."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("gradwatch")
except PackageNotFoundError:  # running from a source tree without installing
    __version__ = "0.0.0+unknown"
