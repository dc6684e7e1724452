"""The chains of weight layers and elementwise activations that one forward pass really runs.

Mean-field theory describes y = W φ(h) + b repeated; a model matches it only where the output of
one Linear/Conv reaches the next through nothing but an elementwise activation. Module order
cannot say that (a residual add or a functional call between two modules is invisible to it), so
the trace follows the tensors themselves: a link holds when the next layer's input *is* (the same
tensor object as) the activation's output, and the activation's input is the previous layer's
output.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.conv import _ConvNd, _ConvTransposeNd

from gradwatch._nn import WEIGHT_LAYERS, display_name
from gradwatch._tensor import stat_dtype
from gradwatch.activations import REGISTRY

# Activation modules the theory knows, with the name and parameters `theory` uses for them.
_ACTIVATIONS: dict[type, str] = {m: a.theory for a in REGISTRY if a.theory for m in a.modules}


def activation_of(module: nn.Module) -> tuple[str, dict[str, float]] | None:
    """(theory name, parameters) of an activation module, or None if the theory has no name for
    it.
    """
    name = _ACTIVATIONS.get(type(module))
    if name is None:
        return None
    if name == "leaky_relu":
        return name, {"negative_slope": float(module.negative_slope)}
    if name == "elu":
        return name, {"alpha": float(module.alpha)}
    if name == "gelu" and module.approximate != "none":
        return None
    if name == "softplus" and module.beta != 1:
        return None
    return name, {}


@dataclass
class Call:
    """One call of a weight layer: its name, the module, and the second moment of its input."""

    name: str
    module: nn.Module
    input_sq: float  # mean square of the layer's input (all elements)
    valid_taps: float = (
        1.0  # a conv's kernel taps inside the (unpadded) input, as a fraction, mean over outputs
    )


def _valid_taps(module: nn.Module, x: torch.Tensor) -> float:
    """Zero padding hides some kernel taps from border outputs; on small images that is a large
    share of them, and both the forward variance and the backward signal shrink by this fraction."""
    if not isinstance(module, _ConvNd) or module.padding_mode != "zeros":
        return 1.0
    dims = len(module.kernel_size)
    conv = (F.conv1d, F.conv2d, F.conv3d)[dims - 1]
    # Only shapes matter: counted on the host.
    ones = torch.ones((1, 1, *x.shape[-dims:]), dtype=torch.float64)
    kernel = torch.ones((1, 1, *module.kernel_size), dtype=torch.float64)
    taps = conv(
        ones, kernel, stride=module.stride, padding=module.padding, dilation=module.dilation
    )
    return float(taps.mean()) / math.prod(module.kernel_size)


@dataclass
class Link:
    """Layer `src` feeds layer `dst` through one activation (or none: "linear")."""

    src: str
    dst: str
    activation: str
    params: dict[str, float]
    nodes: tuple = ()  # autograd nodes of src's output and of the activation's output


@dataclass
class Trace:
    calls: list[Call]  # first call of each weight layer, in forward order
    links: list[Link]

    def keep_single_use(self, root: torch.Tensor) -> None:
        """Drop links whose tensors something else also reads (a skip connection, a concatenation):
        there the backflow at `src` sums several paths and the chain's theory does not hold.

        `root` is a tensor computed from the traced forward (the loss), before its backward.
        """
        uses: dict = {}
        seen: set = set()
        stack = [root.grad_fn] if root.grad_fn is not None else []
        while stack:
            node = stack.pop()
            if node in seen:
                continue
            seen.add(node)
            for nxt, _ in node.next_functions:
                if nxt is not None:
                    uses[nxt] = uses.get(nxt, 0) + 1
                    stack.append(nxt)
        if seen:
            self.links = [
                lk
                for lk in self.links
                if all(uses.get(n, 0) == 1 for n in lk.nodes if n is not None)
            ]

    def chains(self) -> list[list[str]]:
        """Maximal runs of layers joined by links, each in forward order."""
        nxt = {link.src: link.dst for link in self.links}
        has_prev = {link.dst for link in self.links}
        out = []
        for call in self.calls:
            if call.name in has_prev:
                continue
            chain = [call.name]
            while chain[-1] in nxt and nxt[chain[-1]] not in chain:
                chain.append(nxt[chain[-1]])
            if len(chain) > 1:
                out.append(chain)
        return out


@contextlib.contextmanager
def trace(model: nn.Module) -> Iterator[Trace]:
    """Record, during the forward passes run inside the block, the links between layers.

    The Trace yielded is filled in when the block ends. Only layers called once are linked: a layer
    reused in a loop (an RNN cell, tied weights) has no single place in a chain.
    """
    result = Trace([], [])
    names = {id(m): display_name(n) for n, m in model.named_modules()}
    # id(tensor) -> (tensor, layer that made it, activation applied to it or None, the layer
    # output's node)
    produced: dict[int, tuple] = {}
    calls: dict[str, Call] = {}
    counts: dict[str, int] = {}
    links: list[Link] = []

    def source(x):
        got = produced.get(id(x)) if isinstance(x, torch.Tensor) else None
        return got if got is not None and got[0] is x else None

    def hook(module, args, output):
        if not isinstance(output, torch.Tensor) or not args:
            return
        x = args[0]
        src = source(x)
        if isinstance(module, WEIGHT_LAYERS) and not isinstance(module, _ConvTransposeNd):
            name = names.get(id(module), "?")
            counts[name] = counts.get(name, 0) + 1
            if name not in calls and isinstance(x, torch.Tensor) and x.is_floating_point():
                xd = x.detach()
                sq = float(torch.linalg.vector_norm(xd, dtype=stat_dtype(xd.device))) ** 2 / max(
                    xd.numel(), 1
                )
                calls[name] = Call(name, module, sq, _valid_taps(module, xd))
            if src is not None:
                act, params = src[2] or ("linear", {})
                links.append(Link(src[1], name, act, params, (src[3], x.grad_fn)))
            produced[id(output)] = (output, name, None, output.grad_fn)
        elif isinstance(module, nn.Identity):
            return  # the same tensor comes out: whatever made it still stands
        elif src is not None and src[2] is None and (act := activation_of(module)) is not None:
            produced[id(output)] = (output, src[1], act, src[3])

    handles = [m.register_forward_hook(hook) for m in model.modules()]
    try:
        yield result
    finally:
        for h in handles:
            h.remove()
        once = {n for n, c in counts.items() if c == 1}
        result.links = [link for link in links if link.src in once and link.dst in once]
        result.calls = [c for c in calls.values() if c.name in once]
