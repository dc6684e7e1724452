"""pytorch/examples' MNIST net switched to SGD at the script's lr of 1.0 (pytorch/examples #736)."""

from __future__ import annotations

import torch
from torch import nn

from realbugs.data import digit_images
from realbugs.program import Program, classification_error, minibatches

SOURCE = "https://github.com/pytorch/examples/issues/736"
TITLE = "MNIST Optimizer: changing the optimizer to optim.SGD produces all nan for the loss"
BUG = "optim.SGD with the script's default lr=1.0 (tuned for Adadelta): the loss turns NaN."
FIX = "A lower learning rate for SGD (the maintainers' answer): lr 0.01."
KIND = "bad_learning_rate"
ACTION = "lr"
CHANGES = (
    "the example's Net (conv 32, conv 64, max-pool, dropout 0.25, fc 128, dropout 0.5, fc 10, "
    "log_softmax, NLL loss) on 8x8 digits normalised with MNIST's mean/std instead of 28x28 "
    "MNIST (fc1 takes 64*2*2); no StepLR; 150 steps of batch 64"
)


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 32, 3, 1)
        self.conv2 = nn.Conv2d(32, 64, 3, 1)
        self.dropout1 = nn.Dropout(0.25)
        self.dropout2 = nn.Dropout(0.5)
        self.fc1 = nn.Linear(64 * 2 * 2, 128)
        self.fc2 = nn.Linear(128, 10)

    def forward(self, x):
        x = torch.relu(self.conv1(x))
        x = torch.relu(self.conv2(x))
        x = torch.flatten(self.dropout1(nn.functional.max_pool2d(x, 2)), 1)
        x = self.dropout2(torch.relu(self.fc1(x)))
        return torch.log_softmax(self.fc2(x), dim=1)


def build(fixed: bool, seed: int) -> Program:
    x, y = digit_images()
    x = (x - 0.1307) / 0.3081
    torch.manual_seed(seed)
    model = Net()
    opt = torch.optim.SGD(model.parameters(), lr=0.01 if fixed else 1.0)
    return Program(
        model,
        opt,
        minibatches(x, y, 64, seed),
        nn.NLLLoss(),
        steps=150,
        error=classification_error(x, y, lambda out: out.argmax(-1)),
        error_name="error",
    )
