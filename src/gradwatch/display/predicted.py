"""One-line sentences for what `check` predicts beside what it measures: theory, Jacobian,
the optimizer rehearsal, what-if."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from gradwatch.checks.at_init import JacobianAtInit
    from gradwatch.checks.rehearsal import RehearsalSummary
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
    return lines


def what_if_lines(what_if: list[RemedyTrial] | None, shown: int = WHAT_IF_SHOWN) -> list[str]:
    """The best remedies first, one line each, as measured on a deep copy."""
    if not what_if:
        return []
    return [("fixes  " if t.fixed else "       ") + t.line for t in what_if[:shown]]
