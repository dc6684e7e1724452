"""rnn-gates: a vanilla RNN stays at the baseline on the adding problem where LSTM and GRU solve it.

Hochreiter & Schmidhuber (1997); Bengio et al. (1994). Each model reads T (value, marker) pairs
and predicts 0.5 + (X₁+X₂)/4 from its last hidden state. The error signal for the first marked
value has to travel back more than T/2 steps; through a tanh RNN it shrinks by a factor per step,
through the LSTM's cell state (forget gate open: bias 3) and the GRU's update gate it need not,
once the gates have learned to hold. gradwatch's through-time probe measures the decay at
initialisation (‖∂L/∂x_t‖ at the first step over the last): the GRU starts with it vanishing as
fast as the RNN's and learns to keep it; the LSTM with its open forget gate starts without it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from gradwatch.lab.experiment import Experiment, Figure, Outcome, Settings
from gradwatch.lab.experiments._common import generator, num, one_backward, ratio, time_series
from gradwatch.lab.sequences import BASELINE_MSE, accuracy, adding
from gradwatch.remedies import clip_by_norm, lstm_forget_bias

KINDS = ("rnn", "lstm", "gru")
SOLVED_ACCURACY = 0.8  # fraction of test sequences within the 0.04 tolerance
STAYS_AT_BASELINE = 0.5  # final test MSE / (1/24) at or above this: the RNN learned nothing useful


@dataclass(frozen=True)
class Config:
    lengths: tuple[int, ...]
    steps: int  # training steps per (model, length); a model stops early once it solves the task
    hidden: int = 32
    batch: int = 64
    lr: float = 1e-2
    clip: float = 1.0
    forget_bias: float = 3.0
    eval_every: int = 50
    n_test: int = 512


QUICK = Config(lengths=(10, 50), steps=800)
FULL = Config(lengths=(10, 50, 100, 200), steps=5000, hidden=64)


class SequenceModel(nn.Module):
    def __init__(self, kind: str, hidden: int):
        super().__init__()
        self.rnn = {"rnn": nn.RNN, "lstm": nn.LSTM, "gru": nn.GRU}[kind](
            2, hidden, batch_first=True
        )
        self.head = nn.Linear(hidden, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.rnn(x)
        return self.head(out[:, -1]).squeeze(-1)


def _train(kind: str, length: int, cfg: Config, seed: int) -> dict:
    gen = generator(seed)
    model = SequenceModel(kind, cfg.hidden)
    if kind == "lstm":
        lstm_forget_bias(model, cfg.forget_bias)
    x_test, y_test = adding(cfg.n_test, length, torch.Generator().manual_seed(10_000 + seed))

    stats = one_backward(
        model, lambda m: nn.functional.mse_loss(m(x_test[:128]), y_test[:128]), through_time=True
    )
    through_time = time_series(stats, "rnn")

    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    curve_steps, curve_mse, curve_acc = [0], [], []
    with torch.no_grad():
        pred = model(x_test)
    curve_mse.append(float(nn.functional.mse_loss(pred, y_test)) / BASELINE_MSE)
    curve_acc.append(accuracy(pred, y_test))
    solved_at = None
    for step in range(1, cfg.steps + 1):
        x, y = adding(cfg.batch, length, gen)
        loss = nn.functional.mse_loss(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        clip_by_norm(model, cfg.clip)
        opt.step()
        if step % cfg.eval_every == 0:
            with torch.no_grad():
                pred = model(x_test)
            curve_steps.append(step)
            curve_mse.append(float(nn.functional.mse_loss(pred, y_test)) / BASELINE_MSE)
            curve_acc.append(accuracy(pred, y_test))
            if curve_acc[-1] >= SOLVED_ACCURACY:
                solved_at = step
                break
    return {
        "solved_at": solved_at,
        "final_mse_over_baseline": num(curve_mse[-1]),
        "final_accuracy": num(curve_acc[-1]),
        "init_time_grad_first_over_last": ratio(through_time[0], through_time[-1])
        if through_time
        else None,
        "curve": {"step": curve_steps, "mse_over_baseline": curve_mse, "accuracy": curve_acc},
    }


def run(settings: Settings, cfg: Config | None = None) -> Outcome:
    cfg = cfg or (QUICK if settings.quick else FULL)
    torch.manual_seed(settings.seed)
    results: dict[str, dict[str, dict]] = {kind: {} for kind in KINDS}
    total, done = len(KINDS) * len(cfg.lengths), 0
    for length in cfg.lengths:
        for kind in KINDS:
            results[kind][str(length)] = _train(kind, length, cfg, settings.seed)
            done += 1
            settings.progress(done / total)
    longest = str(max(cfg.lengths))
    measured = {
        "lengths": list(cfg.lengths),
        "longest": int(longest),
        "solved_accuracy": SOLVED_ACCURACY,
        "results": {
            k: {t: {key: v for key, v in r.items() if key != "curve"} for t, r in per.items()}
            for k, per in results.items()
        },
    }
    figures = [
        Figure(
            title=f"Adding problem, T={longest}: test MSE over the predict-0.5 baseline",
            x_label="training step",
            y_label="test MSE / (1/24)",
            lines={
                k: (
                    results[k][longest]["curve"]["step"],
                    results[k][longest]["curve"]["mse_over_baseline"],
                )
                for k in KINDS
            },
            log_y=True,
        ),
        Figure(
            title="Steps to solve (≥ 80% of test sequences within 0.04); missing = never",
            x_label="sequence length T",
            y_label="training steps",
            lines={
                k: (
                    [float(t) for t in cfg.lengths if results[k][str(t)]["solved_at"]],
                    [
                        float(results[k][str(t)]["solved_at"])
                        for t in cfg.lengths
                        if results[k][str(t)]["solved_at"]
                    ],
                )
                for k in KINDS
            },
        ),
        Figure(
            title="At initialisation: ‖∂L/∂x_first‖ / ‖∂L/∂x_last‖ (gradwatch time_grad_norm)",
            x_label="sequence length T",
            y_label="first / last",
            lines={
                k: (
                    [float(t) for t in cfg.lengths],
                    [
                        results[k][str(t)]["init_time_grad_first_over_last"] or 0.0
                        for t in cfg.lengths
                    ],
                )
                for k in KINDS
            },
            log_y=True,
        ),
    ]
    setup = {
        "task": "adding problem (Hochreiter & Schmidhuber 1997), fresh batches each step, fixed "
        "test set",
        "lengths": list(cfg.lengths),
        "steps": cfg.steps,
        "hidden": cfg.hidden,
        "batch": cfg.batch,
        "optimizer": f"Adam lr={cfg.lr}, gradient norm clipped at {cfg.clip} (all models alike)",
        "lstm_forget_bias": cfg.forget_bias,
        "eval_every": cfg.eval_every,
        "n_test": cfg.n_test,
        "seed": settings.seed,
    }
    return Outcome(setup=setup, measured=measured, figures=figures)


def judge(measured: dict) -> bool:
    """Reproduced when, at the longest length, the RNN's final test MSE stays ≥ 0.5× the baseline
    (unsolved) while LSTM and GRU both solve the task."""
    at = measured["results"]
    longest = str(measured["longest"])
    rnn = at["rnn"][longest]
    rnn_stuck = rnn["solved_at"] is None and (
        rnn["final_mse_over_baseline"] is None
        or rnn["final_mse_over_baseline"] >= STAYS_AT_BASELINE
    )
    gated_solve = all(at[k][longest]["solved_at"] is not None for k in ("lstm", "gru"))
    return rnn_stuck and gated_solve


EXPERIMENT = Experiment(
    name="rnn-gates",
    claim="On the adding problem a vanilla RNN stays at the baseline at long lags, while LSTM and "
    "GRU (gated units) solve it: the gradient through time vanishes in the RNN, not through the "
    "gates.",
    source="Hochreiter & Schmidhuber 1997 (LSTM, adding problem); Bengio et al. 1994; "
    "Cho et al. 2014 (GRU)",
    expected="At the longest length, the RNN's test MSE stays ≥ 0.5× the 1/24 baseline and it "
    "never gets 80% of test sequences within 0.04; LSTM and GRU reach that within the step budget.",
    run=run,
    judge=judge,
)
