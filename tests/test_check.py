"""gw.check: one forward and backward at init, the model left exactly as it was, findings that
name the problem."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch
from torch import nn

import gradwatch as gw
from gradwatch.errors import CheckError


def deep(act, depth=16, width=64, init=None):
    layers = []
    for _ in range(depth):
        lin = nn.Linear(width, width)
        if init is not None:
            init(lin.weight)
            nn.init.zeros_(lin.bias)
        layers += [lin, act()]
    return nn.Sequential(*layers, nn.Linear(width, 10))


def he(w):
    nn.init.kaiming_normal_(w, nonlinearity="relu")


X = torch.randn(64, 64)
Y = torch.randint(0, 10, (64,))


def test_check_leaves_weights_buffers_grads_modes_and_rng_untouched():
    model = nn.Sequential(
        nn.Linear(64, 32), nn.BatchNorm1d(32), nn.ReLU(), nn.Dropout(0.5), nn.Linear(32, 10)
    )
    model.eval()
    model[1].train()  # a mixed mode must survive too
    model(X)  # BN running stats move away from their defaults
    model[0].weight.grad = torch.full_like(model[0].weight, 7.0)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    modes = [m.training for m in model.modules()]
    rng = torch.get_rng_state()
    gw.check(model, X, Y)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())
    assert [m.training for m in model.modules()] == modes
    assert torch.equal(model[0].weight.grad, torch.full_like(model[0].weight, 7.0))
    assert model[4].weight.grad is None
    assert torch.equal(torch.get_rng_state(), rng)
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())


def test_deep_sigmoid_with_default_init_is_an_error_with_remedies_naming_its_modules():
    d = gw.check(deep(nn.Sigmoid), X, Y)
    assert not d.ok
    f = next(f for f in d.findings if f.kind == "vanishing_gradient")
    assert f.severity == "error" and f.evidence["metric"] == "backflow_norm"
    assert f.evidence["per_layer_factor"] < 0.3
    actions = [r.action for r in f.remedies]
    assert actions[:2] == ["activation", "init"]
    assert "nn.Sigmoid" in f.remedies[0].detail and "'1', '3'" in f.remedies[0].detail
    assert "not He init" in f.remedies[1].detail  # the default nn.Linear init, said plainly


def test_healthy_relu_with_he_init_has_no_finding():
    d = gw.check(deep(nn.ReLU, init=he), X, Y)
    assert d.ok and d.findings == []
    assert 0.8 < d.summary["depth_trend"]["per_layer"] < 1.25


def test_relu_xavier_reads_as_vanishing_by_backflow_while_weight_gradients_are_level():
    d = gw.check(
        deep(nn.ReLU, depth=30, width=256, init=nn.init.xavier_normal_),
        torch.randn(128, 256),
        torch.randint(0, 10, (128,)),
    )
    f = next(f for f in d.findings if f.kind == "vanishing_gradient")
    assert f.evidence["metric"] == "backflow_norm"
    assert f.evidence["per_layer_factor"] == pytest.approx(0.5**0.5, abs=0.05)  # He et al. 2015


def test_activations_and_gradients_exploding_together_are_caught():
    """First/last weight-gradient ratio stays near 1; every norm is astronomically large."""
    model = deep(
        nn.ReLU, depth=20, width=128, init=lambda w: nn.init.normal_(w, std=2.5 / 128**0.5)
    )
    x = torch.randn(64, 128)
    d = gw.check(model, x, torch.randint(0, 10, (64,)))
    f = next(f for f in d.findings if f.kind == "exploding_gradient")
    assert f.evidence["activations"]["total"] > 1e3
    # The published ratio rules would not fire: first/last is above 1e-3 (vanishing) and below 70
    # (exploding).
    model.zero_grad()
    nn.functional.cross_entropy(model(x), torch.randint(0, 10, (64,))).backward()
    stats_ratio = model[0].weight.grad.norm() / model[-1].weight.grad.norm()
    assert 1e-3 < stats_ratio < 70


def test_saturated_tanh_and_dead_relu_are_named():
    sat = gw.check(deep(nn.Tanh, depth=6, init=lambda w: nn.init.normal_(w, std=1.0)), X, Y)
    assert "saturated_activation" in sat.kinds()
    dead_model = deep(nn.ReLU, depth=4, init=he)
    nn.init.constant_(dead_model[4].bias, -50.0)
    dead = gw.check(dead_model, X, Y)
    f = next(f for f in dead.findings if f.kind == "dead_units")
    assert "5" in f.layers


def test_nonfinite_loss_is_an_error_not_a_crash():
    model = deep(nn.ReLU, depth=3, init=he)
    d = gw.check(model, X, loss_fn=lambda out: out.sum() * float("nan"))
    assert not d.ok and d.findings[0].kind == "nonfinite"


def test_outputs_as_tuples_dicts_and_model_outputs():
    class Tuple(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = deep(nn.ReLU, depth=3, init=he)

        def forward(self, x):
            return self.net(x), torch.zeros(1)

    class Dict(Tuple):
        def forward(self, x):
            return {"ids": torch.arange(3), "logits": self.net(x)}

    @dataclass
    class Output:
        loss: torch.Tensor
        logits: torch.Tensor

        def values(self):
            return [self.loss, self.logits]

    class WithLoss(Tuple):
        def forward(self, x, labels):
            logits = self.net(x)
            return Output(nn.functional.cross_entropy(logits, labels), logits)

    for model, inputs in ((Tuple(), X), (Dict(), X), (WithLoss(), {"x": X, "labels": Y})):
        assert gw.check(model, inputs).ok


def test_hugging_face_model_output_is_understood():
    transformers = pytest.importorskip("transformers")
    config = transformers.BertConfig(
        vocab_size=50,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
    )
    model = transformers.BertForSequenceClassification(config)
    ids = torch.randint(0, 50, (16, 8))
    d = gw.check(model, {"input_ids": ids, "labels": torch.randint(0, 2, (16,))})
    assert d.summary["layers"] > 10


def test_inputs_that_do_not_fit_get_one_sentence():
    with pytest.raises(CheckError, match="could not run on the inputs"):
        gw.check(nn.Linear(3, 2), torch.randn(4, 5))
    with pytest.raises(CheckError, match="loss_fn raised"):
        gw.check(nn.Linear(3, 2), torch.randn(4, 3), loss_fn=lambda o: 1 / 0)


def test_diagnosis_serialises_to_the_documented_schema():
    d = gw.check(deep(nn.Sigmoid), X, Y)
    doc = d.to_dict()
    assert set(doc) == {"ok", "findings", "summary"}
    f = doc["findings"][0]
    assert {"kind", "severity", "layers", "summary", "evidence", "remedies"} <= set(f)
    assert {"action", "detail", "expected"} <= set(f["remedies"][0])
    assert (
        gw.Diagnosis([gw.Finding.from_dict(x) for x in doc["findings"]]).to_dict()["findings"]
        == doc["findings"]
    )
