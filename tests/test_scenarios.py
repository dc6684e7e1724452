"""The labelled scenario suite: every case builds and trains one step, the labels cover every
finding kind, and three labels still hold when re-measured."""

from __future__ import annotations

import json
import re

import pytest
import torch

from scenarios import label
from scenarios.cases import CASES, CASES_BY_NAME, FAMILIES, KINDS, Runner

LABELS = json.loads(label.LABELS.read_text()) if label.LABELS.exists() else None


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_case_builds_and_takes_one_training_step(case):
    setup = case.build(0)
    inputs, target = setup.batch(0)
    if setup.train_step is not None:
        loss = setup.train_step(0)
    else:
        runner = Runner(setup)
        loss, _ = runner.backward(inputs, target)
        assert any(p.grad is not None for p in setup.model.parameters())
        runner.update()
    assert loss.dim() == 0


def test_build_returns_a_fresh_model_each_time():
    case = CASES_BY_NAME["mlp-relu-10-he"]
    a, b = case.build(0).model, case.build(0).model
    assert a is not b
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters(), strict=True))


def test_batches_are_deterministic():
    for case in CASES:
        setup = case.build(0)
        x1, y1 = setup.batch(3)
        x2, y2 = setup.batch(3)
        assert torch.equal(x1, x2) and torch.equal(y1, y2), case.name


def test_names_are_unique_kebab_case():
    names = [case.name for case in CASES]
    assert len(names) == len(set(names))
    assert all(re.fullmatch(r"[a-z0-9]+(-[a-z0-9]+)*", n) for n in names)


def test_fields_are_well_formed():
    for case in CASES:
        assert case.family in FAMILIES, case.name
        assert case.kinds <= set(KINDS), case.name
        assert case.description and "\n" not in case.description, case.name
        assert case.fix is None or case.fix in CASES_BY_NAME, case.name
        if case.fix:
            assert CASES_BY_NAME[case.fix].healthy, case.name


def test_every_kind_has_at_least_two_broken_cases():
    for kind in KINDS:
        assert sum(kind in case.kinds for case in CASES) >= 2, kind


def test_suite_size_and_families():
    assert len(CASES) >= 34
    assert sum(case.healthy for case in CASES) >= 14
    assert {case.family for case in CASES} == set(FAMILIES)


def test_labels_cover_every_case_and_all_are_confirmed():
    assert LABELS is not None, "run python tests/scenarios/label.py"
    entries = {e["name"]: e for e in LABELS["cases"]}
    assert set(entries) == set(CASES_BY_NAME)
    for case in CASES:
        entry = entries[case.name]
        assert entry["kinds"] == sorted(case.kinds)
        assert entry["healthy"] == case.healthy
        assert entry["confirmed"] is True, f"{case.name}: {entry['verdict']}"


# One vanishing, one healthy, one exploding case: short runs, so the re-measure stays fast.
@pytest.mark.parametrize("name", ["mlp-relu-30-xavier", "mlp-stable-bce", "mlp-relu-10-large-init"])
def test_verdict_matches_labels_when_remeasured(name):
    assert LABELS is not None
    recorded = {e["name"]: e for e in LABELS["cases"]}[name]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.set_flush_denormal(True)  # as label.py does
    try:
        entry = label.measure(CASES_BY_NAME[name])
    finally:
        torch.set_flush_denormal(False)
        torch.set_num_threads(threads)
    assert entry["verdict"] == recorded["verdict"]
