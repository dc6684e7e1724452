"""Multi-label classification with softmax outputs and MSE (Keras, Stack Overflow 38648195)."""

from __future__ import annotations

import torch
from sklearn.datasets import make_multilabel_classification
from torch import nn

from realbugs import keras_compat as K
from realbugs.program import Program, classification_error, minibatches

SOURCE = "https://stackoverflow.com/questions/38648195"
TITLE = "Keras multi-label classification: accuracy stays low, network does not learn"
BUG = "Three independent labels are predicted by a softmax (which makes them compete) under MSE."
FIX = "Sigmoid outputs with binary cross-entropy."
KIND = "output_loss_mismatch"
ACTION = "loss"
CHANGES = (
    "make_multilabel_classification with 1500 samples instead of 60000; Keras glorot_uniform "
    "init and clipped BCE; dropout 0.5 and SGD lr 0.01 batch 20 kept; 225 steps (3 epochs)"
)


def build(fixed: bool, seed: int) -> Program:
    x, y = make_multilabel_classification(
        n_samples=1500, n_features=20, n_classes=3, random_state=seed
    )
    x, y = torch.tensor(x, dtype=torch.float32), torch.tensor(y, dtype=torch.float32)
    torch.manual_seed(seed)
    model = nn.Sequential(
        nn.Linear(20, 20),
        nn.ReLU(),
        nn.Dropout(0.5),
        nn.Linear(20, 20),
        nn.ReLU(),
        nn.Dropout(0.5),
        nn.Linear(20, 3),
        nn.Sigmoid() if fixed else nn.Softmax(dim=-1),
    )
    K.init_keras(model)
    opt = K.sgd(model.parameters(), lr=0.01)
    loss = K.binary_crossentropy if fixed else K.mean_squared_error
    return Program(
        model,
        opt,
        minibatches(x, y, 20, seed),
        loss,
        steps=225,
        error=classification_error(x, y, lambda p: (p > 0.5).float()),
        error_name="label error",
    )
