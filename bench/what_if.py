"""What-if at init over the scenario suite: which remedy fixes each broken case, and how well
theory predicted each case's per-layer factor.

    python bench/what_if.py [--only NAME ...]

For every broken case of tests/scenarios, `gw.check(..., what_if=True)` runs on the case's first
batch. A case is "broken at init" when that check reports a warning or an error; the others break
only while training (a learning rate, a loss), which no change of the model at init can show.
Prints one row per case: the findings, the best remedy and its measured effect, predicted and
measured per-layer factor of the back-propagated signal, and the seconds taken. Nothing is asserted.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "src"))

import gradwatch as gw  # noqa: E402
from scenarios.cases import CASES  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", default=None)
    args = parser.parse_args()
    torch.set_num_threads(1)
    broken = fixed = 0
    gaps = []
    for case in CASES:
        if case.healthy or (args.only and case.name not in args.only):
            continue
        setup = case.build(0)
        start = time.perf_counter()
        d = gw.check(setup.model, *setup.check_args(), what_if=True)
        seconds = time.perf_counter() - start
        found = sorted({f.kind for f in d.findings if f.severity in ("warning", "error")})
        th = d.summary.get("theory")
        pred, meas = (th.per_layer_predicted, th.per_layer_measured) if th else (None, None)
        theory = (
            f"predicted x{pred:.3g}, measured x{meas:.3g}" if pred and meas else "no traced chain"
        )
        if pred and meas:
            gaps.append(abs(pred / meas - 1))
        if not found:
            print(
                f"{case.name:38s} not broken at init ({', '.join(sorted(case.kinds))} show while "
                f"training); {theory}; {seconds:.1f}s"
            )
            continue
        broken += 1
        best = d.what_if[0] if d.what_if else None
        fixed += bool(best and best.fixed)
        print(f"{case.name:38s} {', '.join(found)}")
        verdict = "FIXED" if best and best.fixed else "not fixed"
        print(f"{'':38s} {verdict} by {best.line if best else '-'}")
        print(f"{'':38s} {theory}; {seconds:.1f}s")
    print(f"\nbroken at init: {broken}, fixed by the best remedy: {fixed}")
    if gaps:
        gaps.sort()
        print(
            f"theory vs measurement, |predicted/measured - 1| over {len(gaps)} cases: median "
            f"{gaps[len(gaps) // 2]:.1%}, max {gaps[-1]:.1%}"
        )


if __name__ == "__main__":
    main()
