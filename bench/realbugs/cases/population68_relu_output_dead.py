"""Scale network whose ReLU output starts dead: predictions all 0, no gradient (population #68)."""

from __future__ import annotations

import torch
from torch import nn

from realbugs.program import Program, minibatches, regression_error

SOURCE = "https://github.com/jvargasmu/population_estimation/issues/68"
TITLE = "Sometimes the initial solution predicts only zeros (due to RELU activation)"
BUG = (
    "The scale network ends in a ReLU; for an unlucky init its pre-activation is negative for "
    "every input, so it predicts 0 everywhere and no gradient reaches any weight."
)
FIX = "Softplus instead of the final ReLU (the change the issue proposes)."
KIND = "dead_units"
ACTION = "activation"
CHANGES = (
    "the per-pixel scale network -> an MLP (8 non-negative covariates, 32-32 ReLU, 1 output) "
    "regressing positive densities; the issue says 'sometimes': at PyTorch's default init the "
    "output starts dead for every input at about 1 seed in 6 (3 of seeds 0-19: 10, 11, 14), and "
    "benchmark seed s initialises with the s-th of those, so the failure shows at every seed; "
    "Adam lr 1e-3, 150 steps of batch 64"
)

DEAD_INIT_SEEDS = (10, 11, 14)  # found by scanning torch seeds 0-19 (see CHANGES)


def build(fixed: bool, seed: int) -> Program:
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(512, 8, generator=gen) * 2
    density = nn.functional.softplus(x @ torch.randn(8, generator=gen) * 0.5) + 0.1
    torch.manual_seed(DEAD_INIT_SEEDS[seed % len(DEAD_INIT_SEEDS)])
    model = nn.Sequential(
        nn.Linear(8, 32),
        nn.ReLU(),
        nn.Linear(32, 32),
        nn.ReLU(),
        nn.Linear(32, 1),
        nn.Softplus() if fixed else nn.ReLU(),
    )
    y = density.unsqueeze(1)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    return Program(
        model,
        opt,
        minibatches(x, y, 64, seed),
        nn.functional.mse_loss,
        steps=150,
        error=regression_error(x, y),
        error_name="mse",
    )
