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
    parser.add_argument(
        "--rehearsed", action="store_true", help="issue 21: rehearsed what-if on the real bugs"
    )
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.rehearsed:
        rehearsed_main(args.only)
        return
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


# ----------------------------------------------------------------------------- rehearsed (issue 21)

# Fix actions a rehearsal can make automatically; a loop fix only when it is clearing gradients
# (a cut graph is code in forward() no copy can rewrite).
AUTOMATIC = {"lr", "optimizer", "data", "loss", "loop", "init", "activation", "normalization"}
AUTOMATIC |= {"clipping", "residual", "gating"}


def deep_mlp_digits(steps: int = 100, seeds=(0, 1)) -> dict:
    """The issue's timing target: a 20-layer ReLU MLP (width 64, default init) on digits."""
    from sklearn.datasets import load_digits
    from torch import nn

    d = load_digits()
    x = torch.tensor(d.data, dtype=torch.float32)
    y = torch.tensor(d.target)
    torch.manual_seed(0)
    layers = []
    for _ in range(20):
        layers += [nn.Linear(64, 64), nn.ReLU()]
    model = nn.Sequential(*layers, nn.Linear(64, 10))
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    batches = [(x[i : i + 128], y[i : i + 128]) for i in range(0, len(x), 128)]
    start = time.perf_counter()
    dg = gw.check(
        model, x[:128], y[:128], optimizer=opt, what_if="train", steps=steps,
        batches=batches, seeds=seeds, predict=False,
    )  # fmt: skip
    seconds = time.perf_counter() - start
    r = dg.summary["rehearsed_what_if"]
    return {"seconds": seconds, "rehearsal": r, "candidates": len(r.changes)}


def rehearsed_case(name: str, seed: int = 0) -> dict:
    """The rehearsed what-if on one real-bug case's buggy program, scored against its fixed one."""
    import dataclasses
    import warnings

    import numpy as np

    from realbugs.program import default_train_step
    from realbugs.run import load_case, measure

    mod = load_case(name)
    healthy = mod.KIND == "healthy"
    p = mod.build(False, seed)
    batches = list(p.iter_batches())
    inputs, target = batches[0]
    custom = p.train_step is not default_train_step

    def step(model, optimizer, batch):
        return p.train_step(dataclasses.replace(p, model=model, optimizer=optimizer), batch)

    start = time.perf_counter()
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        d = gw.check(
            p.model, inputs, target, p.loss_fn, optimizer=p.optimizer, predict=False,
            what_if="train", steps=p.steps, batches=batches,
            train_step=step if custom else None, metric=p.error,
        )  # fmt: skip
        seconds = time.perf_counter() - start
        fixed = None if healthy else measure(mod, True, seed)
    r = d.summary["rehearsed_what_if"]
    first = next((f for f in d.findings if f.severity != "info" and f.remedies), None)
    top = r.top
    out = {
        "name": name,
        "kind": mod.KIND,
        "action": mod.ACTION,
        # whether the fix is one change a rehearsal can make (issue 21 counts only those)
        "one_change": getattr(mod, "ONE_CHANGE", True),
        "diagnosis_action": first.remedies[0].action if first else None,
        "top": top.name if top else None,
        "top_action": top.action if top else None,
        "better": [c.name for c in r.changes if c.verdict == "better"],
        "minor": [c.name for c in r.changes if c.verdict == "minor gain"],
        "baseline": r.baseline,
        "top_result": top,
        "seconds": seconds,
        "candidates": len(r.changes),
        "rehearsal": r,
    }
    if fixed is not None:
        if p.error is not None:
            ref = fixed["error_last"]
            got = top.metric if top else r.baseline.metric
            out["fixes"] = got is not None and got <= max(1.1 * ref, ref + 0.02)
            out["measure"] = f"error {got:.3g} vs fixed {ref:.3g}" if got is not None else "-"
        else:
            ref = fixed["loss_last_avg"]
            ref = float("inf") if ref in (None, "inf", "-inf") else float(ref)
            got = top.final if top else r.baseline.final
            out["fixes"] = got <= 1.1 * ref + 1e-3
            out["measure"] = f"loss {got:.3g} vs fixed {ref:.3g}"
    return out


def rehearsed_main(only: list[str] | None) -> None:
    sys.path.insert(0, str(ROOT / "bench"))
    from realbugs.run import case_names, load_case

    torch.set_flush_denormal(True)
    mlp = deep_mlp_digits()
    r = mlp["rehearsal"]
    print(
        f"20-layer MLP on digits: {mlp['candidates']} changes, {len(r.seeds)} seeds, {r.steps} "
        f"steps: {mlp['seconds']:.1f} s; top: {r.top.name if r.top else 'none'}"
    )
    rows = []
    print("| case | label action | diagnosis's first action | top rehearsed change | fixes | "
          "measured | changes | s |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|")
    for name in case_names():
        if only and name not in only:
            continue
        mod = load_case(name)
        if mod.KIND != "healthy" and (
            mod.ACTION not in AUTOMATIC or (mod.ACTION == "loop" and mod.KIND == "no_gradient")
        ):
            continue
        row = rehearsed_case(name)
        rows.append(row)
        fixes = "-" if "fixes" not in row else ("yes" if row["fixes"] else "no")
        top = row["top"] or "none better than baseline"
        if row["kind"] == "healthy":
            top = ", ".join(row["better"]) or "none better than baseline"
            if row["minor"]:
                top += f" (minor gain: {', '.join(row['minor'])})"
        print(
            f"| {name} | {row['action'] or 'healthy'} | {row['diagnosis_action'] or '-'} | {top} "
            f"| {fixes} | {row.get('measure', '-')} | {row['candidates']} | {row['seconds']:.1f} |",
            flush=True,
        )
    every = [r for r in rows if r["kind"] != "healthy"]
    healthy = [r for r in rows if r["kind"] == "healthy"]
    clean = sum(not r["better"] for r in healthy)
    for title, bugs in [
        ("programs whose fix is one automatic change (issue 21's targets)", [
            r for r in every if r["one_change"]
        ]),
        ("every buggy program above", every),
    ]:  # fmt: skip
        fixed = sum(r["fixes"] for r in bugs)
        # No top change and no diagnosis action is not an agreement: both say nothing.
        agree = sum(
            r["top_action"] is not None and r["top_action"] == r["diagnosis_action"] for r in bugs
        )
        label = sum(r["top_action"] == r["action"] for r in bugs)
        print(
            f"\n{title}: top change fixes the program: {fixed}/{len(bugs)}; top action = "
            f"diagnosis's first remedy action: {agree}/{len(bugs)}; = label action: "
            f"{label}/{len(bugs)}"
        )
    print(f"healthy with no change beyond seed noise: {clean}/{len(healthy)}")
    apart = [r["name"] for r in every if not r["one_change"]]
    if apart:
        print(f"(fix not one automatic change, see each case's NOT_ONE_CHANGE: {', '.join(apart)})")


if __name__ == "__main__":
    main()
