"""Diagnosis accuracy on the labelled scenario suite, for gradwatch and for a baseline that
re-implements AUTOTRAINER's published rules (Zhang et al., ICSE 2021), on the same cases.

For every case of tests/scenarios (labels come from training outcomes, recorded in labels.json):
- at init: `gw.check` on the case's first batch, the model alone;
- at init with the optimizer: `gw.check(..., optimizer=)`, which adds a rehearsal of 20 steps of a
  copy of the case's optimizer (at its first learning rate) on a copy of the model, on that batch;
- in training: `gw.watch` over the case's first 50 steps (fewer if the case is shorter).
Recall per kind: of the broken cases labelled with a kind, how many got a finding of that kind.
False-positive rate: of the healthy cases, how many got any warning or error finding.

Init twins: a broken case whose statistics at init equal a healthy case's (same rows, values equal
to 1e-5 relative) is the same model on the same batch; it only goes wrong through its optimizer or
learning rate, which a check at init never sees. They are found by comparing the recorded init
statistics, not by name, and init recall is reported with and without them.

    python bench/diagnosis.py [--steps 50 | --whole] [--seed 0] [--only NAME,...] [--json FILE]
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

import gradwatch as gw  # noqa: E402
from gradwatch.errors import GradwatchError  # noqa: E402
from scenarios.cases import CASES, Runner  # noqa: E402


def autotrainer(stats: pd.DataFrame, layers: list[str]) -> set[str]:
    """AUTOTRAINER's rules on gradwatch's stats (per window of 10 steps, their 'epoch'):
    vanishing: first/last gradient ratio < 1e-3 and first < 1e-4; exploding: ratio > 70;
    dying ReLU: >= 70% dead units; saturation: > 50% saturated; NaN loss or gradient: nonfinite.
    (Our saturated/dead fractions stand in for their |pre-activation| >= 5 and zero-gradient
    counts.)"""
    found: set[str] = set()
    g = stats[(stats.metric == "grad_norm")].pivot_table(
        index="step", columns="layer", values="value", aggfunc="last"
    )
    cols = [c for c in layers if c in g.columns]
    if len(cols) >= 2:
        for _, window in g[cols].groupby(g.index // 10):
            first, last = window[cols[0]].mean(), window[cols[-1]].mean()
            if not np.isfinite(first) or not np.isfinite(last):
                found.add("nonfinite")
                continue
            ratio = first / last if last > 0 else np.inf
            if ratio < 1e-3 and first < 1e-4:
                found.add("vanishing_gradient")
            if ratio > 70:
                found.add("exploding_gradient")
    if (stats[stats.metric == "dead_frac"].value >= 0.7).any():
        found.add("dead_units")
    if (stats[stats.metric == "saturated_frac"].value > 0.5).any():
        found.add("saturated_activation")
    loss = stats[stats.metric == "loss"].value
    if (~np.isfinite(loss)).any() or (stats[stats.metric == "nonfinite"].value > 0).any():
        found.add("nonfinite")
    return found


def _kinds(diagnosis) -> set[str]:
    return {f.kind for f in diagnosis.findings if f.severity in ("warning", "error")}


def run_case(case, steps: int | None, seed: int = 0) -> dict:
    """`steps` None trains the case's whole schedule."""
    out = {
        "name": case.name,
        "family": case.family,
        "labels": sorted(case.kinds),
        "healthy": not case.kinds,
    }
    setup = case.build(seed)
    inputs, target, loss_fn = setup.check_args()
    try:
        d, stats = _checked_stats(lambda: gw.check(setup.model, inputs, target, loss_fn))
        out["init"] = sorted(_kinds(d))
        out["init_stats"] = _init_signature(stats)
    except GradwatchError as exc:
        out["init"], out["init_error"] = [], str(exc)
    try:  # the check left the model as it was, so the same setup serves
        d = gw.check(
            setup.model, inputs, target, loss_fn, optimizer=setup.first_optimizer(), predict=False
        )
        out["init_opt"] = sorted(_kinds(d))
    except GradwatchError as exc:
        out["init_opt"], out["init_opt_error"] = [], str(exc)
    setup = case.build(seed)
    n = setup.steps if steps is None else min(steps, setup.steps)
    if setup.train_step is not None:
        opt, step_fn = setup.optimizers[0], setup.train_step
    else:
        runner = Runner(setup)
        opt, step_fn = runner.optimizer, runner.step
    w = gw.watch(setup.model, opt)
    with np.errstate(all="ignore"):
        for step in range(n):
            loss = step_fn(step)
            w.log_loss(loss)
    w.close()
    out["train"] = sorted(_kinds(w.diagnose()))
    stats = w.stats()
    layers = [n for n in w.layers() if n in set(stats[stats.metric == "grad_norm"].layer)]
    out["baseline_init"] = sorted(autotrainer(stats[stats.step == stats.step.min()], layers))
    out["baseline_train"] = sorted(autotrainer(stats, layers))
    return out


def _checked_stats(run):
    """Run `run()` (a gw.check) and return the stats table it diagnosed: check returns only the
    Diagnosis, so the table is read on its way into the detectors."""
    module = importlib.import_module("gradwatch.checks.at_init")
    seen = []
    original = module.diagnose

    def spy(stats, meta=None):
        seen.append(stats)
        return original(stats, meta)

    module.diagnose = spy
    try:
        return run(), seen[-1] if seen else None
    finally:
        module.diagnose = original


def _init_signature(stats) -> dict:
    """The init statistics a check recorded, keyed by (layer, metric, index)."""
    return {
        (r.layer, r.metric, int(r.index)): float(r.value) for r in stats.itertuples(index=False)
    }


def _same(a: dict | None, b: dict | None) -> bool:
    if not a or not b or a.keys() != b.keys():
        return False
    x = np.array([a[k] for k in a])
    y = np.array([b[k] for k in a])
    return bool(np.allclose(x, y, rtol=1e-5, atol=1e-12, equal_nan=True))


def init_twins(results: list[dict]) -> dict[str, str]:
    """Broken case -> the healthy case whose init statistics it shares."""
    healthy = [r for r in results if r["healthy"]]
    twins = {}
    for r in results:
        if r["healthy"]:
            continue
        match = next(
            (h["name"] for h in healthy if _same(r.get("init_stats"), h.get("init_stats"))), None
        )
        if match:
            twins[r["name"]] = match
    return twins


def score(results: list[dict], key: str) -> dict:
    kinds = sorted({k for r in results for k in r["labels"]})
    recall = {}
    for k in kinds:
        cases = [r for r in results if k in r["labels"]]
        recall[k] = (sum(k in r[key] for r in cases), len(cases))
    healthy = [r for r in results if r["healthy"]]
    fp = [r["name"] for r in healthy if r[key]]
    hits = sum(a for a, _ in recall.values())
    total = sum(b for _, b in recall.values())
    return {
        "recall": recall,
        "overall_recall": hits / total if total else float("nan"),
        "false_positives": fp,
        "fp_rate": len(fp) / len(healthy) if healthy else float("nan"),
    }


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=50)
    p.add_argument(
        "--whole", action="store_true", help="train each case for its whole schedule, not --steps"
    )
    p.add_argument(
        "--seed",
        type=int,
        default=0,
        help="seed for every case's model and data (labels were measured at 0)",
    )
    p.add_argument("--only", default="")
    p.add_argument("--markdown", action="store_true")
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    torch.set_flush_denormal(True)
    only = set(filter(None, args.only.split(",")))
    results = []
    t0 = time.perf_counter()
    for case in CASES:
        if only and case.name not in only:
            continue
        r = run_case(case, None if args.whole else args.steps, args.seed)
        results.append(r)
        print(
            f"{r['name']:42s} labels={r['labels']} init={r['init']} init+opt={r['init_opt']} "
            f"train={r['train']} autotrainer={r['baseline_train']}",
            flush=True,
        )
    print(f"{len(results)} cases in {time.perf_counter() - t0:.0f} s")
    keys = ("init", "init_opt", "train", "baseline_init", "baseline_train")
    scores = {key: score(results, key) for key in keys}
    kinds = sorted({k for r in results for k in r["labels"]})
    print()
    print(
        "| kind | gradwatch init | gradwatch init + optimizer | gradwatch training | AUTOTRAINER "
        "rules init | AUTOTRAINER rules training |"
    )
    print("|---|---|---|---|---|---|")
    for k in kinds:
        cells = [f"{scores[key]['recall'][k][0]}/{scores[key]['recall'][k][1]}" for key in keys]
        print(f"| {k} | " + " | ".join(cells) + " |")
    print(
        "| **overall recall** | "
        + " | ".join(f"{scores[key]['overall_recall']:.0%}" for key in keys)
        + " |"
    )
    twins = init_twins(results)
    kept = [r for r in results if r["name"] not in twins]
    cells = [
        f"{score(kept, key)['overall_recall']:.0%}" for key in ("init", "init_opt", "baseline_init")
    ]
    print(
        f"| **overall recall at init, {len(twins)} init twins excluded** | {cells[0]} | {cells[1]} "
        f"| | {cells[2]} | |"
    )
    n_healthy = sum(r["healthy"] for r in results)
    print(
        "| **false positives on healthy** | "
        + " | ".join(
            f"{len(scores[key]['false_positives'])}/{n_healthy} ({scores[key]['fp_rate']:.0%})"
            for key in keys
        )
        + " |"
    )
    for key in ("init", "init_opt", "train"):
        if scores[key]["false_positives"]:
            print(f"gradwatch {key} false positives: {', '.join(scores[key]['false_positives'])}")
    print(
        "init twins (same init statistics as a healthy case): "
        + ", ".join(f"{a} = {b}" for a, b in twins.items())
    )
    if args.json:
        for r in results:
            r.pop("init_stats", None)
        args.json.write_text(
            json.dumps(
                {"results": results, "scores": scores, "init_twins": twins}, indent=1, default=str
            )
        )
    return results


if __name__ == "__main__":
    main()
