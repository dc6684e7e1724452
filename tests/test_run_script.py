"""`gradwatch run SCRIPT.py ARGS`: an unmodified script is watched through PyTorch's global
optimizer hooks; its output, exit code and traceback stay its own."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pandas as pd
import pytest
import torch
import torch.nn.modules.module as _module
import torch.optim.optimizer as _optim
from torch import nn

import gradwatch as gw
from gradwatch.run_script import run_script

SCRIPT = textwrap.dedent(
    """
    import sys
    import torch
    from torch import nn

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 16), nn.Tanh(), nn.Linear(16, 2))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    g = torch.Generator().manual_seed(1)
    for step in range(4):
        x = torch.randn(8, 5, generator=g)
        opt.zero_grad()
        loss = model(x).pow(2).mean()
        loss.backward()
        opt.step()
        print(f"step {step} loss {loss.item():.4f}")
    if len(sys.argv) > 1 and sys.argv[1] == "fail":
        raise ValueError("the script's own error")
    if len(sys.argv) > 1:
        sys.exit(int(sys.argv[1]))
    """
)
METRICS = ["grad_norm", "weight_norm", "update_ratio"]


@pytest.fixture
def script(tmp_path) -> Path:
    path = tmp_path / "train.py"
    path.write_text(SCRIPT)
    return path


def _plain() -> pd.DataFrame:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 16), nn.Tanh(), nn.Linear(16, 2))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    g = torch.Generator().manual_seed(1)
    with gw.watch(model, opt) as w:
        for _ in range(4):
            x = torch.randn(8, 5, generator=g)
            opt.zero_grad()
            model(x).pow(2).mean().backward()
            opt.step()
    return w.stats()


def _table(stats: pd.DataFrame, metrics=METRICS) -> pd.Series:
    rows = stats[stats["metric"].isin(metrics)] if metrics else stats
    return rows.set_index(["step", "layer", "metric"])["value"].sort_index()


def test_a_script_is_watched_from_its_first_forward_pass(script, tmp_path, capsys):
    code = run_script(script, [], log_dir=tmp_path / "run")
    assert code == 0
    out = capsys.readouterr()
    assert out.out.count("loss") == 4  # the script's own output, untouched
    run = gw.load(tmp_path / "run")
    plain = _plain()
    assert {"act_std", "saturated_frac", "backflow_norm"} <= set(
        plain["metric"]
    )  # forward probes at step 0 too
    # every statistic, forward ones included, as with gw.watch written into the script
    pd.testing.assert_series_equal(_table(run.stats, None), _table(plain, None))
    assert run.meta["steps_seen"] == 4
    assert "gradwatch" in out.err
    assert not _optim._global_optimizer_pre_hooks  # nothing left behind
    assert not _module._global_forward_pre_hooks


LATE_OPTIMIZER = textwrap.dedent(
    """
    import torch
    from torch import nn

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 16), nn.Tanh(), nn.Linear(16, 2))
    with torch.no_grad():
        model(torch.zeros(1, 5))  # a shape check before any optimizer exists
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    g = torch.Generator().manual_seed(1)
    for step in range(4):
        x = torch.randn(8, 5, generator=g)
        opt.zero_grad()
        model(x).pow(2).mean().backward()
        opt.step()
    """
)

TWO_OPTIMIZERS = textwrap.dedent(
    """
    import torch
    from torch import nn

    torch.manual_seed(0)
    gen, disc = nn.Linear(3, 5), nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 1))
    opt_g = torch.optim.SGD(gen.parameters(), lr=0.1)
    opt_d = torch.optim.SGD(disc.parameters(), lr=0.1)
    for step in range(3):
        fake = gen(torch.randn(4, 3))  # the generator runs first ...
        opt_d.zero_grad()
        disc(fake.detach()).mean().backward()
        opt_d.step()  # ... but the discriminator's optimizer steps first
        opt_g.zero_grad()
        (-disc(fake).mean()).backward()
        opt_g.step()
    """
)


@pytest.mark.parametrize(
    ("source", "watched", "steps"),
    [(LATE_OPTIMIZER, "Sequential", 4), (TWO_OPTIMIZERS, "Sequential", 3)],
    ids=["optimizer-made-after-a-forward", "two-optimizers"],
)
def test_without_one_optimizer_at_the_first_forward_the_first_step_decides(
    source, watched, steps, tmp_path
):
    path = tmp_path / "train.py"
    path.write_text(source)
    with pytest.warns(UserWarning, match="first optimizer only") if "opt_g" in source else _none():
        assert run_script(path, [], log_dir=tmp_path / "run") == 0
    run = gw.load(tmp_path / "run")
    assert run.meta["steps_seen"] == steps
    assert run.meta["model"]["class"] == watched, run.meta["model"]
    assert not _module._global_forward_pre_hooks


def test_the_scripts_exit_code_and_argv_pass_through(script, tmp_path, capsys):
    assert run_script(script, ["3"], log_dir=tmp_path / "run") == 3
    assert gw.load(tmp_path / "run").meta["steps_seen"] == 4


def test_an_exception_in_the_script_prints_its_own_traceback_and_exits_1(script, tmp_path, capsys):
    assert run_script(script, ["fail"], log_dir=tmp_path / "run") == 1
    err = capsys.readouterr().err
    assert 'File "' + str(script.resolve()) in err
    assert "ValueError: the script's own error" in err
    assert "runpy" not in err and "run_script.py" not in err


def test_the_command_runs_a_script_with_its_arguments(script, tmp_path):
    src = str(Path(gw.__file__).parents[1])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([src, os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "gradwatch",
            "run",
            "--log-dir",
            str(tmp_path / "run"),
            str(script),
            "5",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        cwd=tmp_path,
    )
    assert done.returncode == 5, done.stderr
    assert done.stdout.count("loss") == 4
    assert "gradwatch: run directory" in done.stderr
    assert gw.load(tmp_path / "run").meta["steps_seen"] == 4


SCALED_SCRIPT = textwrap.dedent(
    """
    import torch
    from torch import nn

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 16), nn.Tanh(), nn.Linear(16, 2))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**8)
    g = torch.Generator().manual_seed(1)
    for step in range(4):
        x = torch.randn(8, 5, generator=g)
        opt.zero_grad()
        scaler.scale(model(x).pow(2).mean()).backward()
        if step in OVERFLOWS:  # an overflow, as float16 would have
            model[0].weight.grad[0, 0] = float("inf")
        scaler.step(opt)
        scaler.update()
    """
)


def _none():
    import contextlib

    return contextlib.nullcontext()


def test_a_scripts_grad_scaler_is_found_and_its_skipped_steps_recorded(tmp_path):
    path = tmp_path / "scaled.py"
    path.write_text("OVERFLOWS = (2,)\n" + SCALED_SCRIPT)
    assert run_script(path, [], log_dir=tmp_path / "run") == 0
    stats = gw.load(tmp_path / "run").stats
    assert stats.query("metric == 'skipped'").set_index("step")["value"].to_dict() == {
        0: 0.0,
        1: 0.0,
        2: 1.0,
        3: 0.0,
    }
    plain = _table(_plain()).xs("grad_norm", level="metric").xs(0, level="step")
    scaled = _table(stats).xs("grad_norm", level="metric").xs(0, level="step")
    pd.testing.assert_series_equal(scaled, plain)  # unscaled: the same first step as without AMP


def test_steps_the_scaler_skips_before_the_first_real_one_are_recorded(tmp_path):
    path = tmp_path / "scaled.py"
    path.write_text("OVERFLOWS = (0, 1)\n" + SCALED_SCRIPT)
    assert run_script(path, [], log_dir=tmp_path / "run") == 0
    run = gw.load(tmp_path / "run")
    skipped = run.stats.query("metric == 'skipped'").set_index("step")["value"].to_dict()
    assert skipped == {0: 1.0, 1: 1.0, 2: 0.0, 3: 0.0}


def test_a_script_whose_scaler_skips_every_step_is_told_nothing_trained(tmp_path, capsys):
    path = tmp_path / "scaled.py"
    path.write_text("OVERFLOWS = (0, 1, 2, 3)\n" + SCALED_SCRIPT)
    assert run_script(path, [], log_dir=tmp_path / "run") == 0
    err = " ".join(capsys.readouterr().err.split())
    assert "took no optimizer step" not in err
    assert "skipped every one of the 4 recorded optimizer steps" in err, err


WHAT_IF_SCRIPT = textwrap.dedent(
    """
    import torch
    from torch import nn

    torch.manual_seed(0)
    g = torch.Generator().manual_seed(1)
    centres = torch.randn(3, 4, generator=g) * 2
    # The bug: forward() ends in a softmax that nn.CrossEntropyLoss takes the log of again.
    model = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 3), nn.Softmax(dim=-1))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    criterion = nn.CrossEntropyLoss()
    for step in range(6):
        y = torch.randint(0, 3, (32,), generator=g)
        x = centres[y] + torch.randn(32, 4, generator=g)
        opt.zero_grad()
        loss = criterion(model(x), y)
        loss.backward()
        opt.step()
    with torch.no_grad():
        print("eval", model(x).shape)  # an evaluation call is not a training batch
    print("weights", model[0].weight.sum().item())
    """
)


def test_run_what_if_rehearses_the_scripts_batches_and_loss(tmp_path, capsys):
    path = tmp_path / "train.py"
    path.write_text(WHAT_IF_SCRIPT)
    assert run_script(path, [], log_dir=tmp_path / "plain") == 0
    plain = capsys.readouterr()
    assert run_script(path, [], log_dir=tmp_path / "run", what_if_steps=25) == 0
    out = capsys.readouterr()
    assert out.out == plain.out  # the script's own output (its final weights) is unchanged
    assert "rehearsed what-if" in out.err and "trained 25 steps" in out.err
    lines = out.err[out.err.index("rehearsed what-if") :].splitlines()
    first = lines[[line.split()[:1] for line in lines].index(["baseline"]) + 1]
    assert "Softmax" in first and "better" in first, "\n".join(lines)  # the fix ranks first
    assert not torch.nn.modules.module._global_forward_hooks  # nothing left behind
    assert not torch.nn.modules.module._global_forward_pre_hooks


def test_run_what_if_without_a_loss_module_says_so(script, tmp_path, capsys):
    assert run_script(script, [], log_dir=tmp_path / "run", what_if_steps=5) == 0
    err = capsys.readouterr().err
    assert "nn.*Loss module" in err and "nothing was rehearsed" in err


def test_run_what_if_steps_must_be_positive(script, tmp_path):
    with pytest.raises(gw.errors.GradwatchError, match="--steps must be a positive integer"):
        run_script(script, [], log_dir=tmp_path / "run", what_if_steps=0)


LONG_SCRIPT = textwrap.dedent(
    """
    import torch
    from torch import nn

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 1))
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    for _ in range(260):
        opt.zero_grad()
        model(torch.randn(4, 5)).pow(2).mean().backward()
        opt.step()
    """
)


@pytest.mark.parametrize("budget", [1e-9, 0])
def test_run_passes_the_cost_budget_and_zero_turns_it_off(tmp_path, budget):
    path = tmp_path / "long.py"
    path.write_text(LONG_SCRIPT)
    assert run_script(path, [], log_dir=tmp_path / "run", budget=budget) == 0
    run = gw.load(tmp_path / "run")
    steps = sorted(run.stats.loc[run.stats.metric == "grad_norm", "step"].unique())
    if budget:
        assert run.meta["thinned"] and len(steps) < 260
    else:
        assert run.meta["thinned"] == [] and steps == list(range(260))


def test_run_budget_must_be_a_fraction(script, tmp_path):
    with pytest.raises(gw.errors.GradwatchError, match="--budget must be"):
        run_script(script, [], log_dir=tmp_path / "run", budget=-1)
