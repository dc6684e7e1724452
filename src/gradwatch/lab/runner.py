"""Run lab experiments one after another and keep what they found.

`results.json` and `index.html` are rewritten after every experiment, so an interrupted run keeps
every experiment that finished. An experiment that raises is recorded as failed (with its error)
and the others still run. The verdict is always the experiment's own `judge` applied to the numbers
its run measured.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn

from gradwatch._json import jsonable
from gradwatch._version import __version__
from gradwatch.lab import catalogue
from gradwatch.lab.experiment import Experiment, Settings

RESULTS = "results.json"
PAGE = "index.html"


@dataclass
class LabResult:
    """What `run_lab` did: one record per experiment that ended (in order), and whether it was cut
    short."""

    out: Path
    records: list[dict[str, Any]] = field(default_factory=list)
    interrupted: bool = False

    @property
    def all_reproduced(self) -> bool:
        return bool(self.records) and all(r["reproduced"] for r in self.records)


def resolve(names: Sequence[str]) -> list[str]:
    """The names to run, in the order given (all, in catalogue order, when none); raises on an
    unknown one."""
    if not names:
        return list(catalogue.NAMES)
    for name in names:
        if name not in catalogue.NAMES:
            catalogue.get(name)  # raises the one-sentence GradwatchError
    return list(dict.fromkeys(names))


def run_one(exp: Experiment, settings: Settings) -> dict[str, Any]:
    """Run one experiment and judge it; an exception becomes a failed record, never propagates
    (KeyboardInterrupt does: the caller decides what an interruption means)."""
    record: dict[str, Any] = {
        "name": exp.name,
        "claim": exp.claim,
        "source": exp.source,
        "expected": exp.expected,
        "measured": {},
        "reproduced": False,
        "seconds": 0.0,
        "quick": settings.quick,
        "seed": settings.seed,
        "setup": {},
        "figures": [],
        "runs": [],
        "error": None,
    }
    start = time.perf_counter()
    try:
        outcome = exp.run(settings)
        record["measured"] = jsonable(outcome.measured)
        record["setup"] = jsonable(outcome.setup)
        record["figures"] = [jsonable(f.to_dict()) for f in outcome.figures]
        record["runs"] = [_relative(p, settings.out.parent) for p in outcome.runs]
        record["reproduced"] = bool(exp.judge(outcome.measured))
    except Exception as exc:  # noqa: BLE001 - one broken experiment must not stop the others
        record["error"] = f"{type(exc).__name__}: {exc}"
        record["traceback"] = traceback.format_exc(limit=-8)
        record["reproduced"] = False
    record["seconds"] = round(time.perf_counter() - start, 3)
    return record


def _relative(path: str | os.PathLike, root: Path) -> str:
    p = Path(path)
    try:
        return str(p.resolve().relative_to(root.resolve()))
    except ValueError:
        return str(p)


def write_results(out: Path, result: LabResult, meta: dict[str, Any]) -> None:
    """Write results.json and index.html, each atomically (a temporary file renamed into place)."""
    from gradwatch.lab.page import render

    doc = {
        **meta,
        "interrupted": result.interrupted,
        "all_reproduced": result.all_reproduced,
        "experiments": result.records,
    }
    _atomic_write(out / RESULTS, json.dumps(jsonable(doc), indent=2, allow_nan=False))
    _atomic_write(out / PAGE, render(doc))


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def run_lab(
    names: Sequence[str] = (),
    *,
    quick: bool = False,
    out: str | os.PathLike = "runs/lab",
    seed: int = 0,
    console: Console | None = None,
    load: Callable[[str], Experiment] | None = None,
) -> LabResult:
    """Run the named experiments (all when none) and write `out`/results.json and `out`/index.html.

    `load` turns a name into its Experiment (the catalogue's, by default). Returns a LabResult; on
    Ctrl-C the experiment under way is dropped, the finished ones are written, and the result comes
    back with `interrupted=True`.
    """
    names = resolve(names)
    load = load or catalogue.get
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    console = console or Console()
    result = LabResult(out)
    meta = {
        "gradwatch_version": __version__,
        "torch_version": torch.__version__,
        "quick": quick,
        "seed": seed,
        "started": _now(),
        "requested": names,
    }
    # The lab's nets are small: one thread is faster than two and steadier on a busy machine.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        TaskProgressColumn(),
        TimeElapsedColumn(),
    )
    try:
        with Progress(*columns, console=console, transient=True) as progress:
            overall = progress.add_task(f"lab ({'quick' if quick else 'full'})", total=len(names))
            for name in names:
                task = progress.add_task(f"  {name}", total=1.0)

                def report(fraction: float, task=task) -> None:
                    progress.update(task, completed=min(max(float(fraction), 0.0), 1.0))

                settings = Settings(quick=quick, seed=seed, out=out / name, progress=report)
                try:
                    exp = load(name)
                except Exception as exc:  # noqa: BLE001 - e.g. a module not written yet
                    record = _failed(name, exc, settings)
                else:
                    record = run_one(exp, settings)
                progress.remove_task(task)
                progress.advance(overall)
                result.records.append(record)
                _say(console, record)
                meta["finished"] = _now()
                write_results(out, result, meta)
    except KeyboardInterrupt:
        result.interrupted = True
        meta["finished"] = _now()
        write_results(out, result, meta)
    finally:
        torch.set_num_threads(threads)
    return result


def _failed(name: str, exc: Exception, settings: Settings) -> dict[str, Any]:
    return {
        "name": name,
        "claim": "",
        "source": "",
        "expected": "",
        "measured": {},
        "reproduced": False,
        "seconds": 0.0,
        "quick": settings.quick,
        "seed": settings.seed,
        "setup": {},
        "figures": [],
        "runs": [],
        "error": f"{type(exc).__name__}: {exc}",
    }


def _say(console: Console, record: dict[str, Any]) -> None:
    if record["error"]:
        verdict = "[bold red]failed[/]"
    elif record["reproduced"]:
        verdict = "[bold green]reproduced[/]"
    else:
        verdict = "[bold yellow]not reproduced[/]"
    line = f"{escape(record['name']):<18} {verdict}  ({record['seconds']:.1f} s)"
    if record["error"]:
        line += f"  {escape(record['error'])}"
    console.print(line, highlight=False, markup=True)


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
