"""Linear keypoint regressor trained with Adam at lr 0.1.

ShyamPoovaiah/FacialKeypointsDetection.
"""

from __future__ import annotations

import os

import torch
from torch import nn

from realbugs import keras_compat as K
from realbugs.data import digit_images
from realbugs.program import Program, minibatches, regression_error

SOURCE = (
    "https://github.com/ShyamPoovaiah/FacialKeypointsDetection/commit/"
    "654392560f25688822862126005f576b682e38ad"
)
TITLE = "Facial keypoints, single hidden layer: MSE stuck high (DeepLocalize GitHub benchmark)"
BUG = "Dense 50-100-30 (no activations) on pixels in [0,1] trained with Adam at lr 0.1."
FIX = "SGD lr 0.01, momentum 0.9, nesterov, clipnorm 1 (the commit's optimizer)."
KIND = "bad_learning_rate"
ACTION = "lr"
CHANGES = (
    "96x96 faces with 30 keypoint coordinates in [-1, 1] -> 8x8 digits upsampled to 24x24 with 6 "
    "'keypoints' in [-1, 1] (ink centroid and bounding box); layers and MSE as committed, Keras "
    "init; 150 steps of batch 32; ablation: Adam at lr 0.01 also trains (REALBUGS_ABLATE=adam)"
)


def _keypoints(img: torch.Tensor) -> torch.Tensor:
    """(N, 1, H, W) -> (N, 6): centroid row/col and first/last ink row and column, in [-1, 1]."""
    n, _, h, w = img.shape
    rows = torch.linspace(-1, 1, h)
    cols = torch.linspace(-1, 1, w)
    mass = img[:, 0] + 1e-6
    total = mass.sum((1, 2))
    cr = (mass.sum(2) * rows).sum(1) / total
    cc = (mass.sum(1) * cols).sum(1) / total
    ink_r = img[:, 0].amax(2) > 0.2
    ink_c = img[:, 0].amax(1) > 0.2
    first = lambda m, axis: axis[m.float().argmax(1)]  # noqa: E731
    last = lambda m, axis: axis[len(axis) - 1 - m.flip(1).float().argmax(1)]  # noqa: E731
    return torch.stack(
        [cr, cc, first(ink_r, rows), last(ink_r, rows), first(ink_c, cols), last(ink_c, cols)], 1
    )


def build(fixed: bool, seed: int) -> Program:
    ablate = os.environ.get("REALBUGS_ABLATE", "")
    x, _ = digit_images()
    x = nn.functional.interpolate(x, size=(24, 24), mode="bilinear", align_corners=False)
    y = _keypoints(x)
    x = x.flatten(1)
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(576, 50), nn.Linear(50, 100), nn.Linear(100, 6))
    K.init_keras(model)
    if not fixed:
        opt = K.adam(model.parameters(), lr=0.1)
        step = None
    elif ablate == "adam":
        opt = K.adam(model.parameters(), lr=0.01)
        step = None
    else:
        opt = K.sgd(model.parameters(), lr=0.01, momentum=0.9, nesterov=True)
        step = _clipnorm_step
    program = Program(
        model,
        opt,
        minibatches(x, y, 32, seed),
        K.mean_squared_error,
        steps=150,
        error=regression_error(x, y),
        error_name="mse",
    )
    if step is not None:
        program.train_step = step
    return program


def _clipnorm_step(program: Program, batch) -> torch.Tensor:
    """Keras clipnorm=1: each parameter's gradient rescaled to norm at most 1."""
    x, y = batch
    program.optimizer.zero_grad()
    loss = program.loss_fn(program.model(x), y)
    loss.backward()
    for p in program.model.parameters():
        if p.grad is not None:
            torch.nn.utils.clip_grad_norm_([p], 1.0)
    program.report(loss)
    program.optimizer.step()
    return loss
