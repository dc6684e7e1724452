"""The `gradwatch` command: parses arguments, calls the library, prints. No logic of its own."""

from __future__ import annotations

import os
from pathlib import Path

import typer
from rich.console import Console
from rich.markup import escape
from rich.text import Text

from gradwatch._version import __version__
from gradwatch.errors import GradwatchError, ReportError

app = typer.Typer(
    name="gradwatch",
    help="See, diagnose, predict and fix vanishing and exploding gradients in PyTorch.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console()
err = Console(stderr=True)


def _flag(*names: str, help: str, **kw):
    """A boolean flag: shown as a flag in --help (no `<bool>` value column)."""
    return typer.Option(False, *names, help=help, metavar="", **kw)


def _version(value: bool) -> None:
    if value:
        console.print(f"gradwatch {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = _flag(
        "--version", callback=_version, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    pass


@app.command()
def demo(
    out: Path = typer.Option(Path("runs/demo"), "--out", help="Where to write the two runs."),
    seed: int = typer.Option(0, "--seed", help="Random seed."),
    overwrite: bool = _flag("--overwrite", help="Replace the runs a previous demo left in OUT."),
) -> None:
    """The main job on built-in data: break a deep net, watch its gradients vanish, fix it."""
    from gradwatch.demo import run_demo

    run_demo(out, seed=seed, console=console, overwrite=overwrite)


@app.command()
def check(
    target: str = typer.Argument(..., help="path/file.py:factory or package.module:factory"),
    json_out: bool = _flag("--json", help="Print the diagnosis as one JSON object."),
    what_if: bool = _flag(
        "--what-if", help="Try every remedy that fits on a copy of the model and rank them."
    ),
    steps: int = typer.Option(
        None,
        "--steps",
        help="With --what-if and an optimizer: train each change N steps on copies and rank them.",
    ),
) -> None:
    """Diagnose a model at initialisation. Exit 0 when ok, 1 on an error finding, 2 on bad input.

    The factory takes no arguments and returns (model, inputs), (model, inputs, target) or
    (model, inputs, target, loss_fn), or a dict with the keys model, inputs and any of target,
    loss_fn, optimizer. With an optimizer the check also rehearses its first steps on a copy.
    """
    from gradwatch.checks import check as run_check
    from gradwatch.checks.factory import load_factory
    from gradwatch.display.terminal import diagnosis_view

    model, inputs, tgt, loss_fn, optimizer = load_factory(target)
    if steps is not None and (not what_if or optimizer is None):
        err.print("--steps rehearses training: pass --what-if and return an optimizer.")
        raise typer.Exit(2)
    mode = "train" if steps is not None else what_if
    extra = {"steps": steps} if steps is not None else {}
    diagnosis = run_check(model, inputs, tgt, loss_fn, what_if=mode, optimizer=optimizer, **extra)
    if json_out:
        print(diagnosis.to_json())
    else:
        # A Text title: the target is the user's string, never read as rich markup.
        console.print(diagnosis_view(diagnosis, title=Text(f"gradwatch check {target}")))
    raise typer.Exit(0 if diagnosis.ok else 1)


@app.command()
def lab(
    names: list[str] = typer.Argument(None, help="Experiments to run (all when none)."),
    quick: bool = _flag("--quick", help="Honestly scaled-down settings (minutes, not hours)."),
    out: Path = typer.Option(
        Path("runs/lab"), "--out", help="Where to write results.json, index.html and the runs."
    ),
    seed: int = typer.Option(0, "--seed", help="Random seed."),
) -> None:
    """Reproduce the literature's claims about vanishing and exploding gradients, measured.

    Exit 0 when every experiment reproduced its claim, 1 when any did not, 2 for an unknown
    name, 130 when interrupted (the finished experiments are kept).
    """
    from gradwatch.lab.runner import PAGE, RESULTS, run_lab

    if out.exists() and not out.is_dir():
        raise GradwatchError(f"--out '{out}' is a file; pass a directory for the lab's results.")
    result = run_lab(names or (), quick=quick, out=out, seed=seed, console=console)
    done = sum(r["reproduced"] for r in result.records)
    console.print(
        f"{done} of {len(result.records)} reproduced; results in {escape(str(out / RESULTS))}, "
        f"page {escape(str(out / PAGE))}",
        highlight=False,
    )
    if result.interrupted:
        err.print("interrupted: the experiments that finished are kept")
        raise typer.Exit(130)
    raise typer.Exit(0 if result.all_reproduced else 1)


@app.command()
def theory(
    activation: str = typer.Option(
        "tanh",
        "--activation",
        help="tanh, relu, leaky_relu, sigmoid, gelu, silu, elu, selu, softplus, erf, linear",
    ),
    sigma_w2: float = typer.Option(1.0, "--sigma-w2", help="Weight variance times fan-in (σ_w²)."),
    sigma_b2: float = typer.Option(0.05, "--sigma-b2", help="Bias variance (σ_b²)."),
    critical: bool = _flag("--critical", help="Also solve for the critical σ_w² at this σ_b²."),
    json_out: bool = _flag("--json", help="Print one JSON object."),
    plot: Path | None = typer.Option(None, "--plot", help="Write a phase diagram (PNG/SVG/PDF)."),
) -> None:
    """Mean-field signal propagation: fixed point, χ₁, depth scales, phase, trainable depth."""
    import json

    from gradwatch import theory as th

    result = th.mean_field(activation, sigma_w2=sigma_w2, sigma_b2=sigma_b2).to_dict()
    if critical:
        result["critical_sigma_w2"] = th.critical_sigma_w2(activation, sigma_b2=sigma_b2)
    if plot is not None:
        from gradwatch.report.theory_plot import phase_diagram

        result["plot"] = str(phase_diagram(plot, activation=activation))
    if json_out:
        print(json.dumps(result))
        return
    from rich.table import Table

    table = Table(
        title=Text(f"mean field: {activation}, σ_w²={sigma_w2}, σ_b²={sigma_b2}"), show_edge=False
    )
    table.add_column("quantity")
    table.add_column("value", justify="right")
    for key, value in result.items():
        if key in ("activation", "sigma_w2", "sigma_b2", "params"):
            continue
        table.add_row(key, Text(f"{value:.4g}" if isinstance(value, float) else str(value)))
    console.print(table)


@app.command()
def report(
    run_dirs: list[Path] = typer.Argument(
        ..., help="One or more run directories (the log_dir given to gw.watch)."
    ),
    out: Path | None = typer.Option(
        None,
        "-o",
        "--out",
        help="HTML file to write.",
        show_default="RUN_DIR/report.html, or report.html for several runs",
    ),
    text: bool = _flag("--text", help="Print a terminal summary instead of writing HTML."),
) -> None:
    """One self-contained HTML report (opens offline) of one run, or of several side by side.

    Exit 0, or 1 when a run's stats are damaged or missing (the report shows what could be read,
    or the findings the run stored), 2 on bad input.
    """
    for p in run_dirs:  # the cheap checks first, before any run is read
        if not p.is_dir():
            raise ReportError(_NOT_A_RUN.format(p))
    if not text:
        out = out or (run_dirs[0] / "report.html" if len(run_dirs) == 1 else Path("report.html"))
        _check_writable_file(out, "-o")
    runs, damaged = _load_report_runs(run_dirs)
    if text:
        from gradwatch.display.terminal import runs_view

        console.print(runs_view(runs))
    else:
        from gradwatch.report.html import write

        try:
            path = write(runs, out)
        except OSError as exc:
            raise GradwatchError(
                f"Cannot write the report to '{out}' ({exc.strerror}); pass -o with a file path "
                "you can write to."
            ) from None
        console.print(
            f"Report written to [bold]{escape(str(path))}[/] ({path.stat().st_size / 1e6:.1f} MB)."
        )
        print(path.resolve())
    raise typer.Exit(1 if damaged else 0)


_NOT_A_RUN = "'{}' is not a gradwatch run directory; pass the log_dir given to gw.watch()."


def _check_writable_file(path: Path, option: str) -> None:
    """One sentence (exit 2) before any work when `path` cannot be written as a file."""
    if path.is_dir():
        raise GradwatchError(f"{option} '{path}' is a directory; pass the path of a file to write.")
    parent = path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise GradwatchError(
            f"{option} '{path}' cannot be created: '{parent}' is a file; pass another path."
        )
    target = path if path.exists() else parent
    if not os.access(target, os.W_OK):
        raise GradwatchError(
            f"{option} '{path}' cannot be written (no permission on '{target}'); "
            "pass a path you can write to."
        )


def _load_report_runs(run_dirs: list[Path]):
    """The runs for `report`, and whether any was damaged: a damaged run says so in one sentence
    on stderr; one whose stats cannot be read at all is shown by the findings it stored."""
    import warnings

    from gradwatch.errors import RunNotFoundError
    from gradwatch.report.data import from_run
    from gradwatch.store import FINDINGS, load

    runs, names, damaged = [], set(), False
    for p in run_dirs:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # its problems are printed below, once
                run = load(p)
        except RunNotFoundError:
            raise ReportError(_NOT_A_RUN.format(p)) from None
        name = run.path.name or str(run.path)
        while name in names:  # runs/a/seed0 and runs/b/seed0 must stay apart
            name = f"{run.path.parent.name}/{name}"
        names.add(name)
        if run.problems:
            damaged = True
            shown = "showing what could be read"
            if run.stats.empty and run.findings:
                shown = f"showing the findings stored in its {FINDINGS}"
            err.print(
                f"[bold yellow]warning:[/] run '{escape(str(p))}' is damaged "
                f"({escape('; '.join(run.problems))}); {shown}.",
                highlight=False,
            )
        runs.append(from_run(run, name))
    return runs, damaged


@app.command(
    context_settings={
        "allow_extra_args": True,
        "ignore_unknown_options": True,
        "allow_interspersed_args": False,
    }
)
def run(
    script: Path = typer.Argument(..., help="The training script, run unmodified as __main__."),
    args: list[str] | None = typer.Argument(
        None, help="Arguments for the script (everything after SCRIPT)."
    ),
    log_dir: Path | None = typer.Option(
        None, "--log-dir", help="Run directory (default runs/SCRIPT-TIME)."
    ),
    every: int = typer.Option(1, "--every", help="Record every N-th optimizer step."),
    budget: float = typer.Option(
        0.03,
        "--budget",
        help="Share of the step time the watch may take after its first 200 recorded steps "
        "(it then records fewer steps of a model whose steps are very short); 0 records every "
        "step whatever it costs.",
    ),
    overwrite: bool = _flag("--overwrite", help="Replace a run already in --log-dir."),
    what_if: bool = _flag(
        "--what-if",
        help="After the script, train each remedy of the diagnosis on copies and rank them.",
    ),
    steps: int = typer.Option(
        100, "--steps", help="With --what-if: optimizer steps each change is trained."
    ),
) -> None:
    """Run an unmodified training script with watching attached; print the diagnosis at the end.

    The script's output and exit code are its own; gradwatch's report goes to stderr.
    """
    from gradwatch.run_script import run_script

    code = run_script(
        script,
        args or [],
        log_dir=log_dir,
        every=every,
        budget=budget,
        overwrite=overwrite,
        console=err,
        what_if_steps=steps if what_if else None,
    )
    raise SystemExit(code)


def main() -> None:
    try:
        app()
    except GradwatchError as exc:
        err.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
