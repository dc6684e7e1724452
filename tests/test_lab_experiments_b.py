"""Lab experiments, part B: each quick form runs and reproduces on seed 0, each judge says yes and
no."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from gradwatch.lab import catalogue
from gradwatch.lab.experiment import Outcome, Settings
from gradwatch.lab.sequences import BASELINE_MSE, accuracy, adding

NAMES = ["clipping", "rnn-gates", "gan-loss", "pretraining", "transformer-ln", "orthogonal-cnn"]


def _quick(name: str, tmp_path) -> Outcome:
    experiment = catalogue.get(name)
    seen = []
    outcome = experiment.run(Settings(quick=True, seed=0, out=tmp_path, progress=seen.append))
    assert seen and seen[-1] == pytest.approx(1.0)
    return outcome


@pytest.mark.parametrize("name", NAMES)
def test_quick_form_runs_and_reproduces_on_seed_0(name, tmp_path):
    experiment = catalogue.get(name)
    outcome = _quick(name, tmp_path)
    json.dumps(outcome.measured, allow_nan=False)
    json.dumps(outcome.setup, allow_nan=False)
    for figure in outcome.figures:
        json.dumps(figure.to_dict(), allow_nan=False)
    assert experiment.judge(outcome.measured) is True
    assert (
        experiment.judge(json.loads(json.dumps(outcome.measured))) is True
    )  # a function of the numbers alone
    for run in outcome.runs:
        assert (Path(run) / "meta.json").exists()


def test_every_experiment_states_claim_source_and_expectation():
    for name in NAMES:
        e = catalogue.get(name)
        assert e.name == name and e.claim and e.source and e.expected


# ------------------------------------------------------------------ the adding problem


def test_adding_problem_targets_and_baseline():
    x, y = adding(20_000, 30, torch.Generator().manual_seed(0))
    assert x.shape == (20_000, 30, 2)
    assert (x[..., 1].sum(1) == 2).all()
    assert (x[:, :15, 1].sum(1) == 1).all()  # one marker in each half
    marked = (x[..., 0] * x[..., 1]).sum(1)
    assert torch.allclose(y, 0.5 + marked / 4)
    assert float(((y - 0.5) ** 2).mean()) == pytest.approx(BASELINE_MSE, rel=0.05)
    assert accuracy(y + 0.039, y) == 1.0 and accuracy(y + 0.041, y) == 0.0


# ------------------------------------------------------------------ judges on synthetic numbers


def _clip_run(peak, final, nonfinite=0):
    return {
        "peak_loss_over_baseline": peak,
        "final_loss_over_baseline": final,
        "nonfinite_loss_steps": nonfinite,
    }


def test_clipping_judge():
    judge = catalogue.get("clipping").judge
    good = {
        "none": _clip_run(1e37, None, 1),
        "norm": _clip_run(1.5, 0.5),
        "agc": _clip_run(3.0, 0.9),
    }
    assert judge(good)
    assert not judge({**good, "none": _clip_run(2.0, 0.8)})  # nothing exploded
    assert not judge({**good, "norm": _clip_run(5e3, 0.5)})  # clipping did not keep it stable
    assert not judge({**good, "agc": _clip_run(1.0, None, 3)})
    assert not judge({**good, "norm": _clip_run(1.5, 1.2)})  # stable but learned nothing


def _gates(rnn_solved, rnn_mse, lstm_solved, gru_solved):
    def r(solved, mse):
        return {"solved_at": solved, "final_mse_over_baseline": mse}

    return {
        "longest": 50,
        "results": {
            "rnn": {"50": r(rnn_solved, rnn_mse)},
            "lstm": {"50": r(lstm_solved, 0.01)},
            "gru": {"50": r(gru_solved, 0.01)},
        },
    }


def test_rnn_gates_judge():
    judge = catalogue.get("rnn-gates").judge
    assert judge(_gates(None, 0.98, 300, 200))
    assert not judge(_gates(500, 0.02, 300, 200))  # the RNN solved it
    assert not judge(_gates(None, 0.2, 300, 200))  # the RNN learned a good part of it
    assert not judge(_gates(None, 0.98, None, 200))  # LSTM failed
    assert not judge(_gates(None, 0.98, 300, None))  # GRU failed


def _gan(first_ratio, final_ratio, d_fake):
    return {
        "checkpoints": [{"ratio": first_ratio, "mean_d_fake": 0.5}],
        "final": {"ratio": final_ratio, "mean_d_fake": d_fake},
    }


def test_gan_loss_judge():
    judge = catalogue.get("gan-loss").judge
    assert judge(_gan(0.98, 1e-3, 1e-3))
    assert not judge(_gan(0.98, 0.3, 1e-3))  # the saturating loss kept its gradient
    assert not judge(_gan(0.98, 1e-3, 0.4))  # the discriminator never got confident
    assert not judge(_gan(0.01, 1e-3, 1e-3))  # already apart at init: not the mechanism claimed
    assert not judge(_gan(0.98, None, 1e-3))


def test_gan_losses_are_the_papers_formulas():
    from gradwatch.lab.experiments.gan_loss import non_saturating, saturating

    logits = torch.tensor([-3.0, 0.0, 2.0])
    d = torch.sigmoid(logits)
    assert saturating(logits) == pytest.approx(float(torch.log(1 - d).mean()), rel=1e-5)
    assert non_saturating(logits) == pytest.approx(float(-torch.log(d).mean()), rel=1e-5)


def _cnn(gaussian_std, delta_std):
    spread = gaussian_std / delta_std
    return {
        "gaussian": {"log_sv_std": gaussian_std},
        "delta_orthogonal": {"log_sv_std": delta_std},
        "spread_ratio": spread,
    }


def test_orthogonal_cnn_judge():
    judge = catalogue.get("orthogonal-cnn").judge
    assert judge(_cnn(5.0, 0.5))
    assert not judge(_cnn(2.0, 0.5))  # Gaussian not spread enough
    assert not judge(_cnn(15.0, 1.5))  # delta-orthogonal not isometric
    assert not judge({"delta_orthogonal": {"log_sv_std": None}, "spread_ratio": None})


def test_batched_jacobian_matches_autograd_jacobian():
    from dataclasses import replace

    from gradwatch.lab.experiments import orthogonal_cnn as oc

    model = oc.gaussian_init(
        oc.deep_cnn(replace(oc.QUICK, depth=5)), 1.0, torch.Generator().manual_seed(0)
    )
    x = 0.3 * torch.randn(8, 4, 4)
    naive = torch.autograd.functional.jacobian(
        lambda v: model(v.reshape(1, 8, 4, 4)).reshape(-1), x.reshape(-1)
    )
    assert torch.allclose(
        oc.jacobian_singular_values(model, x),
        torch.linalg.svdvals(naive.double()),
        rtol=1e-4,
        atol=1e-7,
    )


def _ln(last, post_init, pre_init, post_early, pre_early):
    return {
        "init_last_layer_post_over_pre": last,
        "post_ln": {"init_last_over_first": post_init, "early_last_over_first": post_early},
        "pre_ln": {"init_last_over_first": pre_init, "early_last_over_first": pre_early},
    }


def test_transformer_ln_judge():
    judge = catalogue.get("transformer-ln").judge
    assert judge(_ln(1.6, 0.96, 0.64, 2.7, 0.6))
    assert not judge(_ln(1.0, 0.96, 0.64, 2.7, 0.6))  # last layers not larger in Post-LN
    assert not judge(_ln(1.6, 0.96, 0.3, 2.7, 0.6))  # Pre-LN not level
    assert not judge(_ln(1.6, 0.5, 0.64, 2.7, 0.6))  # Post-LN's ratio not above Pre-LN's
    assert not judge(_ln(1.6, 0.96, 0.64, 0.5, 0.6))  # early training: no difference
    assert not judge(_ln(None, 0.96, 0.64, 2.7, 0.6))


def _pre(pretrained, end_to_end):
    return {
        "pretrained": {"test_accuracy": pretrained},
        "end_to_end": {"test_accuracy": end_to_end},
    }


def test_pretraining_judge():
    judge = catalogue.get("pretraining").judge
    assert judge(_pre(0.67, 0.09))
    assert not judge(_pre(0.2, 0.09))  # pre-training did not help enough
    assert not judge(_pre(0.9, 0.6))  # end-to-end did not stall
    assert not judge(_pre(None, 0.09))


def test_pretraining_makes_each_layer_an_encoder(tmp_path):
    from gradwatch.lab.experiments import pretraining as pt
    from gradwatch.lab.models import mlp

    gen = torch.Generator().manual_seed(0)
    x = torch.randn(256, 12, generator=gen)
    model = mlp(12, 3, 2, 8, torch.nn.Sigmoid)
    before = [m.weight.detach().clone() for m in pt._linears(model)]
    errors = pt.pretrain(model, x, pt.Config(depth=2, steps=0, pretrain_steps=200, width=8), gen)
    after = pt._linears(model)
    assert (
        len(errors) == 2 and errors[0] < 1.0
    )  # the first layer reconstructs its input better than its mean
    assert not torch.equal(before[0], after[0].weight) and not torch.equal(
        before[1], after[1].weight
    )
    assert torch.equal(before[2], after[2].weight)  # the head is left to supervised training
