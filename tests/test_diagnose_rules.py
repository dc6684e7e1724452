"""Detector rules on small synthetic stats tables: each rule fires on the problem it was written
for and stays quiet on the healthy run that looks most like it. Plus the cost of diagnosing at
every flush: the work must not grow per step examined."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

import gradwatch as gw
from gradwatch.diagnose import depth, diagnose
from gradwatch.diagnose.view import View, fit_log_slope


def _table(
    per_layer: dict[str, dict[str, list[float]]], loss: list[float] | None = None
) -> pd.DataFrame:
    """{metric: {layer: values per step}} (+ an optional loss per step) as a long stats table."""
    rows = []
    for metric, layers in per_layer.items():
        for layer, values in layers.items():
            rows += [(step, layer, metric, float(v), -1) for step, v in enumerate(values)]
    if loss is not None:
        rows += [(step, "(model)", "loss", float(v), -1) for step, v in enumerate(loss)]
    return pd.DataFrame(rows, columns=["step", "layer", "metric", "value", "index"])


def _meta(types: dict[str, str]) -> dict:
    return {
        "layer_order": list(types),
        "model": {"layers": [{"name": n, "type": t} for n, t in types.items()]},
    }


def _series(step: int, layer: str, values: np.ndarray) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "step": step,
            "layer": layer,
            "metric": "time_grad_norm",
            "value": values,
            "index": np.arange(len(values)),
        }
    )


LINEARS = {str(i): "Linear" for i in range(4)}


def _kinds(stats: pd.DataFrame, meta: dict | None = None) -> set[str]:
    return {f.kind for f in diagnose(stats, meta).findings if f.severity in ("warning", "error")}


# --- exploding through time -------------------------------------------------------------------


def test_growth_of_240x_over_30_time_steps_explodes_through_time():
    # ReLU RNN with W_hh = 1.2·I: the gradient grows x1.2 per step backwards, x237 over 30 steps.
    stats = _series(0, "rnn", 1.2 ** np.arange(30)[::-1])
    assert "exploding_through_time" in _kinds(stats, _meta({"rnn": "RNN"}))


def test_gated_decay_through_time_is_not_an_explosion():
    stats = _series(0, "rnn", 0.8 ** np.arange(30)[::-1])  # LSTM-like: earlier steps get less
    assert "exploding_through_time" not in _kinds(stats, _meta({"rnn": "LSTM"}))


def test_explosion_at_the_first_step_is_kept_after_training_tames_it():
    grow = _series(0, "rnn", 1.5 ** np.arange(30)[::-1])
    tame = [_series(s, "rnn", np.ones(30)) for s in (10, 20, 30)]
    stats = pd.concat([grow, *tame], ignore_index=True)
    f = next(
        f
        for f in diagnose(stats, _meta({"rnn": "RNN"})).findings
        if f.kind == "exploding_through_time"
    )
    assert f.step == 0


def _vanishing_then_above_threshold(loss_end: float) -> pd.DataFrame:
    # A tanh RNN on the adding problem (T=30): x0.5 per time step for most of the run, then x0.8
    # (3e-3 over the sequence, above the 1e-4 line) at the latest recorded steps.
    series = [_series(s, "rnn", 0.5 ** np.arange(30)[::-1]) for s in range(0, 300, 10)]
    series += [_series(s, "rnn", 0.8 ** np.arange(30)[::-1]) for s in range(300, 400, 10)]
    loss = _table({}, loss=list(np.linspace(0.2, loss_end, 400)))
    return pd.concat([*series, loss], ignore_index=True)


def test_vanishing_through_time_for_most_of_a_run_that_never_learned_is_kept():
    f = next(
        f
        for f in diagnose(_vanishing_then_above_threshold(0.17), _meta({"rnn": "RNN"})).findings
        if f.kind == "vanishing_through_time"
    )
    assert f.step == 0 and f.evidence["layers"]["rnn"]["cured"] is False


def test_vanishing_through_time_that_training_made_up_for_is_dropped():
    assert "vanishing_through_time" not in _kinds(
        _vanishing_then_above_threshold(0.01), _meta({"rnn": "RNN"})
    )


# --- loss plateau ------------------------------------------------------------------------------


def test_a_flat_loss_over_30_steps_is_a_plateau():
    assert "loss_plateau" in _kinds(_table({}, loss=2.303 + 0.001 * np.sin(np.arange(30))))


def test_a_loss_falling_over_30_steps_is_not():
    assert "loss_plateau" not in _kinds(_table({}, loss=2.3 * np.exp(-np.arange(30) / 30)))


def test_constant_activations_in_every_layer_predict_a_plateau_at_init():
    # All weights zero: every hidden unit outputs the same value for every input.
    stats = _table({"act_std": {"1": [0.0], "3": [0.0], "5": [0.0]}})
    f = next(
        f
        for f in diagnose(stats, _meta({"1": "ReLU", "3": "ReLU", "5": "ReLU"})).findings
        if f.kind == "loss_plateau"
    )
    assert f.severity == "error" and f.remedies[0].action == "init"


def test_one_varying_activation_layer_is_not_a_constant_net():
    stats = _table({"act_std": {"1": [0.0], "3": [0.2], "5": [0.0]}})
    assert "loss_plateau" not in _kinds(stats, _meta({"1": "ReLU", "3": "ReLU", "5": "ReLU"}))


# --- idle updates: learning rate too small, or gradient lost at the loss ------------------------


def _idle(update: float, grad_over_weight: float, steps: int = 20) -> pd.DataFrame:
    layers = list(LINEARS)
    return _table(
        {
            "update_ratio": {n: [update] * steps for n in layers},
            "grad_norm": {n: [grad_over_weight] * steps for n in layers},
            "weight_norm": {n: [1.0] * steps for n in layers},
        }
    )


def test_tiny_updates_with_ordinary_gradients_mean_the_lr_is_too_small():
    kinds = _kinds(_idle(2e-5, 0.3), _meta(LINEARS))
    assert "loss_plateau" in kinds and "vanishing_gradient" not in kinds


def test_tiny_updates_with_tiny_gradients_everywhere_are_a_vanishing_gradient():
    # The saturating GAN loss: D(G(z)) ≈ 0 hands every generator layer almost nothing.
    d = diagnose(_idle(1e-5, 5e-4), _meta(LINEARS))
    f = next(f for f in d.findings if f.kind == "vanishing_gradient")
    assert f.remedies[0].action == "loss"


def test_updates_of_a_careful_but_healthy_run_are_not_idle():
    assert _kinds(_idle(1e-3, 0.05), _meta(LINEARS)) == set()


# --- stalled layers ------------------------------------------------------------------------------


def test_a_first_layer_moving_300x_slower_than_the_busiest_is_stalled():
    upd = {"0": [3e-5] * 20, "1": [1e-2] * 20, "2": [1e-2] * 20, "3": [1e-2] * 20}
    f = next(
        f
        for f in diagnose(_table({"update_ratio": upd}), _meta(LINEARS)).findings
        if f.kind == "stalled_layer"
    )
    assert f.layers == ("0",)


def test_a_layer_waking_up_behind_a_zero_initialised_one_is_not_stalled():
    # Fixup: a branch's first conv gets no gradient until the zeroed conv after it has moved; its
    # ratio climbs from 0 to the busiest layer's within 20 steps (measured in a rehearsal, seed 1).
    waking = [0.0, 0.0] + list(np.geomspace(5e-7, 1e-2, 18))
    upd = {"0": waking, "1": [1e-2] * 20, "2": [1e-2] * 20, "3": [3e-5] * 20}
    f = next(
        f
        for f in diagnose(_table({"update_ratio": upd}), _meta(LINEARS)).findings
        if f.kind == "stalled_layer"
    )
    assert f.layers == ("3",)


def test_a_slow_norm_gain_is_not_a_stalled_layer():
    # BatchNorm gains sit near 1 and move slowly by design (healthy sigmoid CNN + BN: 5e-3 of the
    # busiest).
    types = {"0": "Conv2d", "1": "BatchNorm2d", "2": "Conv2d", "3": "Conv2d"}
    upd = {"0": [1e-2] * 20, "1": [5e-6] * 20, "2": [1e-2] * 20, "3": [1e-2] * 20}
    assert "stalled_layer" not in _kinds(_table({"update_ratio": upd}), _meta(types))


def test_a_zero_initialised_layer_is_judged_by_neither_stall_nor_instability():
    # Fixup zeroes the last layer of each branch: its first ratios are huge or undefined.
    # Half the layers here, as in a Fixup ResNet: their first steps are many times their own size.
    grown = [5.0] * 5 + [1e-2] * 15
    upd = {"0": [1e-2] * 20, "1": [1e-2] * 20, "2": grown, "3": grown}
    weights = {"0": [1.0] * 20, "1": [1.0] * 20, "2": [0.0] + [1e-3] * 19, "3": [0.0] + [1e-3] * 19}
    assert _kinds(_table({"update_ratio": upd, "weight_norm": weights}), _meta(LINEARS)) == set()


def test_at_init_a_layer_whose_gradient_is_tiny_next_to_its_weights_is_predicted_to_stall():
    # First three layers x1e-2: an SGD step would move layer 0 about 1e-3 as far as the others.
    grads = {"0": [3e-4], "1": [0.3], "2": [0.3], "3": [0.3]}
    weights = {n: [1.0] for n in LINEARS}
    f = next(
        f
        for f in diagnose(
            _table({"grad_norm": grads, "weight_norm": weights}), _meta(LINEARS)
        ).findings
        if f.kind == "stalled_layer"
    )
    assert f.layers == ("0",) and "SGD" in f.summary


def test_at_init_an_ordinary_spread_of_gradients_is_not_a_stall():
    # Healthy transformers and BN CNNs spread over ~1e-2 between layers.
    grads = {"0": [0.004], "1": [0.3], "2": [0.1], "3": [0.4]}
    weights = {n: [1.0] for n in LINEARS}
    assert "stalled_layer" not in _kinds(
        _table({"grad_norm": grads, "weight_norm": weights}), _meta(LINEARS)
    )


# --- unstable updates ----------------------------------------------------------------------------


def _updates(
    per_step: list[float],
    grad_over_weight: list[float] | None = None,
    loss: list[float] | None = None,
) -> pd.DataFrame:
    metrics = {"update_ratio": {n: per_step for n in LINEARS}}
    if grad_over_weight is not None:
        metrics["grad_norm"] = {n: grad_over_weight for n in LINEARS}
        metrics["weight_norm"] = {n: [1.0] * len(grad_over_weight) for n in LINEARS}
    return _table(metrics, loss)


def test_first_ten_updates_that_add_up_to_the_weights_are_unstable():
    # Adam at 50x its usual rate: five large steps, then the inflated weights make ratios look
    # modest.
    steps = [0.34, 0.25, 0.18, 0.14, 0.11, 0.09, 0.07, 0.06, 0.05, 0.05] + [0.02] * 30
    f = next(
        f
        for f in diagnose(_updates(steps), _meta(LINEARS)).findings
        if f.kind == "unstable_updates"
    )
    assert f.evidence["first_updates_sum"] > 1


def test_a_few_large_updates_spread_over_a_healthy_gan_run_are_not():
    steps = [0.0, 0.003, 0.04, 0.001, 0.014, 0.21, 0.003, 0.018, 0.105, 0.001] * 4
    assert "unstable_updates" not in _kinds(_updates(steps), _meta(LINEARS))


def test_gradients_collapsing_after_large_early_steps_are_unstable_updates():
    # Post-LN without warm-up: 8% steps, then ‖g‖/‖w‖ falls 2000x and the loss stays put.
    steps = [0.08, 0.07, 0.04, 0.04, 0.04] + [0.01] * 35
    rel = list(np.geomspace(0.05, 2.5e-5, 40))
    kinds = _kinds(_updates(steps, rel, loss=[1.9] * 5 + [1.6] * 35), _meta(LINEARS))
    assert "unstable_updates" in kinds


def test_gradients_falling_while_the_loss_falls_are_convergence():
    steps = [0.08, 0.07, 0.04, 0.04, 0.04] + [0.01] * 35
    rel = list(np.geomspace(0.05, 2.5e-5, 40))
    kinds = _kinds(_updates(steps, rel, loss=list(np.geomspace(2.0, 0.02, 40))), _meta(LINEARS))
    assert "unstable_updates" not in kinds


# --- a check's rehearsal: 20 steps -----------------------------------------------------------

# gw.check(..., optimizer=) rehearses 20 steps on one batch. Nielsen's network (N(0,1) weights,
# sigmoid, softmax + cross-entropy) at SGD lr 3: six large first steps, a spike, then the loss
# settles at 0.66x of its start with ‖g‖/‖w‖ 300x smaller. It trains (9% error on digits, as at
# lr 1; realbugs so48385830 fixed): the loss halves only later than 20 steps.
_REHEARSED_STEPS = [0.3, 0.25, 0.2, 0.15, 0.12, 0.11, 0.08, 0.02, 0.02, 0.02] + [0.002] * 10
_REHEARSED_REL = [0.09] * 3 + [3e-4] * 17
_PROGRESS = [5.03, 2.93, 4.93, 4.55, 5.88, 6.60, 5.89, 3.80, 3.58, 3.26] + [3.24] * 10
_NO_PROGRESS = [5.03, 2.93, 4.93, 4.55, 5.88, 6.60, 5.89, 4.9, 4.8, 4.7] + [4.6] * 10


def test_large_first_steps_of_a_rehearsal_whose_loss_made_progress_are_not_unstable():
    stats = _updates(_REHEARSED_STEPS, _REHEARSED_REL, loss=_PROGRESS)
    assert "unstable_updates" not in _kinds(stats, _meta(LINEARS))


@pytest.mark.parametrize("loss", [_NO_PROGRESS, _PROGRESS[:12] + [float("nan")] * 8])
def test_large_first_steps_of_a_rehearsal_that_made_no_progress_are_unstable(loss):
    f = next(
        f
        for f in diagnose(_updates(_REHEARSED_STEPS, _REHEARSED_REL, loss), _meta(LINEARS)).findings
        if f.kind == "unstable_updates"
    )
    assert f.evidence["steps_above"] == 6 and f.evidence["first_updates_sum"] > 1


def test_large_first_steps_that_killed_units_are_unstable_even_while_the_loss_falls():
    # Adam at 100x its default rate on a ReLU MLP: the loss falls to 0.65x in 20 steps, but the
    # large steps killed 70% of a layer's units that were alive before them.
    stats = pd.concat(
        [
            _updates(_REHEARSED_STEPS, _REHEARSED_REL, loss=_PROGRESS),
            _table({"dead_frac": {"1": [0.05] * 3 + [0.7] * 17}}),
        ]
    )
    assert "unstable_updates" in _kinds(stats, _meta(LINEARS))
    # Units dead from the start were not killed by the steps.
    stats = pd.concat(
        [
            _updates(_REHEARSED_STEPS, _REHEARSED_REL, loss=_PROGRESS),
            _table({"dead_frac": {"1": [0.7] * 20}}),
        ]
    )
    assert "unstable_updates" not in _kinds(stats, _meta(LINEARS))


def test_a_long_run_still_has_to_halve_its_loss():
    # The same first steps in a 40-step watch: 0.66x of the first loss is not a fitted net.
    steps, rel = _REHEARSED_STEPS + [0.002] * 20, _REHEARSED_REL + [3e-4] * 20
    stats = _updates(steps, rel, loss=_PROGRESS + [3.24] * 20)
    assert "unstable_updates" in _kinds(stats, _meta(LINEARS))


def _one_saturated_hidden_layer(loss: list[float]) -> tuple[pd.DataFrame, dict]:
    types = {"0": "Linear", "1": "Sigmoid", "2": "Linear"}
    n = len(loss)
    stats = _table(
        {
            "saturated_frac": {"1": [0.51] * n},
            "grad_norm": {"0": [0.01] * n, "2": [0.01] * n},
            "weight_norm": {"0": [1.0] * n, "2": [1.0] * n},
        },
        loss,
    )
    meta = {**_meta(types), "probes": {"activations": {"1": {"function": "sigmoid"}}}}
    return stats, meta


def test_one_hidden_layer_half_saturated_in_a_rehearsal_that_learns_is_info():
    d = diagnose(*_one_saturated_hidden_layer(_PROGRESS))
    assert [f.severity for f in d.findings if f.kind == "saturated_activation"] == ["info"]


def test_one_hidden_layer_half_saturated_in_a_rehearsal_that_does_not_learn_warns():
    d = diagnose(*_one_saturated_hidden_layer(_NO_PROGRESS))
    assert [f.severity for f in d.findings if f.kind == "saturated_activation"] == ["warning"]


# --- gradients large next to the weights -------------------------------------------------------


def test_gradients_ten_times_the_weights_explode_at_init():
    # ResNet-32 without normalisation: ‖g‖/‖w‖ around 18 before any step.
    stats = _table(
        {"grad_norm": {n: [18.0] for n in LINEARS}, "weight_norm": {n: [1.0] for n in LINEARS}}
    )
    assert "exploding_gradient" in _kinds(stats, _meta(LINEARS))


def test_gradients_the_size_of_the_weights_do_not():
    # Healthy LSTMs and GANs reach ‖g‖/‖w‖ ≈ 1.2 at init.
    stats = _table(
        {"grad_norm": {n: [1.2] for n in LINEARS}, "weight_norm": {n: [1.0] for n in LINEARS}}
    )
    assert "exploding_gradient" not in _kinds(stats, _meta(LINEARS))


# --- the depth fit, all steps at once ----------------------------------------------------------


def test_depth_trends_of_all_steps_match_a_fit_per_step():
    rng = np.random.default_rng(0)
    layers = {str(i): "Linear" for i in range(8)}
    values = 10 ** (rng.normal(size=(30, 8)) - 0.5 * np.arange(8)[::-1])
    values[3, 2] = np.nan  # a missing layer changes that step's positions
    values[7, 5] = 0.0
    backflow = {n: values[:, i] for i, n in enumerate(layers)}
    stats = _table({"backflow_norm": backflow, "grad_norm": {n: np.ones(30) for n in layers}})
    view = View(stats, _meta(layers))
    for step in range(30):
        row = values[step]
        kept = row[np.isfinite(row) & (row > 0)]
        slope, _ = fit_log_slope(kept)
        trend = depth.depth_trend(view, step)
        assert trend["per_layer"] == pytest.approx(10**-slope, rel=1e-9)
        assert trend["n_layers"] == len(kept)
        q = max(1, len(kept) // 4)
        assert trend["quartile_ratio"] == pytest.approx(np.median(kept[:q]) / np.median(kept[-q:]))


def _vanishing_run(steps: int) -> tuple[pd.DataFrame, dict]:
    layers = {str(i): "Linear" for i in range(6)}
    back = {n: [0.1 ** (6 - i)] * steps for i, n in enumerate(layers)}
    grads = {n: [1e-3] * steps for n in layers}
    weights = {n: [1.0] * steps for n in layers}
    acts = {f"a{i}": [1.0] * steps for i in range(6)}
    return _table(
        {"backflow_norm": back, "grad_norm": grads, "weight_norm": weights, "act_std": acts}
    ), _meta(layers)


def test_depth_detection_costs_the_same_number_of_array_passes_at_50_and_500_steps(monkeypatch):
    calls = []
    real = depth._row_fits
    monkeypatch.setattr(depth, "_row_fits", lambda v, m: calls.append(len(v)) or real(v, m))
    per_step_fits = []
    monkeypatch.setattr(depth, "fit_log_slope", lambda *a: per_step_fits.append(1), raising=False)
    counts = {}
    for steps in (50, 500):
        calls.clear()
        stats, meta = _vanishing_run(steps)
        assert "vanishing_gradient" in {f.kind for f in depth.detect_depth(View(stats, meta))}
        counts[steps] = len(calls)
        assert max(calls) == steps  # every step examined in one pass, not one fit per step
    assert counts[50] == counts[500] == 2  # backflow trend and activation growth
    assert per_step_fits == []


def test_streaming_diagnosis_examines_a_bounded_window_of_steps(monkeypatch):
    import gradwatch.monitor.buffer as monitor

    examined = []
    real = monitor.diagnose
    monkeypatch.setattr(
        monitor,
        "diagnose",
        lambda stats, meta=None: examined.append(stats["step"].nunique()) or real(stats, meta),
    )
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 16), nn.Tanh(), nn.Linear(16, 2)
    )
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    x, y = torch.randn(16, 8), torch.randint(0, 2, (16,))
    with gw.watch(model, opt, flush_every=5, on_finding=lambda f: None) as w:
        for _ in range(80):
            opt.zero_grad()
            loss = nn.functional.cross_entropy(model(x), y)
            loss.backward()
            w.log_loss(loss)
            opt.step()
    assert len(examined) == 16  # one diagnosis per flush
    assert max(examined) <= 10 * 5  # the last ten flushes, however long the run
