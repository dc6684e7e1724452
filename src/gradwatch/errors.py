"""Errors a user can cause. Each message is one sentence: what is wrong and what to do.

The whole hierarchy (the CLI prints any of them and exits 2 instead of showing a traceback)::

    GradwatchError
    ├── WatchError               a Watch used in a way that cannot work (closed, bad argument)
    ├── NonFiniteGradientError   raise_on=("nonfinite",): a gradient held NaN/Inf, step not taken
    ├── TrainingStoppedError     raise_on named a finding kind and the detectors found it
    ├── CheckError               gw.check could not run the model on its inputs
    │   └── FactoryError         gradwatch check TARGET could not be loaded
    ├── RunError                 a run directory that cannot be used as asked
    │   ├── RunNotFoundError     no gradwatch run at that path
    │   ├── CorruptRunError      a run whose files cannot be read
    │   ├── RunExistsError       log_dir already holds a run
    │   ├── RunLockedError       another live writer holds the run directory
    │   └── ReportError          a report asked of something that is not a run
    ├── TheoryError (ValueError)     a mean-field question with no answer
    ├── JacobianError (ValueError)   the input-output Jacobian cannot be taken
    ├── RemedyError (ValueError)     a remedy does not fit the model it was given
    └── IntegrationError         an integration's framework is missing or not set up
"""

from __future__ import annotations


class GradwatchError(Exception):
    """Base class; the CLI prints the message and exits 2 instead of showing a traceback."""


class WatchError(GradwatchError):
    """A Watch was used in a way that cannot work (closed, unsupported model, ...)."""


class NonFiniteGradientError(GradwatchError):
    """`raise_on=("nonfinite",)`: a gradient held NaN/Inf; the optimizer step was not taken."""


class TrainingStoppedError(GradwatchError):
    """`raise_on` named a finding kind and the detectors found it."""


class CheckError(GradwatchError):
    """`gw.check` could not run the model on the inputs it was given."""


class FactoryError(CheckError):
    """The TARGET of `gradwatch check` could not be loaded or did not return what it should."""


class RunError(GradwatchError):
    """A run directory cannot be used the way it was asked to be."""


class RunNotFoundError(RunError):
    """A path given as a run directory holds no gradwatch run."""


class CorruptRunError(RunError):
    """A run directory exists but its files cannot be read."""


class RunExistsError(RunError):
    """`log_dir` already holds a run that would be overwritten."""


class RunLockedError(RunError):
    """Another live process (or Watch) is writing the run directory; two writers would mix rows."""


class ReportError(RunError):
    """A report was asked of something that is not a run (missing or foreign directory)."""


class TheoryError(GradwatchError, ValueError):
    """A mean-field question with no answer (unknown activation, no critical point, bad σ²)."""


class JacobianError(GradwatchError, ValueError):
    """The input-output Jacobian cannot be taken (no floating-point input, an output without
    grad)."""


class RemedyError(GradwatchError, ValueError):
    """A remedy cannot be applied to the model (or arguments) it was given."""


class IntegrationError(GradwatchError):
    """An integration's framework is not installed, or not set up the way it needs."""
