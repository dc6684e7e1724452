"""A rehearsal of the optimizer's first steps: what the user's optimizer, at its current learning
rate, does to a copy of the model on the check's batch.

A check at initialisation sees the model and the batch but not the optimizer, so a learning rate
fifty times too high looks exactly like a healthy run. Given the optimizer, the check copies the
model and the optimizer (state and hyperparameters), takes a few real steps on the copy with every
probe on, and diagnoses those steps with the training detectors. The user's model, optimizer and
RNG state are not touched. The learning rate is held where it is (a scheduler is not stepped), so a
warm-up rehearses its first, small rate.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import nn

from gradwatch._nn import call
from gradwatch.diagnose import Diagnosis, Finding
from gradwatch.diagnose.finding import SEVERITIES
from gradwatch.errors import CheckError
from gradwatch.monitor import Watch


@dataclass(frozen=True)
class RehearsalSummary:
    """What the rehearsed optimizer steps did (`Diagnosis.summary["rehearsal"]` of a check)."""

    steps: int  # optimizer steps taken on the copy
    optimizer: str  # the optimizer's class name, e.g. "Adam"
    lr: tuple[float, ...]  # the distinct learning rates of its parameter groups, ascending
    loss_first: float  # training loss at the first rehearsed step (the loss's own units)
    loss_last: float  # training loss at the last rehearsed step (the loss's own units)
    findings: tuple[str, ...] = ()  # kinds of the findings the rehearsal added to the check

    def to_dict(self) -> dict:
        return {
            "steps": self.steps,
            "optimizer": self.optimizer,
            "lr": list(self.lr),
            "loss_first": self.loss_first,
            "loss_last": self.loss_last,
            "findings": list(self.findings),
        }


def copy_optimizer(
    optimizer: torch.optim.Optimizer, model: nn.Module, clone: nn.Module
) -> torch.optim.Optimizer:
    """The same optimizer class over `clone`'s parameters, with `optimizer`'s groups and state."""
    position = {id(p): i for i, p in enumerate(model.parameters())}
    params = list(clone.parameters())
    groups = []
    for group in optimizer.param_groups:
        missing = [p for p in group["params"] if id(p) not in position]
        if missing:
            raise CheckError(
                "The optimizer steps parameters that are not the model's, so its steps cannot be "
                "rehearsed on a copy; pass an optimizer over this model's parameters."
            )
        groups.append(
            {
                **{k: v for k, v in group.items() if k != "params"},
                "params": [params[position[id(p)]] for p in group["params"]],
            }
        )
    try:
        twin = type(optimizer)(groups, **optimizer.defaults)
    except TypeError:
        twin = type(optimizer)(groups)
    # load_state_dict maps state by position in the groups, which `groups` keeps.
    twin.load_state_dict(copy.deepcopy(optimizer.state_dict()))
    return twin


def rehearse(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    inputs: Any,
    loss,
    steps: int,
    train_step: Callable | None = None,
    batch: Any = None,
) -> tuple[Diagnosis, RehearsalSummary]:
    """Diagnosis of `steps` optimizer steps on a copy, and a summary of what they did.

    `loss(output)` turns the copy's output into the training loss. With the user's loop body,
    `train_step(model, optimizer, batch) -> loss`, the copy is trained by it on `batch` instead,
    so that what the loop does wrong (gradients never cleared) is seen too. Raises CheckError
    when the model or optimizer cannot be copied.
    """
    try:
        clone = copy.deepcopy(model)
    except Exception as exc:  # noqa: BLE001 - any model the user built
        raise CheckError(
            f"The model could not be copied for the rehearsal ({type(exc).__name__}); "
            "check without optimizer=."
        ) from None
    try:
        twin = copy_optimizer(optimizer, model, clone)
    except CheckError:
        raise
    except Exception as exc:  # noqa: BLE001
        raise CheckError(
            f"The optimizer ({type(optimizer).__name__}) could not be copied for the rehearsal "
            f"({type(exc).__name__}: {exc}); check without optimizer=."
        ) from None
    clone.train()
    # update_memory 1: every layer's update ratio at every step, exact (the copy is short-lived).
    w = Watch(
        clone,
        twin,
        activations=True,
        backflow=True,
        through_time=True,
        update_memory=1.0,
        flush_every=steps + 1,
    )
    losses = []
    try:
        for _ in range(steps):
            if train_step is not None:
                value = train_step(clone, twin, batch)
                if not isinstance(value, torch.Tensor):
                    value = torch.as_tensor(float(value))
                w.log_loss(value)
                losses.append(float(value.detach()))
                continue
            twin.zero_grad(set_to_none=True)
            value = loss(call(clone, inputs))
            value.backward()
            w.log_loss(value.detach())
            losses.append(float(value.detach()))
            twin.step()
    except CheckError:
        raise
    except Exception as exc:  # noqa: BLE001 - the user's model or optimizer
        raise CheckError(
            f"Rehearsed step {len(losses)} raised {type(exc).__name__}: "
            f"{str(exc).strip()[:160]}; check without optimizer=, or fix the step."
        ) from None
    finally:
        w.close()
    diagnosis = w.diagnose()
    lrs = sorted({float(g["lr"]) for g in twin.param_groups if "lr" in g})
    summary = RehearsalSummary(
        steps=steps,
        optimizer=type(optimizer).__name__,
        lr=tuple(lrs),
        loss_first=losses[0],
        loss_last=losses[-1],
    )
    return diagnosis, summary


def merged(init: Diagnosis, rehearsal: Diagnosis, summary: RehearsalSummary) -> Diagnosis:
    """The check's diagnosis with the rehearsal's warnings and errors of kinds it does not hold,
    each saying it comes from the rehearsal."""
    have = init.kinds()
    added = []
    for f in rehearsal.findings:
        if f.severity == "info" or f.kind in have:
            continue
        rates = ", ".join(f"{x:g}" for x in summary.lr)
        lead = f"In {summary.steps} rehearsed {summary.optimizer} steps (lr {rates}) on a copy: "
        added.append(
            Finding(
                f.kind,
                f.severity,
                f.layers,
                lead + f.summary,
                {**f.evidence, "rehearsal": True},
                f.remedies,
                f.step,
            )
        )
        have.add(f.kind)
    findings = sorted(init.findings + added, key=lambda f: -SEVERITIES.index(f.severity))
    out = Diagnosis(
        findings,
        {**init.summary, "rehearsal": replace(summary, findings=tuple(f.kind for f in added))},
        init.stats,
        init.meta,
    )
    out.what_if = init.what_if
    return out
