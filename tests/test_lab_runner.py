"""The lab runner and `gradwatch lab`: results.json, the page, exit codes, interruptions,
failures."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from rich.console import Console

from gradwatch import cli
from gradwatch.lab import runner
from gradwatch.lab.experiment import Experiment, Figure, Outcome

NASTY = "<script>alert('x')</script> & \"quotes\""


def _outcome(settings, value):
    settings.progress(0.5)
    return Outcome(
        setup={"depth": 3},
        measured={"ratio": value, "per_layer": [1.0, 0.5], "nested": {"nan": float("nan")}},
        figures=[
            Figure("profile " + NASTY, "layer", "norm", {"a": ([0, 1], [1.0, value])}, log_y=True),
            Figure(
                "bars", "variant", "accuracy", {"acc": (["plain", "bn"], [0.1, 0.9])}, kind="bar"
            ),
        ],
        runs=[str(settings.out / "run")],
    )


def _fake(name: str, value: float = 1.0, raises: BaseException | None = None) -> Experiment:
    def run(settings):
        if raises is not None:
            raise raises
        return _outcome(settings, value)

    return Experiment(
        name,
        f"claim of {name} {NASTY}",
        "Someone et al. 2020",
        "ratio above 0.5",
        run,
        lambda m: m["ratio"] > 0.5,
    )


def _loader(experiments):
    table = {e.name: e for e in experiments}
    return lambda name: table[name]


def _lab(tmp_path, experiments, names=None):
    return runner.run_lab(
        names or [e.name for e in experiments],
        out=tmp_path,
        quick=True,
        console=Console(file=open("/dev/null", "w")),
        load=_loader(experiments),
    )


@pytest.fixture(autouse=True)
def _names(monkeypatch):
    monkeypatch.setattr(runner.catalogue, "NAMES", ("a", "b", "c", "boom", "stop"))


def test_results_json_holds_one_record_per_experiment_with_the_schema(tmp_path):
    result = _lab(tmp_path, [_fake("a", 1.0), _fake("b", 0.1)])
    doc = json.loads((tmp_path / "results.json").read_text())
    assert [r["name"] for r in doc["experiments"]] == ["a", "b"]
    for rec in doc["experiments"]:
        for key in (
            "name",
            "claim",
            "source",
            "measured",
            "expected",
            "reproduced",
            "seconds",
            "figures",
            "runs",
            "error",
        ):
            assert key in rec
        assert rec["seconds"] >= 0
    assert doc["experiments"][0]["reproduced"] is True
    assert doc["experiments"][1]["reproduced"] is False  # the judge decides, from the measurement
    assert doc["experiments"][0]["measured"]["nested"]["nan"] is None  # valid JSON, no NaN
    assert doc["experiments"][0]["runs"] == ["a/run"]
    assert doc["experiments"][0]["figures"][1]["lines"]["acc"]["x"] == [
        "plain",
        "bn",
    ]  # categories stay names
    assert doc["quick"] is True and doc["all_reproduced"] is False
    assert not result.all_reproduced


def test_page_is_self_contained_and_escapes_text(tmp_path):
    _lab(tmp_path, [_fake("a")])
    page = (tmp_path / "index.html").read_text()
    assert "Plotly.newPlot" in page and 'src="http' not in page and "src='http" not in page
    assert NASTY not in page
    assert "&lt;script&gt;alert(" in page
    assert "alert('x')<\\/script>" in page  # inside figure JSON the tag cannot close the script
    assert "reproduced" in page and "Someone et al. 2020" in page


def test_a_failing_experiment_is_recorded_and_the_rest_still_run(tmp_path):
    result = _lab(tmp_path, [_fake("boom", raises=RuntimeError("it broke")), _fake("a")])
    doc = json.loads((tmp_path / "results.json").read_text())
    boom, a = doc["experiments"]
    assert boom["reproduced"] is False and "RuntimeError: it broke" in boom["error"]
    assert a["reproduced"] is True and a["error"] is None
    assert not result.interrupted
    assert "it broke" in (tmp_path / "index.html").read_text()


def test_an_interrupted_run_keeps_the_experiments_that_finished(tmp_path):
    result = _lab(tmp_path, [_fake("a"), _fake("stop", raises=KeyboardInterrupt()), _fake("b")])
    assert result.interrupted
    doc = json.loads((tmp_path / "results.json").read_text())
    assert [r["name"] for r in doc["experiments"]] == ["a"]
    assert doc["interrupted"] is True
    assert "interrupted" in (tmp_path / "index.html").read_text()


def _main(monkeypatch, tmp_path, experiments, *names):
    monkeypatch.setattr(runner.catalogue, "get", _loader(experiments))
    monkeypatch.setattr(
        sys, "argv", ["gradwatch", "lab", *names, "--quick", "--out", str(tmp_path)]
    )
    with pytest.raises(SystemExit) as exit_:
        cli.main()
    return exit_.value.code


def test_exit_0_when_all_reproduced(monkeypatch, tmp_path):
    assert _main(monkeypatch, tmp_path, [_fake("a"), _fake("b")], "a", "b") == 0


def test_exit_1_when_one_did_not_reproduce(monkeypatch, tmp_path):
    assert _main(monkeypatch, tmp_path, [_fake("a"), _fake("b", 0.1)], "a", "b") == 1


def test_exit_1_when_one_raised(monkeypatch, tmp_path):
    assert (
        _main(
            monkeypatch, tmp_path, [_fake("a"), _fake("boom", raises=ValueError("x"))], "a", "boom"
        )
        == 1
    )


def test_exit_130_on_ctrl_c(monkeypatch, tmp_path):
    code = _main(
        monkeypatch, tmp_path, [_fake("a"), _fake("stop", raises=KeyboardInterrupt())], "a", "stop"
    )
    assert code == 130
    assert json.loads((tmp_path / "results.json").read_text())["experiments"][0]["name"] == "a"


def test_no_names_runs_the_whole_catalogue(monkeypatch, tmp_path):
    fakes = [_fake(n) for n in ("a", "b", "c", "boom", "stop")]
    assert _main(monkeypatch, tmp_path, fakes) == 0
    assert len(json.loads((tmp_path / "results.json").read_text())["experiments"]) == 5


def test_an_unknown_name_exits_2_with_one_sentence(tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "gradwatch", "lab", "no-such-thing", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 2
    assert "no-such-thing" in out.stderr and "Traceback" not in out.stderr
    assert not (tmp_path / "results.json").exists()
