"""`gw.check`: one forward and backward at initialisation, diagnosed, with the model left
untouched.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from gradwatch._nn import call as _call
from gradwatch._nn import untouched
from gradwatch.diagnose import Diagnosis, diagnose
from gradwatch.diagnose.phase import with_theory
from gradwatch.errors import CheckError
from gradwatch.monitor import Watch
from gradwatch.theory.jacobian import JacobianSpectrum, jacobian_spectrum
from gradwatch.theory.model import compare
from gradwatch.theory.trace import trace

COTANGENT_SEED = 0
# The spectrum's moments average over samples already, so a few samples and probes suffice.
JACOBIAN_SAMPLES, JACOBIAN_PROBES = 16, 8
REHEARSAL_STEPS = 20


@dataclass(frozen=True)
class JacobianAtInit:
    """The input-output Jacobian's spectrum as a check measured it (`summary["jacobian"]`)."""

    spectrum: JacobianSpectrum  # singular values and the moments of σ² (unitless for J)
    samples: int | None  # how many samples of the batch it used; None when all of them

    def to_dict(self) -> dict:
        return {**self.spectrum.to_dict(), "samples": self.samples}


def _output_tensor(output: Any) -> torch.Tensor | None:
    """The tensor to differentiate: a loss the model computed itself (Hugging Face `ModelOutput`
    with labels), else the first floating tensor of a tensor/tuple/dict/dataclass output."""
    loss = getattr(output, "loss", None) if not isinstance(output, torch.Tensor) else None
    if isinstance(loss, torch.Tensor) and loss.requires_grad:
        return loss
    if isinstance(output, torch.Tensor):
        return output if output.is_floating_point() else None
    if isinstance(output, Mapping) or hasattr(output, "values"):
        items = list(output.values())
    elif isinstance(output, (tuple, list)):
        items = list(output)
    else:
        return None
    for item in items:
        t = _output_tensor(item)
        if t is not None and t.requires_grad:
            return t
    return None


def _default_loss(out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    if not target.is_floating_point() and out.dim() >= 2 and out.shape[0] == target.shape[0]:
        return nn.functional.cross_entropy(
            out.reshape(-1, out.shape[-1]) if out.dim() > 2 else out,
            target.reshape(-1) if out.dim() > 2 else target,
        )
    return nn.functional.mse_loss(
        out, target.to(out.dtype).reshape(out.shape) if target.numel() == out.numel() else target
    )


def check(
    model: nn.Module,
    inputs: Any,
    target: Any = None,
    loss_fn: Callable[..., torch.Tensor] | None = None,
    what_if: bool | str = False,
    *,
    predict: bool = True,
    optimizer: torch.optim.Optimizer | None = None,
    rehearsal_steps: int = REHEARSAL_STEPS,
    steps: int | None = None,
    batches: Any = None,
    seeds: tuple[int, ...] = (0, 1),
    max_seconds: float | None = None,
    train_step: Callable | None = None,
    metric: Callable[[nn.Module], float] | None = None,
) -> Diagnosis:
    """Diagnose `model` at initialisation from one forward and one backward pass on `inputs`.

    No optimizer step is taken; weights, buffers, gradients, train/eval modes and the global RNG
    state are exactly as before. Without a `target`, the output is back-propagated against a
    random cotangent v of norm 1 per sample (a fixed seed, independent of the global RNG): the
    gradient of ⟨out, v⟩, which shows how any loss's gradient would flow. With a target and no
    `loss_fn`, integer targets use cross-entropy and float targets mean squared error. Inputs may
    be a tensor, a tuple (passed as positional arguments) or a dict (keyword arguments). Use a
    batch of at least 16 samples: "dead for every sample" means little for a handful.

    `predict` adds summary["theory"] (mean-field prediction of the per-layer factor of the
    back-propagated signal from each layer's own weights, biases and activation, next to the
    measured one) and summary["jacobian"] (singular values of the input-output Jacobian on the
    first 16 samples of a tensor input).
    `what_if=True` also applies every remedy that fits to a deep copy, re-checks it and ranks the
    remedies by measured improvement in `Diagnosis.what_if`; the model itself is untouched.

    `optimizer` (the one training will use, after any scheduler is built so its learning rate is
    the first one) adds a rehearsal: `rehearsal_steps` real steps of a copy of that optimizer on a
    copy of the model, on this batch, diagnosed like training. It finds what the model alone
    cannot show: a learning rate that overshoots, kills ReLUs or overflows, or one too small to
    move anything. Its findings say they come from the rehearsal; summary["rehearsal"] holds the
    losses and learning rate. It needs a training loss (a target, a loss_fn, or a model that
    returns its own loss) and twice the model's memory. The model and optimizer are untouched.

    `what_if="train"` (needs `optimizer`) rehearses instead of re-checking: the baseline and each
    change that can be made automatically (every remedy that fits, the learning rate x0.1/x0.01
    (x10 when the loss barely moves), Adam, standardised inputs, an output activation the loss
    applies again, clearing gradients, clipping) train `steps` (100) steps on copies, on
    `batches` (one (inputs, target) pair or an iterable of them; default the check's batch), at
    each of `seeds`, and are ranked by the loss reached against the baseline's, beyond seed noise:
    summary["rehearsed_what_if"] (`checks.rehearsed.RehearsedWhatIf`). `max_seconds` stops early
    with what was measured; `train_step(model, optimizer, batch) -> loss` is the user's loop body
    when known (the rehearsal of the first steps runs it too, so that a bug of the loop shows);
    `metric(model) -> float` (lower is better) ranks instead of the training loss.
    """
    if optimizer is not None and (not isinstance(rehearsal_steps, int) or rehearsal_steps < 1):
        raise CheckError(f"rehearsal_steps must be a positive integer, got {rehearsal_steps!r}.")
    diagnosis, stats = _run(model, inputs, target, loss_fn, predict)
    if optimizer is not None:
        from gradwatch.checks.rehearsal import merged, rehearse

        with untouched(model):  # the copy's dropout draws from the global RNG
            rehearsed, summary = rehearse(
                model,
                optimizer,
                inputs,
                lambda out: _loss(out, target, loss_fn, cotangent=False),
                rehearsal_steps,
                train_step=train_step,
                batch=(inputs, target),
            )
        diagnosis = merged(diagnosis, rehearsed, summary)
    if what_if == "train":
        if optimizer is None:
            raise CheckError(
                'what_if="train" rehearses training, so pass optimizer= (the one training uses).'
            )
        from gradwatch.checks.rehearsed import STEPS, rehearse_what_if, training_loss

        diagnosis.summary["rehearsed_what_if"] = rehearse_what_if(
            model,
            optimizer,
            batches if batches is not None else (inputs, target),
            loss_fn=training_loss(loss_fn),
            diagnosis=diagnosis,
            steps=STEPS if steps is None else steps,
            seeds=seeds,
            max_seconds=max_seconds,
            train_step=train_step,
            metric=metric,
        )
    elif isinstance(what_if, str):
        raise CheckError(f'what_if must be True, False or "train", got {what_if!r}.')
    elif what_if:
        from gradwatch.checks.what_if import what_if as run_what_if

        diagnosis.what_if = run_what_if(model, inputs, target, loss_fn, diagnosis, stats)
    return diagnosis


def _run(model: nn.Module, inputs: Any, target: Any, loss_fn: Callable | None, predict: bool):
    """(Diagnosis, stats table) of one check."""
    if not isinstance(model, nn.Module):
        raise CheckError(f"gw.check() needs a torch.nn.Module, got {type(model).__name__}.")
    with untouched(model):
        model.train()
        w = Watch(
            model,
            activations=True,
            backflow=True,
            through_time=True,
            update_memory=1e-9,
            flush_every=1,
        )
        try:
            try:
                # The trace (hooks, and a conv per conv layer for the padding) serves only the
                # prediction: a what-if re-check, with predict=False, skips it.
                with trace(model) if predict else contextlib.nullcontext() as traced:
                    output = _call(model, inputs)
            except Exception as exc:  # noqa: BLE001 - any failure here is the user's inputs or model
                raise CheckError(
                    "The model could not run on the inputs "
                    f"({type(exc).__name__}: {_first_line(exc)}); "
                    "pass inputs shaped and typed as the model's forward expects."
                ) from None
            loss = _loss(output, target, loss_fn)
            if predict:
                traced.keep_single_use(loss)
            w.log_loss(loss)  # before backward: the loss's graph still holds the target
            try:
                loss.backward()
            except Exception as exc:  # noqa: BLE001
                raise CheckError(
                    f"Backward failed ({type(exc).__name__}: {_first_line(exc)}); "
                    "the loss must be a differentiable scalar."
                ) from None
            w.step()
        finally:
            w.forget_update()
            w.close()
        stats = w.stats()
        meta = w.meta()
        extras = _predictions(model, inputs, traced, stats) if predict else {}
    diagnosis = with_theory(diagnose(stats, meta), extras.get("theory"))
    diagnosis.summary.update(extras)
    return diagnosis, stats


def _predictions(model: nn.Module, inputs: Any, traced, stats) -> dict:
    """Theory next to measurement, and the Jacobian spectrum; each left out where it cannot
    apply.
    """
    out: dict = {}
    theory = compare(traced, stats)
    if theory is not None and theory.n_links:
        out["theory"] = theory
    # Integer inputs or an op without double backward leave the Jacobian out; the check still
    # stands.
    with contextlib.suppress(Exception):
        few = (
            inputs[:JACOBIAN_SAMPLES]
            if isinstance(inputs, torch.Tensor) and inputs.dim() > 1
            else inputs
        )
        out["jacobian"] = JacobianAtInit(
            jacobian_spectrum(model, few, k=JACOBIAN_PROBES),
            len(few) if few is not inputs else None,
        )
    return out


def _loss(
    output: Any, target: Any, loss_fn: Callable | None, cotangent: bool = True
) -> torch.Tensor:
    if loss_fn is not None:
        try:
            loss = loss_fn(output, target) if target is not None else loss_fn(output)
        except Exception as exc:  # noqa: BLE001
            raise CheckError(
                f"loss_fn raised {type(exc).__name__}: {_first_line(exc)}; "
                "check it accepts (output, target)."
            ) from None
        if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
            raise CheckError("loss_fn must return a scalar tensor.")
        return loss.reshape(())
    out = _output_tensor(output)
    if out is None:
        raise CheckError(
            "The model's output holds no floating-point tensor that requires grad; "
            "pass loss_fn to say what to differentiate."
        )
    if out.numel() == 1 and out is getattr(output, "loss", None):
        return out.reshape(())
    if target is not None:
        try:
            return _default_loss(out, target)
        except Exception as exc:  # noqa: BLE001
            raise CheckError(
                f"The default loss could not compare output {tuple(out.shape)} "
                f"with target ({_first_line(exc)}); pass loss_fn."
            ) from None
    if not cotangent:
        raise CheckError(
            "Rehearsing optimizer steps needs a training loss: "
            "pass target (and loss_fn if the default does not fit)."
        )
    gen = torch.Generator(device="cpu").manual_seed(COTANGENT_SEED)
    v = torch.randn(out.shape, generator=gen, dtype=torch.float32).to(out.device, out.dtype)
    v = v / v.norm().clamp_min(1e-30) * math.sqrt(out.shape[0] if out.dim() else 1)
    return (out * v).sum()


def _first_line(exc: Exception) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:200] if text else "no message"
