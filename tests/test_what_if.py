"""Remedies that find structure (recurrent layers, residual branches), and the what-if at init:
every remedy that fits, applied to a copy, re-checked and ranked by what the re-check measures."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn
from typer.testing import CliRunner

import gradwatch as gw
from gradwatch import remedies as R
from gradwatch.cli import app
from scenarios.cases import CASES, CASES_BY_NAME

pytestmark = pytest.mark.usefixtures("one_thread")


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


# ---------------------------------------------------------------- recurrent remedies


@pytest.mark.parametrize("kind", [nn.RNN, nn.LSTM, nn.GRU])
def test_recurrent_orthogonal_init_makes_every_gate_block_orthogonal(kind):
    rnn = kind(3, 8, num_layers=2)
    before = {k: v.clone() for k, v in rnn.state_dict().items()}
    R.recurrent_orthogonal_init(rnn, gain=0.9, generator=gen())
    for name, p in rnn.named_parameters():
        if name.startswith("weight_hh"):
            for gate in p.detach().double().split(8):
                torch.testing.assert_close(
                    gate @ gate.T, 0.81 * torch.eye(8, dtype=torch.float64), atol=1e-5, rtol=0
                )
        else:
            assert torch.equal(p, before[name]), name


def test_swap_recurrent_keeps_sizes_and_the_call_signature():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.rnn = nn.RNN(2, 16, num_layers=2, batch_first=True, bidirectional=True)
            self.head = nn.Linear(32, 1)

        def forward(self, x):
            out, _ = self.rnn(x)
            return self.head(out[:, -1])

    for new in (nn.GRU, nn.LSTM):
        net = R.swap_recurrent(Net(), new)
        assert type(net.rnn) is new
        assert (
            net.rnn.input_size,
            net.rnn.hidden_size,
            net.rnn.num_layers,
            net.rnn.batch_first,
            net.rnn.bidirectional,
        ) == (2, 16, 2, True, True)
        assert net(torch.randn(4, 7, 2)).shape == (4, 1)
    with pytest.raises(ValueError, match="no vanilla nn.RNN"):
        R.swap_recurrent(nn.Sequential(nn.Linear(2, 2)))


# ---------------------------------------------------------------- residual remedies


class Block(nn.Module):
    def __init__(self, c_in, c_out):
        super().__init__()
        self.conv1, self.conv2 = (
            nn.Conv2d(c_in, c_out, 3, padding=1),
            nn.Conv2d(c_out, c_out, 3, padding=1),
        )
        self.shortcut = nn.Identity() if c_in == c_out else nn.Conv2d(c_in, c_out, 1)

    def forward(self, x):
        return torch.relu(self.shortcut(x) + self.conv2(torch.relu(self.conv1(x))))


def resnet(n=4):
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1), Block(8, 16), *[Block(16, 16) for _ in range(n - 1)]
    )


def test_residual_branches_are_the_weight_layers_outside_the_shortcut():
    net = resnet()
    branches = R.residual_branches(net)
    assert len(branches) == 4
    assert all(
        layers == [block.conv1, block.conv2]
        for layers, block in zip(branches, list(net)[1:], strict=True)
    )


def test_zero_init_residual_makes_every_block_its_shortcut():
    net = R.zero_init_residual(resnet())
    x = torch.randn(2, 8, 5, 5)
    block = net[1]
    torch.testing.assert_close(block(x), torch.relu(block.shortcut(x)))
    assert (
        torch.count_nonzero(net[2].conv2.weight) == 0
        and torch.count_nonzero(net[2].conv1.weight) > 0
    )


def test_fixup_scales_each_branch_by_L_to_the_minus_1_over_2m_minus_2_and_zeroes_its_last_layer():
    big = nn.Sequential(*[Block(64, 64) for _ in range(9)])
    R.fixup_residual(big, generator=gen())
    fan_in = 64 * 9
    for block in big:  # L = 9 branches, m = 2 layers each: scale 9^(-1/2), variance 2/fan_in / 9
        assert block.conv1.weight.var().item() == pytest.approx(2 / fan_in / 9, rel=0.05)
        assert torch.count_nonzero(block.conv2.weight) == 0


def test_residual_remedies_refuse_a_model_without_shortcuts():
    with pytest.raises(ValueError, match="found no residual block"):
        R.fixup_residual(nn.Sequential(nn.Linear(2, 2), nn.ReLU(), nn.Linear(2, 2)))


def test_composite_swap_then_he_init_gives_relu_and_he_variance():
    mlp = nn.Sequential(
        nn.Linear(256, 256),
        nn.Sigmoid(),
        nn.Linear(256, 256),
        nn.Sigmoid(),
        nn.Linear(256, 1),
        nn.Sigmoid(),
    )
    fixed = R.apply("swap_activation:relu+he_init", mlp, generator=gen())
    assert [type(m).__name__ for m in fixed][1::2] == ["ReLU", "ReLU", "Sigmoid"]
    assert fixed[0].weight.var().item() == pytest.approx(2 / 256, rel=0.05)


# ---------------------------------------------------------------- what-if


def sigmoid_deep(depth=10, width=64):
    torch.manual_seed(0)
    layers = []
    for _ in range(depth):
        layers += [nn.Linear(width, width), nn.Sigmoid()]
    return nn.Sequential(*layers, nn.Linear(width, 10))


X, Y = torch.randn(64, 64), torch.randint(0, 10, (64,))


def test_what_if_ranks_a_fixing_remedy_first_and_leaves_the_model_untouched():
    model = sigmoid_deep()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    text = repr(model)
    d = gw.check(model, X, Y, what_if=True)
    assert repr(model) == text and all(
        torch.equal(v, model.state_dict()[k]) for k, v in state.items()
    )
    best = d.what_if[0]
    # (the stalled early layers, when reported too, are the same vanishing gradient seen per layer)
    assert best.fixed and "vanishing_gradient" in best.findings_before and best.findings_after == ()
    assert best.signal_before.ratio < 1e-6 < 0.1 < best.signal_after.ratio
    assert best.remedy in R.applicable(model, X)
    # The ranking is what the re-check measured: redo the best one by hand.
    again = gw.check(R.apply(best.remedy, model, X, generator=gen()), X, Y)
    assert again.ok and again.summary["depth_trend"]["total"] == pytest.approx(
        best.signal_after.ratio, rel=1e-6
    )
    fixed = [t.fixed for t in d.what_if]
    assert fixed == sorted(fixed, reverse=True)


def test_what_if_is_in_the_json_and_the_text():
    d = gw.check(sigmoid_deep(depth=5), X, Y, what_if=True)
    doc = json.loads(d.to_json())
    assert doc["what_if"] == [t.to_dict() for t in d.what_if]
    assert doc["what_if"][0]["remedy"] == d.what_if[0].remedy
    assert "what if" in str(d)
    assert "what_if" not in gw.check(sigmoid_deep(depth=5), X, Y).to_dict()


def test_cli_check_what_if(tmp_path):
    (tmp_path / "f.py").write_text(
        "import torch\nfrom torch import nn\n"
        "def make():\n"
        "    torch.manual_seed(0)\n"
        "    layers = [m for _ in range(10) for m in (nn.Linear(32, 32), nn.Sigmoid())]\n"
        "    return nn.Sequential(*layers, nn.Linear(32, 4)), torch.randn(32, 32)\n"
    )
    result = CliRunner().invoke(app, ["check", f"{tmp_path / 'f.py'}:make", "--what-if", "--json"])
    assert result.exit_code == 1
    doc = json.loads(result.stdout)
    assert doc["what_if"][0]["fixed"] is True
    assert doc["summary"]["theory"]["per_layer_predicted"] > 0


# ---------------------------------------------------------------- the scenario suite


def check_case(case, what_if=True):
    setup = case.build(0)
    return gw.check(setup.model, *setup.check_args(), what_if=what_if)


FAST = [
    "mlp-sigmoid-6-saturating-bias",
    "rnn-tanh-adding-small-recurrent",
    "mlp-relu-10-large-init",
]


@pytest.mark.parametrize("name", FAST)
def test_what_if_fixes_broken_scenarios(name):
    d = check_case(CASES_BY_NAME[name])
    assert any(f.severity in ("warning", "error") for f in d.findings)
    assert d.what_if[0].fixed, d.what_if[0].line


@pytest.mark.slow
@pytest.mark.parametrize("case", [c for c in CASES if not c.healthy], ids=lambda c: c.name)
def test_every_broken_scenario_that_check_flags_has_a_remedy_that_fixes_it(case):
    d = check_case(case)
    if not any(f.severity in ("warning", "error") for f in d.findings):
        pytest.skip("its problem shows only while training, not at init")
    assert d.what_if[0].fixed, d.what_if[0].line


def test_a_remedy_that_breaks_the_forward_is_reported_not_raised(monkeypatch):
    def broken(m, x, g):
        raise RuntimeError("shape mismatch\nmore detail")

    spec = R.REMEDIES["he_init"]
    monkeypatch.setitem(
        R.REMEDIES, "he_init", R.RemedySpec("he_init", spec.summary, lambda m, x: True, broken)
    )
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Linear(64, 64),
        nn.ReLU(),
        nn.Linear(64, 64),
        nn.ReLU(),
        nn.Linear(64, 64),
        nn.ReLU(),
        nn.Linear(64, 10),
    )
    d = gw.check(model, X, Y, what_if=True)
    failed = next(t for t in d.what_if if t.remedy == "he_init")
    assert failed.error == "RuntimeError: shape mismatch" and d.what_if[-1] is failed
    assert failed.findings_after is None and "errors_after" not in failed.to_dict()
