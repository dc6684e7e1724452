"""Real-bug benchmark: public deep-learning bug reports as small PyTorch programs, each with a
buggy and a fixed version, and healthy programs; gradwatch's diagnosis of each next to a
re-implementation of AUTOTRAINER's rules (bench/diagnosis.py).

For each case and version (buggy, fixed; healthy programs once):
(a) train plainly and measure: loss at the first and last step (and the mean of the first and
    last 10% of steps), the task error before and after where the case defines one, parameters
    that never got a non-zero finite gradient, the largest gradient norm, non-finite losses;
(b) train again under gw.watch(model, optimizer=...), the loop's loss passed to w.log_loss, then
    w.diagnose(); AUTOTRAINER's rules run on the same w.stats();
(c) gw.check(model, inputs, target, loss_fn) on the first batch at init, and gw.check(...,
    optimizer=) which adds gradwatch's 20-step rehearsal.
Labels (KIND, ACTION) come from each case's fix and from (a), never from gradwatch; (a)'s verdict
per case (is the buggy version measurably worse than the fixed one?) is kept in measured.json.

    python bench/realbugs/run.py [--only a,b] [--json FILE] [--fast] [--seed 0] [--write-measured]
"""

from __future__ import annotations

import argparse
import importlib
import json
import math
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
BENCH = HERE.parent
if str(BENCH) not in sys.path:
    sys.path.insert(0, str(BENCH))

import gradwatch as gw  # noqa: E402
from diagnosis import autotrainer  # noqa: E402
from gradwatch.diagnose.finding import ACTIONS  # noqa: E402 - the vocabulary labels use
from realbugs.program import Program  # noqa: E402

MEASURED = HERE / "measured.json"
SEVERE = ("warning", "error")
KINDS = (
    "no_gradient",
    "output_loss_mismatch",
    "uncleared_gradients",
    "unscaled_data",
    "bad_learning_rate",
    "vanishing_gradient",
    "exploding_gradient",
    "saturated_activation",
    "dead_units",
    "nonfinite",
    "stalled_layer",
    "vanishing_through_time",
    "exploding_through_time",
    "loss_plateau",
    "healthy",
)
# AUTOTRAINER's rules have no ranking; its "first" kind is the first found in this order.
BASELINE_ORDER = (
    "nonfinite",
    "exploding_gradient",
    "vanishing_gradient",
    "dead_units",
    "saturated_activation",
)
# --fast: under ~40 s together, one case of most kinds and two healthy programs.
FAST = (
    "aihwkit446_missing_zero_grad",
    "forum23261_torch_tensor_of_tensors",
    "so45337371_softmax_one_unit_bce",
    "so47724077_adult_unscaled",
    "so48385830_linear_mlp_lr3",
    "pytorch3336_poisson_log_of_zero",
    "population68_relu_output_dead",
    "healthy_mlp_digits",
    "healthy_logistic_regression",
)


# ----------------------------------------------------------------------------- cases


def case_names() -> list[str]:
    return sorted(p.stem for p in (HERE / "cases").glob("*.py") if p.stem != "__init__")


def load_case(name: str):
    mod = importlib.import_module(f"realbugs.cases.{name}")
    for const in ("SOURCE", "TITLE", "BUG", "FIX", "KIND", "ACTION", "CHANGES", "build"):
        if not hasattr(mod, const):
            raise AttributeError(f"case {name} lacks {const}")
    if mod.KIND not in KINDS:
        raise ValueError(f"case {name}: unknown KIND {mod.KIND!r}")
    if (mod.KIND == "healthy") != (mod.ACTION is None) or (
        mod.ACTION is not None and mod.ACTION not in ACTIONS
    ):
        raise ValueError(f"case {name}: ACTION {mod.ACTION!r} does not fit KIND {mod.KIND!r}")
    return mod


def _finite(x: float) -> bool:
    return x is not None and math.isfinite(x)


def _num(x):
    """JSON-safe float: None for NaN, the string 'inf'/'-inf' for infinities."""
    if x is None:
        return None
    x = float(x)
    if math.isnan(x):
        return None
    if math.isinf(x):
        return "inf" if x > 0 else "-inf"
    return x


# ----------------------------------------------------------------------------- (a) plain


def measure(mod, fixed: bool, seed: int) -> dict:
    """Train plainly and measure the outcome (no gradwatch)."""
    t0 = time.perf_counter()
    p: Program = mod.build(fixed, seed)
    names = [n for n, q in p.model.named_parameters() if q.requires_grad]
    never = set(names)  # parameters that never had a non-zero finite gradient
    err0 = p.error(p.model) if p.error else None
    losses, max_norm, nonfinite_grad = [], 0.0, False
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        for batch in p.iter_batches():
            loss = p.train_step(p, batch)
            losses.append(float(loss.detach()))
            sq = 0.0
            for n, q in p.model.named_parameters():
                if q.grad is None:
                    continue
                g = q.grad.detach()
                fin = torch.isfinite(g)
                if not bool(fin.all()):
                    nonfinite_grad = True
                if n in never and bool((g[fin] != 0).any()):
                    never.discard(n)
                sq += float(g[fin].double().pow(2).sum())
            max_norm = max(max_norm, math.sqrt(sq))
    err1 = p.error(p.model) if p.error else None
    k = max(1, len(losses) // 10)
    first_avg, last_avg = float(np.mean(losses[:k])), float(np.mean(losses[-k:]))
    bad = [i for i, v in enumerate(losses) if not math.isfinite(v)]
    return {
        "steps": len(losses),
        "loss_first": _num(losses[0]),
        "loss_last": _num(losses[-1]),
        "loss_first_avg": _num(first_avg),
        "loss_last_avg": _num(last_avg),
        "nonfinite_loss_step": bad[0] if bad else None,
        "error_name": p.error_name or None,
        "error_first": _num(err0),
        "error_last": _num(err1),
        "params_without_grad": sorted(never),
        "params": len(names),
        "max_grad_norm": _num(max_norm),
        "nonfinite_grad": nonfinite_grad,
        "seconds": round(time.perf_counter() - t0, 2),
    }


def _loss_value(m: dict, key: str) -> float:
    v = m[key]
    return math.inf if v in (None, "inf", "-inf") else float(v)


def verdict(buggy: dict, fixed: dict) -> dict:
    """Is the buggy version measurably worse than the fixed one? In this order: it goes
    non-finite and the fix does not; the task error (same definition for both) is higher by
    0.05, or twice as high and higher by 0.01; without an error, the mean loss over the last
    10% of steps (same loss function for both) is higher by 25% and 1e-3."""
    b_nan, f_nan = (
        buggy["nonfinite_loss_step"] is not None,
        fixed["nonfinite_loss_step"] is not None,
    )
    if b_nan and not f_nan:
        return {
            "bug_worse": True,
            "by": "nonfinite",
            "buggy": buggy["nonfinite_loss_step"],
            "fixed": None,
        }
    if buggy["error_last"] is not None and fixed["error_last"] is not None:
        b, f = buggy["error_last"], fixed["error_last"]
        worse = b - f >= 0.05 or (b >= 2 * f and b - f >= 0.01)
        return {"bug_worse": worse, "by": "error", "buggy": b, "fixed": f}
    b, f = _loss_value(buggy, "loss_last_avg"), _loss_value(fixed, "loss_last_avg")
    return {"bug_worse": b >= 1.25 * f + 1e-3, "by": "loss", "buggy": _num(b), "fixed": _num(f)}


# ----------------------------------------------------------------------------- (b), (c) gradwatch


def _findings(d) -> list[dict]:
    out = []
    for f in d.findings:
        out.append(
            {
                "kind": f.kind,
                "severity": f.severity,
                "action": f.remedies[0].action if f.remedies else None,
                "layers": list(f.layers)[:6],
            }
        )
    return out


def _severe(findings: list[dict]) -> list[dict]:
    return [f for f in findings if f["severity"] in SEVERE]


def watched(mod, fixed: bool, seed: int) -> dict:
    """Train under gw.watch; the loop's loss goes to w.log_loss; diagnose; baseline rules."""
    t0 = time.perf_counter()
    p: Program = mod.build(fixed, seed)
    out: dict = {}
    try:
        w = gw.watch(p.model, optimizer=p.optimizer)
        p.on_loss = getattr(w, "log_loss", None)
        with warnings.catch_warnings(), np.errstate(all="ignore"):
            warnings.simplefilter("ignore")
            for batch in p.iter_batches():
                p.train_step(p, batch)
        w.close()
        out["findings"] = _findings(w.diagnose())
        stats = w.stats()
        grads = set(stats[stats.metric == "grad_norm"].layer)
        layers = [n for n in w.layers() if n in grads]
        out["baseline"] = sorted(autotrainer(stats, layers))
    except Exception as exc:  # noqa: BLE001 - a tool failure is a result too
        out.setdefault("findings", [])
        out.setdefault("baseline", [])
        out["error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"
    out["seconds"] = round(time.perf_counter() - t0, 2)
    return out


def checked(mod, fixed: bool, seed: int, rehearse: bool) -> dict:
    """gw.check on the first batch at init (with rehearse: plus the optimizer's rehearsal)."""
    t0 = time.perf_counter()
    p: Program = mod.build(fixed, seed)
    inputs, target = p.first_batch()
    out: dict = {}
    try:
        with warnings.catch_warnings(), np.errstate(all="ignore"):
            warnings.simplefilter("ignore")
            kw = {"optimizer": p.optimizer, "predict": False} if rehearse else {}
            d = gw.check(p.model, inputs, target, p.loss_fn, **kw)
        out["findings"] = _findings(d)
    except Exception as exc:  # noqa: BLE001
        out["findings"] = []
        out["error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"
    out["seconds"] = round(time.perf_counter() - t0, 2)
    return out


def run_case(name: str, seed: int) -> dict:
    mod = load_case(name)
    healthy = mod.KIND == "healthy"
    r = {
        "name": name,
        "kind": mod.KIND,
        "action": mod.ACTION,
        "source": mod.SOURCE,
        "healthy": healthy,
        "versions": {},
    }
    for version in ("healthy",) if healthy else ("buggy", "fixed"):
        fixed = version != "buggy"
        r["versions"][version] = {
            "measured": measure(mod, fixed, seed),
            "watch": watched(mod, fixed, seed),
            "check": checked(mod, fixed, seed, rehearse=False),
            "check_opt": checked(mod, fixed, seed, rehearse=True),
        }
    if not healthy:
        r["verdict"] = verdict(
            r["versions"]["buggy"]["measured"], r["versions"]["fixed"]["measured"]
        )
    return r


# ----------------------------------------------------------------------------- scoring


def _first(findings: list[dict]) -> dict | None:
    severe = _severe(findings)
    return severe[0] if severe else None


def _baseline_first(kinds: list[str]) -> str | None:
    return next((k for k in BASELINE_ORDER if k in kinds), None)


def tool_views(version: dict) -> dict:
    """Per tool: (kinds found at warning/error, first kind, first remedy action)."""
    views = {}
    for tool in ("watch", "check", "check_opt"):
        f = version[tool]["findings"]
        first = _first(f)
        views[tool] = {
            "kinds": sorted({x["kind"] for x in _severe(f)}),
            "first": first["kind"] if first else None,
            "action": first["action"] if first else None,
        }
    base = version["watch"]["baseline"]
    views["autotrainer"] = {"kinds": base, "first": _baseline_first(base), "action": None}
    return views


def totals(results: list[dict]) -> dict:
    bugs = [r for r in results if not r["healthy"]]
    healthy = [r for r in results if r["healthy"]]
    tools = ("watch", "check", "check_opt", "autotrainer")
    t = {
        tool: {
            "detected": 0,
            "first_kind": 0,
            "any_kind": 0,
            "first_action": 0,
            "fixed_flagged": 0,
            "healthy_flagged": 0,
        }
        for tool in tools
    }
    for r in bugs:
        b = tool_views(r["versions"]["buggy"])
        f = tool_views(r["versions"]["fixed"])
        for tool in tools:
            t[tool]["detected"] += bool(b[tool]["kinds"])
            t[tool]["first_kind"] += b[tool]["first"] == r["kind"]
            t[tool]["any_kind"] += r["kind"] in b[tool]["kinds"]
            t[tool]["first_action"] += b[tool]["action"] == r["action"]
            t[tool]["fixed_flagged"] += bool(f[tool]["kinds"])
    for r in healthy:
        h = tool_views(r["versions"]["healthy"])
        for tool in tools:
            t[tool]["healthy_flagged"] += bool(h[tool]["kinds"])
    return {"n_bugs": len(bugs), "n_healthy": len(healthy), "tools": t}


def totals_table(tot: dict) -> str:
    n, h = tot["n_bugs"], tot["n_healthy"]
    t = tot["tools"]
    cols = ("watch", "check", "check_opt", "autotrainer")
    head = (
        "gradwatch watch (training)",
        "gradwatch check (init)",
        "gradwatch check + optimizer (rehearsal)",
        "AUTOTRAINER rules (watch stats)",
    )
    lines = ["| | " + " | ".join(head) + " |", "|---|" + "---|" * len(cols)]

    def row(label, key, total, na=()):
        cells = []
        for c in cols:
            if c in na:
                cells.append("n/a")
            else:
                v = t[c][key]
                cells.append(f"{v}/{total} ({v / total:.0%})" if total else "0/0")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")

    row("buggy programs detected (any warning/error finding)", "detected", n)
    row("root cause first (first finding's kind = label kind)", "first_kind", n)
    row("label kind anywhere among the findings", "any_kind", n)
    row("first remedy's action = label action", "first_action", n, na=("autotrainer",))
    row("fixed versions with a warning/error finding", "fixed_flagged", n)
    row("healthy programs with a warning/error finding", "healthy_flagged", h)
    return "\n".join(lines)


def kind_table(results: list[dict]) -> str:
    """Per label kind: how many cases, and in how many each tool's first finding (or any
    finding) has that kind."""
    bugs = [r for r in results if not r["healthy"]]
    kinds = sorted({r["kind"] for r in bugs})
    lines = [
        "| label kind | cases | watch first | watch any | check any | check+opt any | "
        "AUTOTRAINER any |",
        "|---|---|---|---|---|---|---|",
    ]
    for k in kinds:
        rs = [tool_views(r["versions"]["buggy"]) for r in bugs if r["kind"] == k]
        cells = [
            sum(v["watch"]["first"] == k for v in rs),
            sum(k in v["watch"]["kinds"] for v in rs),
            sum(k in v["check"]["kinds"] for v in rs),
            sum(k in v["check_opt"]["kinds"] for v in rs),
            sum(k in v["autotrainer"]["kinds"] for v in rs),
        ]
        lines.append(f"| {k} | {len(rs)} | " + " | ".join(str(c) for c in cells) + " |")
    return "\n".join(lines)


def _fmt(x) -> str:
    if x is None:
        return "nan"
    if isinstance(x, str):
        return x
    return f"{x:.3g}"


def case_line(r: dict) -> str:
    label = f"{r['kind']}/{r['action']}" if not r["healthy"] else "healthy"
    if r["healthy"]:
        m = r["versions"]["healthy"]["measured"]
        v = tool_views(r["versions"]["healthy"])
        meas = f"{_fmt(m['loss_first'])}->{_fmt(m['loss_last_avg'])}"
    else:
        mb, mf = r["versions"]["buggy"]["measured"], r["versions"]["fixed"]["measured"]
        v = tool_views(r["versions"]["buggy"])
        meas = (
            f"buggy {_fmt(mb['loss_first'])}->{_fmt(mb['loss_last_avg'])}"
            f" fixed {_fmt(mf['loss_first'])}->{_fmt(mf['loss_last_avg'])}"
        )
        if mb["error_last"] is not None:
            meas += f" ({mb['error_name']} {_fmt(mb['error_last'])} vs {_fmt(mf['error_last'])})"
        if not r["verdict"]["bug_worse"]:
            meas += " [NOT WORSE]"
    w, c, o, a = v["watch"], v["check"], v["check_opt"], v["autotrainer"]
    return (
        f"| {r['name']} | {label} | {meas} | {', '.join(w['kinds']) or '-'} | "
        f"{w['first'] or '-'} | {w['action'] or '-'} | {', '.join(c['kinds']) or '-'} | "
        f"{', '.join(o['kinds']) or '-'} | {', '.join(a['kinds']) or '-'} |"
    )


CASE_HEADER = (
    "| case | label kind/action | measured loss first->last (mean of last 10%) | "
    "watch kinds (buggy) | watch first | first remedy | check kinds | check+opt kinds | "
    "AUTOTRAINER kinds |\n|---|---|---|---|---|---|---|---|---|"
)


# ----------------------------------------------------------------------------- main


def measured_record(results: list[dict], seed: int) -> dict:
    cases = {}
    for r in results:
        entry = {"kind": r["kind"], "action": r["action"]}
        for version, v in r["versions"].items():
            m = dict(v["measured"])
            m.pop("seconds", None)
            entry[version] = m
        if "verdict" in r:
            entry["verdict"] = r["verdict"]
        cases[r["name"]] = entry
    return {"seed": seed, "torch": torch.__version__.split("+")[0], "cases": cases}


def compare_measured(results: list[dict]) -> list[str]:
    """Cases whose verdict differs from the one kept in measured.json."""
    if not MEASURED.exists():
        return []
    kept = json.loads(MEASURED.read_text()).get("cases", {})
    out = []
    for r in results:
        old = kept.get(r["name"], {}).get("verdict")
        if "verdict" in r and old is not None and old["bug_worse"] != r["verdict"]["bug_worse"]:
            out.append(r["name"])
    return out


def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", default="", help="comma-separated case names")
    ap.add_argument("--fast", action="store_true", help=f"the {len(FAST)} cases of FAST only")
    ap.add_argument("--seed", type=int, default=0, help="labels were measured at seed 0")
    ap.add_argument("--json", type=Path, help="write every result here")
    ap.add_argument("--write-measured", action="store_true", help=f"rewrite {MEASURED.name}")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    torch.set_flush_denormal(True)
    names = case_names()
    if args.fast:
        names = [n for n in names if n in FAST]
    if args.only:
        wanted = set(filter(None, args.only.split(",")))
        unknown = wanted - set(case_names())
        if unknown:
            ap.error(f"unknown case(s): {', '.join(sorted(unknown))}")
        names = [n for n in names if n in wanted]
    t0 = time.perf_counter()
    results = []
    for name in names:
        t1 = time.perf_counter()
        r = run_case(name, args.seed)
        results.append(r)
        errors = [
            f"{ver}/{tool}: {v[tool]['error']}"
            for ver, v in r["versions"].items()
            for tool in ("watch", "check", "check_opt")
            if "error" in v[tool]
        ]
        note = f"  [{'; '.join(errors)}]" if errors else ""
        print(f"{name}: {time.perf_counter() - t1:.1f} s{note}", flush=True)
    elapsed = time.perf_counter() - t0
    print()
    print(CASE_HEADER)
    for r in results:
        print(case_line(r))
    tot = totals(results)
    print()
    print(
        f"{tot['n_bugs']} bug cases, {tot['n_healthy']} healthy programs, seed {args.seed}, "
        f"{elapsed:.0f} s"
    )
    print()
    print(totals_table(tot))
    print()
    print(kind_table(results))
    not_worse = [r["name"] for r in results if "verdict" in r and not r["verdict"]["bug_worse"]]
    if not_worse:
        print(f"\nbuggy version NOT measurably worse than the fixed one: {', '.join(not_worse)}")
    drift = compare_measured(results)
    if drift:
        print(f"verdict differs from {MEASURED.name}: {', '.join(drift)}")
    if args.write_measured:
        MEASURED.write_text(json.dumps(measured_record(results, args.seed), indent=1) + "\n")
        print(f"wrote {MEASURED}")
    if args.json:
        args.json.write_text(json.dumps({"results": results, "totals": tot}, indent=1, default=str))
    return results


if __name__ == "__main__":
    main()
