"""Lab experiments depth-activation, init, batchnorm, residual, selu and mean-field: each runs (at
settings smaller still than --quick), stores its runs, and each judge is a pure function that says
yes to the literature's outcome and no to its opposite."""

from __future__ import annotations

import json
import math

import pytest

import gradwatch as gw
from gradwatch._json import jsonable as json_ready
from gradwatch.lab import catalogue
from gradwatch.lab.experiment import Settings
from gradwatch.lab.experiments import batchnorm, depth_activation, init, mean_field, residual, selu

TINY = {
    "depth-activation": {"depths": [2, 4], "width": 16, "epochs": 1, "probe_batch": 64},
    "init": {"depth": 6, "width": 16, "epochs": 1, "probe_batch": 64},
    "batchnorm": {"depth": 4, "width": 16, "epochs": 1, "probe_batch": 64},
    "residual": {"depths": [2, 4], "width": 16, "epochs": 1, "probe_batch": 64},
    "selu": {"depth": 8, "width": 64, "batch": 128},
    "mean-field": {
        "chi_sigma_w2": [1.0],
        "chi_width": 128,
        "chi_depth": 10,
        "chi_batch": 32,
        "train_sigma_w2": [1.0],
        "depths": [2, 4],
        "epochs": 1,
        "width": 16,
    },
}
MODULES = {
    "depth-activation": depth_activation,
    "init": init,
    "batchnorm": batchnorm,
    "residual": residual,
    "selu": selu,
    "mean-field": mean_field,
}


@pytest.mark.parametrize("name", list(MODULES))
def test_experiment_runs_stores_its_runs_and_is_judged(name, tmp_path):
    exp = catalogue.get(name)
    fractions = []
    outcome = MODULES[name].run(
        Settings(quick=True, seed=0, out=tmp_path / name, progress=fractions.append), **TINY[name]
    )
    assert isinstance(exp.judge(outcome.measured), bool)
    json.dumps(json_ready(outcome.measured), allow_nan=False)
    assert outcome.figures and all(f.lines for f in outcome.figures)
    assert outcome.runs
    run = gw.load(outcome.runs[0])
    assert len(run.stats) > 0
    assert fractions and 0 < fractions[-1] <= 1.0 + 1e-9


@pytest.mark.parametrize("name", list(MODULES))
def test_quick_settings_are_a_scaled_down_form_of_the_full_ones(name):
    quick, full = MODULES[name]._settings(True), MODULES[name]._settings(False)
    assert quick.keys() == full.keys()
    for key in quick:
        if (
            isinstance(quick[key], int | float)
            and not isinstance(quick[key], bool)
            and key not in ("lr", "batch")
        ):
            assert quick[key] <= full[key], key
        if isinstance(quick[key], list) and all(isinstance(v, int) for v in quick[key]):
            assert max(quick[key]) <= max(full[key]), key


# ------------------------------------------------------------------ judges, both outcomes


def _depth_activation(sigmoid_deep=1e-12, remedy_deep=0.5, sigmoid_acc=0.08, best_acc=0.9):
    acts = list(depth_activation.ACTIVATIONS)
    ratios = {a: {"5": 0.5, "20": remedy_deep} for a in acts}
    ratios["sigmoid"] = {"5": 1e-3, "20": sigmoid_deep}
    acc = {a: best_acc for a in acts}
    acc["sigmoid"] = sigmoid_acc
    return {
        "depths": [5, 20],
        "first_last_grad_ratio": ratios,
        "test_accuracy_deepest": acc,
        "final_train_loss_deepest": dict.fromkeys(acts, 1.0),
    }


def test_depth_activation_judge():
    assert depth_activation.judge(_depth_activation())
    assert not depth_activation.judge(
        _depth_activation(sigmoid_deep=1e-4)
    )  # sigmoid did not vanish
    assert not depth_activation.judge(
        _depth_activation(remedy_deep=1e-5)
    )  # the remedies vanished too
    assert not depth_activation.judge(
        _depth_activation(sigmoid_acc=0.9)
    )  # deep sigmoid trained anyway
    assert not depth_activation.judge(_depth_activation(best_acc=0.2))  # nothing trained


def _init(he_ratio=1.5, he_loss=1.5, xavier_ratio=5e-5, xavier_loss=2.303, tanh_acc=0.9):
    schemes = init.SCHEMES
    r = {"relu": dict.fromkeys(schemes, 1.0), "tanh": dict.fromkeys(schemes, 0.5)}
    loss = {"relu": dict.fromkeys(schemes, 1.0), "tanh": dict.fromkeys(schemes, 0.5)}
    acc = {"relu": dict.fromkeys(schemes, 0.5), "tanh": dict.fromkeys(schemes, tanh_acc)}
    r["relu"].update(he=he_ratio, lsuv=he_ratio, xavier=xavier_ratio, default=xavier_ratio / 100)
    loss["relu"].update(he=he_loss, lsuv=he_loss, xavier=xavier_loss, default=xavier_loss)
    r["tanh"]["default"], loss["tanh"]["default"], acc["tanh"]["default"] = 1e-8, 2.303, 0.09
    return {"first_last_backflow_ratio": r, "test_accuracy": acc, "final_train_loss": loss}


def test_init_judge():
    assert init.judge(_init())
    assert not init.judge(_init(he_loss=2.30))  # He did not learn
    assert not init.judge(_init(he_ratio=1e-4))  # He vanished
    assert not init.judge(_init(xavier_loss=1.0))  # Xavier trained a 30-layer ReLU net
    assert not init.judge(_init(xavier_ratio=0.5))  # Xavier kept the gradient level
    assert not init.judge(_init(tanh_acc=0.3))  # Xavier/orthogonal tanh failed


def _bn(plain_ratio=1e-15, plain_acc=0.08, bn_ratio=1.0, bn_acc=0.9):
    return {
        "first_last_grad_ratio": {"plain": plain_ratio, "batchnorm": bn_ratio},
        "test_accuracy": {"plain": plain_acc, "batchnorm": bn_acc},
        "final_train_loss": {"plain": 2.3, "batchnorm": 0.3},
    }


def test_batchnorm_judge():
    assert batchnorm.judge(_bn())
    assert not batchnorm.judge(_bn(plain_acc=0.9))
    assert not batchnorm.judge(_bn(plain_ratio=0.5))
    assert not batchnorm.judge(_bn(bn_acc=0.1))
    assert not batchnorm.judge(_bn(bn_ratio=1e-9))


def _residual(plain_deep=1.7, res_deep=0.05, res_ratio=1.0):
    return {
        "depths": [4, 32],
        "final_train_loss": {
            "plain": {"4": 0.05, "32": plain_deep},
            "residual": {"4": 0.04, "32": res_deep},
        },
        "test_accuracy": {"plain": {"4": 0.95, "32": 0.3}, "residual": {"4": 0.95, "32": 0.95}},
        "first_last_backflow_ratio": {
            "plain": {"4": 1.0, "32": 3.0},
            "residual": {"4": 1.0, "32": res_ratio},
        },
    }


def test_residual_judge():
    assert residual.judge(_residual())
    assert not residual.judge(_residual(plain_deep=0.1))  # no degradation
    assert not residual.judge(_residual(res_deep=1.0))  # residual degraded too
    assert not residual.judge(_residual(res_ratio=1e5))  # residual gradient exploded


def _selu(last_var=1.02, last_mean=-0.02, first_var=5.0):
    keys = [f"start {i}" for i in range(len(selu.STARTS))]
    return {
        "starts": [list(s) for s in selu.STARTS],
        "first_layer_mean": dict.fromkeys(keys, 0.3),
        "first_layer_var": {**dict.fromkeys(keys, 1.0), keys[1]: first_var},
        "last_layer_mean": {**dict.fromkeys(keys, 0.0), keys[2]: last_mean},
        "last_layer_var": {**dict.fromkeys(keys, 1.0), keys[3]: last_var},
    }


def test_selu_judge():
    assert selu.judge(_selu())
    assert not selu.judge(_selu(last_var=1.5))
    assert not selu.judge(_selu(last_mean=0.4))
    assert not selu.judge(
        _selu(first_var=1.1)
    )  # every start began at the fixed point: nothing shown


def _mf(chi_err=0.004, measured=(4, 16, 16), grid=(4, 8, 16, 32)):
    preds = {"0.5": 7.1, "0.8": 13.8, "1": 21.8}
    return {
        "sigma_b2": 0.05,
        "chi1_relative_error": {"0.5": chi_err, "1": 0.001},
        "chi1_measured": {},
        "chi1_predicted": {},
        "depth_grid": list(grid),
        "trainable_depth_measured": dict(zip(preds, measured, strict=True)),
        "trainable_depth_predicted": preds,
        "test_accuracy": {},
    }


def test_mean_field_judge():
    assert mean_field.judge(_mf())
    assert mean_field.judge(_mf(measured=(8, 16, 32)))
    assert not mean_field.judge(_mf(chi_err=0.2))  # χ₁ off by 20%
    assert not mean_field.judge(_mf(measured=(32, 32, 32)))  # 0.5 trains far deeper than 6ξ_c
    assert not mean_field.judge(_mf(measured=(0, 16, 16)))  # nothing trained at all
    assert not mean_field.judge(_mf(measured=(8, 4, 16)))  # trainable depth fell as σ_w² rose


def test_mean_field_measures_chi1_close_to_theory_even_when_small(tmp_path):
    s = Settings(quick=True, seed=0, out=tmp_path)
    chi, _, _ = mean_field.measure_chi1(
        s, 1.0, {"chi_width": 256, "chi_depth": 12, "chi_batch": 64}
    )
    predicted = gw.theory.mean_field("tanh", 1.0, mean_field.SIGMA_B2).chi1
    assert math.isclose(chi, predicted, rel_tol=0.1)
