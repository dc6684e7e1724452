"""One-line sentences for what `check` predicts beside what it measures: theory, Jacobian,
the optimizer rehearsal, what-if."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from gradwatch.checks.at_init import JacobianAtInit
    from gradwatch.checks.rehearsal import RehearsalSummary
    from gradwatch.checks.rehearsed import RehearsedWhatIf
    from gradwatch.checks.what_if import RemedyTrial
    from gradwatch.theory.model import TheoryComparison

WHAT_IF_SHOWN = 5


def _x(v: float) -> str:
    return f"x{v:.3g}" if 1e-3 <= v < 1e3 else f"x{v:.1e}"


def prediction_lines(summary: dict) -> list[str]:
    """ "theory: predicted x0.76 per layer, measured x0.75 (20 layers)", the Jacobian's spectrum
    and the rehearsal, one line each."""
    lines = []
    th: TheoryComparison | None = summary.get("theory")
    if th and th.per_layer_predicted is not None and th.per_layer_measured is not None:
        lines.append(
            f"theory: back-propagated signal predicted {_x(th.per_layer_predicted)} per layer, "
            f"measured {_x(th.per_layer_measured)} (mean field from each layer's weights, biases "
            f"and activation, over {th.n_links} layer pairs)"
        )
    jac: JacobianAtInit | None = summary.get("jacobian")
    if jac and jac.spectrum.mean_sq is not None:
        sp = jac.spectrum
        how = "exact" if sp.exact else "estimated"
        spread = "" if sp.spread is None else f", spread {sp.spread:.3g}"
        lines.append(
            f"input-output Jacobian ({how}): mean squared singular value {sp.mean_sq:.3g}{spread} "
            "(1 and 0 at dynamical isometry)"
        )
    rh: RehearsalSummary | None = summary.get("rehearsal")
    if rh:
        lr = ", ".join(f"{x:g}" for x in rh.lr)
        found = ", ".join(rh.findings) or "nothing the check had not found"
        lines.append(
            f"rehearsal: {rh.steps} {rh.optimizer} steps (lr {lr}) on a copy, on this batch: loss "
            f"{rh.loss_first:.4g} -> {rh.loss_last:.4g}; found {found}"
        )
    rw: RehearsedWhatIf | None = summary.get("rehearsed_what_if")
    if rw:
        lines += rehearsed_lines(rw)
    return lines


def _num(v: float | None) -> str:
    return "n/a" if v is None else "diverged" if v == float("inf") else f"{v:.4g}"


def rehearsed_lines(r: RehearsedWhatIf) -> list[str]:
    """The rehearsed what-if as a ranked table: change, loss after N steps (± seed spread) against
    the baseline's, verdict, findings cleared."""
    by = "metric" if r.ranked_by == "metric" else f"loss after {r.steps} steps"
    b = r.baseline
    value = (lambda c: (c.metric, c.metric_spread)) if r.ranked_by == "metric" else None
    value = value or (lambda c: (c.final, c.spread))
    rows = [
        f"rehearsed what-if: each change trained {r.steps} steps on copies at seeds "
        f"{', '.join(map(str, r.seeds))}, {r.seconds:.1f} s; ranked by {by}",
        f"  {'change':46s} {by:>22s}  {'vs baseline':12s} cleared",
        f"  {'baseline':46s} {_num(value(b)[0]):>12s} ± {_num(value(b)[1]):<7s}",
    ]
    for c in r.changes:
        v, s = value(c)
        rel = "" if c.relative is None else f" (x{c.relative:.2g})"
        what = c.error if c.error else ", ".join(c.cleared) or "-"
        new = f"; new: {', '.join(c.introduced)}" if c.introduced else ""
        rows.append(
            f"  {c.name[:46]:46s} {_num(v):>12s} ± {_num(s):<7s} {c.verdict}{rel} {what}{new}"
        )
    if any(c.verdict == "minor gain" for c in r.changes):
        rows.append(
            "  minor gain: beyond seed noise, but under 10% of the untrained value and asked for "
            "by no finding"
        )
    for m in r.manual:
        rows.append(f"  not automatic ({m.action}): {m.code.splitlines()[0]}")
    if r.stopped_early:
        rows.append(
            f"  stopped early: the {r.max_seconds:g} s budget ran out; "
            f"not run: {', '.join(r.not_run)}"
        )
    return rows


def what_if_lines(what_if: list[RemedyTrial] | None, shown: int = WHAT_IF_SHOWN) -> list[str]:
    """The best remedies first, one line each, as measured on a deep copy."""
    if not what_if:
        return []
    return [("fixes  " if t.fixed else "       ") + t.line for t in what_if[:shown]]
