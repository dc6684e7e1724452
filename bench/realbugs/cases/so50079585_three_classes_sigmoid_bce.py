"""Three image classes trained with one sigmoid unit and binary cross-entropy.

Keras, SO 50079585.
"""

from __future__ import annotations

import torch
from torch import nn

from realbugs import keras_compat as K
from realbugs.data import digit_images
from realbugs.program import Program, classification_error, minibatches

SOURCE = "https://stackoverflow.com/questions/50079585"
TITLE = "Keras image classifier with three classes: accuracy does not improve"
BUG = (
    "Three classes read with class_mode='binary' (labels 0, 1, 2) and trained with Dense(1) + "
    "sigmoid under binary cross-entropy: the label 2 lies outside the sigmoid's range."
)
FIX = "Dense(3) + softmax under categorical cross-entropy, class_mode='categorical'."
KIND = "output_loss_mismatch"
ACTION = "loss"
# The fix is not one change a rehearsal can make by itself (issue 21's denominator).
ONE_CHANGE = False
NOT_ONE_CHANGE = (
    "the fix widens the output layer from 1 unit to 3 and changes the program's own error; no"
    " change of a copy can widen a layer the user's metric reads"
)
CHANGES = (
    "digits 0, 1, 2 (8x8, upsampled to 24x24) instead of 150x150 photos of three kinds of car "
    "damage; the same three conv/pool blocks (32, 32, 64) and Dense 64 + dropout 0.5, RMSprop; "
    "Keras init and clipped cross-entropies; no augmentation; 120 steps of batch 16"
)


def build(fixed: bool, seed: int) -> Program:
    x, y = digit_images()
    keep = y < 3
    x, y = x[keep], y[keep]
    x = nn.functional.interpolate(x, size=(24, 24), mode="bilinear", align_corners=False)
    torch.manual_seed(seed)
    head = [nn.Linear(64, 3), nn.Softmax(dim=-1)] if fixed else [nn.Linear(64, 1), nn.Sigmoid()]
    model = nn.Sequential(
        nn.Conv2d(1, 32, 3),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(32, 32, 3),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(64, 64),
        nn.ReLU(),
        nn.Dropout(0.5),
        *head,
    )
    K.init_keras(model)
    if fixed:
        target, loss = K.one_hot(y, 3), K.categorical_crossentropy
        predict = lambda p: p.argmax(-1)  # noqa: E731
    else:
        target, loss = y.float().unsqueeze(1), K.binary_crossentropy
        predict = lambda p: (p[:, 0] > 0.5).long()  # noqa: E731 (Keras' binary accuracy)
    return Program(
        model,
        K.rmsprop(model.parameters()),
        minibatches(x, target, 16, seed),
        loss,
        steps=120,
        error=classification_error(x, y, predict),
        error_name="error",
    )
