"""Depth × activation: the back-propagated gradient is a product of per-layer factors, and a
saturating activation (σ' ≤ 1/4) makes it vanish exponentially with depth; the rectifier family
does not. Measured per layer with gradwatch's `grad_norm` at initialisation, then trained.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from gradwatch import remedies
from gradwatch.lab.experiment import Experiment, Figure, Outcome, Settings
from gradwatch.lab.experiments._feedforward import (
    at_init,
    data,
    first_last_ratio,
    linear_layers,
    profile,
    sub_progress,
    train,
)
from gradwatch.lab.models import mlp

ACTIVATIONS: dict[str, type[nn.Module]] = {
    "sigmoid": nn.Sigmoid,
    "tanh": nn.Tanh,
    "relu": nn.ReLU,
    "leaky_relu": nn.LeakyReLU,
    "prelu": nn.PReLU,
    "elu": nn.ELU,
    "selu": nn.SELU,
    "silu": nn.SiLU,
    "gelu": nn.GELU,
}
REMEDIES = ("relu", "leaky_relu", "prelu", "elu", "selu", "silu", "gelu")
VANISHED = 1e-6  # first/last gradient norm below this: the first layer cannot learn
KEPT = 1e-2  # first/last above this: the gradient reaches the first layer
CHANCE_ACC = 0.3  # 10 classes: below this the net has not learned
TRAINED_ACC = 0.8


def _init(name: str, model: nn.Module) -> nn.Module:
    """Each activation with the init its authors recommend: Xavier for sigmoid/tanh (Glorot &
    Bengio 2010), LeCun for SELU (Klambauer et al. 2017), He for the rectifier family."""
    if name in ("sigmoid", "tanh"):
        return remedies.xavier_init(model)
    if name == "selu":
        return remedies.lecun_init(model)
    if name == "leaky_relu":
        return remedies.he_init(model, nonlinearity="leaky_relu", a=0.01)
    if name == "prelu":
        return remedies.he_init(model, nonlinearity="leaky_relu", a=0.25)
    return remedies.he_init(model)


def _settings(quick: bool) -> dict[str, Any]:
    if quick:
        return {
            "depths": [5, 10, 20],
            "width": 64,
            "epochs": 3,
            "lr": 0.02,
            "batch": 64,
            "probe_batch": 256,
        }
    # At depth 30, lr 0.02 over 20 epochs diverged (ELU and SELU reached NaN on seed 0); the full
    # form trains with the 30-layer settings of the init experiment instead.
    return {
        "depths": [5, 10, 20, 30],
        "width": 64,
        "epochs": 20,
        "lr": 0.002,
        "batch": 32,
        "probe_batch": 512,
    }


def run(s: Settings, **override: Any) -> Outcome:
    cfg = {**_settings(s.quick), **override}
    split = data(s.seed)
    x, y = split.x_train[: cfg["probe_batch"]], split.y_train[: cfg["probe_batch"]]
    depths, deepest = cfg["depths"], max(cfg["depths"])
    n_parts = len(ACTIVATIONS) * (len(depths) + 1)
    ratios: dict[str, dict[str, float]] = {a: {} for a in ACTIVATIONS}
    profiles: dict[str, list[float]] = {}
    accuracy: dict[str, float] = {}
    losses: dict[str, float] = {}
    runs: list[str] = []
    part = 0
    for act, cls in ACTIVATIONS.items():
        for depth in depths:
            torch.manual_seed(s.seed)
            model = _init(act, mlp(split.n_features, split.n_classes, depth, cfg["width"], cls))
            log_dir = s.out / f"init-{act}-{depth}"
            stats, order = at_init(model, x, y, log_dir)
            g = profile(stats, linear_layers(model, order), "grad_norm")
            ratios[act][str(depth)] = first_last_ratio(g)
            if depth == deepest:
                profiles[act] = g
            runs.append(str(log_dir))
            part += 1
            s.progress(part / n_parts)
        torch.manual_seed(s.seed)
        model = _init(act, mlp(split.n_features, split.n_classes, deepest, cfg["width"], cls))
        t = train(
            model,
            split,
            epochs=cfg["epochs"],
            lr=cfg["lr"],
            batch=cfg["batch"],
            seed=s.seed,
            log_dir=s.out / f"train-{act}-{deepest}",
            progress=sub_progress(s.progress, part, n_parts),
        )
        accuracy[act], losses[act] = t.accuracy, t.final_loss
        runs.append(t.path)
        part += 1
    measured = {
        "depths": depths,
        "first_last_grad_ratio": ratios,
        "test_accuracy_deepest": accuracy,
        "final_train_loss_deepest": losses,
    }
    figures = [
        Figure(
            f"grad_norm per layer at init, depth {deepest} (÷ last)",
            "layer",
            "grad_norm / last layer's",
            {a: (list(range(len(p))), [v / p[-1] for v in p]) for a, p in profiles.items()},
            log_y=True,
        ),
        Figure(
            "First/last layer gradient ratio vs depth",
            "hidden layers",
            "first / last grad_norm",
            {a: (depths, [r[str(d)] for d in depths]) for a, r in ratios.items()},
            log_y=True,
        ),
        Figure(
            f"Test accuracy after training, depth {deepest}",
            "activation",
            "accuracy",
            {"accuracy": (list(accuracy), list(accuracy.values()))},
            kind="bar",
        ),
    ]
    setup = {
        **cfg,
        "activations": list(ACTIVATIONS),
        "init": "Xavier for sigmoid/tanh, LeCun for SELU, He otherwise",
        "data": "sklearn digits",
        "optimizer": "SGD momentum 0.9",
    }
    return Outcome(setup, measured, figures, runs)


def judge(m: dict[str, Any]) -> bool:
    """Sigmoid's gradient vanishes exponentially with depth and its deepest net does not learn;
    every rectifier-family remedy keeps the gradient at the first layer; the best of them trains."""
    depths = [str(d) for d in m["depths"]]
    shallow, deep = depths[0], depths[-1]
    sig = m["first_last_grad_ratio"]["sigmoid"]
    vanishes = sig[deep] < VANISHED and sig[deep] < 1e-4 * sig[shallow]
    kept = all(m["first_last_grad_ratio"][a][deep] > KEPT for a in REMEDIES)
    acc = m["test_accuracy_deepest"]
    stalls = acc["sigmoid"] < CHANCE_ACC
    trains = max(acc[a] for a in REMEDIES) >= TRAINED_ACC
    return bool(vanishes and kept and stalls and trains and not math.isnan(sig[deep]))


EXPERIMENT = Experiment(
    name="depth-activation",
    claim=(
        "The gradient reaching an early layer is a product of per-layer factors; with a saturating "
        "activation (sigmoid: σ' ≤ 1/4) it shrinks exponentially with depth and early layers "
        "barely learn. ReLU, Leaky ReLU, PReLU, ELU, SELU, SiLU and GELU keep the factor near 1."
    ),
    source="Hochreiter 1991; Glorot & Bengio 2010; Nair & Hinton 2010; Maas et al. 2013; "
    "He et al. 2015; Clevert et al. 2016; Klambauer et al. 2017; Hendrycks & Gimpel 2016; "
    "Ramachandran et al. 2017",
    expected=(
        f"Sigmoid: first/last layer gradient-norm ratio below {VANISHED:g} at the deepest depth "
        "and falling over 10⁴× from the shallowest; its deepest net stays below "
        f"{CHANCE_ACC:.0%} test accuracy. Every rectifier-family activation keeps the ratio above "
        f"{KEPT:g}, and the best of them trains the deepest net to ≥ {TRAINED_ACC:.0%}."
    ),
    run=run,
    judge=judge,
)
