"""Theory in the verdict at initialisation: where the model is a stack mean-field theory covers,
its predicted phase, χ₁ and depth scale decide whether the gradient vanishes or explodes with
depth, and how badly; elsewhere the measured back-propagated signal decides (`depth.py`).

A model is covered when one traced chain of weight layers joined only by one elementwise
activation (`theory.trace`) holds most of its weight layers and the theory's per-layer factor
agrees with the one measured on the batch. Its bulk (σ_w² and σ_b² of the layers inside the chain,
median) is then a point of the phase diagram: `theory.mean_field` gives χ₁ at the fixed point q*,
the depth scale ξ_∇ = 1/|log χ₁| and the trainable depth 6ξ_c (Schoenholz et al. 2017). The
gradient's norm over the chain's L links changes by χ₁^(L/2): unlike the measured fit on one batch,
this does not depend on how far that batch's first layers are from q*.
"""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np

from gradwatch.diagnose.advice import critical_init_remedy, exploding_remedies, vanishing_remedies
from gradwatch.diagnose.causes import order_by_cause
from gradwatch.diagnose.finding import Diagnosis, Finding
from gradwatch.diagnose.thresholds import (
    EXPLODE_ERROR,
    MIN_LAYERS,
    THEORY_AGREE,
    THEORY_CHAOS_WARN,
    THEORY_COVERAGE,
    VANISH_ERROR,
    VANISH_WARN,
)
from gradwatch.diagnose.view import WEIGHT_TYPES, View
from gradwatch.display.format import fmt, times


def stack_theory(comparison, view: View) -> dict | None:
    """The mean-field reading of the model's longest chain, or None where the theory does not
    cover the model (no chain of MIN_LAYERS links, mixed activations, a chain holding less than
    THEORY_COVERAGE of the weight layers, or a prediction the measurement does not bear out)."""
    from gradwatch.theory import mean_field  # theory is light, but only a check needs it

    if comparison is None or not comparison.chains:
        return None
    chain = max(comparison.chains, key=len)
    links = [lk for lk in comparison.links if lk.layer in chain and lk.next in chain]
    if len(links) < MIN_LAYERS or len({lk.activation for lk in links}) != 1:
        return None
    weight_layers = [n for n in view.order if view.type_of(n) in WEIGHT_TYPES]
    if len(chain) < THEORY_COVERAGE * max(len(weight_layers), 1):
        return None
    both = [lk for lk in links if lk.measured is not None and lk.predicted > 0]
    if len(both) < len(links) // 2:
        return None
    disagree = abs(np.mean([math.log(lk.measured / lk.predicted) for lk in both]))
    if disagree > math.log(THEORY_AGREE):
        return None
    # The bulk: the last link feeds the head, often initialised apart.
    bulk = links[:-1]
    sigma_w2 = float(np.median([lk.sigma_w2 for lk in bulk]))
    sigma_b2 = float(np.median([lk.sigma_b2 for lk in bulk]))
    try:
        mf = mean_field(links[0].activation, sigma_w2=sigma_w2, sigma_b2=sigma_b2)
    except Exception:  # noqa: BLE001 - an activation with parameters the link does not carry
        return None
    n = len(links)
    return {
        "activation": mf.activation,
        "sigma_w2": sigma_w2,
        "sigma_b2": sigma_b2,
        "phase": mf.phase,
        "chi1": mf.chi1,
        "xi_grad": mf.xi_grad,
        "trainable_depth": mf.trainable_depth,
        "links": n,
        "total": mf.chi1 ** (n / 2),  # norm of the gradient, first layer over last
        "layers": list(chain),
    }


def detect_phase(comparison, view: View) -> list[Finding]:
    """A vanishing (ordered) or exploding (chaotic) finding from the theory, or none."""
    t = stack_theory(comparison, view)
    if t is None or t["phase"] == "critical":
        return []
    total, n = t["total"], t["links"]
    beyond = n > t["trainable_depth"]
    where = (
        f"a {t['activation']} stack with σ_w² = {fmt(t['sigma_w2'])}, σ_b² = {fmt(t['sigma_b2'])} "
        f"is in the {t['phase']} phase (χ₁ = {fmt(t['chi1'])}, depth scale "
        f"{fmt(t['xi_grad'])} layers)"
    )
    evidence = {
        "metric": "theory",
        "theory": t,
        "per_layer_factor": math.sqrt(t["chi1"]),
        "total_factor": total,
    }
    layers = tuple(t["layers"][: max(1, len(t["layers"]) // 2)])
    if t["phase"] == "chaotic":
        if total < THEORY_CHAOS_WARN:
            return []
        severity = "error" if beyond or total >= EXPLODE_ERROR else "warning"
        summary = (
            f"Gradients explode with depth: {where}, so the gradient grows "
            f"{times(math.sqrt(t['chi1']))} per layer towards the input, {fmt(total)} over "
            f"{n} layers, and inputs decorrelate as they pass (trainable to about "
            f"{fmt(t['trainable_depth'])} layers)."
        )
        remedies = (critical_init_remedy(view, t), *exploding_remedies(view, {}))
        return [Finding("exploding_gradient", severity, layers, summary, evidence, remedies, 0)]
    if total > VANISH_WARN:
        return []
    severity = "error" if total < VANISH_ERROR or beyond else "warning"
    summary = (
        f"Gradients vanish with depth: {where}, so the gradient shrinks "
        f"{times(math.sqrt(t['chi1']))} per layer towards the input, {fmt(total)} over {n} layers."
    )
    trend = {"per_layer": math.sqrt(t["chi1"]), "total": total, "n_layers": n}
    remedies = (critical_init_remedy(view, t), *vanishing_remedies(view, trend))
    return [Finding("vanishing_gradient", severity, layers, summary, evidence, remedies, 0)]


def with_theory(diagnosis: Diagnosis, comparison) -> Diagnosis:
    """The check's diagnosis with the theory's verdict on depth: where the theory covers the model
    its finding replaces the measured one of the same kind (severity included)."""
    if comparison is None or diagnosis.stats is None or diagnosis.stats.empty:
        return diagnosis
    view = View(diagnosis.stats, diagnosis.meta or {})
    found = detect_phase(comparison, view)
    if not found:
        return diagnosis
    theory = {f.kind: f for f in found}
    merged = []
    for f in diagnosis.findings:
        t = theory.pop(f.kind, None)
        if t is not None:
            # The measured finding keeps its evidence and remedies; the theory sets the verdict's
            # severity and says why, and adds its own remedy.
            f = replace(
                f,
                severity=t.severity,
                summary=t.summary,
                evidence={**f.evidence, "theory": t.evidence["theory"]},
                remedies=f.remedies + t.remedies[:1],
            )
        merged.append(replace(f, caused_by=None, explains=()))
    diagnosis.findings = order_by_cause(merged + list(theory.values()))
    return diagnosis
