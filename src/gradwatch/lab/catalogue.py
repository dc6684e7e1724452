"""The catalogue: every experiment by its public name, each in its own module under
`experiments/`."""

from __future__ import annotations

import importlib

from gradwatch.errors import GradwatchError
from gradwatch.lab.experiment import Experiment

_MODULES = {
    "depth-activation": "depth_activation",
    "init": "init",
    "batchnorm": "batchnorm",
    "residual": "residual",
    "clipping": "clipping",
    "rnn-gates": "rnn_gates",
    "gan-loss": "gan_loss",
    "selu": "selu",
    "mean-field": "mean_field",
    "pretraining": "pretraining",
    "transformer-ln": "transformer_ln",
    "orthogonal-cnn": "orthogonal_cnn",
}
NAMES: tuple[str, ...] = tuple(_MODULES)


def get(name: str) -> Experiment:
    """The experiment called `name`; a one-sentence error listing the names for an unknown one."""
    if name not in _MODULES:
        raise GradwatchError(
            f"There is no lab experiment called {name!r}; choose from: {', '.join(NAMES)}."
        )
    return importlib.import_module(f"{__package__}.experiments.{_MODULES[name]}").EXPERIMENT
