"""Root cause first: which finding explains which, from mechanism and time order.

A finding B is explained by A when A's kind can produce B's (`MECHANISM`: a missing zero_grad
makes the updates grow, which kills ReLUs, which cuts the gradient below them; saturation makes
the gradient vanish) and A held no later than B. Of several candidates, the most fundamental
(`ROOTNESS`: the loop's code before the data before the learning rate before what they do to the
layers) explains it. Findings are then ordered: root causes first (by severity, rootness, step),
then the consequences, each marked with `caused_by` and listed in its cause's `explains`.
"""

from __future__ import annotations

from dataclasses import replace

from gradwatch.diagnose.finding import Finding

_SYMPTOMS = {
    "exploding_gradient",
    "unstable_updates",
    "dead_units",
    "nonfinite",
    "saturated_activation",
    "stalled_layer",
    "loss_plateau",
    "vanishing_gradient",
}
MECHANISM: dict[str, set[str]] = {
    "uncleared_gradients": _SYMPTOMS | {"bad_learning_rate"},
    "output_loss_mismatch": _SYMPTOMS | {"no_gradient", "bad_learning_rate"},
    "unscaled_data": _SYMPTOMS | {"bad_learning_rate"},
    "no_gradient": {"stalled_layer", "loss_plateau", "vanishing_gradient"},
    "bad_learning_rate": _SYMPTOMS,
    "exploding_through_time": {"nonfinite", "unstable_updates", "exploding_gradient"},
    "exploding_gradient": {
        "nonfinite",
        "dead_units",
        "unstable_updates",
        "saturated_activation",
        "bad_learning_rate",
    },
    "unstable_updates": {"nonfinite", "dead_units", "loss_plateau", "saturated_activation"},
    "dead_units": {"vanishing_gradient", "no_gradient", "stalled_layer", "loss_plateau"},
    "saturated_activation": {"vanishing_gradient", "stalled_layer", "loss_plateau"},
    "vanishing_gradient": {"stalled_layer", "loss_plateau"},
    "vanishing_through_time": {"loss_plateau", "stalled_layer", "bad_learning_rate"},
}
ROOTNESS = {
    "uncleared_gradients": 0,
    "output_loss_mismatch": 1,
    "unscaled_data": 2,
    "no_gradient": 3,
    "bad_learning_rate": 4,
    "exploding_through_time": 5,
    "vanishing_through_time": 5,
    "exploding_gradient": 6,
    "saturated_activation": 7,
    "dead_units": 7,
    "vanishing_gradient": 8,
    "nonfinite": 9,
    "unstable_updates": 9,
    "stalled_layer": 10,
    "loss_plateau": 11,
}
_RANK = {"error": 0, "warning": 1, "info": 2}
# Findings about the size of the optimizer's steps: they act only through updates.
_STEP_SIZE = {"bad_learning_rate", "unstable_updates"}
# Findings of the model itself that, held at step 0, explain a learning-rate verdict.
_AT_INIT_CAUSES = {"exploding_gradient", "vanishing_through_time"}
# Findings read from updates or the loss over time: their step 0 already includes the first update.
_OVER_TIME = _STEP_SIZE | {"stalled_layer", "loss_plateau"}


def _can_explain(cause: Finding, effect: Finding) -> bool:
    if cause is effect or effect.kind not in MECHANISM.get(cause.kind, ()):
        return False
    if cause.severity == "info":
        return False
    if effect.kind == "no_gradient" and effect.evidence.get("reason") not in ("constant", "zero"):
        return False  # a graph cut is a cause of its own
    if cause.kind in _STEP_SIZE and effect.evidence.get("log_of_probability"):
        return False  # the log of a probability underflows to log 0 at any step size
    if cause.kind in _STEP_SIZE and cause.evidence.get("gradient_at_init"):
        # The gradient already dwarfed the weights before any update (SGD, whose step follows
        # it): the steps were large because the model's gradient was, so what they broke is
        # explained by the model (its init, its loss), not by the rate.
        return False
    if cause.kind in _STEP_SIZE and effect.step == 0 and effect.kind not in _OVER_TIME:
        # Step 0 is measured before the first update: what already held there is the model's
        # (its init, its loss, its data), and no learning rate made it.
        return False
    if effect.kind in _STEP_SIZE and cause.kind in _AT_INIT_CAUSES and cause.step != 0:
        # Gradients that explode only after updates may be the step size's doing; gradients that
        # explode before any update make every learning rate too large, and a gradient that
        # vanished through time from the start keeps the loss at chance whatever the rate.
        return False
    # A cause holds no later than what it explains.
    return cause.step is None or effect.step is None or cause.step <= effect.step


def order_by_cause(findings: list[Finding]) -> list[Finding]:
    """Findings linked (`caused_by`, `explains`) and ordered root cause first."""
    cause_of: dict[str, str] = {}
    for effect in findings:
        causes = [c for c in findings if _can_explain(c, effect)]
        if causes:
            best = min(causes, key=lambda c: (ROOTNESS.get(c.kind, 99), _RANK[c.severity]))
            cause_of[effect.kind] = best.kind
    # Follow chains to make sure no cycle slipped in (the table is acyclic; keep it so).
    for kind in list(cause_of):
        seen, k = {kind}, cause_of[kind]
        while k in cause_of:
            if cause_of[k] in seen:
                del cause_of[kind]
                break
            seen.add(k)
            k = cause_of[k]
    linked = [
        replace(
            f,
            caused_by=cause_of.get(f.kind),
            explains=tuple(g.kind for g in findings if cause_of.get(g.kind) == f.kind),
        )
        for f in findings
    ]

    def key(f: Finding):
        return (
            f.caused_by is not None,
            _RANK[f.severity],
            ROOTNESS.get(f.kind, 99),
            f.step if f.step is not None else 0,
        )

    return sorted(linked, key=key)
