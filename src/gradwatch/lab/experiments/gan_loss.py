"""gan-loss: a confident discriminator leaves the generator almost no gradient under the saturating
minimax loss log(1 - D(G(z))), but not under the non-saturating -log D(G(z)).

Goodfellow et al. (2014), section 3: early in training D rejects generated samples with high
confidence and log(1 - D(G(z))) saturates. With D = σ(l), ∂/∂l log(1 - σ(l)) = -σ(l) → 0 as
D(G(z)) → 0, while ∂/∂l (-log σ(l)) = σ(l) - 1 → -1. So the ratio of generator gradient norms,
saturating over non-saturating, falls roughly like D(G(z)) as the discriminator gets stronger.

The data: a mixture of 8 Gaussians on a ring (the usual 2-D GAN toy). The generator is fixed at
its initialisation; the discriminator is trained against it, and at checkpoints gradwatch measures
the generator's per-layer gradient norms under each loss.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from gradwatch.lab.experiment import Experiment, Figure, Outcome, Settings
from gradwatch.lab.experiments._common import (
    generator,
    group_norm,
    metric,
    num,
    one_backward,
    ratio,
)

VANISHED = 0.05  # saturating / non-saturating generator gradient norm at or below this: vanished
CONFIDENT = 0.05  # mean D(G(z)) at or below this: the discriminator is confident


@dataclass(frozen=True)
class Config:
    checkpoints: tuple[
        int, ...
    ]  # discriminator steps at which the generator's gradients are measured
    batch: int = 256
    hidden: int = 128
    lr: float = 1e-3
    modes: int = 8
    radius: float = 2.0
    spread: float = 0.05


QUICK = Config(checkpoints=(0, 10, 30, 100, 300))
FULL = Config(checkpoints=(0, 10, 30, 100, 300, 1000, 3000), batch=512, hidden=256)


def mixture(n: int, cfg: Config, gen: torch.Generator) -> torch.Tensor:
    """n points from `cfg.modes` Gaussians (std `spread`) evenly spaced on a circle of `radius`."""
    k = torch.randint(0, cfg.modes, (n,), generator=gen).float() * (2 * math.pi / cfg.modes)
    centres = cfg.radius * torch.stack([k.cos(), k.sin()], dim=1)
    return centres + cfg.spread * torch.randn(n, 2, generator=gen)


def _mlp(n_in: int, hidden: int, n_out: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Linear(n_in, hidden),
        nn.ReLU(),
        nn.Linear(hidden, hidden),
        nn.ReLU(),
        nn.Linear(hidden, n_out),
    )


def saturating(logits: torch.Tensor) -> torch.Tensor:
    """The minimax generator loss E[log(1 - D(G(z)))], D = σ(logits), written stably."""
    return -nn.functional.softplus(logits).mean()


def non_saturating(logits: torch.Tensor) -> torch.Tensor:
    """The non-saturating generator loss E[-log D(G(z))]."""
    return nn.functional.softplus(-logits).mean()


def run(settings: Settings, cfg: Config | None = None) -> Outcome:
    cfg = cfg or (QUICK if settings.quick else FULL)
    gen = generator(settings.seed)
    g_net = _mlp(2, cfg.hidden, 2)
    d_net = _mlp(2, cfg.hidden, 1)
    opt = torch.optim.Adam(d_net.parameters(), lr=cfg.lr, betas=(0.5, 0.999))
    z_probe = torch.randn(cfg.batch, 2, generator=gen)
    layers = [name for name, m in g_net.named_modules() if isinstance(m, nn.Linear)]

    def generator_grads(loss_fn) -> dict[str, float]:
        for p in d_net.parameters():
            p.requires_grad_(False)
        try:
            stats = one_backward(g_net, lambda g: loss_fn(d_net(g(z_probe)).squeeze(-1)))
        finally:
            for p in d_net.parameters():
                p.requires_grad_(True)
        return metric(stats, "grad_norm")

    points = []
    step = 0
    for i, checkpoint in enumerate(cfg.checkpoints):
        while step < checkpoint:
            real = mixture(cfg.batch, cfg, gen)
            with torch.no_grad():
                fake = g_net(torch.randn(cfg.batch, 2, generator=gen))
            logits = d_net(torch.cat([real, fake])).squeeze(-1)
            labels = torch.cat([torch.ones(cfg.batch), torch.zeros(cfg.batch)])
            loss = nn.functional.binary_cross_entropy_with_logits(logits, labels)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
        with torch.no_grad():
            d_fake = torch.sigmoid(d_net(g_net(z_probe))).mean()
            d_real = torch.sigmoid(d_net(mixture(cfg.batch, cfg, gen))).mean()
        sat, non_sat = generator_grads(saturating), generator_grads(non_saturating)
        sat_total = math.sqrt(sum(v * v for v in sat.values()))
        non_sat_total = math.sqrt(sum(v * v for v in non_sat.values()))
        points.append(
            {
                "d_steps": checkpoint,
                "mean_d_fake": num(d_fake),
                "mean_d_real": num(d_real),
                "grad_norm_saturating": num(sat_total),
                "grad_norm_non_saturating": num(non_sat_total),
                "ratio": ratio(sat_total, non_sat_total),
                "first_layer_ratio": ratio(
                    group_norm(sat, layers[0]), group_norm(non_sat, layers[0])
                ),
            }
        )
        settings.progress((i + 1) / len(cfg.checkpoints))

    xs = [float(p["d_steps"]) for p in points]
    figures = [
        Figure(
            title="Generator gradient norm (gradwatch grad_norm, all layers) as the discriminator "
            "trains",
            x_label="discriminator steps",
            y_label="‖∂L_G/∂θ_G‖",
            lines={
                "saturating log(1 - D(G(z)))": (
                    xs,
                    [p["grad_norm_saturating"] or 0.0 for p in points],
                ),
                "non-saturating -log D(G(z))": (
                    xs,
                    [p["grad_norm_non_saturating"] or 0.0 for p in points],
                ),
            },
            log_y=True,
        ),
        Figure(
            title="Saturating / non-saturating gradient ratio and the discriminator's mean D(G(z))",
            x_label="discriminator steps",
            y_label="ratio, probability",
            lines={
                "gradient ratio": (xs, [p["ratio"] or 0.0 for p in points]),
                "mean D(G(z))": (xs, [p["mean_d_fake"] or 0.0 for p in points]),
            },
            log_y=True,
        ),
    ]
    measured = {"checkpoints": points, "final": points[-1]}
    setup = {
        "data": f"{cfg.modes} Gaussians (std {cfg.spread}) on a circle of radius {cfg.radius}",
        "generator": f"MLP 2-{cfg.hidden}-{cfg.hidden}-2, ReLU, PyTorch default init, held fixed",
        "discriminator": f"MLP 2-{cfg.hidden}-{cfg.hidden}-1, ReLU, Adam lr={cfg.lr} betas=(0.5, "
        f"0.999), batch {cfg.batch} real + {cfg.batch} fake",
        "checkpoints": list(cfg.checkpoints),
        "seed": settings.seed,
    }
    return Outcome(setup=setup, measured=measured, figures=figures)


def judge(measured: dict) -> bool:
    """Reproduced when, at the last checkpoint, the discriminator is confident (mean D(G(z)) ≤ 0.05)
    and the saturating loss gives the generator at most 5% of the non-saturating gradient norm,
    while at initialisation (an unsure discriminator) the two are within a factor of 3."""
    first, final = measured["checkpoints"][0], measured["final"]
    if final["ratio"] is None or final["mean_d_fake"] is None or first["ratio"] is None:
        return False
    return (
        final["mean_d_fake"] <= CONFIDENT
        and final["ratio"] <= VANISHED
        and 1 / 3 <= first["ratio"] <= 3
    )


EXPERIMENT = Experiment(
    name="gan-loss",
    claim="A confident discriminator gives the generator almost no gradient under the saturating "
    "minimax loss log(1 - D(G(z))); the non-saturating loss -log D(G(z)) keeps it.",
    source="Goodfellow et al. 2014 (Generative Adversarial Nets, section 3)",
    expected="Once mean D(G(z)) ≤ 0.05, the generator's gradient norm under the saturating loss is "
    "≤ 5% of that under the non-saturating loss (it falls roughly like D(G(z))); with the "
    "untrained discriminator (D ≈ 0.5) the two are within a factor of 3.",
    run=run,
    judge=judge,
)
