"""Census-income classifier on unscaled features (Keras, Stack Overflow 47724077)."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from realbugs import keras_compat as K
from realbugs.data import standardize
from realbugs.program import Program, classification_error, minibatches

SOURCE = "https://stackoverflow.com/questions/47724077"
TITLE = "Keras on the UCI adult data: accuracy stuck at 76% (the majority class)"
BUG = "The 14 raw columns go in unscaled: fnlwgt is ~1e5, capital-gain up to 1e5, age ~40."
FIX = "StandardScaler on the inputs (the DeepFD patch)."
KIND = "unscaled_data"
ACTION = "data"
CHANGES = (
    "adult.data is not bundled: 14 synthetic columns with the UCI marginals' scales (age, fnlwgt "
    "~1.9e5, education-num, capital-gain/loss mostly 0 up to 1e5/4e3, hours, label-encoded "
    "categoricals), label from a logistic rule (24% positive); Dense 21 relu + softmax 2, Adam, "
    "batch 100 as posted; 200 steps"
)


def _adult_like(seed: int, n: int = 4000):
    r = np.random.RandomState(seed)
    age = r.randint(17, 90, n)
    workclass = r.randint(0, 9, n)
    fnlwgt = r.lognormal(np.log(1.8e5), 0.5, n)
    education = r.randint(0, 16, n)
    edu_num = r.randint(1, 17, n)
    marital = r.randint(0, 7, n)
    occupation = r.randint(0, 15, n)
    relationship = r.randint(0, 6, n)
    race = r.randint(0, 5, n)
    sex = r.randint(0, 2, n)
    gain = np.where(r.rand(n) < 0.08, r.lognormal(np.log(7000), 1.0, n), 0.0).clip(0, 99999)
    loss = np.where(r.rand(n) < 0.05, r.normal(1900, 400, n), 0.0).clip(0, 4356)
    hours = r.normal(40, 12, n).clip(1, 99)
    country = r.randint(0, 42, n)
    x = np.stack(
        [
            age,
            workclass,
            fnlwgt,
            education,
            edu_num,
            marital,
            occupation,
            relationship,
            race,
            sex,
            gain,
            loss,
            hours,
            country,
        ],
        1,
    ).astype(np.float32)
    z = (
        0.05 * (age - 38)
        + 0.35 * (edu_num - 10)
        + 0.04 * (hours - 40)
        + 0.8 * sex
        + 2.0 * (gain > 5000)
        + 1.0 * (loss > 1500)
        - 1.9
    )
    y = (r.rand(n) < 1 / (1 + np.exp(-2 * z))).astype(np.int64)
    return torch.from_numpy(x), torch.from_numpy(y)


def build(fixed: bool, seed: int) -> Program:
    x, y = _adult_like(seed)
    if fixed:
        x = standardize(x)
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(14, 21), nn.ReLU(), nn.Linear(21, 2), nn.Softmax(dim=-1))
    K.init_keras(model)
    return Program(
        model,
        K.adam(model.parameters()),
        minibatches(x, K.one_hot(y, 2), 100, seed),
        K.categorical_crossentropy,
        steps=200,
        error=classification_error(x, y, lambda p: p.argmax(-1)),
        error_name="error",
    )
