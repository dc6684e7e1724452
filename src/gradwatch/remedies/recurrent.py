"""Remedies for recurrent layers: orthogonal recurrent weights, vanilla RNN -> GRU/LSTM."""

from __future__ import annotations

import torch
from torch import nn

from gradwatch.errors import RemedyError

RECURRENT = (nn.RNN, nn.LSTM, nn.GRU)


def recurrent_orthogonal_init(
    model: nn.Module, gain: float = 1.0, generator: torch.Generator | None = None
) -> nn.Module:
    """Every hidden-to-hidden matrix of nn.RNN/LSTM/GRU becomes gain × orthogonal, per gate.

    The recurrent Jacobian's singular values are then all `gain` (times the nonlinearity's slope):
    the gradient through time neither shrinks nor grows from the weights (Saxe et al. 2014; Le et
    al. 2015; Vorontsov et al. 2017). Each gate's (H × H) block of weight_hh is orthogonal on its
    own. Input weights and biases are untouched. Returns `model`.
    """
    found = False
    with torch.no_grad():
        for mod in model.modules():
            if not isinstance(mod, RECURRENT):
                continue
            for name, p in mod.named_parameters(recurse=False):
                if name.startswith("weight_hh"):
                    h = p.shape[1]
                    for gate in range(p.shape[0] // h):
                        nn.init.orthogonal_(
                            p[gate * h : (gate + 1) * h], gain=gain, generator=generator
                        )
                    found = True
    if not found:
        raise RemedyError(
            "recurrent_orthogonal_init found no nn.RNN, nn.LSTM or nn.GRU in the model."
        )
    return model


def swap_recurrent(model: nn.Module, new: type[nn.Module] = nn.GRU) -> nn.Module:
    """Replace every vanilla nn.RNN by a freshly initialised `new` (nn.GRU or nn.LSTM) of the same
    sizes, layers, direction, bias, batch_first and dropout, in place; returns `model`.

    A gated unit's additive memory path keeps the gradient through time (Hochreiter & Schmidhuber
    1997; Cho et al. 2014). nn.GRU returns (out, h) like nn.RNN; nn.LSTM returns (out, (h, c)),
    which code that unpacks `out, _ = rnn(x)` accepts too.
    """
    if new not in (nn.GRU, nn.LSTM):
        raise RemedyError(
            "swap_recurrent replaces nn.RNN by nn.GRU or nn.LSTM, not "
            f"{getattr(new, '__name__', new)}."
        )
    sites = [
        (parent, name, child)
        for parent in model.modules()
        for name, child in parent._modules.items()
        if type(child) is nn.RNN
    ]
    if not sites:
        raise RemedyError("swap_recurrent found no vanilla nn.RNN submodule to replace.")
    for parent, name, rnn in sites:
        ref = rnn.weight_ih_l0
        fresh = new(
            rnn.input_size,
            rnn.hidden_size,
            num_layers=rnn.num_layers,
            bias=rnn.bias,
            batch_first=rnn.batch_first,
            dropout=rnn.dropout,
            bidirectional=rnn.bidirectional,
            device=ref.device,
            dtype=ref.dtype,
        )
        parent._modules[name] = fresh.train(rnn.training)
    return model
