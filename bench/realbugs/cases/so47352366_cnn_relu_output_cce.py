"""MNIST CNN whose last layer is ReLU under categorical cross-entropy (Keras, SO 47352366)."""

from __future__ import annotations

import torch
from torch import nn

from realbugs import keras_compat as K
from realbugs.data import digit_images
from realbugs.program import Program, classification_error, minibatches

SOURCE = "https://stackoverflow.com/questions/47352366"
TITLE = "Keras CNN on MNIST: accuracy stuck at 10%, loss does not decrease"
BUG = "The 10-way output is Dense(10, activation='relu') fed to categorical cross-entropy."
FIX = "Dense(10, activation='softmax')."
KIND = "output_loss_mismatch"
ACTION = "loss"
CHANGES = (
    "scikit-learn 8x8 digits (0..1) instead of 28x28 MNIST, so 2x2 after the two poolings; "
    "conv 32/64 5x5 'same', Dense 1024, bias 0.1, dropout 0.5, Adam as posted; Keras "
    "glorot_uniform init and its categorical cross-entropy (output / sum, clipped); 150 steps "
    "of batch 50"
)


def build(fixed: bool, seed: int) -> Program:
    x, y = digit_images()
    torch.manual_seed(seed)
    model = nn.Sequential(
        nn.Conv2d(1, 32, 5, padding=2),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 5, padding=2),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(64 * 2 * 2, 1024),
        nn.ReLU(),
        nn.Dropout(0.5),
        nn.Linear(1024, 10),
        nn.Softmax(dim=-1) if fixed else nn.ReLU(),
    )
    K.init_keras(model)
    with torch.no_grad():
        for m in (model[0], model[3], model[7]):
            m.bias.fill_(0.1)
    batches = minibatches(x, K.one_hot(y, 10), 50, seed)
    return Program(
        model,
        K.adam(model.parameters()),
        batches,
        K.categorical_crossentropy,
        steps=150,
        error=classification_error(x, y, lambda p: p.argmax(-1)),
        error_name="error",
    )
