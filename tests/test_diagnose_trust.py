"""Trust: each detector fires on the evidence of its problem and stays quiet on the healthy program
that looks most like it (a fixed program from bench/realbugs, a converging run, a model the theory
calls critical)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import torch
from torch import nn

import gradwatch as gw
from gradwatch.diagnose import diagnose

LINEARS = {str(i): "Linear" for i in range(4)}


def _table(per_layer: dict[str, dict[str, list[float]]], loss=None) -> pd.DataFrame:
    rows = []
    for metric, layers in per_layer.items():
        for layer, values in layers.items():
            rows += [(step, layer, metric, float(v), -1) for step, v in enumerate(values)]
    if loss is not None:
        rows += [(step, "(model)", "loss", float(v), -1) for step, v in enumerate(loss)]
    return pd.DataFrame(rows, columns=["step", "layer", "metric", "value", "index"])


def _meta(types: dict[str, str], activations: dict[str, str] | None = None) -> dict:
    meta = {
        "layer_order": list(types),
        "model": {"layers": [{"name": n, "type": t} for n, t in types.items()]},
    }
    if activations:
        meta["probes"] = {"activations": {n: {"function": f} for n, f in activations.items()}}
    return meta


def _severe(d) -> dict[str, str]:
    return {f.kind: f.severity for f in d.findings if f.severity in ("warning", "error")}


def _all(d) -> dict[str, str]:
    return {f.kind: f.severity for f in d.findings}


# --- stalled at init -----------------------------------------------------------------------------


def test_at_init_a_small_gradient_above_a_layer_the_signal_reaches_is_not_a_stall():
    # BERT: attention's query/key projections get ~1e-5 of their weights at init (near-uniform
    # attention) while the signal reaches the embeddings below them at full strength.
    grads = {"0": [0.1], "1": [3e-5], "2": [0.3], "3": [0.3]}
    weights = {n: [1.0] for n in LINEARS}
    backflow = {"0": [1.0], "1": [1e-4], "2": [1.0], "3": [1.0]}
    table = _table({"grad_norm": grads, "weight_norm": weights, "backflow_norm": backflow})
    assert "stalled_layer" not in _severe(diagnose(table, _meta(LINEARS)))


def test_at_init_the_layers_nearest_the_input_starved_of_gradient_still_stall():
    grads = {"0": [3e-5], "1": [4e-5], "2": [0.3], "3": [0.3]}
    weights = {n: [1.0] for n in LINEARS}
    f = next(
        f
        for f in diagnose(
            _table({"grad_norm": grads, "weight_norm": weights}), _meta(LINEARS)
        ).findings
        if f.kind == "stalled_layer"
    )
    assert f.layers == ("0", "1")


# --- learning rate ------------------------------------------------------------------------------


def _lr_run(loss: list[float], ratio: float) -> pd.DataFrame:
    n = len(loss)
    return _table({"update_ratio": {n_: [ratio] * n for n_ in LINEARS}}, loss)


def test_a_loss_that_spikes_and_recovers_far_below_its_start_is_no_learning_rate_verdict():
    # realbugs release39 fixed: 2.66 -> 5.04 -> 0.0125 at updates of 4e-2 per step.
    loss = [2.66, 5.04, 3.0] + list(np.geomspace(2.0, 0.0125, 57))
    d = diagnose(_lr_run(loss, 4e-2), _meta(LINEARS))
    assert "bad_learning_rate" not in _severe(d)


def test_a_loss_that_spikes_and_stays_up_is_a_learning_rate_too_high():
    loss = [1.17, 50.0, 2.0] + [1.1] * 57
    d = diagnose(_lr_run(loss, 0.2), _meta(LINEARS))
    assert "bad_learning_rate" in _severe(d)


def test_slow_progress_at_updates_near_1e3_is_said_not_warned():
    loss = list(np.linspace(2.34, 2.17, 60))  # examples736 fixed: SGD 0.01, ratio 9.8e-4
    d = diagnose(_lr_run(loss, 9.8e-4), _meta(LINEARS))
    assert _all(d).get("bad_learning_rate") == "info"


def test_slow_progress_at_updates_far_below_1e3_is_a_warning():
    loss = list(np.linspace(2.34, 2.17, 60))
    d = diagnose(_lr_run(loss, 3e-5), _meta(LINEARS))
    assert _severe(d).get("bad_learning_rate") == "warning"


# --- unstable updates ---------------------------------------------------------------------------


def test_large_first_updates_of_weights_growing_from_small_while_the_loss_falls_are_stable():
    # Logistic regression from a small init at SGD lr 0.1: the first ten updates add up to the
    # weights' size while they grow, and the loss falls 0.67 -> 0.1.
    ratios = [0.3, 0.15, 0.12, 0.1, 0.09, 0.08, 0.07, 0.06, 0.05, 0.05] + [0.005] * 90
    loss = list(np.geomspace(0.67, 0.1, 100))
    d = diagnose(_table({"update_ratio": {n: ratios for n in LINEARS}}, loss), _meta(LINEARS))
    assert "unstable_updates" not in _severe(d)


def test_large_first_updates_with_a_loss_that_does_not_fall_are_unstable():
    ratios = [0.3, 0.15, 0.12, 0.1, 0.09, 0.08, 0.07, 0.06, 0.05, 0.05] + [0.005] * 90
    d = diagnose(
        _table({"update_ratio": {n: ratios for n in LINEARS}}, [0.7] * 100), _meta(LINEARS)
    )
    assert "unstable_updates" in _severe(d)


# --- saturation ---------------------------------------------------------------------------------


def test_an_output_sigmoid_of_a_confident_classifier_is_not_saturated_while_the_loss_falls():
    types = {"0": "Linear", "1": "ReLU", "2": "Linear", "3": "Sigmoid"}
    table = _table(
        {"saturated_frac": {"3": list(np.linspace(0.0, 0.99, 60))}},
        list(np.geomspace(0.7, 0.01, 60)),
    )
    meta = _meta(types, {"1": "relu", "3": "sigmoid"})
    meta["model"]["layers"] = [
        {"name": n, "type": t, "params": t == "Linear"} for n, t in types.items()
    ]
    d = diagnose(
        pd.concat([table, _table({"grad_norm": {"0": [1.0] * 60, "2": [1.0] * 60}})]), meta
    )
    assert "saturated_activation" not in _severe(d)


def test_a_hidden_sigmoid_saturated_while_the_loss_stays_up_is_an_error():
    types = {"0": "Linear", "1": "Sigmoid", "2": "Linear"}
    table = _table(
        {"saturated_frac": {"1": [0.95] * 60}, "grad_norm": {"0": [1.0] * 60, "2": [1.0] * 60}},
        [2.3] * 60,
    )
    d = diagnose(table, _meta(types, {"1": "sigmoid"}))
    assert _severe(d).get("saturated_activation") == "error"


def test_a_hidden_sigmoid_of_a_net_whose_loss_fell_tenfold_is_only_said():
    # realbugs so48385830 fixed: 64-30-10 sigmoid net, N(0, 1) init, 55% saturated, trains.
    types = {"0": "Linear", "1": "Sigmoid", "2": "Linear"}
    table = _table(
        {"saturated_frac": {"1": [0.55] * 60}, "grad_norm": {"0": [1.0] * 60, "2": [1.0] * 60}},
        list(np.geomspace(5.0, 0.4, 60)),
    )
    d = diagnose(table, _meta(types, {"1": "sigmoid"}))
    assert _all(d).get("saturated_activation") == "info"


# --- real programs at init ----------------------------------------------------------------------


def test_class_indices_under_a_log_of_softmax_are_not_targets_out_of_range():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 10), nn.Softmax(dim=-1))
    x, y = torch.randn(32, 8), torch.randint(0, 10, (32,))
    d = gw.check(model, x, y, lambda out, t: nn.functional.nll_loss(torch.log(out + 1e-7), t))
    assert "output_loss_mismatch" not in _severe(d)


def test_a_shallow_net_whose_gradients_dwarf_its_weights_does_not_explode_through_depth():
    # pytorch1620 fixed: one Linear on unnormalised inputs, ‖g‖/‖w‖ ~ 50 at init.
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(10, 3), nn.LogSoftmax(dim=-1))
    x, y = 30 * torch.randn(64, 10), torch.randint(0, 3, (64,))
    d = gw.check(model, x, y, nn.functional.nll_loss)
    assert "exploding_gradient" not in _severe(d)


def test_at_init_half_of_relu_units_off_for_alike_rows_is_not_dead():
    # Rows mixed by near-uniform attention are alike: each unit is off for all with chance 1/2.
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 1))
    x = torch.randn(1, 16).repeat(32, 1) + 1e-3 * torch.randn(32, 16)
    d = gw.check(model, x, torch.randn(32, 1))
    assert "dead_units" not in _severe(d)


def test_at_init_layers_behind_a_zero_initialised_one_get_no_gradient_by_design():
    # Fixup / ReZero: the last layer of a branch starts at 0 and passes back 0 until it moves.
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU())
    model.append(nn.Linear(32, 1, bias=False))
    nn.init.zeros_(model[4].weight)
    d = gw.check(model, torch.randn(32, 16), torch.randn(32, 1))
    assert "no_gradient" not in _severe(d)


def test_a_single_saturated_hidden_layer_of_a_net_whose_loss_fell_is_info_several_are_not():
    types = {"0": "Linear", "1": "Sigmoid", "2": "Linear", "3": "Sigmoid", "4": "Linear"}
    acts = {"1": "sigmoid", "3": "sigmoid"}
    loss = list(np.geomspace(6.4, 1.2, 60))
    grads = {"grad_norm": {n: [1.0] * 60 for n in ("0", "2", "4")}}
    one = _table({"saturated_frac": {"1": [0.7] * 60, "3": [0.1] * 60}, **grads}, loss)
    both = _table({"saturated_frac": {"1": [0.7] * 60, "3": [0.7] * 60}, **grads}, loss)
    assert _all(diagnose(one, _meta(types, acts))).get("saturated_activation") == "info"
    assert _severe(diagnose(both, _meta(types, acts))).get("saturated_activation") == "error"


# --- theory in the verdict ----------------------------------------------------------------------


def _tanh_stack(sigma_w2: float, depth: int = 30, width: int = 256, relu: bool = False):
    torch.manual_seed(0)
    layers = []
    for _ in range(depth):
        lin = nn.Linear(width, width)
        nn.init.normal_(lin.weight, 0.0, math.sqrt(sigma_w2 / width))
        if relu:
            nn.init.zeros_(lin.bias)
        else:
            nn.init.normal_(lin.bias, 0.0, math.sqrt(0.05))
        layers += [lin, nn.ReLU() if relu else nn.Tanh()]
    return nn.Sequential(*layers, nn.Linear(width, 10))


X, Y = torch.randn(64, 256), torch.randint(0, 10, (64,))


def test_a_chaotic_tanh_stack_explodes_at_init_by_the_theory():
    # σ_w² = 4, σ_b² = 0.05: χ₁ = 1.34, the gradient grows ×1.16 per layer, ×83 over 30.
    d = gw.check(_tanh_stack(4.0), X, Y)
    f = next(f for f in d.findings if f.kind == "exploding_gradient")
    assert f.severity in ("warning", "error")
    t = f.evidence["theory"]
    assert t["phase"] == "chaotic" and 1.3 < t["chi1"] < 1.4 and 60 < t["total"] < 110
    assert f.remedies[0].action == "init" and "critical" in f.remedies[0].detail


def test_a_tanh_stack_on_the_critical_line_has_no_finding():
    d = gw.check(_tanh_stack(1.76), X, Y)
    assert _severe(d) == {}


def test_a_relu_stack_with_he_init_has_no_finding():
    d = gw.check(_tanh_stack(2.0, relu=True), X, Y)
    assert _severe(d) == {}


# --- root cause first ---------------------------------------------------------------------------


def _finding(kind: str, step: int, severity: str = "warning"):
    from gradwatch.diagnose import Finding

    return Finding(kind, severity, ("0",), kind, {}, (), step)


def test_gradients_exploding_before_any_update_explain_the_learning_rate_verdict():
    # so48385830: N(0, 1) weights without activations under MSE explode at step 0; lr 3 then
    # diverges. The fix is the output and loss, not the rate.
    from gradwatch.diagnose.causes import order_by_cause

    found = order_by_cause([_finding("bad_learning_rate", 0), _finding("exploding_gradient", 0)])
    assert [f.kind for f in found] == ["exploding_gradient", "bad_learning_rate"]
    assert found[1].caused_by == "exploding_gradient"


def test_gradients_exploding_after_updates_are_the_learning_rates_doing():
    from gradwatch.diagnose.causes import order_by_cause

    found = order_by_cause([_finding("exploding_gradient", 5), _finding("bad_learning_rate", 0)])
    assert [f.kind for f in found] == ["bad_learning_rate", "exploding_gradient"]
    assert found[1].caused_by == "bad_learning_rate"


def test_a_gradient_vanished_through_time_from_the_start_comes_before_the_rate():
    from gradwatch.diagnose.causes import order_by_cause

    found = order_by_cause(
        [_finding("bad_learning_rate", 0), _finding("vanishing_through_time", 0)]
    )
    assert found[0].kind == "vanishing_through_time" and found[1].caused_by == found[0].kind


def test_nan_from_the_log_of_a_probability_is_not_the_step_sizes_doing():
    # skorch #481: NLLLoss(torch.log(softmax)) underflows to log 0 at any learning rate.
    from dataclasses import replace

    from gradwatch.diagnose.causes import order_by_cause

    nan = replace(_finding("nonfinite", 79, "error"), evidence={"log_of_probability": True})
    found = order_by_cause([_finding("unstable_updates", 0), nan])
    assert found[0].kind == "nonfinite" and found[0].caused_by is None


def test_a_slow_start_under_a_warm_up_schedule_is_not_a_rate_too_low():
    # Post-LN transformer with warm-up: the first rate is a tenth of the one it returns to.
    loss = list(np.linspace(2.34, 2.17, 60))
    meta = _meta(LINEARS)
    meta["optimizer"] = {"class": "Adam", "lr": [1e-5], "initial_lr": [1e-4]}
    assert "bad_learning_rate" not in _severe(diagnose(_lr_run(loss, 3e-5), meta))
