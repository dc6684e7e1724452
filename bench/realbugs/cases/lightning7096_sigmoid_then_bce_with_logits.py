"""Fine-tuning example returning sigmoid probabilities to a with-logits loss.

Lightning PR #7096.
"""

from __future__ import annotations

import torch
from torch import nn

from realbugs.data import digit_images
from realbugs.program import Program, classification_error, minibatches

SOURCE = "https://github.com/Lightning-AI/pytorch-lightning/pull/7096"
TITLE = "Fixed bug: replaced bce_loss_with_logits with bce_loss (computer_vision_fine_tuning.py)"
BUG = (
    "forward() returns torch.sigmoid(logits) and the loss is binary_cross_entropy_with_logits, "
    "which applies a second sigmoid: every prediction looks like p >= 0.5 to the loss."
)
FIX = "F.binary_cross_entropy on the sigmoid output (the PR; dropping the sigmoid works too)."
KIND = "output_loss_mismatch"
ACTION = "loss"
CHANGES = (
    "ResNet-50 on cats vs dogs -> a small CNN (conv 16, conv 32, pool) on 8x8 digits, class "
    "'digit >= 5', with the example's head (Linear 256 ReLU, Linear 32, Linear 1) and Adam "
    "lr 1e-3; 200 steps of batch 64"
)


class TransferLearningModel(nn.Module):
    def __init__(self):
        super().__init__()
        self.feature_extractor = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(16, 32, 3, padding=1),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(2),
            nn.Flatten(),
        )
        self.fc = nn.Sequential(
            nn.Linear(128, 256), nn.ReLU(), nn.Linear(256, 32), nn.Linear(32, 1)
        )

    def forward(self, x):
        return torch.sigmoid(self.fc(self.feature_extractor(x)))


def build(fixed: bool, seed: int) -> Program:
    x, digit = digit_images()
    y = (digit >= 5).float().unsqueeze(1)
    torch.manual_seed(seed)
    model = TransferLearningModel()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss = (
        nn.functional.binary_cross_entropy
        if fixed
        else nn.functional.binary_cross_entropy_with_logits
    )
    return Program(
        model,
        opt,
        minibatches(x, y, 64, seed),
        loss,
        steps=200,
        error=classification_error(x, y, lambda p: (p > 0.5).float()),
        error_name="error",
    )
