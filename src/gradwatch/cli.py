"""The `gradwatch` command: parses arguments, calls the library, prints. No logic of its own."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console

from . import __version__
from .errors import GradwatchError

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
    from .demo import run_demo

    run_demo(out, seed=seed, console=console)


def main() -> None:
    try:
        app()
    except GradwatchError as exc:
        err.print(f"[bold red]error:[/] {exc}")
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
