"""Batch normalisation: a deep sigmoid MLP with PyTorch's default init stalls; the same net with a
BatchNorm before every sigmoid trains. Measured with gradwatch's per-layer `grad_norm` at init and
the accuracy after training.
"""

from __future__ import annotations

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

VANISHED = 1e-6
KEPT = 1e-2
CHANCE_ACC = 0.3
TRAINED_ACC = 0.8


def _settings(quick: bool) -> dict[str, Any]:
    if quick:
        return {"depth": 20, "width": 64, "epochs": 3, "lr": 0.02, "batch": 64, "probe_batch": 256}
    return {"depth": 20, "width": 64, "epochs": 20, "lr": 0.02, "batch": 64, "probe_batch": 512}


def run(s: Settings, **override: Any) -> Outcome:
    cfg = {**_settings(s.quick), **override}
    split = data(s.seed)
    x, y = split.x_train[: cfg["probe_batch"]], split.y_train[: cfg["probe_batch"]]
    measured: dict[str, dict[str, float]] = {
        "first_last_grad_ratio": {},
        "test_accuracy": {},
        "final_train_loss": {},
    }
    lines: dict[str, tuple[list[float], list[float]]] = {}
    curves: dict[str, tuple[list[float], list[float]]] = {}
    runs: list[str] = []
    for i, variant in enumerate(("plain", "batchnorm")):
        torch.manual_seed(s.seed)
        model = mlp(split.n_features, split.n_classes, cfg["depth"], cfg["width"], nn.Sigmoid)
        if variant == "batchnorm":
            model = remedies.insert_norm(model, "batch")
        stats, order = at_init(model, x, y, s.out / f"init-{variant}")
        g = profile(stats, linear_layers(model, order), "grad_norm")
        measured["first_last_grad_ratio"][variant] = first_last_ratio(g)
        lines[variant] = (list(range(len(g))), [v / g[-1] for v in g])
        t = train(
            model,
            split,
            epochs=cfg["epochs"],
            lr=cfg["lr"],
            batch=cfg["batch"],
            seed=s.seed,
            log_dir=s.out / f"train-{variant}",
            progress=sub_progress(s.progress, i, 2),
        )
        measured["test_accuracy"][variant] = t.accuracy
        measured["final_train_loss"][variant] = t.final_loss
        curves[variant] = (list(range(1, len(t.losses) + 1)), t.losses)
        runs += [str(s.out / f"init-{variant}"), t.path]
    figures = [
        Figure(
            f"Sigmoid, {cfg['depth']} layers: grad_norm per layer at init (÷ last)",
            "layer",
            "grad_norm / last",
            lines,
            log_y=True,
        ),
        Figure("Training loss per epoch", "epoch", "cross-entropy", curves),
    ]
    setup = {
        **cfg,
        "activation": "sigmoid",
        "init": "PyTorch default",
        "data": "sklearn digits",
        "optimizer": "SGD momentum 0.9",
        "norm": "BatchNorm1d after every hidden Linear (remedies.insert_norm)",
    }
    return Outcome(setup, measured, figures, runs)


def judge(m: dict[str, Any]) -> bool:
    """Plain: gradient vanished and the net did not learn; with BatchNorm: level gradient,
    trained."""
    r, acc = m["first_last_grad_ratio"], m["test_accuracy"]
    plain = r["plain"] < VANISHED and acc["plain"] < CHANCE_ACC
    bn = r["batchnorm"] > KEPT and acc["batchnorm"] >= TRAINED_ACC
    return bool(plain and bn)


EXPERIMENT = Experiment(
    name="batchnorm",
    claim="A deep sigmoid MLP whose plain form stalls trains when every pre-activation is "
    "batch-normalised.",
    source="Ioffe & Szegedy 2015 (Batch Normalization, §4.1: sigmoid nets train with BN)",
    expected=(
        f"20-layer sigmoid MLP, PyTorch default init. Plain: first/last gradient-norm ratio below "
        f"{VANISHED:g} and test accuracy below {CHANCE_ACC:.0%}. With BatchNorm: ratio above "
        f"{KEPT:g} and accuracy ≥ {TRAINED_ACC:.0%}."
    ),
    run=run,
    judge=judge,
)
