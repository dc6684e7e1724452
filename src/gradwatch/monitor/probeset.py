"""Which probes a watch attaches, as its options say, and the on-device step table they share."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from gradwatch._nn import ROOT_NAME, ParamLayer, model_device
from gradwatch.monitor.clipping import ClipProbe
from gradwatch.monitor.options import SETTLED_UPDATE_CADENCE, WatchOptions
from gradwatch.probes.activation_specs import module_spec
from gradwatch.probes.activations import ActivationProbe
from gradwatch.probes.backflow import BackflowProbe
from gradwatch.probes.base import Probe, StepTable
from gradwatch.probes.loop import LoopProbe
from gradwatch.probes.params import ParamProbe
from gradwatch.probes.scaler import SkippedProbe
from gradwatch.probes.through_time import ThroughTimeProbe
from gradwatch.probes.updates import UpdateProbe


@dataclass
class ProbeSet:
    params: ParamProbe
    update: UpdateProbe
    skipped: SkippedProbe | None  # only with a GradScaler: the steps it skipped
    loop: LoopProbe  # the training loop around the model: loss graph, inputs, zero_grad
    clip: ClipProbe  # how much the user's gradient clipping shrank each step's gradients
    all: list[Probe]  # every probe, in the order they record (see ParamProbe.record)
    table: StepTable  # allocated, every probe bound to it


def attach_probes(
    model: nn.Module,
    layers: list[ParamLayer],
    optimizer: torch.optim.Optimizer | None,
    options: WatchOptions,
    scaler: Any,
) -> ProbeSet:
    """Hook the probes `options` asks for into `model` and give them one step table."""
    table = StepTable(options.flush_every, model_device(model))
    params = ParamProbe(layers)
    stepped = (
        {id(p) for g in optimizer.param_groups for p in g["params"]}
        if optimizer is not None
        else None
    )
    update = UpdateProbe(layers, options.update_memory, stepped)
    probes: list[Probe] = [params, update]  # this order: see ParamProbe.record
    update.settled = SETTLED_UPDATE_CADENCE
    forward: dict[str, Probe] = {}
    if options.backflow.on:
        watched = {layer.name: _module(model, layer.name) for layer in layers}
        for name, m in model.named_modules():
            if module_spec(m) is not None:
                watched.setdefault(name or ROOT_NAME, m)
        forward["backflow"] = BackflowProbe(watched, options.backflow.dense)
    if options.activations.on:
        forward["activations"] = ActivationProbe(
            model, options.activations.dense, options.histograms
        )
    if options.through_time.on:
        forward["through_time"] = ThroughTimeProbe(model, options.through_time.dense)
    for name, probe in forward.items():
        probe.settled = getattr(options, name).settled
        probes.append(probe)
    skipped = SkippedProbe(options.flush_every) if scaler is not None else None
    if skipped is not None:
        probes.append(skipped)
    loop = LoopProbe(model, optimizer)
    probes.append(loop)
    clip = ClipProbe()
    probes.append(clip)
    for probe in probes:
        table.declare(probe.columns, probe.rows())
    table.allocate()
    for probe in probes:
        probe.bind(table)
    return ProbeSet(params, update, skipped, loop, clip, probes, table)


def _module(model: nn.Module, name: str) -> nn.Module:
    return model if name == ROOT_NAME else model.get_submodule(name)
