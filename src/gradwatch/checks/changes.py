"""The changes a rehearsed what-if can make on a copy, chosen from the model, its loss's autograd
graph, the batches and the diagnosis.

A `Change` edits one `Setup` (a copy of the model, a way to build its optimizer, the rehearsal
batches, the loss, the loop) before it trains. Remedy functions of `gradwatch.remedies` change the
model; the others change what the diagnosis names with an action word: `lr`, `optimizer`, `data`,
`loss` (an output activation the loss applies again, or one that cannot fit the loss), `loop`
(gradients cleared every step) and `clipping`. What cannot be changed automatically (a cut graph,
a functional softmax inside `forward`) is a `ManualChange` with the code to write.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from gradwatch import remedies as R
from gradwatch.diagnose import Diagnosis

Batch = tuple[Any, Any]
# Which action word of the diagnosis each remedy function of gradwatch.remedies is.
REMEDY_ACTIONS = {
    "he_init": "init",
    "xavier_init": "init",
    "lecun_init": "init",
    "orthogonal_init": "init",
    "delta_orthogonal_init": "init",
    "lsuv_init": "init",
    "recurrent_orthogonal_init": "init",
    "swap_activation:relu": "activation",
    "swap_activation:relu+he_init": "activation",
    "insert_norm": "normalization",
    "insert_norm:layer": "normalization",
    "lstm_forget_bias": "forget_bias",
    "swap_recurrent:gru": "gating",
    "swap_recurrent:lstm": "gating",
    "zero_init_residual": "residual",
    "fixup_residual": "residual",
}
UNSTABLE = ("exploding_gradient", "nonfinite", "unstable_updates", "exploding_through_time")
CLIP_NORM = 1.0  # clip_grad_norm_ threshold of the clipping change (the loss's gradient units)
AGC_CLIPPING = 0.01  # λ of adaptive clipping, Brock et al. 2021's default
LOG_EPS = 1e-8  # what torch's PoissonNLLLoss adds inside its log
LEAKY_SLOPE = 0.1  # negative slope of the LeakyReLU the dead-unit change puts in


@dataclass
class Setup:
    """What one rehearsal trains: edited by a Change, then run by the rehearsal."""

    model: nn.Module  # a private copy of the user's model
    make_optimizer: Callable[[nn.Module], torch.optim.Optimizer]  # over the copy's parameters
    batches: list[Batch]
    loss_fn: Callable[[Any, Any], torch.Tensor]  # (output, target) -> scalar loss
    clear_grads: bool  # zero the gradients before every step
    train_step: Callable | None = None  # the user's loop body (model, optimizer, batch) -> loss
    lr_scale: float = 1.0
    before_step: list[Callable[[nn.Module], None]] = field(default_factory=list)  # e.g. clipping
    # Targets are trained standardised, (target - mean) / std; the loss curve and the metric
    # read the output mapped back (output * std + mean) so that they stay in the user's units.
    target_scale: tuple[torch.Tensor, torch.Tensor] | None = None
    # A context manager around every forward and loss (and the metric): e.g. `LogitsMode`.
    mode: Callable[[], Any] | None = None


@dataclass(frozen=True)
class Change:
    """One candidate change, applied to a Setup before it trains."""

    name: str  # e.g. "lr x0.1", "he_init", "loss: drop the output Softmax"
    action: str  # the diagnosis's action word: lr, init, activation, loss, data, loop, ...
    summary: str  # what it changes, one phrase
    apply: Callable[[Setup, torch.Generator], None] = field(repr=False, compare=False)


@dataclass(frozen=True)
class ManualChange:
    """A change the diagnosis or the loss's graph names that no copy can make for the user."""

    action: str  # the action word
    why: str  # what was found
    code: str  # the code to write

    def to_dict(self) -> dict:
        return {"action": self.action, "why": self.why, "code": self.code}


# ----------------------------------------------------------------------------- the model's end


@dataclass(frozen=True)
class OutputGraph:
    """What the loss does to the model's output, read from the autograd graph of one batch."""

    out_op: str  # grad_fn name of the output tensor, e.g. "SoftmaxBackward0"; "" for a leaf
    loss_ops: frozenset[str]  # grad_fn names between the loss and the output
    width: int  # size of the output's last dimension
    last: tuple[str, nn.Module] | None  # the model's last activation module, by forward order
    target_float: bool  # the target is a floating-point tensor
    multi_hot: bool  # a float target shaped like the output whose rows do not sum to 1
    one_hot: bool = False  # a float target shaped like the output, rows of 0s and one 1


def _ops_between(loss: torch.Tensor, out: torch.Tensor) -> frozenset[str]:
    stop = out.grad_fn
    seen, names, stack = set(), set(), [loss.grad_fn]
    while stack:
        node = stack.pop()
        if node is None or node is stop or id(node) in seen:
            continue
        seen.add(id(node))
        names.add(type(node).__name__)
        stack += [n for n, _ in node.next_functions]
    return frozenset(names)


ACTIVATION_MODULES = (nn.Softmax, nn.LogSoftmax, nn.Sigmoid, nn.ReLU, nn.Tanh, nn.Softplus)


def output_graph(model: nn.Module, batch: Batch, loss_fn, call) -> OutputGraph | None:
    """Run a copy's forward and loss once, and read the graph; None when the output is not one
    tensor."""
    inputs, target = batch
    order: list[tuple[str, nn.Module]] = []
    handles = [
        m.register_forward_hook(lambda m, i, o, n=n: order.append((n, m)))
        for n, m in model.named_modules()
        if isinstance(m, ACTIVATION_MODULES)
    ]
    try:
        out = call(model, inputs)
        if not isinstance(out, torch.Tensor) or out.grad_fn is None:
            return None
        loss = loss_fn(out, target)
    finally:
        for h in handles:
            h.remove()
    # The last activation module counts as the output layer only when its output is the output.
    last = order[-1] if order else None
    # By name, case aside: nn.ReLU's backward node is "ReluBackward0".
    if last is not None and type(last[1]).__name__.lower() not in out.grad_fn.name().lower():
        last = None
    is_float = isinstance(target, torch.Tensor) and target.is_floating_point()
    multi = bool(
        is_float
        and target.shape == out.shape
        and out.dim() == 2
        and out.shape[-1] > 1
        and not torch.allclose(target.sum(-1), torch.ones_like(target.sum(-1)))
    )
    one_hot = bool(
        is_float
        and target.shape == out.shape
        and out.dim() == 2
        and out.shape[-1] > 1
        and ((target == 0) | (target == 1)).all()
        and (target.sum(-1) == 1).all()
    )
    return OutputGraph(
        out.grad_fn.name(),
        _ops_between(loss, out),
        int(out.shape[-1]) if out.dim() else 1,
        last,
        is_float,
        multi,
        one_hot,
    )


def _replace(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)


def _swap_output(name: str, make: Callable[[], nn.Module]) -> Callable[[Setup, Any], None]:
    def apply(s: Setup, g) -> None:
        _replace(s.model, name, make())

    return apply


def _bce_on_probabilities(out, target):
    p = out.clamp(1e-7, 1 - 1e-7)
    return nn.functional.binary_cross_entropy(p, target.to(p.dtype).reshape(p.shape))


def _cross_entropy(out, target):
    return nn.functional.cross_entropy(out, target)


def _cross_entropy_one_hot(out, target):
    return nn.functional.cross_entropy(out, target.argmax(-1))


_SOFTMAXES = {torch.softmax, torch.nn.functional.softmax, torch.Tensor.softmax}
_LOGS = {torch.log, torch.Tensor.log}


class LogitsMode(torch.overrides.TorchFunctionMode):
    """While active, a softmax computed in forward() remembers its input: the log of it becomes
    log_softmax of that input, and cross_entropy / nll of it takes that input. What the user
    fixes by returning logits, done to the copy without editing the code."""

    def __init__(self):
        super().__init__()
        self.inputs: dict[int, tuple[torch.Tensor, torch.Tensor, Any]] = {}

    def _logits(self, t):
        hit = self.inputs.get(id(t)) if isinstance(t, torch.Tensor) else None
        return hit if hit is not None and hit[0] is t else None

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in _SOFTMAXES and args:
            out = func(*args, **kwargs)
            dim = kwargs.get("dim", args[1] if len(args) > 1 else -1)
            self.inputs[id(out)] = (out, args[0], dim)
            return out
        if func in _LOGS and args and self._logits(args[0]) is not None:
            _, logits, dim = self._logits(args[0])
            return torch.log_softmax(logits, dim=dim)
        if func is torch.nn.functional.cross_entropy and args and self._logits(args[0]):
            _, logits, _ = self._logits(args[0])
            return func(logits, *args[1:], **kwargs)
        return func(*args, **kwargs)


class GuardedLogMode(torch.overrides.TorchFunctionMode):
    """While active, every torch.log(x) is torch.log(x + 1e-8)."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in _LOGS and args and isinstance(args[0], torch.Tensor):
            return func(args[0] + LOG_EPS, *args[1:], **kwargs)
        return func(*args, **kwargs)


def _logits_mode(s: Setup, g) -> None:
    s.mode = LogitsMode


def _guarded_log_mode(s: Setup, g) -> None:
    s.mode = GuardedLogMode


def output_changes(g: OutputGraph) -> tuple[list[Change], list[ManualChange]]:
    """Changes at the model's end that the loss's graph calls for."""
    auto: list[Change] = []
    manual: list[ManualChange] = []
    op, ops, last = g.out_op, g.loss_ops, g.last
    name = last[0] if last else None
    ce = "LogSoftmaxBackward0" in ops or "NllLossBackward0" in ops
    logs = "LogBackward0" in ops
    if op.startswith("SoftmaxBackward"):
        if g.width == 1:
            if name is not None:
                auto.append(
                    Change(
                        f"loss: output Softmax '{name}' -> Sigmoid",
                        "loss",
                        "a softmax over one unit is the constant 1; a sigmoid gives a probability",
                        _swap_output(name, nn.Sigmoid),
                    )
                )
        elif g.multi_hot and name is not None and not logs:

            def sigmoid_bce(s: Setup, gen, n=name) -> None:
                # Sigmoid, not logits: the output stays probabilities, as a metric reads them.
                _replace(s.model, n, nn.Sigmoid())
                s.loss_fn = _bce_on_probabilities

            auto.append(
                Change(
                    f"loss: output Softmax '{name}' -> Sigmoid, binary cross-entropy",
                    "loss",
                    "independent labels (targets that do not sum to 1) need one sigmoid each, "
                    "and a log-loss",
                    sigmoid_bce,
                )
            )
        elif g.multi_hot and name is not None:
            auto.append(
                Change(
                    f"loss: output Softmax '{name}' -> Sigmoid",
                    "loss",
                    "independent labels (targets that do not sum to 1) need one sigmoid each",
                    _swap_output(name, nn.Sigmoid),
                )
            )
        elif ce or (logs and "NllLossBackward0" in ops):
            if name is not None:

                def drop(s: Setup, gen, n=name) -> None:
                    _replace(s.model, n, nn.Identity())
                    s.loss_fn = _cross_entropy

                auto.append(
                    Change(
                        f"loss: drop output Softmax '{name}', cross_entropy on logits",
                        "loss",
                        "the loss takes the log of a softmax itself; give it the logits",
                        drop,
                    )
                )
            else:
                auto.append(
                    Change(
                        "loss: cross_entropy on the logits of forward()'s softmax",
                        "loss",
                        "forward() returns a softmax that the loss takes the log of again; the "
                        "copy's loss gets the softmax's input (write: return the logits)",
                        _logits_mode,
                    )
                )
    elif op.startswith("SigmoidBackward") and "BinaryCrossEntropyWithLogitsBackward0" in ops:
        if name is not None:
            auto.append(
                Change(
                    f"loss: drop output Sigmoid '{name}'",
                    "loss",
                    "BCEWithLogits applies the sigmoid itself",
                    _swap_output(name, nn.Identity),
                )
            )
        else:

            def bce(s: Setup, gen) -> None:
                s.loss_fn = _bce_on_probabilities

            auto.append(
                Change(
                    "loss: binary_cross_entropy on the sigmoid output",
                    "loss",
                    "the output is a sigmoid already; BCEWithLogits would apply a second one",
                    bce,
                )
            )
    elif op.startswith("ReluBackward") and name is not None:
        if logs and g.width > 1:
            auto.append(
                Change(
                    f"loss: output ReLU '{name}' -> Softmax",
                    "loss",
                    "a log-loss needs probabilities, not rectified scores",
                    _swap_output(name, lambda: nn.Softmax(dim=-1)),
                )
            )
        elif logs:
            auto.append(
                Change(
                    f"loss: output ReLU '{name}' -> Sigmoid",
                    "loss",
                    "a log-loss needs a probability, not a rectified score",
                    _swap_output(name, nn.Sigmoid),
                )
            )
        else:
            auto.append(
                Change(
                    f"activation: output ReLU '{name}' -> Softplus",
                    "activation",
                    "a ReLU output that starts negative stays dead; softplus keeps a gradient",
                    _swap_output(name, nn.Softplus),
                )
            )
    elif op.startswith("LogBackward") and ce:
        auto.append(
            Change(
                "loss: log_softmax for forward()'s log(softmax)",
                "loss",
                "torch.log of a softmax is -inf where it underflows; the copy computes "
                "log_softmax of the softmax's input (write: torch.log_softmax(logits, dim=-1))",
                _logits_mode,
            )
        )
    sigmoid = op.startswith("SigmoidBackward")
    if g.one_hot and not ce and not op.startswith("SoftmaxBackward") and (sigmoid or not logs):
        # One-hot classes fitted by a squared error, or by independent sigmoids: the loss a
        # classifier of exclusive classes trains with is cross-entropy on the logits.
        drop = name if last is not None and isinstance(last[1], nn.ReLU | nn.Sigmoid) else None

        def ce_on_logits(s: Setup, gen, n=drop) -> None:
            if n is not None:
                _replace(s.model, n, nn.Identity())
            s.loss_fn = _cross_entropy_one_hot

        auto.append(
            Change(
                "loss: cross_entropy on logits for one-hot targets"
                + (f" (drop output {type(last[1]).__name__} '{drop}')" if drop else ""),
                "loss",
                "one-hot class targets fitted with a loss that is not a log-loss",
                ce_on_logits,
            )
        )
    return auto, manual


def log_guard(g: OutputGraph | None) -> list[Change]:
    """For a run gone non-finite whose loss takes a log of the output: the log guarded."""
    if g is None or "LogBackward0" not in g.loss_ops or g.out_op.startswith("LogBackward"):
        return []
    return [
        Change(
            "loss: log(x + 1e-8) for every torch.log",
            "loss",
            "a log in the loss is -inf where its input reaches 0; the copy adds 1e-8 inside",
            _guarded_log_mode,
        )
    ]


# ----------------------------------------------------------------------------- the rest


def _scale_lr(factor: float) -> Callable[[Setup, Any], None]:
    def apply(s: Setup, g) -> None:
        s.lr_scale *= factor

    return apply


def _adam(s: Setup, g) -> None:
    s.make_optimizer = lambda m: torch.optim.Adam(m.parameters())
    s.lr_scale = 1.0


def _clear(s: Setup, g) -> None:
    s.clear_grads = True


class Standardise(nn.Module):
    """A fixed front layer: (x - mean) / std per feature (buffers, no parameters)."""

    def __init__(self, mean: torch.Tensor, std: torch.Tensor):
        super().__init__()
        self.register_buffer("mean", mean)
        self.register_buffer("std", std)

    def forward(self, x):
        flat = x.reshape(len(x), -1)
        return ((flat - self.mean) / self.std).to(x.dtype).reshape(x.shape)


class _Standardised(nn.Module):
    """The model behind a `Standardise` front layer: what the model trains and is measured on
    when the data are standardised, so that a metric reading raw inputs sees the same model."""

    def __init__(self, model: nn.Module, front: Standardise):
        super().__init__()
        self.model = model
        self.front = front

    def forward(self, x):
        return self.model(self.front(x))


def _feature_stats(tensors: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    xs = torch.cat([t.reshape(len(t), -1) for t in tensors]).double()
    return xs.mean(0), xs.std(0).clamp_min(1e-8)


def _standardise(s: Setup, g) -> None:
    mean, std = _feature_stats([b[0] for b in s.batches])
    dtype = s.batches[0][0].dtype
    s.model = _Standardised(s.model, Standardise(mean.to(dtype), std.to(dtype)))


def _standardise_targets(s: Setup, g) -> None:
    mean, std = _feature_stats([b[1] for b in s.batches])
    t = s.batches[0][1]
    shape = t.shape[1:]
    s.target_scale = (mean.to(t.dtype).reshape(shape), std.to(t.dtype).reshape(shape))


def _leaky(s: Setup, g) -> None:
    for name, m in list(s.model.named_modules()):
        if type(m) is nn.ReLU:
            _replace(s.model, name, nn.LeakyReLU(LEAKY_SLOPE))


def _clip_norm(s: Setup, g) -> None:
    s.before_step.append(lambda m: torch.nn.utils.clip_grad_norm_(m.parameters(), CLIP_NORM))


def _agc(s: Setup, g) -> None:
    s.before_step.append(lambda m: R.adaptive_clip(m.parameters(), AGC_CLIPPING))


def _remedy(name: str) -> Callable[[Setup, torch.Generator], None]:
    spec = R.REMEDIES[name]

    def apply(s: Setup, g: torch.Generator) -> None:
        s.model = spec.fn(s.model, s.batches[0][0], g)

    return apply


def unscaled(batches: list[Batch], which: int = 0) -> bool:
    """Float tensor inputs (`which` 0) or targets (1) some of whose features are far from mean 0,
    std 1."""
    x0 = batches[0][which]
    if not isinstance(x0, torch.Tensor) or not x0.is_floating_point() or x0.dim() < which + 1:
        return False
    if which == 0 and x0.dim() < 2:
        return False
    if not all(
        isinstance(b[which], torch.Tensor) and b[which].shape[1:] == x0.shape[1:] for b in batches
    ):
        return False
    mean, std = _feature_stats([b[which] for b in batches])
    return bool((mean.abs() > 1).any() or (std > 3).any())


def first_changes(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    batches: list[Batch],
    diagnosis: Diagnosis,
    graph: OutputGraph | None,
    loop_known: bool,
) -> tuple[list[Change], list[ManualChange]]:
    """The changes to rehearse before the baseline is measured, and those to write by hand."""
    inputs = batches[0][0]
    auto = [
        Change(n, REMEDY_ACTIONS.get(n, "init"), R.REMEDIES[n].summary, _remedy(n))
        for n in R.applicable(model, inputs)
    ]
    manual: list[ManualChange] = []
    if graph is not None:
        more, hand = output_changes(graph)
        auto += more
        manual += hand
    auto += [
        Change("lr x0.1", "lr", "every parameter group's learning rate x0.1", _scale_lr(0.1)),
        Change("lr x0.01", "lr", "every parameter group's learning rate x0.01", _scale_lr(0.01)),
    ]
    is_adam = type(optimizer) is torch.optim.Adam
    if not (is_adam and all(g.get("lr") == 1e-3 for g in optimizer.param_groups)):
        auto.append(Change("optimizer: Adam", "optimizer", "torch.optim.Adam at lr 1e-3", _adam))
    if unscaled(batches):
        auto.append(
            Change(
                "data: standardise inputs",
                "data",
                "inputs minus each feature's mean over the rehearsal batches, over its std",
                _standardise,
            )
        )
    regression = graph is not None and not (graph.one_hot or graph.multi_hot)
    if not loop_known and regression and graph.target_float and unscaled(batches, 1):
        auto.append(
            Change(
                "data: standardise targets",
                "data",
                "targets minus their mean over the rehearsal batches, over their std; the "
                "output mapped back for the loss shown and the metric",
                _standardise_targets,
            )
        )
    kinds = diagnosis.kinds()
    if "dead_units" in kinds and any(type(m) is nn.ReLU for m in model.modules()):
        auto.append(
            Change(
                f"activation: ReLU -> LeakyReLU({LEAKY_SLOPE:g})",
                "activation",
                "every nn.ReLU module a LeakyReLU: a unit with negative input keeps a gradient",
                _leaky,
            )
        )
    if loop_known or "uncleared_gradients" in kinds:
        auto.append(Change("loop: zero_grad every step", "loop", "gradients cleared", _clear))
    if kinds & set(UNSTABLE):
        auto += clipping_changes()
    covered = {c.action for c in auto}
    for f in diagnosis.findings:
        for r in f.remedies[:1]:
            if r.action not in covered and f.severity != "info":
                manual.append(ManualChange(r.action, f.summary, r.detail))
                covered.add(r.action)
    return auto, manual


def clipping_changes() -> list[Change]:
    return [
        Change(
            f"clip_grad_norm {CLIP_NORM:g}",
            "clipping",
            f"torch.nn.utils.clip_grad_norm_(params, {CLIP_NORM:g}) before every step",
            _clip_norm,
        ),
        Change(
            f"adaptive_clip {AGC_CLIPPING:g}",
            "clipping",
            "unit-wise adaptive gradient clipping (AGC) before every step",
            _agc,
        ),
    ]


def lr_up() -> Change:
    return Change("lr x10", "lr", "every parameter group's learning rate x10", _scale_lr(10.0))
