"""Rehearsed what-if: each candidate change trained for N steps on a copy, ranked by its loss.

A what-if at initialisation proves a remedy repairs the gradient signal at step 0; this proves
what it does to training. The baseline and each change (`checks.changes`) run one after another:
a deep copy of the model (the watch's hooks left behind), the optimizer re-made over the copy
with the same class, groups, hyperparameters and state, the change applied, then `steps` real
steps on the batches given, watched cheaply for findings. Each runs at two or more seeds (dropout,
random inits and the order of several batches draw from it) so that a ranking is not noise. The
user's model, optimizer, RNG state and data are not touched; every copy is dropped when its run
ends.
"""

from __future__ import annotations

import copy
import gc
import itertools
import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from gradwatch._nn import call, untouched
from gradwatch.checks.changes import (
    Batch,
    Change,
    ManualChange,
    Setup,
    clipping_changes,
    first_changes,
    lr_up,
    output_graph,
)
from gradwatch.checks.rehearsal import copy_optimizer
from gradwatch.diagnose import Diagnosis
from gradwatch.errors import CheckError
from gradwatch.monitor import Watch

STEPS = 100  # default rehearsal length: seconds for a small model on a CPU
SEEDS = (0, 1)
TAIL = 0.1  # a run's loss is the mean over its last 10% of steps (less noisy than the last one)
MIN_GAIN = 0.1  # a change must lower the baseline's loss by 10% as well as by 2 seed spreads
BARELY_MOVES = 0.9  # baseline's loss above 90% of its first: "lr x10" joins the candidates
_PROBLEMS = ("warning", "error")
_HOOK_DICTS = (
    "_forward_hooks",
    "_forward_hooks_with_kwargs",
    "_forward_hooks_always_called",
    "_forward_pre_hooks",
    "_forward_pre_hooks_with_kwargs",
    "_backward_hooks",
    "_backward_pre_hooks",
)


@dataclass(frozen=True)
class RehearsedChange:
    """One change (or the baseline) trained for `steps` steps at each seed on a copy."""

    name: str  # "baseline", "lr x0.1", "he_init", ...
    action: str  # the diagnosis's action word ("" for the baseline)
    summary: str  # what it changes, one phrase
    losses: tuple[tuple[float, ...], ...]  # the loss curve at each seed (the loss's own units)
    final: float  # mean over seeds of the mean loss of the last 10% of steps (inf if non-finite)
    spread: float  # standard deviation of that over seeds (same units)
    relative: float | None  # final / the baseline's final; None for the baseline or when undefined
    # "baseline", "better", "better, with new findings", "worse", "within noise", "failed"
    verdict: str
    findings: tuple[str, ...] = ()  # warning/error finding kinds of the rehearsal (first seed)
    cleared: tuple[str, ...] = ()  # kinds the baseline's rehearsal had and this one has not
    introduced: tuple[str, ...] = ()  # kinds this one has and the baseline's had not
    metric: float | None = None  # mean over seeds of the `metric` callable after training
    metric_spread: float | None = None  # its standard deviation over seeds
    seconds: float = 0.0  # wall time of its runs together
    error: str | None = None  # why it could not run; None when it ran

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "action": self.action,
            "summary": self.summary,
            "verdict": self.verdict,
            "final": self.final,
            "spread": self.spread,
            "relative": self.relative,
            "metric": self.metric,
            "metric_spread": self.metric_spread,
            "findings": list(self.findings),
            "cleared": list(self.cleared),
            "introduced": list(self.introduced),
            "losses": [list(c) for c in self.losses],
            "seconds": self.seconds,
            "error": self.error,
        }


@dataclass(frozen=True)
class RehearsedWhatIf:
    """The baseline and every candidate change, each trained on copies; `changes` best first.

    `summary["rehearsed_what_if"]` of a check made with `what_if="train"`, or `Watch.what_if()`.
    """

    steps: int  # optimizer steps per run
    seeds: tuple[int, ...]  # the seeds each change ran at
    ranked_by: str  # "loss" (the final training loss) or "metric" (the metric callable)
    baseline: RehearsedChange
    changes: tuple[RehearsedChange, ...]  # ranked: better first, then by final loss or metric
    manual: tuple[ManualChange, ...]  # what the diagnosis asks that no copy can do
    not_run: tuple[str, ...]  # changes the time budget left out
    seconds: float  # wall time of the whole rehearsal
    max_seconds: float | None  # the budget; None for none
    stopped_early: bool  # the budget ran out before every change ran

    def __str__(self) -> str:
        from gradwatch.display.predicted import rehearsed_lines

        return "\n".join(rehearsed_lines(self))

    def figure(self):
        """The loss curves, one plotly panel per change with the baseline in each."""
        # report sits beside checks, not below: imported here, as monitor does for w.report().
        from gradwatch.report.figures import rehearsed_curves

        return rehearsed_curves(self)

    def _repr_html_(self) -> str:
        from gradwatch.display.format import esc

        fig = self.figure()
        table = f"<pre>{esc(str(self))}</pre>"
        return table + (fig.to_html(full_html=False, include_plotlyjs="cdn") if fig else "")

    @property
    def top(self) -> RehearsedChange | None:
        """The best change when it beats the baseline beyond seed noise, else None."""
        return self.changes[0] if self.changes and self.changes[0].verdict == "better" else None

    def to_dict(self) -> dict:
        return {
            "steps": self.steps,
            "seeds": list(self.seeds),
            "ranked_by": self.ranked_by,
            "baseline": self.baseline.to_dict(),
            "changes": [c.to_dict() for c in self.changes],
            "manual": [m.to_dict() for m in self.manual],
            "not_run": list(self.not_run),
            "seconds": self.seconds,
            "max_seconds": self.max_seconds,
            "stopped_early": self.stopped_early,
        }


# ----------------------------------------------------------------------------- helpers


def bare_copy(model: nn.Module) -> nn.Module:
    """A deep copy of `model` without its module hooks (a live watch's hooks stay behind, and the
    watch itself is not copied)."""
    memo: dict = {}
    for m in model.modules():
        for attr in _HOOK_DICTS:
            d = getattr(m, attr, None)
            if d is not None:
                memo[id(d)] = type(d)()
    return copy.deepcopy(model, memo)


def as_batches(batches: Any, steps: int) -> list[Batch]:
    """At most `steps` (inputs, target) batches from one batch, a list, or any iterable."""
    if isinstance(batches, tuple) and len(batches) == 2 and not isinstance(batches[0], tuple):
        return [batches]
    if not isinstance(batches, Iterable):
        raise CheckError(
            "batches must be one (inputs, target) pair or an iterable of them (a DataLoader)."
        )
    out = [tuple(b) if isinstance(b, list | tuple) else b for b in itertools.islice(batches, steps)]
    if not out or not all(isinstance(b, tuple) and len(b) == 2 for b in out):
        raise CheckError("batches must yield (inputs, target) pairs; pass at least one.")
    return out


def _optimizer_factory(
    optimizer: torch.optim.Optimizer, model: nn.Module
) -> Callable[[nn.Module], torch.optim.Optimizer]:
    """Build the user's optimizer over a copy: with its groups and state when the copy's
    parameters match the model's, else the same class with group 0's hyperparameters."""
    shapes = [p.shape for p in model.parameters()]

    def make(clone: nn.Module) -> torch.optim.Optimizer:
        if [p.shape for p in clone.parameters()] == shapes:
            return copy_optimizer(optimizer, model, clone)
        hyper = {k: v for k, v in optimizer.param_groups[0].items() if k != "params"}
        return type(optimizer)(clone.parameters(), **hyper)

    return make


def _tail_mean(curve: Sequence[float]) -> float:
    k = max(1, int(len(curve) * TAIL))
    tail = curve[-k:]
    return float(np.mean(tail)) if all(math.isfinite(v) for v in tail) else math.inf


def _problems(d: Diagnosis) -> tuple[str, ...]:
    return tuple(sorted({f.kind for f in d.findings if f.severity in _PROBLEMS}))


def _reason(exc: Exception) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0][:160] if text else 'no message'}"


def training_loss(loss_fn: Callable | None) -> Callable[[Any, Any], torch.Tensor]:
    """(output, target) -> the loss a check would train with: `loss_fn`, else cross-entropy for
    integer targets and mean squared error for float ones."""
    from gradwatch.checks.at_init import _loss

    return lambda out, target: _loss(out, target, loss_fn, cotangent=False)


# ----------------------------------------------------------------------------- one run


def _train(setup: Setup, steps: int, watch: bool, metric) -> tuple[list[float], tuple, Any]:
    """Train the setup's copy; (loss curve, finding kinds or (), metric or None)."""
    model = setup.model
    model.train()
    opt = setup.make_optimizer(model)
    if setup.lr_scale != 1.0:
        for g in opt.param_groups:
            g["lr"] = g["lr"] * setup.lr_scale
    handles = [
        opt.register_step_pre_hook(lambda o, a, k, f=f: (f(model), None)[1])
        for f in setup.before_step
    ]
    w = (
        Watch(
            model,
            opt,
            activations=False,
            backflow=True,
            through_time=False,
            histograms=False,
            flush_every=steps + 1,
        )
        if watch
        else None
    )
    values: list[torch.Tensor] = []
    batches = setup.batches
    try:
        for i in range(steps):
            batch = batches[i % len(batches)]
            if setup.clear_grads:
                opt.zero_grad(set_to_none=True)
            if setup.train_step is not None:
                loss = setup.train_step(model, opt, batch)
            else:
                loss = setup.loss_fn(call(model, batch[0]), batch[1])
                loss.backward()
                if w is not None:
                    w.log_loss(loss.detach())
                opt.step()
            values.append(loss.detach().reshape(()).float())
            # A diverged run is measured: one host sync every 10 steps to stop it early.
            if i % 10 == 9 and not bool(torch.isfinite(values[-1])):
                break
    finally:
        if w is not None:
            w.close()
        for h in handles:
            h.remove()
    curve = torch.stack(values).cpu().tolist()
    curve += [math.nan] * (steps - len(curve))
    kinds = _problems(w.diagnose()) if w is not None else ()
    score = None
    if metric is not None:
        with torch.no_grad():
            model.eval()
            score = float(metric(model))
    return curve, kinds, score


# ----------------------------------------------------------------------------- the rehearsal


def rehearse_what_if(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    batches: Any,
    *,
    loss_fn: Callable[[Any, Any], torch.Tensor],
    diagnosis: Diagnosis,
    steps: int = STEPS,
    seeds: Sequence[int] = SEEDS,
    max_seconds: float | None = None,
    train_step: Callable | None = None,
    metric: Callable[[nn.Module], float] | None = None,
) -> RehearsedWhatIf:
    """Train the baseline and every candidate change for `steps` steps on copies; rank them.

    `loss_fn(output, target)` is the training loss; `train_step(model, optimizer, batch) -> loss`,
    when given, is the user's own loop body (it zeroes, backwards and steps itself) and is what
    the baseline runs. `metric(model) -> float` (lower is better, e.g. a validation error), when
    given, ranks the changes instead of the training loss: use it where a change alters the loss
    (the loss's values are then not comparable). `max_seconds` stops after the run under way
    when exceeded and says which changes did not run.
    """
    if not isinstance(steps, int) or steps < 1:
        raise CheckError(f"steps must be a positive integer, got {steps!r}.")
    seeds = tuple(seeds)
    if len(seeds) < 1:
        raise CheckError("seeds must name at least one seed (two to measure seed noise).")
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise CheckError("A rehearsed what-if needs the optimizer training will use: optimizer=.")
    t0 = time.perf_counter()
    data = as_batches(batches, steps)
    make_opt = _optimizer_factory(optimizer, model)
    loop_known = train_step is not None
    kinds = diagnosis.kinds()
    # Without the user's loop, the baseline reproduces what the diagnosis says it does.
    baseline_clears = not loop_known and "uncleared_gradients" not in kinds

    def setup_for(seed: int) -> Setup:
        gen = torch.Generator().manual_seed(seed)
        order = data if seed == seeds[0] or len(data) == 1 else _shuffled(data, gen)
        return Setup(bare_copy(model), make_opt, list(order), loss_fn, baseline_clears, train_step)

    with untouched(model):
        with torch.enable_grad():
            graph = _graph(model, data[0], loss_fn)
        auto, manual = first_changes(model, optimizer, data, diagnosis, graph, loop_known)

        def run(change: Change | None) -> tuple[list, list, list, float, str | None]:
            curves, found, scores = [], (), []
            start = time.perf_counter()
            try:
                for j, seed in enumerate(seeds):
                    torch.manual_seed(seed)
                    s = setup_for(seed)
                    if change is not None:
                        change.apply(s, torch.Generator().manual_seed(seed))
                    curve, k, score = _train(s, steps, watch=j == 0, metric=metric)
                    del s
                    curves.append(curve)
                    scores.append(score)
                    found = found or k
            except Exception as exc:  # noqa: BLE001 - any change, any model
                return curves, found, scores, time.perf_counter() - start, _reason(exc)
            finally:
                gc.collect()
            return curves, found, scores, time.perf_counter() - start, None

        base_curves, base_found, base_scores, base_s, base_err = run(None)
        if base_err is not None:
            raise CheckError(f"The baseline rehearsal failed ({base_err}); fix the step first.")
        base_final = [_tail_mean(c) for c in base_curves]
        first = float(np.mean([c[0] for c in base_curves]))
        if math.isfinite(first) and BARELY_MOVES * first < max(base_final) < math.inf:
            auto.append(lr_up())
        if not any(c.action == "clipping" for c in auto) and not all(
            math.isfinite(v) for v in base_final
        ):
            auto += clipping_changes()
        baseline = _result(
            None, base_curves, base_found, base_scores, base_s, None, None, (), metric
        )
        results, not_run = [], []
        for change in auto:
            if max_seconds is not None and time.perf_counter() - t0 > max_seconds:
                not_run.append(change.name)
                continue
            curves, found, scores, secs, err = run(change)
            results.append(
                _result(change, curves, found, scores, secs, err, baseline, base_found, metric)
            )
    ranked = sorted(results, key=_rank)
    return RehearsedWhatIf(
        steps=steps,
        seeds=seeds,
        ranked_by="metric" if metric is not None else "loss",
        baseline=baseline,
        changes=tuple(ranked),
        manual=tuple(manual),
        not_run=tuple(not_run),
        seconds=time.perf_counter() - t0,
        max_seconds=max_seconds,
        stopped_early=bool(not_run),
    )


def _graph(model, batch, loss_fn):
    try:
        return output_graph(bare_copy(model), batch, loss_fn, call)
    except Exception:  # noqa: BLE001 - the graph only adds candidates; the baseline will say more
        return None


def _shuffled(data: list[Batch], gen: torch.Generator) -> list[Batch]:
    return [data[i] for i in torch.randperm(len(data), generator=gen).tolist()]


def _score(final: list[float], scores: list, metric) -> list[float]:
    if metric is None:
        return final
    return [s if s is not None and math.isfinite(s) else math.inf for s in scores]


def _stats(values: list[float]) -> tuple[float, float]:
    if not values or not all(math.isfinite(v) for v in values):
        return math.inf, 0.0
    return float(np.mean(values)), float(np.std(values))


def _result(
    change: Change | None,
    curves,
    found,
    scores,
    seconds,
    error,
    baseline: RehearsedChange | None,
    base_found,
    metric,
) -> RehearsedChange:
    name = change.name if change else "baseline"
    action = change.action if change else ""
    summary = change.summary if change else "the program as it is"
    if error is not None or not curves:
        return RehearsedChange(
            name, action, summary, (), math.inf, 0.0, None, "failed", seconds=seconds, error=error
        )
    final, spread = _stats([_tail_mean(c) for c in curves])
    m, m_spread = (None, None)
    if metric is not None:
        m, m_spread = _stats(_score([], scores, metric))
    verdict, relative = "baseline", None
    if baseline is not None:
        if math.isfinite(final) and math.isfinite(baseline.final) and baseline.final != 0:
            relative = final / baseline.final
        verdict = _verdict(
            (m, m_spread) if metric is not None else (final, spread),
            (baseline.metric, baseline.metric_spread)
            if metric is not None
            else (baseline.final, baseline.spread),
        )
    introduced = tuple(k for k in found if k not in base_found)
    if verdict == "better" and introduced:
        # A lower loss bought with a problem the program did not have (AGC on a healthy net that
        # then takes unstable steps) is a trade-off to weigh, not a fix to apply first.
        verdict = "better, with new findings"
    return RehearsedChange(
        name,
        action,
        summary,
        tuple(tuple(c) for c in curves),
        final,
        spread,
        relative,
        verdict,
        findings=found,
        cleared=tuple(k for k in base_found if k not in found),
        introduced=introduced,
        metric=m,
        metric_spread=m_spread,
        seconds=seconds,
    )


def _verdict(this: tuple, base: tuple) -> str:
    """Better or worse than the baseline beyond 2 seed spreads and MIN_GAIN of its value."""
    (v, s), (b, sb) = this, base
    if not math.isfinite(b):
        return "better" if math.isfinite(v) else "within noise"
    if not math.isfinite(v):
        return "worse"
    margin = max(2 * math.hypot(s, sb), MIN_GAIN * abs(b))
    if v < b - margin:
        return "better"
    if v > b + margin:
        return "worse"
    return "within noise"


_ORDER = {"better": 0, "better, with new findings": 1, "within noise": 2, "worse": 3, "failed": 4}


def _rank(r: RehearsedChange) -> tuple:
    value = r.metric if r.metric is not None else r.final
    value = value if value is not None and math.isfinite(value) else math.inf
    return (_ORDER[r.verdict], value, -len(r.cleared) + len(r.introduced))
