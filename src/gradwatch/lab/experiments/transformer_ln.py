"""transformer-ln: Post-LN transformers have large gradients in their last layers at init; Pre-LN
transformers keep per-layer gradient norms level.

Xiong et al. (2020), "On Layer Normalization in the Transformer Architecture": with the
LayerNorm after the residual addition (Post-LN, the original transformer), the expected gradient
of the last layers' parameters is large and grows with the layer index, so training needs a
learning-rate warm-up; with the LayerNorm inside the residual branch (Pre-LN) the gradient norm
is about the same for every layer (their Figure 3 measures the FFN weights W¹, W²). Here
`torch.nn.TransformerEncoderLayer(norm_first=False/True)` are the two variants, and gradwatch's
grad_norm of each layer's feed-forward Linear pair (linear1, linear2) is read at initialisation
and over the first steps of training with Adam and no warm-up.

Measured (bench/RESULTS.md): at 6 layers Pre-LN's ratio is within the "level" band; at 12 layers
(the default settings) it falls to about 0.44, roughly 1/√l as the Pre-LN residual stream grows,
so the default form reports the claim's "level" part as not reproduced.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

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
from gradwatch.monitor import watch
from gradwatch.remedies import xavier_init

VARIANTS = ("post_ln", "pre_ln")
LEVEL = 2.0  # Pre-LN: last/first FFN gradient norm within [1/2, 2] counts as level
LARGER = 1.2  # Post-LN's last-layer FFN gradient norm at least this many times Pre-LN's, at init


@dataclass(frozen=True)
class Config:
    n_layer: int
    steps: int  # early training: Adam steps with no warm-up
    d_model: int = 64
    n_head: int = 4
    d_ff: int = 256
    vocab: int = 16
    length: int = 16
    batch: int = 32
    lr: float = 1e-3


QUICK = Config(n_layer=6, steps=40)
FULL = Config(n_layer=12, steps=500, d_model=128, d_ff=512)


class Encoder(nn.Module):
    """Token + position embedding, `n_layer` encoder layers, a final LayerNorm for Pre-LN, a
    head."""

    def __init__(self, cfg: Config, norm_first: bool):
        super().__init__()
        self.embed = nn.Embedding(cfg.vocab, cfg.d_model)
        self.pos = nn.Parameter(0.02 * torch.randn(cfg.length, cfg.d_model))
        self.layers = nn.ModuleList(
            nn.TransformerEncoderLayer(
                cfg.d_model,
                cfg.n_head,
                cfg.d_ff,
                dropout=0.0,
                batch_first=True,
                norm_first=norm_first,
            )
            for _ in range(cfg.n_layer)
        )
        self.norm = nn.LayerNorm(cfg.d_model) if norm_first else nn.Identity()
        self.head = nn.Linear(cfg.d_model, cfg.vocab)
        xavier_init(
            self, distribution="uniform"
        )  # the paper's (and the original transformer's) init

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        h = self.embed(tokens) + self.pos
        for layer in self.layers:
            h = layer(h)
        return self.head(self.norm(h))


def _batch(cfg: Config, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Reverse a random token sequence: position t must attend to position T-1-t."""
    x = torch.randint(0, cfg.vocab, (cfg.batch, cfg.length), generator=gen)
    return x, x.flip(1)


def _loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return nn.functional.cross_entropy(model(x).reshape(-1, model.head.out_features), y.reshape(-1))


def _ffn_norms(per_layer: dict[str, float], n_layer: int) -> list[float]:
    return [
        (
            group_norm(per_layer, f"layers.{i}.linear1") ** 2
            + group_norm(per_layer, f"layers.{i}.linear2") ** 2
        )
        ** 0.5
        for i in range(n_layer)
    ]


def _variant(norm_first: bool, cfg: Config, seed: int, log_dir: Path | None = None) -> dict:
    gen = generator(seed)
    model = Encoder(cfg, norm_first)
    x0, y0 = _batch(cfg, torch.Generator().manual_seed(10_000 + seed))
    init = _ffn_norms(
        metric(one_backward(model, lambda m: _loss(m, x0, y0)), "grad_norm"), cfg.n_layer
    )
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    losses = []
    with watch(
        model,
        opt,
        activations=False,
        backflow=False,
        through_time=False,
        flush_every=max(cfg.steps, 1),
        log_dir=log_dir,
        overwrite=True,
    ) as w:
        for _ in range(cfg.steps):
            x, y = _batch(cfg, gen)
            loss = _loss(model, x, y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            w.log_loss(loss)
            losses.append(loss.detach())
            opt.step()
    stats = w.stats()
    per_step = [_ffn_norms(metric(stats, "grad_norm", s), cfg.n_layer) for s in range(cfg.steps)]
    ratios = [ratio(n[-1], n[0]) for n in per_step]
    window = [
        r for r in ratios[cfg.steps // 2 :] if r is not None
    ]  # the second half of the early steps
    return {
        "init_ffn_grad_norm": [num(v) for v in init],
        "init_last_over_first": ratio(init[-1], init[0]),
        "early_last_over_first": num(sorted(window)[len(window) // 2]) if window else None,
        "early_ffn_grad_norm": [num(v) for v in per_step[-1]] if per_step else [],
        "initial_loss": num(losses[0]) if losses else None,
        "final_loss": num(torch.stack(losses[-10:]).mean()) if losses else None,
        "_ratios": [r if r is not None else 0.0 for r in ratios],
        "_run": str(w.log_dir) if w.log_dir is not None else None,
    }


def run(settings: Settings, cfg: Config | None = None) -> Outcome:
    cfg = cfg or (QUICK if settings.quick else FULL)
    results = {}
    for i, variant in enumerate(VARIANTS):
        results[variant] = _variant(
            variant == "pre_ln", cfg, settings.seed, settings.out / f"run-{variant}"
        )
        settings.progress((i + 1) / len(VARIANTS))
    measured = {
        v: {k: x for k, x in r.items() if not k.startswith("_")} for v, r in results.items()
    }
    measured["init_last_layer_post_over_pre"] = ratio(
        results["post_ln"]["init_ffn_grad_norm"][-1], results["pre_ln"]["init_ffn_grad_norm"][-1]
    )
    labels = {"post_ln": "Post-LN (norm_first=False)", "pre_ln": "Pre-LN (norm_first=True)"}
    layers_x = [float(i) for i in range(cfg.n_layer)]
    figures = [
        Figure(
            title="At initialisation: FFN gradient norm per layer (gradwatch grad_norm of linear1, "
            "linear2)",
            x_label="layer",
            y_label="‖∂L/∂W_FFN‖",
            lines={
                labels[v]: (layers_x, [x or 0.0 for x in r["init_ffn_grad_norm"]])
                for v, r in results.items()
            },
            log_y=True,
        ),
        Figure(
            title=f"Early training (Adam lr={cfg.lr}, no warm-up): last / first layer FFN gradient "
            "norm",
            x_label="step",
            y_label="last / first",
            lines={
                labels[v]: ([float(s) for s in range(cfg.steps)], r["_ratios"])
                for v, r in results.items()
            },
            log_y=True,
        ),
    ]
    setup = {
        "model": f"{cfg.n_layer} nn.TransformerEncoderLayer(d_model={cfg.d_model}, "
        f"nhead={cfg.n_head}, dim_feedforward={cfg.d_ff}, dropout=0), token + learned position "
        "embeddings, Linear head; Pre-LN adds the final LayerNorm; every Linear Xavier-uniform, "
        "biases 0 (as in the paper)",
        "task": f"reverse a sequence of {cfg.length} random tokens from a vocabulary of "
        f"{cfg.vocab}; cross-entropy",
        "optimizer": f"Adam lr={cfg.lr}, no warm-up, batch {cfg.batch}, {cfg.steps} steps",
        "measure": "per layer √(‖∇W¹‖² + ‖∇W²‖²) of the feed-forward sublayer; 'early' = median "
        "over the second half of the steps",
        "seed": settings.seed,
    }
    return Outcome(
        setup=setup,
        measured=measured,
        figures=figures,
        runs=[r["_run"] for r in results.values() if r["_run"]],
    )


def judge(measured: dict) -> bool:
    """Reproduced when, at init, Post-LN's last layer gets ≥ 1.2× the FFN gradient norm of Pre-LN's
    (same weights), Pre-LN's last/first ratio is level (within [1/2, 2]) and below Post-LN's, and in
    early training without warm-up Post-LN's last/first ratio stays above Pre-LN's."""
    post, pre = measured["post_ln"], measured["pre_ln"]
    values = [
        measured["init_last_layer_post_over_pre"],
        post["init_last_over_first"],
        pre["init_last_over_first"],
        post["early_last_over_first"],
        pre["early_last_over_first"],
    ]
    if any(v is None for v in values):
        return False
    last, post_init, pre_init, post_early, pre_early = values
    return (
        last >= LARGER
        and 1 / LEVEL <= pre_init <= LEVEL
        and post_init > pre_init
        and post_early > pre_early
    )


EXPERIMENT = Experiment(
    name="transformer-ln",
    claim="At initialisation a Post-LN transformer's last layers get large gradients (hence the "
    "need for warm-up); a Pre-LN transformer's are smaller there and level across layers.",
    source="Xiong et al. 2020 (On Layer Normalization in the Transformer Architecture)",
    expected="At init, with the same weights, the last layer's FFN gradient norm is ≥ 1.2× larger "
    "in Post-LN (theory: about √L larger); the last/first layer ratio is within [1/2, 2] for "
    "Pre-LN and larger for Post-LN, at init and in early training without warm-up.",
    run=run,
    judge=judge,
)
