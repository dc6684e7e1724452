"""Self-normalisation: in a deep SELU net with LeCun-normal weights, activations started away from
mean 0 / variance 1 are pulled back to it layer by layer (Klambauer et al. 2017). No training: a
forward and backward pass at init; the variance per layer is gradwatch's `act_std`² of every SELU.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from gradwatch import remedies
from gradwatch.lab.experiment import Experiment, Figure, Outcome, Settings
from gradwatch.lab.experiments._feedforward import at_init, profile
from gradwatch.lab.models import mlp

# (mean, variance) of the network's input; (0, 1) is the fixed point, the rest start off it.
STARTS = ((0.0, 1.0), (1.0, 3.0), (-2.0, 0.25), (0.0, 8.0), (0.5, 0.1))
MEAN_TOL = 0.1  # |mean| at the last layer below this
VAR_TOL = 0.15  # |variance - 1| at the last layer below this
OFF = 0.5  # some start's first-layer variance is at least this far from 1: the test is not trivial


def _settings(quick: bool) -> dict[str, Any]:
    if quick:
        return {"depth": 32, "width": 512, "batch": 256}
    return {"depth": 64, "width": 1024, "batch": 1024}


def _record_mean(seen: dict[str, float], name: str):
    """A forward hook storing the mean of the module's output (gradwatch records its std, not its
    mean)."""

    def hook(module: nn.Module, args: Any, out: torch.Tensor) -> None:
        seen[name] = float(out.detach().mean())

    return hook


def run(s: Settings, **override: Any) -> Outcome:
    cfg = {**_settings(s.quick), **override}
    gen = torch.Generator().manual_seed(s.seed)
    width, depth = cfg["width"], cfg["depth"]
    means: dict[str, list[float]] = {}
    variances: dict[str, list[float]] = {}
    runs: list[str] = []
    for i, (mu, var) in enumerate(STARTS):
        torch.manual_seed(s.seed)
        model = remedies.lecun_init(mlp(width, 10, depth, width, nn.SELU))
        selus = [n for n, m in model.named_modules() if isinstance(m, nn.SELU)]
        seen: dict[str, float] = {}
        hooks = [
            m.register_forward_hook(_record_mean(seen, n))
            for n, m in model.named_modules()
            if isinstance(m, nn.SELU)
        ]
        x = mu + var**0.5 * torch.randn(cfg["batch"], width, generator=gen)
        y = torch.randint(0, 10, (cfg["batch"],), generator=gen)
        try:
            stats, _ = at_init(model, x, y, s.out / f"start-{i}")
        finally:
            for h in hooks:
                h.remove()
        key = f"mean {mu:g}, var {var:g}"
        variances[key] = [v * v for v in profile(stats, selus, "act_std")]
        means[key] = [seen[n] for n in selus]
        runs.append(str(s.out / f"start-{i}"))
        s.progress((i + 1) / len(STARTS))
    measured = {
        "starts": [list(st) for st in STARTS],
        "first_layer_mean": {k: v[0] for k, v in means.items()},
        "first_layer_var": {k: v[0] for k, v in variances.items()},
        "last_layer_mean": {k: v[-1] for k, v in means.items()},
        "last_layer_var": {k: v[-1] for k, v in variances.items()},
    }
    layers = list(range(1, depth + 1))
    figures = [
        Figure(
            "Variance of each SELU layer's output (act_std²)",
            "layer",
            "variance",
            {k: (layers, v) for k, v in variances.items()},
            log_y=True,
        ),
        Figure(
            "Mean of each SELU layer's output",
            "layer",
            "mean",
            {k: (layers, v) for k, v in means.items()},
        ),
    ]
    setup = {
        **cfg,
        "init": "LeCun normal (variance 1/fan_in), zero biases",
        "input": "Gaussian with the given mean and variance",
    }
    return Outcome(setup, measured, figures, runs)


def judge(m: dict[str, Any]) -> bool:
    """Every start ends near (0, 1), and at least one started clearly away from it."""
    ends = all(abs(v) < MEAN_TOL for v in m["last_layer_mean"].values()) and all(
        abs(v - 1) < VAR_TOL for v in m["last_layer_var"].values()
    )
    off = max(abs(v - 1) for v in m["first_layer_var"].values()) >= OFF
    return bool(ends and off)


EXPERIMENT = Experiment(
    name="selu",
    claim="With SELU (λ ≈ 1.0507, α ≈ 1.6733) and LeCun-normal weights, mean 0 and variance 1 is a "
    "stable fixed point of the layer map: activations started elsewhere converge to it with depth, "
    "so deep nets self-normalise without normalisation layers.",
    source="Klambauer et al. 2017 (Self-Normalizing Neural Networks, Theorems 1-3)",
    expected=(
        f"From input (mean, variance) in {list(STARTS)}: at the last layer |mean| < {MEAN_TOL} and "
        f"|variance − 1| < {VAR_TOL} for every start, while at the first layer at least one "
        f"start's variance is ≥ {OFF} away from 1."
    ),
    run=run,
    judge=judge,
)
