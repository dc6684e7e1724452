"""What the converted Keras programs need to behave as they did in Keras.

Keras (2.x) defaults that differ from PyTorch's and matter for these bugs:
- `Dense`/`Conv2D` weights are `glorot_uniform`, biases zero (PyTorch: Kaiming-uniform(a=sqrt 5)
  weights and a uniform bias); old Keras' `init='uniform'` is U(-0.05, 0.05) and `init='normal'`
  (or `kernel_initializer='normal'`) N(0, 0.05).
- `binary_crossentropy` and `categorical_crossentropy` take probabilities and clip them to
  [1e-7, 1 - 1e-7]; `categorical_crossentropy` first divides the output by its sum over classes.
  So a softmax over one unit gives a loss of -log(1e-7) = 16.1 on the negatives and no gradient,
  and a ReLU output into categorical cross-entropy can divide 0 by 0.
- Optimizer defaults: SGD lr 0.01; Adam lr 0.001, eps 1e-7; RMSprop lr 0.001, rho 0.9, eps 1e-7.
"""

from __future__ import annotations

import torch
from torch import nn

EPSILON = 1e-7


def init_keras(model: nn.Module, kernel: str = "glorot_uniform") -> nn.Module:
    """Re-initialise every Linear/Conv weight the Keras way, biases to zero."""
    for m in model.modules():
        if isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d)):
            with torch.no_grad():
                if kernel == "glorot_uniform":
                    nn.init.xavier_uniform_(m.weight)
                elif kernel == "uniform":  # Keras 1 init='uniform'
                    nn.init.uniform_(m.weight, -0.05, 0.05)
                elif kernel == "normal":  # Keras 1 init='normal' / RandomNormal()
                    nn.init.normal_(m.weight, 0.0, 0.05)
                elif kernel == "he_normal":  # truncated in Keras; plain normal here
                    nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
                else:
                    raise ValueError(kernel)
                if m.bias is not None:
                    m.bias.zero_()
    return model


def binary_crossentropy(p: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Keras' binary cross-entropy on probabilities, clipped to [eps, 1 - eps]."""
    p = p.clamp(EPSILON, 1 - EPSILON)
    y = y.to(p.dtype).reshape(p.shape)
    return -(y * torch.log(p) + (1 - y) * torch.log(1 - p)).mean()


def categorical_crossentropy(p: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Keras' categorical cross-entropy on probabilities (one-hot y): output divided by its sum
    over the last axis, clipped to [eps, 1 - eps]."""
    p = p / p.sum(-1, keepdim=True)
    p = p.clamp(EPSILON, 1 - EPSILON)
    return -(y.to(p.dtype) * torch.log(p)).sum(-1).mean()


def mean_squared_error(p: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return ((p - y.to(p.dtype).reshape(p.shape)) ** 2).mean()


def mean_absolute_error(p: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return (p - y.to(p.dtype).reshape(p.shape)).abs().mean()


def sgd(params, lr: float = 0.01, momentum: float = 0.0, nesterov: bool = False):
    """Keras SGD (its `decay=1e-6` per iteration is left out: under 0.1% over these runs)."""
    return torch.optim.SGD(params, lr=lr, momentum=momentum, nesterov=nesterov)


def adam(params, lr: float = 0.001):
    return torch.optim.Adam(params, lr=lr, eps=EPSILON)


def rmsprop(params, lr: float = 0.001):
    return torch.optim.RMSprop(params, lr=lr, alpha=0.9, eps=EPSILON)


def one_hot(y: torch.Tensor, n: int) -> torch.Tensor:
    return nn.functional.one_hot(y.long(), n).float()
