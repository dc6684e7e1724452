"""The HTML report of one run directory, timed (plotly imported before the clock starts).

```
.venv/bin/python bench/report_time.py RUN_DIR [OUT.html]
```

Run it with two checkouts' interpreters in turn on the same directory to compare them side by
side (a directory such as `bench/scale.py --parts report` makes, with its findings stored).
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path


def main() -> None:
    import gradwatch.report.html  # noqa: F401 - plotly's import, outside the timing
    from gradwatch.report import html_report

    run = sys.argv[1]
    out = Path(sys.argv[2]) if len(sys.argv) > 2 else Path(tempfile.mkdtemp()) / "report.html"
    start = time.perf_counter()
    path = html_report([run], out)
    print(f"report {time.perf_counter() - start:.2f} s, HTML {path.stat().st_size / 1e6:.2f} MB")


if __name__ == "__main__":
    main()
