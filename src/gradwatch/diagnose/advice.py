"""Remedies that name the user's own modules, ranked, each with why and what it should change.

Each builder reads the view (layer types, activation functions, how weights were initialised,
observed norms) and returns concrete changes with a snippet to paste.
"""

from __future__ import annotations

import math

import numpy as np

from gradwatch.diagnose.finding import Remedy
from gradwatch.diagnose.view import RECTIFIERS, RECURRENT_TYPES, SATURATING, View
from gradwatch.display.format import fmt, names, times

_INIT_WORDS = {
    "pytorch_default": "PyTorch's default init (kaiming_uniform_ with a=√5: variance 1/(3·fan_in))",
    "small": "weights smaller than any standard init",
    "large": "weights larger than He init",
    "other": "a scale that matches no standard init",
    "xavier": "Xavier/Glorot init (variance 2/(fan_in+fan_out)), which halves the signal's "
    "variance at every ReLU",
    "lecun_or_xavier": "LeCun/Xavier-scale init (variance 1/fan_in), which halves the signal's "
    "variance at every ReLU",
}


def _activations(view: View, kinds: set[str]) -> dict[str, list[str]]:
    """function -> activation layers using it, for functions in `kinds`."""
    out: dict[str, list[str]] = {}
    for layer, fn in view.activations.items():
        if fn in kinds:
            out.setdefault(fn, []).append(layer)
    return out


def _module_class(fn: str) -> str:
    return {
        "sigmoid": "nn.Sigmoid",
        "tanh": "nn.Tanh",
        "relu": "nn.ReLU",
        "leaky_relu": "nn.LeakyReLU",
        "gelu": "nn.GELU",
        "silu": "nn.SiLU",
        "elu": "nn.ELU",
        "selu": "nn.SELU",
        "hardtanh": "nn.Hardtanh",
        "softsign": "nn.Softsign",
        "relu6": "nn.ReLU6",
        "prelu": "nn.PReLU",
        "softplus": "nn.Softplus",
    }.get(fn, fn)


def _swap_activation(view: View, fns: dict[str, list[str]], to: str = "nn.ReLU") -> Remedy | None:
    if not fns:
        return None
    module_layers = [
        n
        for layers in fns.values()
        for n in layers
        if view.type_of(n) not in ("", None)
        and view.type_of(n) not in RECURRENT_TYPES
        and view.type_of(n).lower() in {_module_class(f)[3:].lower() for f in fns}
    ]
    functional = [n for layers in fns.values() for n in layers if n not in module_layers]
    classes = ", ".join(sorted(_module_class(f) for f in fns))
    detail = []
    if module_layers:
        detail.append(
            f"Replace the {len(module_layers)} {classes} module(s) {names(module_layers)} with "
            f"{to}:\n"
            "    gradwatch.remedies.swap_activation("
            f"model, {classes.split(', ')[0]}, {to})"
        )
    if functional:
        detail.append(
            f"In the forward of {names(functional)}, call "
            f"{to.replace('nn.', 'torch.nn.functional.').lower()} instead of "
            f"{', '.join(sorted(fns))}."
        )
    return Remedy(
        "activation",
        "\n".join(detail),
        expected="derivative 1 on the active side instead of at most 0.25 (sigmoid) or 1 only near "
        "0 (tanh): the signal no longer shrinks at every layer",
        why=f"{classes} saturate: their derivative is tiny for large inputs, and the gradient is a "
        "product of one such factor per layer",
    )


def _init_remedy(view: View, nonlinearity: str) -> Remedy | None:
    layers = view.weight_layers
    if not layers:
        return None
    inits = {n: view.init_of(n) for n in layers}
    wrong = (
        [n for n, i in inits.items() if i not in (None, "he")]
        if nonlinearity == "relu"
        else [n for n, i in inits.items() if i not in (None, "xavier", "lecun_or_xavier")]
    )
    if not wrong:
        return None
    kinds = sorted({inits[n] for n in wrong if inits[n]})
    said = "; ".join(_INIT_WORDS.get(k, k) for k in kinds) if kinds else "a non-standard init"
    if nonlinearity == "relu" and "pytorch_default" in kinds:
        said += ", which is not He init (variance 2/fan_in)"
    if nonlinearity == "relu":
        call = "nn.init.kaiming_normal_(m.weight, nonlinearity='relu')"
        name = "He (Kaiming) init"
        expected = (
            "the back-propagated variance stays level through ReLU layers instead of shrinking at "
            "every layer"
        )
    else:
        call = f"nn.init.xavier_normal_(m.weight, gain=nn.init.calculate_gain('{nonlinearity}'))"
        name = "Xavier/Glorot init"
        expected = (
            "activations stay out of the flat region and gradient variance roughly level across "
            "depth"
        )
    return Remedy(
        "init",
        f"Re-initialise {names(wrong)} with {name} (they now use {said}):\n"
        f"    for m in model.modules():\n"
        f"        if isinstance(m, (nn.Linear, nn.Conv2d)):\n"
        f"            {call}\n"
        f"            nn.init.zeros_(m.bias)",
        expected=expected,
        why="the init sets each layer's gain; a gain below 1 per layer compounds into an "
        "exponential decay with depth",
    )


def _normalise(view: View) -> Remedy | None:
    if view.has_norm or len(view.weight_layers) < 4:
        return None
    conv = any(view.type_of(n).startswith("Conv") for n in view.weight_layers)
    norm = (
        "nn.BatchNorm2d(channels)"
        if conv
        else "nn.BatchNorm1d(features) (or nn.LayerNorm(features))"
    )
    return Remedy(
        "normalization",
        f"Insert {norm} after each of {names(view.weight_layers[:-1])}, before its activation:\n"
        f"    gradwatch.remedies.insert_norm(model)   # for nn.Sequential models",
        expected="each layer's input re-centred and re-scaled, so activations stay in the "
        "non-saturated range and the signal level",
        why="normalisation resets the scale at every layer instead of letting it compound "
        "(Ioffe & Szegedy 2015)",
    )


def _residual(view: View) -> Remedy | None:
    n = len(view.weight_layers)
    if n < 8:
        return None
    return Remedy(
        "residual",
        f"Add skip connections around pairs of layers ({n} weight layers in one chain): out = x + "
        "block(x), and zero-initialise the last layer of each block.",
        expected="the gradient reaches early layers through the identity paths, undiminished",
        why="deep plain nets train worse than shallower ones; residual ones do not "
        "(He et al. 2016)",
    )


def vanishing_remedies(view: View, trend: dict) -> tuple[Remedy, ...]:
    # After a swap away from sigmoid/tanh the net is a ReLU net, so He init is the companion.
    out = [
        _swap_activation(view, _activations(view, SATURATING)),
        _init_remedy(view, "relu"),
        _normalise(view),
        _residual(view),
    ]
    return tuple(r for r in out if r is not None) or (
        Remedy(
            "depth",
            f"Reduce depth: the signal changes {times(trend['per_layer'])} per layer.",
            why="each layer multiplies the gradient by its own factor",
        ),
    )


def clip_threshold(view: View) -> float | None:
    """A max_norm for clip_grad_norm_: the median total gradient norm of the finite steps seen."""
    g = view.metric("grad_norm")
    if g.empty:
        return None
    total = np.sqrt((g.fillna(0) ** 2).sum(axis=1)).to_numpy()
    total = total[np.isfinite(total) & (total > 0)]
    if not len(total):
        return None
    return float(np.median(total[: max(1, len(total) // 2)]))


def _clip(view: View, why: str) -> Remedy:
    c = clip_threshold(view)
    threshold = f"{c:.3g}" if c and c < 1e3 else "1.0"
    basis = f" (the median gradient norm of the first steps was {fmt(c)})" if c and c < 1e3 else ""
    return Remedy(
        "clipping",
        f"Clip the gradient norm before optimizer.step(){basis}:\n"
        f"    torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm={threshold})",
        expected="no single step can move the weights further than the threshold allows",
        why=why,
    )


def _lr(view: View, factor: float, why: str) -> Remedy:
    lrs = view.optimizer.get("lr") or []
    now = (
        f" from {fmt(lrs[0])} to {fmt(lrs[0] * factor)}" if lrs else f" by about {fmt(1 / factor)}x"
    )
    return Remedy(
        "lr",
        f"Lower the learning rate{now}, with a warm-up over the first few hundred steps.",
        expected="update/weight ratios near 1e-3",
        why=why,
    )


def exploding_remedies(view: View, evidence: dict) -> tuple[Remedy, ...]:
    out = [_clip(view, "bounds each update even when gradients blow up (Pascanu et al. 2013)")]
    init = (
        _init_remedy(view, "relu") if _activations(view, RECTIFIERS) else _init_remedy(view, "tanh")
    )
    if init:
        out.insert(0, init)
    if evidence.get("gradient_at_init") and (loss := _class_targets_under_squared_error(view)):
        out.insert(0, loss)
    out.append(_lr(view, 0.1, "a smaller step keeps a large gradient from compounding"))
    if (n := _normalise(view)) is not None:
        out.append(n)
    return tuple(out)


def _class_targets_under_squared_error(view: View) -> Remedy | None:
    """A squared error between an unbounded output and class indicators (one-hot or multi-hot
    rows of 0/1) whose first value says the output started LOSS_OUT_OF_SCALE times off the
    targets: the loss's gradient grows with that error, where a cross-entropy's stays below 1."""
    from gradwatch.diagnose.thresholds import LOSS_OUT_OF_SCALE

    graph = (view.meta.get("probes", {}).get("loop") or {}).get("graph") or {}
    head, target = list(graph.get("head") or []), graph.get("target") or {}
    if not ({"MseLossBackward0", "PowBackward0"} & set(head)) or not target.get("integer"):
        return None
    if (target.get("min") or 0) < -1e-4 or (target.get("max") or 0) > 1 + 1e-4:
        return None
    if {"SigmoidBackward0", "SoftmaxBackward0", "TanhBackward0"} & set(head):
        return None  # a bounded output cannot start out of the targets' scale
    table = view.metric("loss")
    if table.empty:
        return None
    first = float(table.iloc[0, 0])
    if not (np.isfinite(first) and first > 0 and np.sqrt(first) > LOSS_OUT_OF_SCALE):
        return None
    several = (target.get("row_sum_max") or 1) > 1.01
    fix = (
        "one logit per label into nn.BCEWithLogitsLoss"
        if several
        else "logits into nn.CrossEntropyLoss (class indices as targets), i.e. softmax + "
        "cross-entropy"
    )
    return Remedy(
        "loss",
        f"Train the class targets with a classification loss, not a squared error: {fix}. The "
        f"first loss was {fmt(first)}: the output starts about {fmt(float(np.sqrt(first)))} off "
        "targets that are 0 or 1, and a squared error's gradient grows with that error.",
        expected="a gradient per output unit bounded by 1 whatever the output's scale",
        why="the gradient of a squared error is proportional to the error; the gradient of "
        "softmax + cross-entropy is p - y, between -1 and 1",
    )


def nonfinite_remedies(view: View) -> tuple[Remedy, ...]:
    return (
        Remedy(
            "loss",
            "Find the operation that produced the first NaN/Inf: run one step under "
            "torch.autograd.detect_anomaly(); replace log(softmax(x)) by log_softmax, add eps "
            "inside log/sqrt/division.",
            expected="finite losses and gradients",
            why="a single NaN spreads to every weight it touches in one update",
        ),
        _clip(view, "a finite but huge gradient becomes Inf in the next update"),
        _lr(view, 0.1, "divergence to Inf is often a learning rate too large for the loss surface"),
        Remedy(
            "precision",
            "Under torch.autocast with float16, use torch.amp.GradScaler (it skips steps with "
            "Inf/NaN gradients) or bfloat16.",
            why="float16 overflows at 65504",
        ),
    )


def saturation_remedies(view: View, layers: list[str]) -> tuple[Remedy, ...]:
    fns = {fn: [n for n in ls if n in layers] for fn, ls in _activations(view, SATURATING).items()}
    fns = {k: v for k, v in fns.items() if v}
    out = [
        _swap_activation(view, fns),
        _init_remedy(view, "tanh" if "tanh" in fns else "sigmoid"),
        _normalise(view),
    ]
    return tuple(r for r in out if r is not None)


def dead_remedies(view: View, layers: list[str]) -> tuple[Remedy, ...]:
    fns = {
        fn: [n for n in ls if n in layers]
        for fn, ls in _activations(view, {"relu", "relu6"}).items()
    }
    fns = {k: v for k, v in fns.items() if v}
    large = [n for n in view.weight_layers if view.init_of(n) == "large"]
    init = Remedy(
        "init",
        "Initialise biases to zero (nn.init.zeros_(m.bias)) and weights with He init: units "
        "whose input is negative for every sample get no gradient and never recover."
        + (
            f" {names(large)} start with weights larger than He init (std x sqrt(fan_in) "
            "above 2, He: 1.41): the outputs, the gradients and the first steps are as large, "
            "and those steps kill the units."
            if large
            else ""
        ),
        expected="about half the units active on any sample",
        why="a ReLU unit with a negative input for every sample has zero gradient",
    )
    out = [
        _swap_activation(view, fns, to="nn.LeakyReLU(0.1)") if fns else None,
        init,
        _lr(
            view,
            0.3,
            "a too-large step can push a unit's bias so far negative that it never fires again",
        ),
    ]
    if large:  # weights started too large: the init is what to change first
        out.remove(init)
        out.insert(0, init)
    return tuple(r for r in out if r is not None)


def _blocking(view: View) -> dict[str, list[str]]:
    """Saturating activations that can starve a layer: sigmoids (derivative at most 1/4 anywhere)
    and any other measured in its flat region for most inputs; a tanh that is not saturated (a
    transformer pooler's) passes the gradient with a derivative near 1."""
    from gradwatch.diagnose.thresholds import SATURATED_WARN

    sat = view.metric("saturated_frac")
    hot = set(sat.columns[(sat.median() > SATURATED_WARN).to_numpy()]) if not sat.empty else set()
    out: dict[str, list[str]] = {}
    for fn, layers in _activations(view, SATURATING - {"softmax"}).items():
        kept = [n for n in layers if fn == "sigmoid" or n in hot]
        if kept:
            out[fn] = kept
    return out


def stalled_remedies(view: View, layers: list[str]) -> tuple[Remedy, ...]:
    out = [
        _swap_activation(view, _blocking(view)),
        # He init only where the model has rectifiers, or where the swap above gives it some.
        _init_remedy(view, "relu")
        if _activations(view, RECTIFIERS | SATURATING - {"softmax"})
        else None,
        Remedy(
            "lr",
            f"Give {names(layers)} a parameter group with a larger learning rate, or use Adam, "
            "whose per-parameter scaling does not depend on the gradient's size.",
            expected="update/weight ratios of every layer within 10x of each other",
            why="with SGD a layer's update is proportional to its gradient: a vanishing gradient "
            "freezes it",
        ),
        _normalise(view),
        _residual(view),
    ]
    return tuple(r for r in out if r is not None)


def unstable_remedies(view: View, ratio: float) -> tuple[Remedy, ...]:
    factor = min(1.0, 1e-3 / ratio) if ratio > 0 else 0.1
    return (
        _lr(
            view,
            factor,
            f"updates are {fmt(ratio)} of the weights per step; around 1e-3 is the usual healthy "
            "size",
        ),
        _clip(view, "bounds each step's size"),
    )


def through_time_remedies(view: View, layers: list[str], vanishing: bool) -> tuple[Remedy, ...]:
    types = {view.type_of(n) for n in layers}
    out: list[Remedy] = []
    if types & {"RNN", "RNNCell"}:
        out.append(
            Remedy(
                "gating",
                f"Replace the vanilla {'/'.join(sorted(types & {'RNN', 'RNNCell'}))} "
                f"{names(layers)} with nn.LSTM (or nn.GRU): the same arguments, and the output is "
                "(out, (h, c)).",
                expected="gradients that survive hundreds of steps through the cell state's "
                "additive path",
                why="a vanilla RNN multiplies the gradient by the recurrent Jacobian at every step "
                "(Hochreiter & Schmidhuber 1997)",
            )
        )
    if vanishing and types & {"LSTM", "LSTMCell"}:
        out.append(
            Remedy(
                "forget_bias",
                "Set the LSTM forget-gate bias to 1: "
                "gradwatch.remedies.lstm_forget_bias(model, 1.0)",
                expected="the cell state is kept by default, so the gradient decays far more "
                "slowly",
                why="with bias 0 the forget gate starts half-closed, halving the memory at every "
                "step",
            )
        )
    if vanishing:
        out.append(
            Remedy(
                "init",
                "Initialise the recurrent weights orthogonally: "
                "nn.init.orthogonal_(rnn.weight_hh_l0).",
                why="singular values of 1 neither shrink nor grow the gradient per step",
            )
        )
    else:
        out.insert(
            0,
            _clip(
                view,
                "exploding gradients through time are the textbook case for norm clipping "
                "(Pascanu et al. 2013)",
            ),
        )
        out.append(
            Remedy(
                "init",
                "Scale the recurrent weights so their largest singular value is below 1 "
                "(e.g. nn.init.orthogonal_(rnn.weight_hh_l0, gain=0.9)).",
                why="the recurrent Jacobian's norm sets the growth per step",
            )
        )
    return tuple(out)


def idle_remedies(view: View, ratio: float, gradients_small: bool) -> tuple[Remedy, ...]:
    """Every layer moves far less than 1e-3 of itself per step."""
    factor = 1e-3 / ratio if ratio > 0 else 100.0
    lrs = view.optimizer.get("lr") or []
    change = (
        f" from {fmt(lrs[0])} to about {fmt(lrs[0] * factor)}" if lrs else f" about {fmt(factor)}x"
    )
    raise_lr = Remedy(
        "lr",
        f"Raise the learning rate{change}, or use Adam, "
        "whose step does not shrink with the gradient.",
        expected="update/weight ratios near 1e-3 and a loss that starts to fall",
        why=f"the busiest layer changes by {fmt(ratio)} of itself per step; ~1e-3 is the usual "
        "healthy size",
    )
    if not gradients_small:
        return (raise_lr,)
    loss = Remedy(
        "loss",
        "Check the loss for a saturating form: log(1 - D(G(z))) for a GAN generator, log(σ(z)) or "
        "a softmax fed huge logits. Use the non-saturating form (-log D(G(z)); F.logsigmoid; "
        "F.cross_entropy on logits) so a confident wrong answer still gives a gradient.",
        expected="gradient/weight ratios of 1e-3 or more in every layer",
        why="every layer's gradient is tiny at once, so the signal is lost at the loss, not across "
        "depth (Goodfellow et al. 2014)",
    )
    return (loss, raise_lr)


def constant_remedies(view: View) -> tuple[Remedy, ...]:
    return (
        Remedy(
            "init",
            "Initialise the weights randomly (torch.nn.init.kaiming_normal_ for ReLU layers, "
            "xavier_normal_ for tanh/sigmoid); weights that are all zero, or biases so negative "
            "that every unit is off, make every hidden unit output the same constant.",
            expected="activations that vary with the input and non-zero gradients in every layer",
            why="a layer whose output is constant passes back no gradient, so nothing before it "
            "can learn",
        ),
    )


def plateau_remedies(view: View) -> tuple[Remedy, ...]:
    """The loss stopped falling, with no other finding to explain it."""
    lrs = view.optimizer.get("lr") or []
    now = f" (now {fmt(lrs[0])})" if lrs else ""
    return (
        Remedy(
            "lr",
            f"Try the learning rate 3x higher and 3x lower{now} for a few hundred steps and keep "
            "the one whose loss falls fastest; add a schedule that lowers it once the loss levels.",
            expected="a loss that keeps falling, or evidence that the model has learnt what it can",
            why="a flat loss with healthy gradients is most often a step size that is too small "
            "to move or too large to settle",
        ),
        Remedy(
            "loss",
            "Check that the loss compares what it should: logits into nn.CrossEntropyLoss / "
            "BCEWithLogitsLoss, targets of the shape and range the output can reach.",
            why="a loss that cannot be met plateaus whatever the optimizer does",
        ),
    )


def lr_remedies(
    view: View, ratio: float, high: bool, path: float | None = None
) -> tuple[Remedy, ...]:
    """A learning rate with its basis: scale it so the median layer's update/weight ratio comes
    to LR_TARGET_UPDATE; for a rate too low whose steps agree (`path`: the share of their size
    the weights walked over the run), so that they walk LR_TRAVEL times their size, if that asks
    more."""
    from gradwatch.diagnose.thresholds import LR_TARGET_UPDATE, LR_TRAVEL

    factor = LR_TARGET_UPDATE / ratio if ratio > 0 else (0.1 if high else 10.0)
    factor = min(factor, 0.3) if high else max(factor, 3.0)
    walk = not high and path is not None and path > 0 and LR_TRAVEL / path > factor
    lrs = view.optimizer.get("lr") or []
    name = view.optimizer.get("type") or view.meta.get("settings", {}).get("optimizer") or ""
    verb = "Lower" if high else "Raise"
    if walk:
        factor = min(LR_TRAVEL / path, 30.0)
    target = (
        f" from {fmt(lrs[0])} to {fmt(_round_lr(lrs[0] * factor))}"
        if lrs
        else f" by {times(factor)}"
    )
    basis = (
        f"the median layer moved {fmt(ratio)} of its weights per step; {times(factor)} brings "
        f"that to about {fmt(LR_TARGET_UPDATE)} (healthy: 1e-3 to 1e-2)"
    )
    if walk:
        basis = (
            f"the steps agree, and over the run they walked the weights {fmt(path)} of their "
            f"size; {times(factor)} walks them {fmt(LR_TRAVEL)}x their size (their own size by "
            "half-way, leaving the rest to converge)"
        )
    out = [
        Remedy(
            "lr",
            f"{verb} the learning rate{target}{' for ' + name if name else ''}: {basis}.",
            expected="a loss that falls without spikes"
            if high
            else "a loss that falls several times faster",
            why=basis,
        )
    ]
    if high:
        out.append(_clip(view, "bounds each step while the learning rate is being tuned"))
    return tuple(out)


def _round_lr(x: float) -> float:
    """A learning rate as people choose one: 1, 2 or 5 times a power of ten."""
    if not x > 0:
        return x
    e = np.floor(np.log10(x))
    m = x / 10**e
    m = min((1, 2, 5, 10), key=lambda c: abs(np.log(m / c)))
    return float(m * 10**e)


def mismatch_remedies(view: View, problem: str, head: list[str]) -> tuple[Remedy, ...]:
    text = {
        "twice": "Return the raw scores (logits) from forward() and let the loss apply its own "
        "softmax/sigmoid: drop the final nn.Softmax/nn.Sigmoid (or use nn.NLLLoss on "
        "log_softmax, nn.BCELoss on a sigmoid).",
        "one_unit": "A single output unit needs a sigmoid, not a softmax: use nn.Sigmoid with "
        "nn.BCELoss, or return the logit into nn.BCEWithLogitsLoss (a softmax needs one unit "
        "per class).",
        "unbounded": "Give the output layer an activation that makes probabilities: softmax "
        "(or logits into nn.CrossEntropyLoss) for classes, sigmoid (or logits into "
        "nn.BCEWithLogitsLoss) for binary labels; a ReLU or linear output is for regression.",
        "multilabel": "Several labels per sample are independent: end the model in one "
        "nn.Sigmoid per label with nn.BCELoss (or return the logits into "
        "nn.BCEWithLogitsLoss) instead of a softmax, which makes the labels compete.",
        "range": "Make the output layer and the loss fit the targets: one unit per class with "
        "softmax / nn.CrossEntropyLoss for class indices, sigmoid + BCE only for targets in "
        "[0, 1] (several labels per sample: one sigmoid each), a linear output for targets "
        "outside [-1, 1].",
    }[problem]
    return (
        Remedy(
            "loss",
            text,
            expected="a loss that can reach 0 and gradients that do not vanish at the output",
            why="the output layer and the loss must agree on what the output means "
            f"(the loss's graph: {' <- '.join(op.removesuffix('Backward0') for op in head[:6])})",
        ),
    )


def no_gradient_remedies(view: View, layers: list[str], reason: str) -> tuple[Remedy, ...]:
    if reason == "constant":
        return (
            Remedy(
                "loss",
                "Make the output depend on the input: no softmax over a single unit, no ReLU "
                "on an output that starts negative; then check the loss's graph with "
                "torch.autograd.grad(loss, list(model.parameters()), allow_unused=True).",
                why="a constant output passes back an exact zero to every layer",
            ),
        )
    if reason == "zero":
        return (
            Remedy(
                "loop",
                f"Find why {names(layers)} get exactly 0: print [(n, p.grad) for n, p in "
                "model.named_parameters()] after backward(); units off for every sample (a "
                "dead ReLU) or a factor of 0 in the forward give this.",
                why="a parameter whose gradient is always 0 never changes",
            ),
        )
    detail = {
        "no_grad": "Run the block with autograd on: remove the torch.no_grad() around it, or "
        "call torch.utils.checkpoint.checkpoint(block, x, use_reentrant=False) (the reentrant "
        "form gives no gradient to its parameters when its input does not require grad).",
        "cut": "Keep the loss in the graph: no .item(), float(), .detach(), .data or "
        "torch.tensor([...]) on the way to the loss (torch.stack / torch.cat keep the graph); "
        "build the loss from the model's output tensors.",
    }[reason]
    return (
        Remedy(
            "loop",
            detail,
            expected=f"non-zero gradients in {names(layers)}",
            why="autograd only sends gradients along the operations it recorded",
        ),
    )


def uncleared_remedies(view: View) -> tuple[Remedy, ...]:
    return (
        Remedy(
            "loop",
            "Call optimizer.zero_grad() once per optimizer step, before backward() (for "
            "gradient accumulation: after each optimizer.step()).",
            expected="each update uses this step's gradient only; update sizes stop growing",
            why="backward() adds to .grad; without zero_grad every step sums all gradients so far",
        ),
    )


def unscaled_remedies(view: View, inputs: bool, targets: bool) -> tuple[Remedy, ...]:
    what = " and ".join(w for w, on in (("inputs", inputs), ("targets", targets)) if on)
    return (
        Remedy(
            "data",
            f"Standardise the {what}: subtract the training set's mean and divide by its "
            "standard deviation, per feature (sklearn.preprocessing.StandardScaler, or "
            "x = (x - mean) / std); images: divide by 255 and normalise per channel.",
            expected="pre-activations of order 1 at the first layer and gradients of order 1",
            why="the default init assumes inputs of unit scale; a feature of 1e5 saturates every "
            "unit it feeds and dwarfs the others",
        ),
    )


def critical_init_remedy(view: View, theory: dict) -> Remedy:
    """Re-initialise the stack on the critical line of its own activation and biases (χ₁ = 1)."""
    from gradwatch.theory import critical_sigma_w2

    act, sigma_b2 = theory["activation"], theory["sigma_b2"]
    try:
        target = critical_sigma_w2(act, sigma_b2=sigma_b2)
    except Exception:  # noqa: BLE001 - no critical point for this activation and bias scale
        target = critical_sigma_w2(act, sigma_b2=0.0)
        sigma_b2 = 0.0
    layers = theory["layers"]
    return Remedy(
        "init",
        f"Re-initialise {names(layers)} on the critical line of {act} (σ_w² = {fmt(target)} at "
        f"σ_b² = {fmt(sigma_b2)}; they now have σ_w² = {fmt(theory['sigma_w2'])}):\n"
        f"    for m in model.modules():\n"
        f"        if isinstance(m, nn.Linear):\n"
        f"            nn.init.normal_(m.weight, 0.0, ({fmt(target)} / m.in_features) ** 0.5)\n"
        f"            nn.init.normal_(m.bias, 0.0, {fmt(math.sqrt(sigma_b2))})",
        expected="χ₁ = 1: the gradient keeps its size through every layer",
        why=f"χ₁ = {fmt(theory['chi1'])} per layer compounds over {theory['links']} layers "
        "(Schoenholz et al. 2017)",
    )
