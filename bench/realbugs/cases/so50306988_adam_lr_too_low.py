"""Two-blob classifier that Adam at lr 0.001 does not train in 5 epochs (Keras, SO 50306988)."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from realbugs import keras_compat as K
from realbugs.program import Program, classification_error, minibatches

SOURCE = "https://stackoverflow.com/questions/50306988"
TITLE = "Keras: simple two-class problem, the model predicts one class only"
BUG = "Adam's default lr 0.001 over 5 epochs of 7 batches barely moves a 2-2-2 sigmoid network."
FIX = (
    "Adam lr 0.01 (the DeepFD patch, which also runs 10 epochs instead of 5: "
    "both versions run 10 here)."
)
KIND = "bad_learning_rate"
ACTION = "lr"
CHANGES = (
    "the post's data (two uniform blobs in [0.2,0.4]^2 and [0.5,0.7]^2, 200 points, labels 1/2 "
    "one-hot), Dense 2 sigmoid -> Dense 2 softmax, categorical cross-entropy, batch 32; Keras "
    "init; both versions run 70 steps (10 epochs, the patch's count); only the learning rate "
    "differs"
)


def build(fixed: bool, seed: int) -> Program:
    r = np.random.RandomState(seed)
    c1 = r.uniform(0.2, 0.4, 200)
    c2 = r.uniform(0.5, 0.7, 200)  # the post writes uniform(low=0.7, high=0.5): the same range
    rows = []
    for i in range(0, 200, 2):
        rows.append([c1[i], c1[i + 1], 0])
        rows.append([c2[i], c2[i + 1], 1])
    data = torch.tensor(rows, dtype=torch.float32)
    x, y = data[:, :2], data[:, 2].long()
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(2, 2), nn.Sigmoid(), nn.Linear(2, 2), nn.Softmax(dim=-1))
    K.init_keras(model)
    opt = K.adam(model.parameters(), lr=0.01 if fixed else 0.001)
    return Program(
        model,
        opt,
        minibatches(x, K.one_hot(y, 2), 32, seed),
        K.categorical_crossentropy,
        steps=140,
        error=classification_error(x, y, lambda p: p.argmax(-1)),
        error_name="error",
    )
