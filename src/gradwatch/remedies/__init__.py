"""Things that change a model: init schemes, activation swap, normalisation, clipping
(norm/value/AGC).

Each function follows its paper's definition (see its docstring) and returns the model (or the
object it was given) so calls chain. Random inits draw from an optional `generator` (on the
parameters' device); without one they use the global RNG, as `torch.nn.init` does.

`applicable(model)` names the remedies that fit a model and `apply(name, model)` tries one on a
deep copy, leaving the user's model untouched; `REMEDIES` describes each name.
"""

from gradwatch.errors import RemedyError
from gradwatch.remedies.clip import adaptive_clip, clip_by_norm, clip_by_value, unitwise_norm
from gradwatch.remedies.init import (
    delta_orthogonal_init,
    fixup_init,
    he_init,
    lecun_init,
    lstm_forget_bias,
    orthogonal_init,
    weight_layers,
    xavier_init,
    zero_init_last,
)
from gradwatch.remedies.lsuv import lsuv_init
from gradwatch.remedies.normalization import insert_norm
from gradwatch.remedies.recurrent import recurrent_orthogonal_init, swap_recurrent
from gradwatch.remedies.registry import REMEDIES, RemedySpec, applicable, apply
from gradwatch.remedies.residual import fixup_residual, residual_branches, zero_init_residual
from gradwatch.remedies.swap import swap_activation

__all__ = [
    "RemedyError",
    "weight_layers",
    "xavier_init",
    "he_init",
    "lecun_init",
    "orthogonal_init",
    "delta_orthogonal_init",
    "lsuv_init",
    "fixup_init",
    "zero_init_last",
    "lstm_forget_bias",
    "recurrent_orthogonal_init",
    "swap_recurrent",
    "residual_branches",
    "zero_init_residual",
    "fixup_residual",
    "swap_activation",
    "insert_norm",
    "clip_by_norm",
    "clip_by_value",
    "adaptive_clip",
    "unitwise_norm",
    "RemedySpec",
    "REMEDIES",
    "applicable",
    "apply",
]
