"""The `gradwatch` command: parses arguments, calls the library, prints. No logic of its own."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console

from gradwatch._version import __version__
from gradwatch.errors import GradwatchError

app = typer.Typer(
    name="gradwatch",
    help="See, diagnose, predict and fix vanishing and exploding gradients in PyTorch.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console()
err = Console(stderr=True)


def _version(value: bool) -> None:
    if value:
        console.print(f"gradwatch {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    pass


@app.command()
def demo(
    out: Path = typer.Option(Path("runs/demo"), "--out", help="Where to write the two runs."),
    seed: int = typer.Option(0, "--seed", help="Random seed."),
) -> None:
    """The main job on built-in data: break a deep net, watch its gradients vanish, fix it."""
    from gradwatch.demo import run_demo

    run_demo(out, seed=seed, console=console)


@app.command()
def check(
    target: str = typer.Argument(..., help="path/file.py:factory or package.module:factory"),
    json_out: bool = typer.Option(False, "--json", help="Print the diagnosis as one JSON object."),
    what_if: bool = typer.Option(
        False, "--what-if", help="Try every remedy that fits on a copy of the model and rank them."
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
        console.print(diagnosis_view(diagnosis, title=f"gradwatch check {target}"))
    raise typer.Exit(0 if diagnosis.ok else 1)


@app.command()
def lab(
    names: list[str] = typer.Argument(None, help="Experiments to run (all when none)."),
    quick: bool = typer.Option(
        False, "--quick", help="Honestly scaled-down settings (minutes, not hours)."
    ),
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

    result = run_lab(names or (), quick=quick, out=out, seed=seed, console=console)
    done = sum(r["reproduced"] for r in result.records)
    console.print(
        f"{done} of {len(result.records)} reproduced; results in {out / RESULTS}, page {out / PAGE}",
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
    critical: bool = typer.Option(
        False, "--critical", help="Also solve for the critical σ_w² at this σ_b²."
    ),
    json_out: bool = typer.Option(False, "--json", help="Print one JSON object."),
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
        title=f"mean field: {activation}, σ_w²={sigma_w2}, σ_b²={sigma_b2}", show_edge=False
    )
    table.add_column("quantity")
    table.add_column("value", justify="right")
    for key, value in result.items():
        if key in ("activation", "sigma_w2", "sigma_b2", "params"):
            continue
        table.add_row(key, f"{value:.4g}" if isinstance(value, float) else str(value))
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
        help="HTML file to write [default: RUN_DIR/report.html, or report.html for several runs].",
    ),
    text: bool = typer.Option(
        False, "--text", help="Print a terminal summary instead of writing HTML."
    ),
) -> None:
    """One self-contained HTML report (opens offline) of one run, or of several side by side."""
    from gradwatch.report.data import load_runs

    runs = load_runs(run_dirs)
    if text:
        from gradwatch.display.terminal import runs_view

        console.print(runs_view(runs))
        return
    from gradwatch.report.html import write

    path = write(
        runs, out or (run_dirs[0] / "report.html" if len(run_dirs) == 1 else Path("report.html"))
    )
    console.print(f"Report written to [bold]{path}[/] ({path.stat().st_size / 1e6:.1f} MB).")
    print(path.resolve())


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
) -> None:
    """Run an unmodified training script with watching attached; print the diagnosis at the end.

    The script's output and exit code are its own; gradwatch's report goes to stderr.
    """
    from gradwatch.run_script import run_script

    raise SystemExit(run_script(script, args or [], log_dir=log_dir, every=every, console=err))


def main() -> None:
    try:
        app()
    except GradwatchError as exc:
        err.print(f"[bold red]error:[/] {exc}")
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
