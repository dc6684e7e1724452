"""Bugs in the code around the model: parameters the loss never reaches, an output layer that does
not fit its loss, gradients not cleared between optimizer steps, inputs or targets far from unit
scale. They read what the loop probe recorded (`meta["probes"]["loop"]`: the loss's autograd
graph, the first inputs, modules run without autograd, stale `.grad`) next to the stats table."""

from __future__ import annotations

import numpy as np

from gradwatch.diagnose.advice import (
    mismatch_remedies,
    no_gradient_remedies,
    uncleared_remedies,
    unscaled_remedies,
)
from gradwatch.diagnose.finding import Finding
from gradwatch.diagnose.thresholds import (
    NEGATIVE_LIKELIHOOD,
    TARGET_UNSCALED,
    UNCLEARED_MIN_STEPS,
    UNCLEARED_SHARE,
    UNSCALED_ERROR,
    UNSCALED_TINY,
    UNSCALED_WARN,
)
from gradwatch.diagnose.view import View
from gradwatch.display.format import fmt, names

# Autograd node names, grouped by what the op does to the output layer's values.
PROBABILITY = {"SoftmaxBackward0": "softmax", "SigmoidBackward0": "sigmoid"}
NORMALISES_ITSELF = {
    "LogSoftmaxBackward0": "log_softmax (nn.CrossEntropyLoss applies it)",
    "BinaryCrossEntropyWithLogitsBackward0": "a sigmoid (BCEWithLogitsLoss applies it)",
}
LIKELIHOOD = {
    "LogBackward0",
    "NllLossBackward0",
    "BinaryCrossEntropyBackward0",
    "LogSoftmaxBackward0",
}
# Losses whose target is a class index (0..C-1), and every loss op that saves a target.
CLASS_INDEX_LOSSES = {"NllLossBackward0", "NllLoss2DBackward0"}
_TARGET_LOSSES = CLASS_INDEX_LOSSES | {
    "BinaryCrossEntropyBackward0",
    "BinaryCrossEntropyWithLogitsBackward0",
    "MseLossBackward0",
    "L1LossBackward0",
    "SmoothL1LossBackward0",
    "HuberLossBackward0",
}
# Ops that carry values to the loss without changing what they are (reshape, clamp, scale...).
PASS = {
    "ClampBackward1",
    "ClampMinBackward0",
    "ClampMaxBackward0",
    "ViewBackward0",
    "UnsafeViewBackward0",
    "ReshapeAliasBackward0",
    "SqueezeBackward0",
    "SqueezeBackward1",
    "UnsqueezeBackward0",
    "SelectBackward0",
    "SliceBackward0",
    "IndexBackward0",
    "ExpandBackward0",
    "CloneBackward0",
    "ToCopyBackward0",
    "DivBackward0",
    "SumBackward1",
}
LAYER_OPS = {"AddmmBackward0", "MmBackward0", "ConvolutionBackward0", "LinearBackward0"}
BOUNDS = {"SigmoidBackward0": (0.0, 1.0), "SoftmaxBackward0": (0.0, 1.0), "TanhBackward0": (-1, 1)}


def _loop(view: View) -> dict:
    return view.meta.get("probes", {}).get("loop") or {}


def _below(head: list[str], i: int) -> str | None:
    """The first op below position i of the head that is not a pass-through op."""
    for op in head[i + 1 :]:
        if op not in PASS:
            return op
    return None


def _loss_values(view: View) -> np.ndarray:
    table = view.metric("loss")
    if table.empty:
        return np.array([])
    return table.iloc[:, 0].to_numpy(dtype=float)


def detect_output_loss(view: View) -> list[Finding]:
    """How the output layer meets the loss, read from the loss's autograd graph: probabilities
    into a loss that applies its own softmax/sigmoid, a softmax over one unit (the constant 1), a
    ReLU or unbounded output under a log-likelihood, a bounded output for targets outside its
    range (from the target the graph held, or a log-likelihood that went negative)."""
    graph = _loop(view).get("graph") or {}
    head = list(graph.get("head") or [])
    if not head:
        return []
    problems: list[tuple[str, str, dict]] = []
    for i, op in enumerate(head):
        below = _below(head, i)
        if op in NORMALISES_ITSELF and below in PROBABILITY:
            problems.append(
                (
                    "twice",
                    f"The model's output goes through {PROBABILITY[below]} and then into a loss "
                    f"that applies {NORMALISES_ITSELF[op]} again: the loss sees probabilities as "
                    "scores, cannot approach 0, and its gradient shrinks as the outputs saturate.",
                    {"ops": [op, below]},
                )
            )
            break
    width, dim = graph.get("output_width"), graph.get("softmax_dim")
    if dim is not None and dim > 2**62:
        dim -= 2**64
    if "SoftmaxBackward0" in head and width == 1 and dim in (-1, 1, None):
        k = head.index("SoftmaxBackward0")
        if _below(head, k) in LAYER_OPS or k == len(head) - 1:
            problems.append(
                (
                    "one_unit",
                    "A softmax over a single output unit is the constant 1: the output never "
                    "depends on the input and every gradient is exactly 0.",
                    {"output_width": 1, "softmax_dim": dim},
                )
            )
    for i, op in enumerate(head):
        if op not in LIKELIHOOD or op == "LogSoftmaxBackward0":
            continue
        below = _below(head, i)
        if below == "ReluBackward0" or below in LAYER_OPS:
            what = "a ReLU" if below == "ReluBackward0" else "an unbounded (linear)"
            problems.append(
                (
                    "unbounded",
                    f"The loss takes the log-likelihood of {what} output: it is not a "
                    "probability (a ReLU's zeros give log 0, and no gradient flows back through "
                    "them).",
                    {"ops": [op, below]},
                )
            )
            break
    target = graph.get("target") or {}
    if next((op for op in head if op in _TARGET_LOSSES), None) in CLASS_INDEX_LOSSES:
        # The target a negative log-likelihood saved holds class indices, not values to match.
        target = {}
    bounded = next((op for op in head if op in BOUNDS), None)
    if bounded and target and target.get("min") is not None:
        lo, hi = BOUNDS[bounded]
        name = {"SigmoidBackward0": "sigmoid", "SoftmaxBackward0": "softmax"}.get(bounded, "tanh")
        if target["min"] < lo - 1e-6 or target["max"] > hi + 1e-6:
            problems.append(
                (
                    "range",
                    f"The output is a {name} (values in [{lo:g}, {hi:g}]) but the targets reach "
                    f"{fmt(target['min'])} to {fmt(target['max'])}: the loss cannot be met.",
                    {"target_min": target["min"], "target_max": target["max"]},
                )
            )
        elif bounded == "SoftmaxBackward0" and (target.get("row_sum_max") or 1) > 1.01:
            problems.append(
                (
                    "multilabel",
                    "The output is a softmax (each row sums to 1) but target rows sum to up to "
                    f"{fmt(target['row_sum_max'])}: several labels per sample need independent "
                    "sigmoids, not a softmax that makes them compete.",
                    {"target_row_sum_max": target["row_sum_max"]},
                )
            )
    if bounded in ("SigmoidBackward0", "SoftmaxBackward0") and any(op in LIKELIHOOD for op in head):
        loss = _loss_values(view)
        loss = loss[np.isfinite(loss)]
        if len(loss) and float(loss.min()) < NEGATIVE_LIKELIHOOD:
            problems.append(
                (
                    "range",
                    "A cross-entropy of probabilities cannot be negative, yet the logged loss "
                    f"reached {fmt(float(loss.min()))}: the targets lie outside [0, 1] (class "
                    "indices used as probabilities?).",
                    {"loss_min": float(loss.min())},
                )
            )
    if not problems:
        return []
    which, summary, evidence = problems[0]
    evidence = {**evidence, "head": head[:8], "problem": which}
    layers = tuple(view.param_layers[-1:]) if view.param_layers else ()
    return [
        Finding(
            "output_loss_mismatch",
            "error",
            layers,
            summary,
            evidence,
            mismatch_remedies(view, which, head),
            view.steps[0] if view.steps else None,
        )
    ]


def _trainable_layers(view: View) -> list[str]:
    return [
        d["name"]
        for d in view.meta.get("model", {}).get("layers", [])
        if d.get("n_trainable", 0) > 0
    ]


def detect_no_gradient(view: View) -> list[Finding]:
    """Layers whose gradient is absent (`.grad` None) or exactly zero at every recorded step,
    named with why: not reached by the loss's graph (a detach, a copy, .item()), run without
    autograd (torch.no_grad, a reentrant checkpoint whose input does not require grad), or
    reached but given exactly zero (a constant output)."""
    trainable = _trainable_layers(view)
    skipped = view.metric("skipped")
    # A step the GradScaler skipped records no gradient on purpose: it is not a missing one.
    taken = view.n_steps - (int((skipped == 1).to_numpy().sum()) if not skipped.empty else 0)
    if not trainable or taken < 1:
        return []
    g = view.metric("grad_norm")
    zero = []
    for layer in trainable:
        col = g[layer] if layer in g.columns else None
        # Absent (.grad None) or exactly 0 at every step; a NaN gradient is a gradient (nonfinite).
        if col is None or bool(col.notna().any() and (col.dropna() == 0).all()):
            zero.append(layer)
    if not zero:
        return []
    loop = _loop(view)
    graph = loop.get("graph") or {}
    unreached = graph.get("unreached") or []
    no_grad = set(loop.get("no_grad_modules") or [])
    cut = [n for n in zero if any(p.rsplit(".", 1)[0] == n or p == n for p in unreached)]
    every = len(zero) == len(trainable)
    seen = set(view.order)
    if graph and not graph.get("opaque"):
        # Parameters the loss's graph never reached and whose module never ran: unused by design
        # (a pooler no loss uses), not a bug. The graph says so only when it is readable.
        unused = [n for n in zero if n not in seen and n in cut and n not in no_grad]
        zero = [n for n in zero if n not in unused]
        if not zero:
            return []
    why, reason = _why(zero, cut, no_grad, graph, every)
    if reason == "zero" and _zero_initialised(view):
        # A layer initialised to exactly 0 (Fixup, ReZero, a zero-init residual branch) passes
        # back 0 to the layers before it until its first update: by design, not a bug, while no
        # update has been recorded yet.
        upd = view.metric("update_ratio")
        if upd.empty:
            return []
    severity = "error" if every or reason in ("no_grad", "cut") else "warning"
    summary = (
        f"{'Every layer' if every else names(zero)} got no gradient at any of {taken} "
        f"recorded steps (.grad None or exactly 0): {why}"
    )
    evidence = {
        "layers_without_gradient": len(zero),
        "trainable_layers": len(trainable),
        "steps": taken,
        "reason": reason,
        "parameters_not_reached": unreached[:12],
        "ran_without_autograd": sorted(no_grad & set(zero)),
    }
    return [
        Finding(
            "no_gradient",
            severity,
            tuple(zero),
            summary,
            evidence,
            no_gradient_remedies(view, zero, reason),
            view.steps[0],
        )
    ]


def _why(zero, cut, no_grad, graph, every) -> tuple[str, str]:
    if no_grad & set(zero):
        return (
            f"{names(sorted(no_grad & set(zero)))} ran without autograd inside the forward "
            "(under torch.no_grad, or a reentrant torch.utils.checkpoint whose input does not "
            "require grad), so nothing below it is in the loss's graph.",
            "no_grad",
        )
    if graph and graph.get("reached") == 0:
        return (
            "the loss's autograd graph reaches none of the model's parameters: its value was "
            "taken out of the graph (.item(), float(), .detach(), torch.tensor([...]) or a new "
            "leaf tensor) before it became the loss.",
            "cut",
        )
    if cut:
        return (
            f"the loss's autograd graph does not reach {names(cut)}: their output is cut from it "
            "(a .detach(), .data, .item() or a copy made with torch.tensor([...]) / .numpy()).",
            "cut",
        )
    if every:
        return (
            "the loss reaches the parameters but passes back exactly 0: the output does not "
            "depend on them (a constant output, e.g. a softmax over one unit or a dead ReLU).",
            "constant",
        )
    return (
        "they are in the loss's graph but every gradient that reaches them is 0 (units that are "
        "off for every sample, or a constant factor of 0).",
        "zero",
    )


def detect_uncleared(view: View) -> list[Finding]:
    """At the first gradient after an optimizer step, `.grad` still held the previous step's
    gradient: zero_grad() is missing (deliberate accumulation clears after the step, so it is not
    flagged)."""
    loop = _loop(view)
    checked, stale = loop.get("optimizer_steps_checked", 0), loop.get("uncleared_steps", 0)
    if checked < UNCLEARED_MIN_STEPS or stale < UNCLEARED_SHARE * checked:
        return []
    summary = (
        f"Gradients are not cleared between optimizer steps: after {stale} of {checked} steps "
        "the next backward() added to the previous step's .grad, so each update uses the sum of "
        "all gradients so far and grows with every step."
    )
    return [
        Finding(
            "uncleared_gradients",
            "error",
            tuple(view.param_layers),
            summary,
            {"steps_checked": checked, "steps_not_cleared": stale},
            uncleared_remedies(view),
            view.steps[0],
        )
    ]


def detect_unscaled(view: View) -> list[Finding]:
    """Inputs (rms of the first recorded batch) or regression targets (rms, where the loss's
    graph held them) far from unit scale."""
    loop = _loop(view)
    inputs = loop.get("inputs") or {}
    target = (loop.get("graph") or {}).get("target") or {}
    head = (loop.get("graph") or {}).get("head") or []
    what, evidence, severity = [], {}, "warning"
    rms = inputs.get("rms")
    if rms is not None and np.isfinite(rms) and (rms > UNSCALED_WARN or 0 < rms < UNSCALED_TINY):
        what.append(
            f"the inputs have a root-mean-square of {fmt(rms)} (largest |x| "
            f"{fmt(inputs.get('max_abs'))}), far from the unit scale the default init assumes"
        )
        evidence.update(input_rms=rms, input_max_abs=inputs.get("max_abs"))
        if rms > UNSCALED_ERROR:
            severity = "error"
    t_rms = target.get("rms")
    regression = any(op in head for op in ("MseLossBackward0", "L1LossBackward0"))
    if regression and t_rms is not None and t_rms > TARGET_UNSCALED and not target.get("integer"):
        what.append(f"the regression targets have a root-mean-square of {fmt(t_rms)}")
        evidence.update(target_rms=t_rms)
    if not what:
        return []
    summary = "Data far from unit scale: " + "; ".join(what) + "."
    first = tuple(view.order[:1])
    return [
        Finding(
            "unscaled_data",
            severity,
            first,
            summary,
            evidence,
            unscaled_remedies(view, "input_rms" in evidence, "target_rms" in evidence),
            view.steps[0],
        )
    ]


def _zero_initialised(view: View) -> bool:
    """Some layer's weights are exactly 0 at the first recorded step."""
    w = view.metric("weight_norm")
    return not w.empty and bool((w.iloc[0] == 0).any())
