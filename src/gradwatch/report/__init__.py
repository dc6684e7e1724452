"""Views of the stats table: terminal, HTML, notebook.

`html_report(sources, path)` takes any mix of live Watches, loaded runs (`gw.load`) and run
directories; `Watch.report(path)` and `gradwatch report RUN_DIR ...` are the usual ways in.
"""

from __future__ import annotations

import os
from pathlib import Path


def html_report(sources, path: str | os.PathLike = "report.html") -> Path:
    """One self-contained HTML page over one or more runs, side by side on shared colour scales."""
    from gradwatch.report.data import from_run, from_watch, load_runs
    from gradwatch.report.html import write
    from gradwatch.store import Run

    runs = []
    for s in sources if isinstance(sources, (list, tuple)) else [sources]:
        if isinstance(s, Run):
            runs.append(from_run(s))
        elif isinstance(s, (str, os.PathLike)):
            runs += load_runs([s])
        else:
            runs.append(from_watch(s, s.log_dir.name if s.log_dir else f"run {len(runs) + 1}"))
    seen: set[str] = set()
    for r in runs:  # the same run twice (live and stored) must still get two titles
        base, k = r.name, 2
        while r.name in seen:
            r.name, k = f"{base} ({k})", k + 1
        seen.add(r.name)
    return write(runs, path)
