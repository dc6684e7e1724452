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

import contextlib
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
    UNSTABLE,
    Batch,
    Change,
    ManualChange,
    Setup,
    clipping_changes,
    first_changes,
    log_guard,
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
# ...and, where no finding of the diagnosis asks for its kind of change, by 10% of the untrained
# model's value (the loss at the first step, or the metric before training): the task's own
# scale. A healthy program that converges faster under a change it did not need is a "minor gain".
MIN_SCALE = 0.1
NOISE_SIGMAS = 2.0  # "beyond seed noise": this many standard deviations of the difference
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
    # "baseline", "better", "better, with new findings", "minor gain", "worse", "within noise",
    # "failed" (see `_verdict`)
    verdict: str
    findings: tuple[str, ...] = ()  # warning/error finding kinds of the rehearsal (first seed)
    cleared: tuple[str, ...] = ()  # kinds the baseline's rehearsal had and this one has not
    introduced: tuple[str, ...] = ()  # kinds this one has and the baseline's had not
    metric: float | None = None  # mean over seeds of the `metric` callable after training
    metric_spread: float | None = None  # its standard deviation over seeds
    seconds: float = 0.0  # wall time of its runs together
    error: str | None = None  # why it could not run; None when it ran
    asked: bool = False  # a warning or error finding of the diagnosis names this kind of change

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
            "asked": self.asked,
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
    mode = setup.mode or contextlib.nullcontext
    scale = setup.target_scale
    try:
        for i in range(steps):
            batch = batches[i % len(batches)]
            if setup.clear_grads:
                opt.zero_grad(set_to_none=True)
            with mode():
                if setup.train_step is not None:
                    loss = setup.train_step(model, opt, batch)
                    shown = loss
                else:
                    out = call(model, batch[0])
                    if scale is None:
                        loss = shown = setup.loss_fn(out, batch[1])
                    else:
                        loss = setup.loss_fn(out, (batch[1] - scale[0]) / scale[1])
                        with torch.no_grad():
                            shown = setup.loss_fn(out.detach() * scale[1] + scale[0], batch[1])
                    loss.backward()
                    if w is not None:
                        w.log_loss(loss.detach())
                    opt.step()
            values.append(shown.detach().reshape(()).float())
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
        score = _measure(setup, metric)
    return curve, kinds, score


class _Unstandardised(nn.Module):
    """The model with its standardised output mapped back to the targets' units."""

    def __init__(self, model: nn.Module, mean: torch.Tensor, std: torch.Tensor):
        super().__init__()
        self.model, self.mean, self.std = model, mean, std

    def forward(self, *args, **kwargs):
        return self.model(*args, **kwargs) * self.std + self.mean


def _measure(setup: Setup, metric) -> float:
    """The metric of the setup's model as the change left it (in eval mode, without grad)."""
    model = setup.model
    if setup.target_scale is not None:
        model = _Unstandardised(model, *setup.target_scale)
    with torch.no_grad(), (setup.mode or contextlib.nullcontext)():
        model.eval()
        return float(metric(model))


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
                # A full collection costs ~0.1-0.5 s with torch and pandas loaded: after each
                # change only where the copies hold accelerator memory, once at the end anyway.
                if on_device:
                    gc.collect()
            return curves, found, scores, time.perf_counter() - start, None

        on_device = any(p.device.type != "cpu" for p in model.parameters())

        base_curves, base_found, base_scores, base_s, base_err = run(None)
        if base_err is not None:
            raise CheckError(f"The baseline rehearsal failed ({base_err}); fix the step first.")
        base_final = [_tail_mean(c) for c in base_curves]
        first = float(np.mean([c[0] for c in base_curves]))
        finite = all(math.isfinite(v) for v in base_final)
        if finite and not kinds & set(UNSTABLE) and not any(c.name == "lr x10" for c in auto):
            # A rate too low shows as a loss that falls, slowly: a larger one is always worth
            # a try where nothing says the steps are too large already.
            auto.append(lr_up())
        if not finite:
            if not any(c.action == "clipping" for c in auto):
                auto += clipping_changes()
            auto += log_guard(graph)
        untrained = first
        if metric is not None:
            untrained = _metric_before(setup_for(seeds[0]), metric)
        baseline = _result(None, base_curves, base_found, base_scores, base_s, None, (), metric)
        results, not_run = [], []
        for change in auto:
            if max_seconds is not None and time.perf_counter() - t0 > max_seconds:
                not_run.append(change.name)
                continue
            curves, found, scores, secs, err = run(change)
            results.append(_result(change, curves, found, scores, secs, err, base_found, metric))
    gc.collect()
    asked = _asked(diagnosis)
    judged = _judge(baseline, results, asked, untrained)
    ranked = _ranked(judged, asked)
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


def _metric_before(setup: Setup, metric) -> float:
    """The metric of the untrained copy (the task's scale for `MIN_SCALE`)."""
    try:
        return _measure(setup, metric)
    except Exception:  # noqa: BLE001 - the baseline's own metric call will say more
        return math.nan


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
    change: Change | None, curves, found, scores, seconds, error, base_found, metric
) -> RehearsedChange:
    """The measured runs of one change (or the baseline); its verdict is `_judge`'s."""
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
    return RehearsedChange(
        name,
        action,
        summary,
        tuple(tuple(c) for c in curves),
        final,
        spread,
        None,
        "baseline" if change is None else "within noise",
        findings=found,
        cleared=tuple(k for k in base_found if k not in found) if change else (),
        introduced=tuple(k for k in found if k not in base_found) if change else (),
        metric=m,
        metric_spread=m_spread,
        seconds=seconds,
    )


def _asked(d: Diagnosis) -> list[str]:
    """The action words of the diagnosis's warning and error findings' remedies, in its order
    (the first finding's first remedy first)."""
    out: list[str] = []
    for f in d.findings:
        if f.severity in _PROBLEMS:
            out += [r.action for r in f.remedies if r.action not in out]
    return out


def _noise_floor(runs: list[RehearsedChange], metric: bool) -> float:
    """The median seed spread over every run: two seeds give each run a poor estimate of its
    own spread, the median over a dozen runs a steadier one (a change's own larger spread
    still counts)."""
    spreads = [
        (r.metric_spread if metric else r.spread)
        for r in runs
        if r.verdict != "failed" and math.isfinite(r.metric if metric else r.final)
    ]
    spreads = [s for s in spreads if s is not None and math.isfinite(s)]
    return float(np.median(spreads)) if spreads else 0.0


def _judge(
    baseline: RehearsedChange, results: list[RehearsedChange], asked: list[str], untrained: float
) -> list[RehearsedChange]:
    from dataclasses import replace

    metric = baseline.metric is not None
    floor = _noise_floor([baseline, *results], metric)
    out = []
    for r in results:
        if r.verdict == "failed":
            out.append(replace(r, asked=r.action in asked))
            continue
        relative = None
        if math.isfinite(r.final) and math.isfinite(baseline.final) and baseline.final != 0:
            relative = r.final / baseline.final
        verdict = _verdict(r, baseline, floor, untrained, r.action in asked)
        if verdict == "better" and r.introduced and not r.cleared:
            # A lower loss bought with a problem the program did not have (AGC on a healthy net
            # that then takes unstable steps) is a trade-off to weigh, not a fix to apply first;
            # one that clears a problem the baseline had is judged by the loss it reaches.
            verdict = "better, with new findings"
        out.append(replace(r, relative=relative, verdict=verdict, asked=r.action in asked))
    return out


def _value(r: RehearsedChange) -> tuple[float, float]:
    if r.metric is not None:
        return r.metric, r.metric_spread or 0.0
    return r.final, r.spread


def _verdict(
    r: RehearsedChange, base: RehearsedChange, floor: float, untrained: float, asked: bool
) -> str:
    """Better or worse than the baseline, or within noise.

    A run whose loss stays finite at every seed is better than a baseline whose loss does not,
    and worse the other way round. Otherwise a change is better when it lowers the baseline's
    value (the metric, else the final loss) by more than `NOISE_SIGMAS` seed spreads (each at
    least the median spread of all runs) and by `MIN_GAIN` of that value. When no finding of the
    diagnosis asks for its kind of change, it must also gain `MIN_SCALE` of the untrained value;
    a smaller gain is a "minor gain": real, but not a fix for anything found."""
    if not math.isfinite(base.final):
        return "better" if math.isfinite(r.final) else "within noise"
    if not math.isfinite(r.final):
        return "worse"
    (v, s), (b, sb) = _value(r), _value(base)
    if not math.isfinite(b):
        return "better" if math.isfinite(v) else "within noise"
    if not math.isfinite(v):
        return "worse"
    margin = max(NOISE_SIGMAS * math.hypot(max(s, floor), max(sb, floor)), MIN_GAIN * abs(b))
    if v > b + margin:
        return "worse"
    if v >= b - margin:
        return "within noise"
    if asked or not math.isfinite(untrained) or b - v >= MIN_SCALE * abs(untrained):
        return "better"
    return "minor gain"


_ORDER = {
    "better": 0,
    "better, with new findings": 1,
    "minor gain": 2,
    "within noise": 3,
    "worse": 4,
    "failed": 5,
}


def _rank(r: RehearsedChange) -> tuple:
    value = _value(r)[0]
    value = value if value is not None and math.isfinite(value) else math.inf
    return (_ORDER[r.verdict], value, -len(r.cleared) + len(r.introduced))


def _ranked(results: list[RehearsedChange], asked: list[str]) -> list[RehearsedChange]:
    """Best first: by verdict, then by value. Among the better changes, those within seed noise
    of the best one cannot be told apart by measurement: the diagnosis's order breaks the tie
    (the kind of change its first finding names first)."""
    ranked = sorted(results, key=_rank)
    better = [r for r in ranked if r.verdict == "better"]
    if len(better) < 2:
        return ranked
    floor = _noise_floor(better, better[0].metric is not None)
    v0, s0 = _value(better[0])
    tied = [
        r
        for r in better
        if math.isfinite(v0)
        and _value(r)[0] - v0 <= NOISE_SIGMAS * math.hypot(max(_value(r)[1], floor), max(s0, floor))
    ]
    order = {a: i for i, a in enumerate(asked)}
    tied.sort(key=lambda r: (order.get(r.action, len(order)), _rank(r)))
    ids = {id(r) for r in tied}
    rest = [r for r in ranked if id(r) not in ids]
    return tied + rest
