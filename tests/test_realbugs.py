"""The real-bug benchmark's fast subset (bench/realbugs, `run.py --fast`): every buggy program is
detected by watch, the first finding is the labelled root cause with the labelled first remedy,
and no fixed or healthy program gets a warning or an error from watch, check or the rehearsal
(the subset's counts are in bench/realbugs/README.md; the whole benchmark's in bench/RESULTS.md)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"


@pytest.fixture(scope="module")
def fast_results():
    sys.path.insert(0, str(BENCH))
    try:
        from realbugs import run
    finally:
        sys.path.remove(str(BENCH))
    return run, run.main(["--fast"])


def test_fast_subset_detects_every_buggy_program(fast_results):
    run, results = fast_results
    tot = run.totals(results)
    assert tot["tools"]["watch"]["detected"] == tot["n_bugs"]


def test_fast_subset_puts_the_root_cause_first(fast_results):
    run, results = fast_results
    tot = run.totals(results)
    assert tot["tools"]["watch"]["first_kind"] == tot["n_bugs"]
    assert tot["tools"]["watch"]["first_action"] == tot["n_bugs"]


def test_fast_subset_fixed_and_healthy_programs_get_no_warning(fast_results):
    run, results = fast_results
    tot = run.totals(results)
    for tool in ("watch", "check", "check_opt"):
        assert tot["tools"][tool]["fixed_flagged"] == 0, tool
        assert tot["tools"][tool]["healthy_flagged"] == 0, tool


def test_fast_subset_healthy_programs_get_no_error(fast_results):
    run, results = fast_results
    for r in results:
        if r["healthy"]:
            findings = r["versions"]["healthy"]["watch"]["findings"]
            assert not [f for f in findings if f["severity"] == "error"], r["name"]
