"""Mean-field theory against measurement, for tanh nets with weights N(0, σ_w²/fan_in) and biases
N(0, σ_b²): (1) the per-layer factor of back-propagated gradient variance, measured with
gradwatch's `backflow_norm` in wide random nets, against χ₁ from `gradwatch.theory`; (2) the
deepest net that trains, measured over a grid of depths, against the predicted 6ξ_c.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torch import nn

from gradwatch import theory
from gradwatch.lab.experiment import Experiment, Figure, Outcome, Settings
from gradwatch.lab.experiments._feedforward import at_init, data, linear_layers, profile, train
from gradwatch.lab.models import mlp

SIGMA_B2 = 0.05
CHI_TOL = 0.05  # relative error of the measured χ₁
DEPTH_FACTOR = 2.0  # measured trainable depth within this factor of 6ξ_c (the grid doubles)
TRAINED_ACC = 0.5  # 10 classes, chance 0.1
SKIP = 4  # layers left out at each end of the χ₁ fit: the input's transient and the head


def init_mean_field(
    model: nn.Module, sigma_w2: float, sigma_b2: float, gen: torch.Generator
) -> nn.Module:
    """Weights N(0, σ_w²/fan_in), biases N(0, σ_b²): the ensemble mean-field theory describes."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.Linear):
                m.weight.normal_(0.0, math.sqrt(sigma_w2 / m.in_features), generator=gen)
                m.bias.normal_(0.0, math.sqrt(sigma_b2), generator=gen)
    return model


def _settings(quick: bool) -> dict[str, Any]:
    if quick:
        return {
            "chi_sigma_w2": [0.5, 1.0, 1.76, 2.5],
            "chi_width": 512,
            "chi_depth": 16,
            "chi_batch": 128,
            "train_sigma_w2": [0.5, 0.8, 1.0],
            "depths": [4, 8, 16, 32],
            "width": 64,
            "epochs": 3,
            "lr": 0.02,
            "batch": 64,
        }
    return {
        "chi_sigma_w2": [0.5, 0.8, 1.0, 1.4, 1.76, 2.5, 4.0],
        "chi_width": 1024,
        "chi_depth": 32,
        "chi_batch": 256,
        "train_sigma_w2": [0.5, 0.8, 1.0, 1.2],
        "depths": [4, 8, 16, 32, 64],
        "width": 64,
        "epochs": 10,
        "lr": 0.02,
        "batch": 64,
    }


def measure_chi1(
    s: Settings, sigma_w2: float, cfg: dict[str, Any]
) -> tuple[float, list[float], str]:
    """Geometric mean over the middle layers of ‖∂L/∂h^l‖² / ‖∂L/∂h^{l+1}‖², from
    `backflow_norm`."""
    gen = torch.Generator().manual_seed(s.seed)
    width, depth = cfg["chi_width"], cfg["chi_depth"]
    model = init_mean_field(mlp(width, width, depth, width, nn.Tanh), sigma_w2, SIGMA_B2, gen)
    x = torch.randn(cfg["chi_batch"], width, generator=gen)
    v = torch.randn(cfg["chi_batch"], width, generator=gen)
    log_dir = s.out / f"chi1-{sigma_w2:g}"
    stats, order = at_init(model, x, v, log_dir, loss_fn=lambda out, cot: (out * cot).sum())
    b = np.array(profile(stats, linear_layers(model, order), "backflow_norm"))
    ratios = (b[:-1] / b[1:]) ** 2
    middle = ratios[SKIP : len(ratios) - SKIP]
    return float(np.exp(np.log(middle).mean())), list(b / b[-1]), str(log_dir)


def run(s: Settings, **override: Any) -> Outcome:
    cfg = {**_settings(s.quick), **override}
    runs: list[str] = []
    chi_measured, chi_predicted, profiles = {}, {}, {}
    n = len(cfg["chi_sigma_w2"]) + len(cfg["train_sigma_w2"])
    for i, sw in enumerate(cfg["chi_sigma_w2"]):
        measured, prof, path = measure_chi1(s, sw, cfg)
        chi_measured[f"{sw:g}"] = measured
        chi_predicted[f"{sw:g}"] = theory.mean_field("tanh", sw, SIGMA_B2).chi1
        profiles[f"σ_w²={sw:g}"] = (list(range(len(prof))), prof)
        runs.append(path)
        s.progress((i + 1) / n)
    split = data(s.seed)
    trainable, predicted, accuracy = {}, {}, {}
    for j, sw in enumerate(cfg["train_sigma_w2"]):
        key = f"{sw:g}"
        predicted[key] = theory.mean_field("tanh", sw, SIGMA_B2).trainable_depth
        accuracy[key], best = {}, 0
        for k, depth in enumerate(cfg["depths"]):
            torch.manual_seed(s.seed)
            gen = torch.Generator().manual_seed(s.seed)
            model = init_mean_field(
                mlp(split.n_features, split.n_classes, depth, cfg["width"], nn.Tanh),
                sw,
                SIGMA_B2,
                gen,
            )
            part = len(cfg["chi_sigma_w2"]) + j + k / len(cfg["depths"])
            t = train(
                model,
                split,
                epochs=cfg["epochs"],
                lr=cfg["lr"],
                batch=cfg["batch"],
                seed=s.seed,
                log_dir=s.out / f"train-{key}-{depth}",
                progress=lambda f, p=part: s.progress((p + f / len(cfg["depths"])) / n),
            )
            accuracy[key][str(depth)] = t.accuracy
            runs.append(t.path)
            if t.accuracy < TRAINED_ACC:
                # deeper nets at this σ_w² fare no better: the grid stops at the first failure
                break
            best = depth
        trainable[key] = best
    measured = {
        "sigma_b2": SIGMA_B2,
        "chi1_measured": chi_measured,
        "chi1_predicted": chi_predicted,
        "chi1_relative_error": {
            k: abs(chi_measured[k] / chi_predicted[k] - 1) for k in chi_measured
        },
        "depth_grid": cfg["depths"],
        "trainable_depth_measured": trainable,
        "trainable_depth_predicted": predicted,
        "test_accuracy": accuracy,
    }
    sws = [float(k) for k in chi_measured]
    figures = [
        Figure(
            "χ₁: per-layer factor of gradient variance",
            "σ_w²",
            "χ₁",
            {
                "measured (backflow_norm)": (sws, list(chi_measured.values())),
                "predicted (theory.mean_field)": (sws, list(chi_predicted.values())),
            },
        ),
        Figure(
            f"‖∂L/∂h‖ per layer, width {cfg['chi_width']} (÷ last)",
            "layer",
            "backflow_norm / last",
            profiles,
            log_y=True,
        ),
        Figure(
            "Trainable depth: measured vs 6ξ_c",
            "σ_w²",
            "layers",
            {
                "measured": ([float(k) for k in trainable], list(trainable.values())),
                "6ξ_c": ([float(k) for k in predicted], list(predicted.values())),
            },
            log_y=True,
        ),
    ]
    setup = {
        **cfg,
        "activation": "tanh",
        "sigma_b2": SIGMA_B2,
        "data": "sklearn digits (training); Gaussian inputs and a random cotangent (χ₁)",
        "optimizer": "SGD momentum 0.9",
    }
    return Outcome(setup, measured, figures, runs)


def judge(m: dict[str, Any]) -> bool:
    """χ₁ within CHI_TOL everywhere; each measured trainable depth within DEPTH_FACTOR of 6ξ_c (a
    net that trains at the deepest grid depth needs 6ξ_c ≥ that depth / DEPTH_FACTOR); and
    trainable depth grows with σ_w² as the theory says it does towards the critical line."""
    chi_ok = all(e < CHI_TOL for e in m["chi1_relative_error"].values())
    top = max(m["depth_grid"])
    depth_ok = True
    for k, measured in m["trainable_depth_measured"].items():
        pred = m["trainable_depth_predicted"][k]
        if measured == 0:
            depth_ok = False
        elif measured >= top:
            depth_ok &= pred >= top / DEPTH_FACTOR
        else:
            depth_ok &= pred / DEPTH_FACTOR <= measured <= pred * DEPTH_FACTOR
    order = [
        m["trainable_depth_measured"][k] for k in sorted(m["trainable_depth_measured"], key=float)
    ]
    grows = all(a <= b for a, b in zip(order, order[1:], strict=False))
    return bool(chi_ok and depth_ok and grows)


EXPERIMENT = Experiment(
    name="mean-field",
    claim="Mean-field theory predicts, before training, how gradients scale with depth: the "
    "back-propagated gradient variance changes by χ₁ = σ_w² E[φ'(√q* z)²] per layer, and networks "
    "train only up to a depth of about 6ξ_c.",
    source="Poole et al. 2016; Schoenholz et al. 2017 (Deep Information Propagation, Fig. 5)",
    expected=(
        f"tanh, σ_b² = {SIGMA_B2}. Measured per-layer ratio of ‖∂L/∂h‖² within {CHI_TOL:.0%} of "
        f"χ₁ at width ≥ 500 for every σ_w²; the deepest grid depth that reaches {TRAINED_ACC:.0%} "
        f"test accuracy within a factor {DEPTH_FACTOR:g} of 6ξ_c (the grid doubles), growing with "
        "σ_w²."
    ),
    run=run,
    judge=judge,
)
