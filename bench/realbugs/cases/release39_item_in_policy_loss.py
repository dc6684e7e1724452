"""REINFORCE loss built from log_prob.item(): the generator gets no gradient.

isayev/ReLeaSE #39.
"""

from __future__ import annotations

import torch
from torch import nn

from realbugs.program import Program, evaluating

SOURCE = "https://github.com/isayev/ReLeaSE/issues/39"
TITLE = "Weights are not updating"
BUG = (
    "The policy-gradient loss accumulates log_probs[0, top_i].item() * reward: a Python float, "
    "so the loss (a leaf tensor the loop starts from) is not connected to the generator."
)
FIX = "Accumulate the tensor log_probs[0, top_i] * discounted_reward (the repository's code)."
KIND = "no_gradient"
ACTION = "loop"
CHANGES = (
    "the stack-augmented RNN generator of SMILES -> a GRU over 6 tokens generating 8-token "
    "sequences, reward = fraction of token 0 (instead of a property predictor); the loss "
    "accumulator starts as torch.zeros(1, requires_grad=True) so that backward() runs as in the "
    "report; 8 trajectories per step, gamma 0.97, Adam lr 0.01, 80 steps"
)

VOCAB, LENGTH, TRAJECTORIES, GAMMA = 6, 8, 8, 0.97


class Generator(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(VOCAB + 1, 16)  # token VOCAB is the start token
        self.rnn = nn.GRUCell(16, 32)
        self.out = nn.Linear(32, VOCAB)

    def forward(self, token, hidden):
        hidden = self.rnn(self.embed(token), hidden)
        return self.out(hidden), hidden


def _policy_step(program: Program, batch, use_item: bool) -> torch.Tensor:
    gen = program.model
    program.optimizer.zero_grad()
    rl_loss = torch.zeros(1, requires_grad=True)
    for _ in range(TRAJECTORIES):
        token = torch.tensor([VOCAB])
        hidden = torch.zeros(1, 32)
        picks, log_probs = [], []
        for _ in range(LENGTH):
            output, hidden = gen(token, hidden)
            lp = torch.log_softmax(output, dim=1)
            token = torch.multinomial(lp.exp().detach(), 1)[0]
            picks.append(int(token))
            log_probs.append(lp[0, token[0]])
        reward = sum(t == 0 for t in picks) / LENGTH
        discounted = reward
        for lp in log_probs:
            rl_loss = rl_loss - (lp.item() if use_item else lp) * discounted
            discounted *= GAMMA
    rl_loss = rl_loss / TRAJECTORIES
    rl_loss.backward()
    program.report(rl_loss.reshape(()))
    program.optimizer.step()
    return rl_loss.reshape(())


def _error(model: nn.Module) -> float:
    """1 - mean probability of token 0 along the all-zeros sequence (lower is better)."""

    def run():
        token, hidden, probs = torch.tensor([VOCAB]), torch.zeros(1, 32), []
        for _ in range(LENGTH):
            output, hidden = model(token, hidden)
            probs.append(torch.softmax(output, 1)[0, 0])
            token = torch.tensor([0])
        return 1 - torch.stack(probs).mean()

    return evaluating(model, run)


def _one_step_loss(use_item: bool):
    """The same loss for one generated token (reward 1), for gw.check: (output, token) -> loss."""

    def loss(out, token):
        lp = torch.log_softmax(out[0], dim=1)[0, token[0]]
        return (torch.zeros(1, requires_grad=True) - (lp.item() if use_item else lp)).reshape(())

    return loss


def build(fixed: bool, seed: int) -> Program:
    torch.manual_seed(seed)
    model = Generator()
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    start = (torch.tensor([VOCAB]), torch.zeros(1, 32))  # the first step of a trajectory
    return Program(
        model,
        opt,
        [(start, torch.tensor([0]))],
        _one_step_loss(use_item=not fixed),
        steps=80,
        train_step=lambda p, b: _policy_step(p, b, use_item=not fixed),
        error=_error,
        error_name="1-p(token 0)",
    )
