"""Run several `gradwatch` command lines in one process, as `python -m gradwatch.cli` runs each.

Each line of argv (a JSON list of lists on stdin) goes through `gradwatch.cli.main()` with its own
`sys.argv`, stdout and stderr captured, and its exit code taken from the SystemExit, as the
interpreter would; an exception that escapes is printed as the interpreter prints it. One import
of torch serves them all: the CLI tests that need many exit codes pay one process start, not one
per case. Prints one JSON list of {"returncode", "stdout", "stderr"}.
"""

from __future__ import annotations

import contextlib
import io
import json
import sys
import traceback


def _run(argv: list[str]) -> dict:
    from gradwatch.cli import main

    out, err = io.StringIO(), io.StringIO()
    code = 0
    sys.argv = ["gradwatch", *argv]
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            main()
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
            if exc.code is not None and not isinstance(exc.code, int):
                print(exc.code, file=sys.stderr)
        except BaseException:  # noqa: BLE001 - what the interpreter would print and exit with
            traceback.print_exc()
            code = 1
    return {"returncode": code, "stdout": out.getvalue(), "stderr": err.getvalue()}


if __name__ == "__main__":
    real_stdout = sys.stdout
    results = [_run(argv) for argv in json.load(sys.stdin)]
    print(json.dumps(results), file=real_stdout)
