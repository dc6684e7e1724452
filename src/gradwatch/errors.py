"""Errors a user can cause. Each message is one sentence: what is wrong and what to do."""

from __future__ import annotations


class GradwatchError(Exception):
    """Base class; the CLI prints the message and exits 2 instead of showing a traceback."""


class RunNotFoundError(GradwatchError):
    """A path given as a run directory holds no gradwatch run."""


class CorruptRunError(GradwatchError):
    """A run directory exists but its files cannot be read."""


class RunExistsError(GradwatchError):
    """`log_dir` already holds a run that would be overwritten."""


class WatchError(GradwatchError):
    """A Watch was used in a way that cannot work (closed, unsupported model, ...)."""


class NonFiniteGradientError(GradwatchError):
    """`raise_on=("nonfinite",)`: a gradient held NaN/Inf; the optimizer step was not taken."""


class TrainingStoppedError(GradwatchError):
    """`raise_on` named a finding kind and the detectors found it."""


class CheckError(GradwatchError):
    """`gw.check` could not run the model on the inputs it was given."""


class ReportError(GradwatchError):
    """A report was asked of something that is not a run (missing or foreign directory)."""


class IntegrationError(GradwatchError):
    """An integration's framework is not installed, or not set up the way it needs."""
