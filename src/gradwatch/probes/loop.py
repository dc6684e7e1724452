"""What the training loop around the model does: the loss's autograd graph, the scale of the
inputs, modules run without autograd, and gradients left in `.grad` across optimizer steps.

None of it costs a host sync per step, and once the first `WATCHED_PASSES` forward passes have
run none of it adds a hook call to the forward or the backward (on a small model each Python hook
is a point of the step). The loss graph is read once (the first logged loss with a `grad_fn`:
Python over the graph's nodes, no tensor work). The inputs are measured on the first forward pass
that autograd records (two reductions, kept on the device). Modules, and the model itself, are
watched for autograd being off during the first `WATCHED_PASSES` forward passes, then the hooks
go. Cleared gradients are checked on one parameter after each optimizer step. While that
parameter's `.grad` is a new tensor at every step (`zero_grad()` sets it to None, the default),
it was cleared, and one identity test in the optimizer's step hook says so; once the same tensor
is seen again (cleared in place with `zero_grad(set_to_none=False)`, or not cleared at all) the
first gradient to reach it after each step is checked by a gradient hook: one reduction on the
device per step, summed into a device counter.
"""

from __future__ import annotations

import math
import weakref
from typing import Any

import torch
from torch import nn

from gradwatch._tensor import stat_dtype
from gradwatch.probes.base import Probe
from gradwatch.probes.forward import Hooks, first_tensor

WATCHED_PASSES = 3  # forward passes in which modules are watched for autograd being off
GRAPH_NODES = 20_000  # nodes of the loss graph read at most (a huge graph is cut short)
HEAD_DEPTH = 12  # ops between the loss and the output layer that are read for its pairing

# Ops the output layer's values pass through on their way into a loss (names of autograd nodes).
_PROB = {
    "SoftmaxBackward0": "softmax",
    "SigmoidBackward0": "sigmoid",
    "LogSoftmaxBackward0": "log_softmax",
    "TanhBackward0": "tanh",
    "ReluBackward0": "relu",
    "LogSigmoidBackward0": "logsigmoid",
}
_LOSSES = {
    "NllLossBackward0": "nll",
    "NllLoss2DBackward0": "nll",
    "BinaryCrossEntropyBackward0": "bce",
    "BinaryCrossEntropyWithLogitsBackward0": "bce_with_logits",
    "MseLossBackward0": "mse",
    "L1LossBackward0": "l1",
    "SmoothL1LossBackward0": "smooth_l1",
    "HuberLossBackward0": "huber",
    "LogBackward0": "log",
}
# Ops that pass values on unchanged in kind (reshape, select, clamp, scale...).
_PASS = {
    "ClampBackward1",
    "ClampMinBackward0",
    "ClampMaxBackward0",
    "ViewBackward0",
    "ReshapeAliasBackward0",
    "UnsafeViewBackward0",
    "SqueezeBackward0",
    "SqueezeBackward1",
    "UnsqueezeBackward0",
    "SelectBackward0",
    "SliceBackward0",
    "IndexBackward0",
    "TBackward0",
    "PermuteBackward0",
    "ExpandBackward0",
    "CloneBackward0",
    "ToCopyBackward0",
    "MulBackward0",
    "DivBackward0",
    "AddBackward0",
    "SubBackward0",
    "RsubBackward1",
    "NegBackward0",
    "SumBackward0",
    "SumBackward1",
    "MeanBackward0",
    "MeanBackward1",
}


class LoopProbe(Probe):
    """Writes nothing into the step table; its findings' evidence is in `meta()["loop"]`."""

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer | None):
        self.model = model
        self._names = {id(p): n for n, p in model.named_parameters()}
        self._trainable = [n for n, p in model.named_parameters() if p.requires_grad]
        self._hooks = Hooks()
        self._module_hooks = Hooks()
        self._graph: dict | None = None
        self._inputs: torch.Tensor | None = None  # [rms, max |x|] of the first recorded input
        self._input_shape: list[int] | None = None
        self._outer = False
        self._passes = 0
        self._no_grad: set[str] = set()
        self._armed = False
        self._checked = 0  # optimizer steps after which the watched parameter's gradient came
        self._stale: torch.Tensor | None = None  # of those, steps where .grad was not cleared
        self._implied: list | None = None  # [output, its gradient, loss] once, for implied_target
        # The watched parameter's .grad at the last optimizer step (a weak reference: the tensor
        # is not kept alive by it); None before the first step, or when it had no gradient.
        self._last_grad: weakref.ref | None = None
        self._in_place = False  # .grad was seen kept across a step: the gradient hook checks
        self._module_hooks.add(model.register_forward_pre_hook(self.guard(self._enter)))
        self._module_hooks.add(
            model.register_forward_hook(self.guard(self._exit), always_call=True)
        )
        for name, m in model.named_modules():
            if name and any(p.requires_grad for p in m.parameters(recurse=False)):
                self._module_hooks.add(
                    m.register_forward_pre_hook(self.guard(self._module_check(name)))
                )
        # Watch a parameter this optimizer steps: one it does not own (a GAN's discriminator under
        # the generator's optimizer) is cleared by another loop, or never.
        owned = (
            {id(q) for g in optimizer.param_groups for q in g["params"]}
            if optimizer is not None
            else set()
        )
        watched = next(
            (p for p in reversed(list(model.parameters())) if p.requires_grad and id(p) in owned),
            None,
        )
        if optimizer is not None and watched is not None:
            self._watched = watched
            self._hooks.add(optimizer.register_step_post_hook(self.guard(self._after_step)))

    # ------------------------------------------------------------------ forward

    def _enter(self, module, args, kwargs=None):
        self._outer = torch.is_grad_enabled()
        if not self._outer:
            return
        if self._inputs is None:
            x = first_tensor(args)
            if x is not None and x.is_floating_point() and x.numel():
                with torch.no_grad():
                    v = x.detach().float()
                    self._inputs = torch.stack([v.pow(2).mean().sqrt(), v.abs().amax()])
                self._input_shape = list(x.shape)

    def _exit(self, module, args, *rest):
        if self._outer and self._implied is None and rest and isinstance(rest[-1], torch.Tensor):
            out = rest[-1]
            if out.requires_grad and out.is_floating_point():
                self._implied = [out.detach(), None, None]
                out.register_hook(self._output_gradient)
        if self._outer:
            self._passes += 1
            if self._passes >= WATCHED_PASSES:
                self._module_hooks.remove()
        self._outer = False

    def _module_check(self, name: str):
        def hook(module, args):
            # Autograd off inside a forward that records it: torch.no_grad in the model's code, or
            # a reentrant torch.utils.checkpoint, whose forward runs without autograd.
            if self._outer and not torch.is_grad_enabled():
                self._no_grad.add(name)

        return hook

    # ------------------------------------------------------------------ cleared gradients

    def _after_step(self, *unused) -> None:
        """An optimizer step has run: was the watched `.grad` cleared since the last one?"""
        if self._in_place:
            self._armed = True  # the gradient hook checks the first gradient to come
            return
        grad = self._watched.grad
        last = self._last_grad() if self._last_grad is not None else None
        if grad is not None and last is grad:
            # The same tensor as at the last step: cleared in place, or not at all. Only its
            # values at the next gradient tell, so from now on the gradient hook looks.
            self._in_place, self._armed = True, True
            self._hooks.add(self._watched.register_hook(self.guard(self._first_gradient)))
            return
        if grad is not None and self._last_grad is not None:
            self._checked += 1  # a new tensor: .grad was set to None in between (cleared)
        self._last_grad = weakref.ref(grad) if grad is not None else None

    def _first_gradient(self, grad: torch.Tensor) -> None:
        if not self._armed:
            return
        self._armed = False
        self._checked += 1
        old = self._watched.grad
        if old is None:  # cleared with set_to_none
            return
        with torch.no_grad():
            still = (old != 0).any().to(torch.int64)
            self._stale = still if self._stale is None else self._stale + still

    # ------------------------------------------------------------------ the loss

    def _output_gradient(self, grad: torch.Tensor) -> None:
        if self._implied is not None and self._implied[1] is None:
            self._implied[1] = grad.detach()

    def note_loss(self, loss: Any) -> None:
        """Read the logged loss's autograd graph (the first time one comes with a graph)."""
        if self._graph is None and isinstance(loss, torch.Tensor) and loss.grad_fn is not None:
            self._graph = loss_graph(loss, self._names, self._trainable)
            if self._implied is not None and loss.numel() == 1:
                self._implied[2] = loss.detach()

    # ------------------------------------------------------------------ results

    def meta(self) -> dict:
        if self._graph is not None and self._graph.get("target") is None and self._implied:
            out_, grad, loss = self._implied
            if grad is not None and loss is not None:
                self._graph["target"] = implied_target(out_, grad, loss)
                self._implied = []  # read once; the tensors go
        out: dict = {
            "graph": self._graph,
            "no_grad_modules": sorted(self._no_grad),
            "optimizer_steps_checked": self._checked,
            "uncleared_steps": int(self._stale) if self._stale is not None else 0,
        }
        if self._inputs is not None:
            rms, top = (float(v) for v in self._inputs.cpu())
            out["inputs"] = {"rms": rms, "max_abs": top, "shape": self._input_shape}
        return {"loop": out}

    def close(self) -> None:
        self._hooks.remove()
        self._module_hooks.remove()


def loss_graph(loss: torch.Tensor, names: dict[int, str], trainable: list[str]) -> dict:
    """A JSON-ready summary of a loss's autograd graph: the ops between the loss and the output
    layer (`head`, loss side first), the parameters the graph reaches, and, while the graph still
    holds its saved tensors (before backward), the target's range and the output's width."""
    root = loss.grad_fn
    reached: set[str] = set()
    opaque = False
    seen: set[int] = set()
    stack = [root]
    while stack and len(seen) < GRAPH_NODES:
        node = stack.pop()
        if node is None or id(node) in seen:
            continue
        seen.add(id(node))
        kind = type(node).__name__
        if kind == "AccumulateGrad":
            name = names.get(id(node.variable))
            if name is not None:
                reached.add(name)
            continue
        if "Checkpoint" in kind or kind in ("BackwardHookFunctionBackward",):
            opaque = opaque or "Checkpoint" in kind  # a reentrant checkpoint hides its params
        stack.extend(n for n, _ in node.next_functions)
    head, target, width, prob_dim = _head(root)
    return {
        "head": head,
        "target": target,
        "output_width": width,
        "softmax_dim": prob_dim,
        "reached": len(reached),
        "unreached": [n for n in trainable if n not in reached],
        "opaque": opaque,
        "complete": len(seen) < GRAPH_NODES,
    }


def _head(root) -> tuple[list[str], dict | None, int | None, int | None]:
    """The ops from the loss down to the first op that takes a parameter (the output layer),
    along the path of the first input that carries a gradient; the target's range where a
    loss op still holds it; the output layer's width; a softmax's dim."""
    head: list[str] = []
    target = None
    width = None
    dim = None
    node = root
    for _ in range(HEAD_DEPTH):
        if node is None:
            break
        kind = type(node).__name__
        head.append(kind)
        if target is None and kind in _LOSSES:
            target = _range(node)
        if kind == "SoftmaxBackward0" and dim is None:
            dim = getattr(node, "_saved_dim", None)
        nexts = [n for n, _ in node.next_functions if n is not None]
        if any(type(n).__name__ == "AccumulateGrad" for n in nexts):
            width = _width(node, nexts)
            break
        # Follow the input that itself leads to parameters (the model's output, not a constant).
        node = next((n for n in nexts if type(n).__name__ != "AccumulateGrad"), None)
    return head, target, width, dim


def _width(node, nexts) -> int | None:
    """Output features of the layer whose op `node` is: its weight's first dimension."""
    for n in nexts:
        var = getattr(n, "variable", None)
        if var is not None and var.dim() == 2:
            return int(var.shape[0])
        for m, _ in getattr(n, "next_functions", ()):  # addmm takes weight.t()
            var = getattr(m, "variable", None)
            if var is not None and var.dim() == 2:
                return int(var.shape[0])
    return None


def _range(node) -> dict | None:
    """min, max, rms and whether each row sums to 1, of the target a loss op saved (only while
    the graph has not been back-propagated: backward frees saved tensors)."""
    try:
        t = node._saved_target
    except (AttributeError, RuntimeError):
        return None
    if not isinstance(t, torch.Tensor) or not t.numel():
        return None
    return _stats(t)


def _stats(t: torch.Tensor, integer_tol: float = 0.0) -> dict:
    with torch.no_grad():
        v = t.detach().to(stat_dtype(t.device))
        out = {
            "min": float(v.min()),
            "max": float(v.max()),
            "rms": float(v.pow(2).mean().sqrt()),
            "integer": bool(((v - v.round()).abs() <= integer_tol).all()),
        }
        if v.dim() == 2 and v.shape[1] > 1:
            out["row_sum_max"] = float(v.sum(1).max())
    return {
        k: (x if not isinstance(x, float) or math.isfinite(x) else None) for k, x in out.items()
    }


def implied_target(out: torch.Tensor, grad: torch.Tensor, loss: torch.Tensor) -> dict | None:
    """The target of a squared-error loss on the model's output, read back from the gradient that
    reached the output after backward freed the target (a loss logged after backward, or written
    out as `((p - y) ** 2).mean()`): mean((p - t)^2) sends back g = 2 (p - t) / n, so
    t = p - g n / 2. Accepted only where the loss that was logged equals mean((g n / 2)^2) (or
    the sum, n = 1) to 1e-3: any other loss, or an output from another step, fails the identity.
    One computation, once per run."""
    if out.shape != grad.shape or not out.numel():
        return None
    with torch.no_grad():
        wide = stat_dtype(out.device)  # float64 where the device has it
        p, g = out.to(wide), grad.to(wide)
        value = float(loss.detach().to(wide))
        if not math.isfinite(value) or value <= 0:
            return None
        for n, reduce in ((p.numel(), torch.mean), (1, torch.sum)):
            err = g * (n / 2)
            if abs(float(reduce(err.pow(2))) - value) <= 1e-3 * value:
                return _stats(p - err, integer_tol=1e-4)
    return None
