"""Train every scenario and record what happened to it in tests/scenarios/labels.json.

    python tests/scenarios/label.py [--only NAME ...] [--jobs N]

Each case (a `fix` is just another case) is built with seed 0 and trained for `setup.steps` steps
on one thread. Everything recorded is measured here with plain PyTorch (`p.grad.norm()`, forward
hooks that retain the gradient of module outputs); gradwatch is not used at all.

Outcome rules (the `verdict`). L0 is the loss at step 0 (before any update), Lf the mean of the
last 10 losses, C the chance-level loss (the best input-independent predictor: the label entropy
for classification, 1/24 for the adding problem) where it is defined, ref = min(L0, C) (L0 when C
is undefined). For the GAN the "loss" is the Chamfer distance of its samples to the mixture's modes
(`Setup.quality`), measured before training and after every step.

    diverges  a loss or a gradient became NaN/Inf, or Lf > 10·L0
    stalls    Lf ≥ 0.95·ref: the run ended within 5% of where it started or of chance (or above)
    trains    Lf ≤ 0.5·ref: the run ended clearly (at least 2×) below both
    slow      anything in between: it learns, but not clearly

Confirmation rules (`rule`; a case is `confirmed` when one holds AND every kind it is labelled with
shows its measured signature, see SIGNATURES).

    healthy-trains       a healthy case whose verdict is trains
    broken-fails         a broken case whose verdict is stalls or diverges, and whose fix (if it
                         names one) trains
    fix-much-better      a broken case whose kinds all slow training down rather than stop it
                         (SLOWING_KINDS) and whose verdict is slow or trains, whose fix trains and
                         ends below half its final loss: Lf(fix) < 0.5·Lf(case)
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import torch
from torch import nn

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from scenarios.cases import CASES, CASES_BY_NAME, RECURRENT, Case, Runner, Setup  # noqa: E402

LABELS = Path(__file__).with_name("labels.json")

SIGMOID_FLAT, TANH_FLAT = 4.36, 2.18  # |pre-activation| beyond which σ' < 0.0125, tanh' < 0.05
EARLY = 50  # steps: the window a short watched run covers
SLOWING_KINDS = frozenset(
    {
        "saturated_activation",
        "dead_units",
        "stalled_layer",
        "vanishing_through_time",
        "exploding_through_time",
    }
)

# The measured signature of each kind: what the numbers in `measured` must show for a case that is
# labelled with it. Thresholds are documented in `signatures()`.
SIGNATURES = (
    "vanishing_gradient",
    "exploding_gradient",
    "nonfinite",
    "saturated_activation",
    "dead_units",
    "stalled_layer",
    "unstable_updates",
    "vanishing_through_time",
    "exploding_through_time",
    "loss_plateau",
)


# ---------------------------------------------------------------------------------------------
# Measuring


def param_layers(model: nn.Module) -> dict[str, list[nn.Parameter]]:
    """Each module's own parameters (a shared parameter belongs to the first module that has it)."""
    seen, out = set(), {}
    for name, module in model.named_modules():
        own = [p for p in module._parameters.values() if p is not None and id(p) not in seen]
        seen.update(id(p) for p in own)
        if own:
            out[name or "(root)"] = own
    return out


def _norm(tensors: list[torch.Tensor]) -> float:
    return math.sqrt(sum(float(t.detach().double().pow(2).sum()) for t in tensors))


def _first(output: Any) -> Any:
    return output[0] if isinstance(output, tuple | list) else output


class _Probe:
    """Forward hooks: the forward order of parameterised modules, their outputs (gradient retained),
    dead ReLU units and saturated sigmoid/tanh pre-activations."""

    def __init__(self, model: nn.Module):
        self.order: list[str] = []
        self.outputs: dict[str, torch.Tensor] = {}
        self.dead = [0, 0]  # dead units, units (one unit = a feature or a channel, per call)
        self.saturated = [0, 0]  # entries in the flat region, entries
        self.per_layer: dict[str, float] = {}
        owners = {name or "(root)" for name in param_layers(model)}
        self.handles = []
        for name, module in model.named_modules():
            key = name or "(root)"
            if key in owners:
                self.handles.append(module.register_forward_hook(self._output_hook(key)))
            if isinstance(module, nn.ReLU | nn.Sigmoid | nn.Tanh):
                self.handles.append(module.register_forward_hook(self._act_hook(key)))
            if isinstance(module, nn.RNN) and module.nonlinearity == "tanh":
                self.handles.append(module.register_forward_hook(self._rnn_hook(key)))

    def _output_hook(self, name: str):
        def hook(module, inputs, output):
            if name in self.outputs or name in self.order:
                return
            self.order.append(name)
            out = _first(output)
            if isinstance(out, torch.Tensor) and out.requires_grad:
                out.retain_grad()
                self.outputs[name] = out

        return hook

    def _act_hook(self, name: str):
        def hook(module, inputs, output):
            pre = inputs[0].detach()
            if isinstance(module, nn.ReLU):
                alive = pre > 0
                dims = [
                    d for d in range(pre.dim()) if d != (1 if pre.dim() == 4 else pre.dim() - 1)
                ]
                dead = int((~alive.any(dim=tuple(dims))).sum()) if dims else int((~alive).sum())
                units = alive.numel() // max(1, math.prod(alive.shape[d] for d in dims))
                self.dead[0] += dead
                self.dead[1] += units
                self.per_layer[f"dead:{name}"] = max(
                    self.per_layer.get(f"dead:{name}", 0), dead / units
                )
            else:
                flat = SIGMOID_FLAT if isinstance(module, nn.Sigmoid) else TANH_FLAT
                sat = int((pre.abs() > flat).sum())
                self.saturated[0] += sat
                self.saturated[1] += pre.numel()
                frac = sat / pre.numel()
                self.per_layer[f"sat:{name}"] = max(self.per_layer.get(f"sat:{name}", 0), frac)

        return hook

    def _rnn_hook(self, name: str):
        def hook(module, inputs, output):
            h = output[0].detach()
            sat = int((h.abs() > math.tanh(TANH_FLAT)).sum())
            self.saturated[0] += sat
            self.saturated[1] += h.numel()
            self.per_layer[f"sat:{name}"] = sat / h.numel()

        return hook

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()


def init_check(case: Case, setup: Setup, step: int) -> dict[str, Any]:
    """One forward and backward on a copy of the model with batch(step), no update: what an
    init-time check sees."""
    model = copy.deepcopy(setup.model)
    probe = _Probe(model)
    inputs, target = setup.batch(step)
    if case.family in RECURRENT:
        inputs = inputs.clone().requires_grad_(True)
    loss = setup.loss_fn(model(inputs), target)
    loss.backward()
    probe.remove()
    layers = param_layers(model)
    grads = {
        name: _norm([p.grad for p in params if p.grad is not None])
        for name, params in layers.items()
        if any(p.grad is not None for p in params)
    }
    order = [name for name in probe.order if name in grads]
    backflow = {}
    for name, out in probe.outputs.items():
        if out.grad is not None:
            backflow[name] = float(out.grad.double().norm()) / math.sqrt(out.shape[0])
    flow = [name for name in order if name in backflow]
    result: dict[str, Any] = {
        "loss": float(loss.detach()),
        "first_layer": order[0],
        "last_layer": order[-1],
        "grad_first": grads[order[0]],
        "grad_last": grads[order[-1]],
        "grad_total": _norm([p.grad for p in model.parameters() if p.grad is not None]),
        "backflow_first": backflow[flow[0]] if flow else None,
        "backflow_last": backflow[flow[-1]] if flow else None,
        "dead_frac": probe.dead[0] / probe.dead[1] if probe.dead[1] else None,
        "saturated_frac": probe.saturated[0] / probe.saturated[1] if probe.saturated[1] else None,
        "dead_frac_max_layer": max(
            (v for k, v in probe.per_layer.items() if k.startswith("dead:")), default=None
        ),
        "saturated_frac_max_layer": max(
            (v for k, v in probe.per_layer.items() if k.startswith("sat:")), default=None
        ),
    }
    result["grad_ratio"] = _ratio(result["grad_first"], result["grad_last"])
    result["backflow_ratio"] = _ratio(result["backflow_first"], result["backflow_last"])
    if case.family in RECURRENT:
        g = inputs.grad.double()
        result["time_grad_ratio"] = _ratio(float(g[:, 0].norm()), float(g[:, -1].norm()))
    return result


def _ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None:
        return None
    if b == 0:
        return math.inf if a > 0 else None
    return a / b


def train(case: Case, setup: Setup) -> dict[str, Any]:
    """Train for setup.steps steps; losses, first non-finite step, update ratios per layer."""
    model = setup.model
    layers = param_layers(model)
    runner = Runner(setup) if setup.train_step is None else None
    losses: list[float] = []
    progress: list[float] = [setup.quality()] if setup.quality else []
    accuracies: list[float] = []
    ratios: dict[str, list[float]] = {name: [] for name in layers}
    typical: list[float] = []  # per step: the median over layers of the update ratio
    grad_totals: list[float] = []
    nonfinite_step = None
    for step in range(setup.steps):
        before = {name: [p.detach().clone() for p in params] for name, params in layers.items()}
        if runner is not None:
            inputs, target = setup.batch(step)
            loss, output = runner.backward(inputs, target)
            if setup.accuracy is not None and step >= setup.steps - 10:
                accuracies.append(setup.accuracy(output, target))
        else:
            loss = setup.train_step(step)
        grads = [p.grad for p in model.parameters() if p.grad is not None]
        grad_total = _norm(grads)
        losses.append(float(loss))
        grad_totals.append(grad_total)
        finite = math.isfinite(float(loss)) and all(bool(torch.isfinite(g).all()) for g in grads)
        if not finite:
            nonfinite_step = step
            break
        end_grads = {
            name: _norm([p.grad for p in params if p.grad is not None])
            for name, params in layers.items()
        }
        if runner is not None:
            runner.update()
        step_ratios = []
        for name, params in layers.items():
            w = _norm(before[name])
            if w > 0:
                delta = _norm([p.detach() - b for p, b in zip(params, before[name], strict=True)])
                ratios[name].append(delta / w)
                step_ratios.append(delta / w)
        typical.append(statistics.median(step_ratios) if step_ratios else math.nan)
        if setup.quality:
            progress.append(setup.quality())
    return {
        "losses": losses,
        "progress": progress if setup.quality else losses,
        "accuracies": accuracies,
        "ratios": ratios,
        "typical": typical,
        "grad_totals": grad_totals,
        "nonfinite_step": nonfinite_step,
        "end_grads": end_grads if nonfinite_step != 0 else {},
    }


def measure(case: Case, seed: int = 0) -> dict[str, Any]:
    """Build, check at init, train and check again; every number the verdict rests on."""
    started = time.perf_counter()
    setup = case.build(seed)
    init = init_check(case, setup, 0)
    run = train(case, setup)
    progress = run["progress"]
    finite = [v for v in progress if math.isfinite(v)]
    tail = progress[-10:]
    final = statistics.fmean(tail) if tail and all(math.isfinite(v) for v in tail) else math.nan
    medians = {n: statistics.median(r) for n, r in run["ratios"].items() if r}
    maxima = {n: max(r) for n, r in run["ratios"].items() if r}
    first, last = init["first_layer"], init["last_layer"]
    end = None
    if run["nonfinite_step"] is None:
        end = init_check(case, setup, setup.steps)
    measured: dict[str, Any] = {
        "steps": setup.steps,
        "steps_run": len(run["losses"]),
        "loss_initial": progress[0],
        "loss_final": final,
        "loss_best": min(finite) if finite else math.nan,
        "loss_max": max(finite) if finite else math.nan,
        "loss_chance": setup.chance_loss,
        "progress_measure": "chamfer distance to modes" if setup.quality else "training loss",
        "generator_loss_initial": run["losses"][0] if setup.quality else None,
        "generator_loss_final": statistics.fmean(run["losses"][-10:]) if setup.quality else None,
        "accuracy_final": statistics.fmean(run["accuracies"]) if run["accuracies"] else None,
        "nonfinite_step": run["nonfinite_step"],
        "first_layer": first,
        "last_layer": last,
        "grad_norm_first_step0": init["grad_first"],
        "grad_norm_last_step0": init["grad_last"],
        "grad_ratio_step0": init["grad_ratio"],
        "grad_norm_total_step0": init["grad_total"],
        "grad_norm_first_end": run["end_grads"].get(first),
        "grad_norm_last_end": run["end_grads"].get(last),
        "grad_norm_total_max": max(run["grad_totals"]),
        "backflow_first_step0": init["backflow_first"],
        "backflow_last_step0": init["backflow_last"],
        "backflow_ratio_step0": init["backflow_ratio"],
        "time_grad_ratio_step0": init.get("time_grad_ratio"),
        "time_grad_ratio_end": end.get("time_grad_ratio") if end else None,
        "update_ratio_max": max(maxima.values(), default=None),
        "update_ratio_max_layer": max(maxima, key=maxima.get) if maxima else None,
        "update_ratio_median_largest": max(medians.values(), default=None),
        "update_ratio_median_first": medians.get(first),
        "update_ratio_median_last": medians.get(last),
        "update_ratio_typical_max_early": max(
            (v for v in run["typical"][:EARLY] if math.isfinite(v)), default=None
        ),
        "update_ratio_median_by_layer": {n: float(f"{v:.3g}") for n, v in medians.items()},
        "dead_frac_step0": init["dead_frac"],
        "dead_frac_end": end["dead_frac"] if end else None,
        "saturated_frac_step0": init["saturated_frac"],
        "saturated_frac_end": end["saturated_frac"] if end else None,
        "seconds": round(time.perf_counter() - started, 2),
    }
    return {
        "name": case.name,
        "family": case.family,
        "kinds": sorted(case.kinds),
        "healthy": case.healthy,
        "fix": case.fix,
        "description": case.description,
        "measured": _clean(measured),
        "verdict": verdict(measured),
    }


def _clean(values: dict[str, Any]) -> dict[str, Any]:
    """JSON has no NaN/Inf: write them as strings."""
    out = {}
    for key, value in values.items():
        if isinstance(value, float) and not math.isfinite(value):
            value = str(value)
        elif isinstance(value, float):
            value = float(f"{value:.6g}")
        out[key] = value
    return out


def _num(value: Any) -> float:
    return float(value) if value is not None else math.nan


# ---------------------------------------------------------------------------------------------
# Rules


def verdict(m: dict[str, Any]) -> str:
    """diverges / stalls / trains / slow, by the outcome rules in the module docstring."""
    initial, final = _num(m["loss_initial"]), _num(m["loss_final"])
    if m["nonfinite_step"] is not None or not math.isfinite(final) or final > 10 * initial:
        return "diverges"
    chance = m["loss_chance"]
    ref = min(initial, chance) if chance is not None else initial
    if final >= 0.95 * ref:
        return "stalls"
    if final <= 0.5 * ref:
        return "trains"
    return "slow"


def signatures(entry: dict[str, Any], fix: dict[str, Any] | None) -> dict[str, bool]:
    """Which kinds the measurements of a case show, by these thresholds:

    vanishing_gradient      at step 0 the back-propagated signal or the weight gradient at the
                            first layer is < 0.01× that at the last, or (with a fix) the first
                            layer's gradient is < 0.01× the fix's
    exploding_gradient      at step 0 the first/last ratio of either is > 10, or the total gradient
                            norm is > 100 (or > 10× the fix's), or it grows > 100× during the run
    nonfinite               a NaN/Inf loss or gradient at some step
    saturated_activation    > 50% of sigmoid/tanh pre-activations in the flat region (step 0 or end)
    dead_units              > 50% of ReLU units zero for the whole batch (step 0 or end)
    stalled_layer           the first layer's median update ratio is < 0.01× the largest median
                            update ratio of any layer
    unstable_updates        within the first 50 steps, a step whose median update ratio ‖Δw‖/‖w‖
                            over the layers is > 0.05 (the usual rule of thumb is ~1e-3; 1e-2 is
                            already high): most layers, not one small head, move too far
    vanishing_through_time  ‖∂L/∂x_0‖ / ‖∂L/∂x_T‖ < 1e-2 at step 0
    exploding_through_time  that ratio is > 1e2 at step 0, or the run met NaN/Inf
    loss_plateau            the verdict is stalls without any NaN/Inf
    """
    m = entry["measured"]
    f = fix["measured"] if fix else None

    def lt(a, b):
        return a is not None and b is not None and _num(a) < _num(b)

    grad0, fix_grad0 = (
        _num(m["grad_norm_first_step0"]),
        _num(f["grad_norm_first_step0"]) if f else math.nan,
    )
    total0 = _num(m["grad_norm_total_step0"])
    fix_total0 = _num(f["grad_norm_total_step0"]) if f else math.nan
    sat = max(
        _num(m["saturated_frac_step0"]) if m["saturated_frac_step0"] is not None else 0,
        _num(m["saturated_frac_end"]) if m["saturated_frac_end"] is not None else 0,
    )
    dead = max(
        _num(m["dead_frac_step0"]) if m["dead_frac_step0"] is not None else 0,
        _num(m["dead_frac_end"]) if m["dead_frac_end"] is not None else 0,
    )
    time_ratio = m["time_grad_ratio_step0"]
    return {
        "vanishing_gradient": lt(m["backflow_ratio_step0"], 0.01)
        or lt(m["grad_ratio_step0"], 0.01)
        or (grad0 < 0.01 * fix_grad0),
        "exploding_gradient": lt(10, m["backflow_ratio_step0"])
        or lt(10, m["grad_ratio_step0"])
        or total0 > 100
        or total0 > 10 * fix_total0
        or _num(m["grad_norm_total_max"]) > 100 * total0,
        "nonfinite": m["nonfinite_step"] is not None,
        "saturated_activation": sat > 0.5,
        "dead_units": dead > 0.5,
        "stalled_layer": lt(
            m["update_ratio_median_first"], 0.01 * _num(m["update_ratio_median_largest"])
        ),
        "unstable_updates": lt(0.05, m["update_ratio_typical_max_early"]),
        "vanishing_through_time": lt(time_ratio, 1e-2),
        "exploding_through_time": lt(1e2, time_ratio)
        or (entry["family"] in RECURRENT and m["nonfinite_step"] is not None),
        "loss_plateau": entry["verdict"] == "stalls",
    }


def confirm(entry: dict[str, Any], fix: dict[str, Any] | None) -> tuple[bool, str | None]:
    """(confirmed, rule) by the confirmation rules in the module docstring."""
    v = entry["verdict"]
    if entry["healthy"]:
        return v == "trains", "healthy-trains" if v == "trains" else None
    if not all(entry["signatures"][k] for k in entry["kinds"]):
        return False, None
    fix_trains = fix is not None and fix["verdict"] == "trains"
    if v in ("stalls", "diverges") and (entry["fix"] is None or fix_trains):
        return True, "broken-fails"
    if (
        v in ("slow", "trains")
        and fix_trains
        and set(entry["kinds"]) <= SLOWING_KINDS
        and _num(fix["measured"]["loss_final"]) < 0.5 * _num(entry["measured"]["loss_final"])
    ):
        return True, "fix-much-better"
    return False, None


def conclude(entries: dict[str, dict[str, Any]]) -> None:
    """Fill in each entry's fix verdict, signatures, confirmation and rule, in place."""
    for entry in entries.values():
        fix = entries.get(entry["fix"]) if entry["fix"] else None
        entry["fix_verdict"] = fix["verdict"] if fix else None
        entry["signatures"] = signatures(entry, fix)
        entry["confirmed"], entry["rule"] = confirm(entry, fix)


def label(name: str) -> dict[str, Any]:
    torch.set_num_threads(1)
    torch.set_flush_denormal(True)
    return measure(CASES_BY_NAME[name])


# ---------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", help="case names (their fixes are measured too)")
    parser.add_argument("--jobs", type=int, default=1)
    parser.add_argument("--out", type=Path, default=LABELS)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    # Vanishing signals reach subnormal floats, which are ~100x slower on CPU; flushing them to
    # zero changes no verdict (they are below 1e-38) and keeps every case within seconds.
    torch.set_flush_denormal(True)

    names = [case.name for case in CASES]
    if args.only:
        unknown = [n for n in args.only if n not in CASES_BY_NAME]
        if unknown:
            parser.error(f"unknown case(s): {', '.join(unknown)}")
        wanted = set(args.only) | {CASES_BY_NAME[n].fix for n in args.only if CASES_BY_NAME[n].fix}
        names = [n for n in names if n in wanted]
    entries: dict[str, dict[str, Any]] = {}
    if args.only and args.out.exists():
        entries = {e["name"]: e for e in json.loads(args.out.read_text())["cases"]}
    started = time.perf_counter()
    if args.jobs > 1:
        with ProcessPoolExecutor(args.jobs, mp_context=get_context("fork")) as pool:
            for entry in pool.map(label, names):
                entries[entry["name"]] = entry
                _print(entry)
    else:
        for name in names:
            entries[name] = label(name)
            _print(entries[name])
    entries = {c.name: entries[c.name] for c in CASES if c.name in entries}
    conclude(entries)
    args.out.write_text(
        json.dumps(
            {
                "rules": "Outcome rules" + __doc__.split("Outcome rules")[1].rstrip(),
                "signature_rules": " ".join(signatures.__doc__.split()),
                "seconds": round(time.perf_counter() - started, 1),
                "cases": list(entries.values()),
            },
            indent=1,
            ensure_ascii=False,
        )
        + "\n"
    )
    print(f"\n{'case':44} {'verdict':9} {'fix':9} {'rule':16} confirmed")
    for e in entries.values():
        print(
            f"{e['name']:44} {e['verdict']:9} {e['fix_verdict'] or '-':9} "
            f"{e['rule'] or '-':16} {e['confirmed']}"
        )
    print(f"{time.perf_counter() - started:.0f} s")
    return 0


def _print(entry: dict[str, Any]) -> None:
    m = entry["measured"]
    print(
        f"{entry['name']:44} {entry['verdict']:9} L0={m['loss_initial']} Lf={m['loss_final']} "
        f"C={m['loss_chance']} nf={m['nonfinite_step']} {m['seconds']}s",
        flush=True,
    )


if __name__ == "__main__":
    sys.exit(main())
