"""Nothing lost, nothing crashed (issue 22): gradwatch's own failures never stop training,
arguments are checked with one sentence, and what the watch says is what the run did."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import gradwatch as gw
from conftest import mlp
from gradwatch.errors import NonFiniteGradientError, WatchError


def _sigmoid_net(depth: int = 20, width: int = 16) -> nn.Sequential:
    torch.manual_seed(0)
    layers: list[nn.Module] = []
    for _ in range(depth):
        layers += [nn.Linear(width, width), nn.Sigmoid()]
    return nn.Sequential(*layers, nn.Linear(width, 1))


# ----------------------------------------------------------------- arguments


def test_raise_on_a_single_string_is_one_kind():
    model = mlp([3, 4, 2])
    with gw.watch(model, raise_on="nonfinite") as w:
        assert w._raise_on == ("nonfinite",)
    model[0].weight.data[0, 0] = float("nan")
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with gw.watch(model, opt, raise_on="nonfinite"), pytest.raises(NonFiniteGradientError):
        model(torch.randn(4, 3)).sum().backward()
        opt.step()


@pytest.mark.parametrize("value", [-1, 0, 5, 1.5, "a lot"])
def test_update_memory_outside_zero_to_one_is_one_sentence_naming_the_value(value):
    with pytest.raises(WatchError, match=r"update_memory must be a fraction .* got " + repr(value)):
        gw.watch(mlp([3, 4, 2]), update_memory=value)


# ----------------------------------------------------------------- text


def test_printed_diagnosis_has_no_remedy_line_ending_in_a_colon():
    diagnosis = gw.check(_sigmoid_net(), torch.randn(32, 16))
    remedies = [line for line in str(diagnosis).splitlines() if line.strip().startswith("->")]
    assert remedies
    assert not [line for line in remedies if line.rstrip().endswith(":")]


def test_a_printed_finding_is_a_short_paragraph():
    finding = gw.check(_sigmoid_net(), torch.randn(32, 16)).findings[0]
    text = str(finding)
    assert len(text) < 600
    assert text.startswith(f"[{finding.severity}] {finding.kind} in {finding.layers[0]}")
    assert finding.summary in text
    assert "evidence" not in text and "Remedy(" not in text
    assert text.splitlines()[-1].startswith("  -> ") and not text.endswith(":")
