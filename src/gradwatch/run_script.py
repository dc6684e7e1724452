"""`gradwatch run SCRIPT.py [ARGS...]`: watch an unmodified training script.

PyTorch's global module hooks tell us when a model first runs forward. If the script has made
one optimizer by then, and it trains that model, we start a `Watch` on the model (the module
holding most of that optimizer's parameters) right there, so that the first forward pass, and any
step a GradScaler skips before the first real one, are recorded as with `gw.watch` written into
the script. An optimizer made after the first forward, or several of them (a GAN's), leave the
choice to PyTorch's global optimizer step hooks: the first optimizer to step starts the watch,
whose own hooks then record that very step and every later one. The script runs as `__main__`
with its own `sys.argv`; its output, exit code and traceback are its own.

What can be checked (the script's path, `every`, the log directory) is checked before the script
starts. Should the Watch still fail to start at the first step, gradwatch detaches itself, warns
once and lets the training go on: watching never crashes the user's script.
"""

from __future__ import annotations

import datetime as _dt
import gc
import os
import runpy
import sys
import traceback
import warnings
import weakref
from pathlib import Path

import torch
import torch.optim.optimizer as _optim
from torch import nn
from torch.nn.modules.module import register_module_forward_pre_hook

from gradwatch.errors import GradwatchError, RunError, RunExistsError
from gradwatch.store import META, STATS_DIR


def find_model(optimizer: torch.optim.Optimizer) -> nn.Module | None:
    """The module that holds most of `optimizer`'s parameters and fewest others; among equals the
    outermost (a model rather than its only child)."""
    wanted = {id(p) for group in optimizer.param_groups for p in group["params"]}
    best, best_key = None, None
    for obj in gc.get_objects():
        # type(), not isinstance(): some module-level objects warn when their __class__ is read
        if not issubclass(type(obj), nn.Module):
            continue
        params = {id(p) for p in obj.parameters()}
        hit = len(params & wanted)
        if not hit:
            continue
        key = (hit, -(len(params) - hit), sum(1 for _ in obj.modules()))
        if best_key is None or key > best_key:
            best, best_key = obj, key
    return best


def live_optimizers() -> list[torch.optim.Optimizer]:
    """The optimizers alive now."""
    return [obj for obj in gc.get_objects() if issubclass(type(obj), torch.optim.Optimizer)]


def trains(optimizer: torch.optim.Optimizer, module: nn.Module) -> bool:
    """Whether `optimizer` steps at least one of `module`'s trainable parameters."""
    owned = {id(p) for p in module.parameters() if p.requires_grad}
    return any(id(p) in owned for group in optimizer.param_groups for p in group["params"])


def live_scalers() -> list:
    """The enabled GradScalers alive now."""
    return [
        obj
        for obj in gc.get_objects()
        if issubclass(type(obj), torch.amp.GradScaler) and obj.is_enabled()
    ]


def find_scaler(optimizer: torch.optim.Optimizer):
    """The GradScaler stepping `optimizer` right now, if any: at the optimizer's first step inside
    `scaler.step`, that scaler has already unscaled this optimizer's gradients."""
    for obj in gc.get_objects():
        if issubclass(type(obj), torch.amp.GradScaler) and id(optimizer) in getattr(
            obj, "_per_optimizer_states", {}
        ):
            return obj
    return None


class ScriptWatcher:
    """Starts a Watch at the first forward pass of the model that the script's one optimizer
    trains, or else at the first step of the first optimizer; removes its global hooks once
    started, and on close."""

    def __init__(self, log_dir: str | os.PathLike, every: int = 1, **watch_kwargs):
        self.log_dir = log_dir
        self.every = every
        self.watch_kwargs = watch_kwargs
        self.watch = None
        self.detached: str | None = None  # why gradwatch stopped watching, if it did
        self._others: set[int] = set()
        self._looked: set[int] = set()  # modules whose first forward found no single optimizer
        # Optimizers of the calling process (a notebook, a test) are not the script's.
        self._foreign = weakref.WeakSet([*live_optimizers(), *live_scalers()])
        self._handle = _optim.register_optimizer_step_pre_hook(self._on_step)
        self._forward = register_module_forward_pre_hook(self._on_forward)

    def _on_forward(self, module: nn.Module, args) -> None:
        if self.watch is not None or self.detached is not None or id(module) in self._looked:
            return
        try:
            self._start_at_forward(module, args)
        except Exception as exc:  # noqa: BLE001 - watching must never break the user's training
            self._detach(f"the watch could not start ({type(exc).__name__}: {exc})")

    def _on_step(self, optimizer, args, kwargs) -> None:
        self._forward.remove()  # the first step decides from here on
        if self.detached is not None:
            return
        try:
            self._start(optimizer)
        except Exception as exc:  # noqa: BLE001 - watching must never break the user's training
            self._detach(f"the watch could not start ({type(exc).__name__}: {exc})")

    def _detach(self, why: str) -> None:
        """Stop watching for good, warn once; the script's own steps go on untouched."""
        self.detached = why
        self._handle.remove()
        self._forward.remove()
        warnings.warn(f"gradwatch run: {why}; training goes on unwatched.", stacklevel=3)

    def _start_at_forward(self, module: nn.Module, args) -> None:
        # A module is looked at once, with everything inside it: the outermost call comes first,
        # so one look (a walk over the live objects) serves the whole model's first pass.
        self._looked.update(id(m) for m in module.modules())
        optimizers = [o for o in live_optimizers() if o not in self._foreign]
        if len(optimizers) != 1 or not trains(optimizers[0], module):
            return  # none made yet, or several (a GAN's): the first optimizer step decides
        scalers = [s for s in live_scalers() if s not in self._foreign]
        if len(scalers) > 1:
            return  # which one steps the model shows at its first step
        (optimizer,) = optimizers
        scaler = scalers[0] if scalers else None
        model = find_model(optimizer)
        if model is None:
            return
        before = set(module._forward_pre_hooks)
        self._forward.remove()
        self.watch = self._open(model, optimizer, scaler)
        if model is module:
            # PyTorch read this module's pre-hooks before ours ran: run the Watch's new ones now,
            # as the next forward will, so that this first pass is recorded in full.
            for hook_id, hook in list(module._forward_pre_hooks.items()):
                if hook_id in before:
                    continue
                if hook_id in module._forward_pre_hooks_with_kwargs:
                    hook(module, args, {})
                else:
                    hook(module, args)

    def _open(self, model: nn.Module, optimizer, scaler):
        import gradwatch as gw

        return gw.watch(
            model,
            optimizer,
            every=self.every,
            log_dir=self.log_dir,
            scaler=scaler,
            **self.watch_kwargs,
        )

    def _start(self, optimizer) -> None:
        if self.watch is not None:
            if optimizer is not self.watch.optimizer and id(optimizer) not in self._others:
                self._others.add(id(optimizer))
                warnings.warn(
                    "gradwatch run watches the first optimizer only; "
                    f"{type(optimizer).__name__} #{len(self._others) + 1} is not watched.",
                    stacklevel=2,
                )
            return
        model = find_model(optimizer)
        if model is None:
            self._detach(
                f"the parameters {type(optimizer).__name__} steps belong to no nn.Module, "
                "and gradwatch watches modules"
            )
            return
        # Created inside this step's hook chain: the Watch's own pre-hook, registered now, still
        # runs for this step (PyTorch reads the optimizer's hooks after the global ones).
        self.watch = self._open(model, optimizer, find_scaler(optimizer))

    def close(self):
        self._handle.remove()
        self._forward.remove()
        if self.watch is not None:
            self.watch.close()
        return self.watch


def default_log_dir(script: Path) -> Path:
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    return Path("runs") / f"{script.stem}-{stamp}"


def check_log_dir(log_dir: Path, overwrite: bool = False) -> bool:
    """Raise a one-sentence RunError unless `log_dir` can take a new run; create it. Returns
    whether it was created here (so that an unused empty one can be removed)."""
    if log_dir.exists() and not log_dir.is_dir():
        raise RunExistsError(f"--log-dir '{log_dir}' is a file; pass a directory path instead.")
    if not overwrite and ((log_dir / META).exists() or (log_dir / STATS_DIR).exists()):
        raise RunExistsError(
            f"--log-dir '{log_dir}' already holds a gradwatch run; pass a new directory, "
            "or --overwrite to replace it."
        )
    created = not log_dir.exists()
    try:
        log_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise RunError(
            f"--log-dir '{log_dir}' cannot be created ({exc.strerror}); "
            "pass a directory you can write to."
        ) from None
    if not os.access(log_dir, os.W_OK):
        raise RunError(f"--log-dir '{log_dir}' is not writable; pass a directory you can write to.")
    return created


def run_script(
    script: str | os.PathLike,
    args: list[str],
    log_dir: str | os.PathLike | None = None,
    every: int = 1,
    console=None,
    overwrite: bool = False,
    what_if_steps: int | None = None,
    budget: float | None = 0.03,
) -> int | str | None:
    """Run `script` with `args` as `__main__` under watching; return its exit code (SystemExit's
    code as it was, 1 after an uncaught exception, whose traceback is printed as the script's).
    `what_if_steps`: after the script, rehearse the diagnosis's remedies for that many steps on
    copies (`WhatIfCapture`). `budget`: `gw.watch`'s; 0 or None records every step.

    Bad arguments raise a one-sentence GradwatchError before the script starts."""
    if what_if_steps is not None and (
        not isinstance(what_if_steps, int) or isinstance(what_if_steps, bool) or what_if_steps < 1
    ):
        raise GradwatchError(f"--steps must be a positive integer, got {what_if_steps!r}.")
    path = Path(script).resolve()
    if not path.is_file():
        raise GradwatchError(f"No script at {script}; give the path of a Python file to run.")
    if not isinstance(every, int) or isinstance(every, bool) or every < 1:
        raise GradwatchError(f"--every must be a positive integer, got {every!r}.")
    if budget is not None and (
        not isinstance(budget, (int, float)) or isinstance(budget, bool) or budget < 0
    ):
        raise GradwatchError(
            f"--budget must be a fraction of the step time (0.03) or 0 for none, got {budget!r}."
        )
    log_dir = Path(log_dir) if log_dir is not None else default_log_dir(path)
    created = check_log_dir(log_dir, overwrite)
    saved_argv, saved_path = sys.argv[:], sys.path[:]
    sys.argv = [str(path), *args]
    sys.path.insert(0, str(path.parent))
    watcher = ScriptWatcher(log_dir, every, overwrite=overwrite, budget=budget or None)
    capture = WhatIfCapture(watcher) if what_if_steps is not None else None
    code: int | str | None = 0
    try:
        runpy.run_path(str(path), run_name="__main__")
    except SystemExit as exc:
        code = exc.code
    except Exception as exc:
        _print_script_traceback(exc, path)
        code = 1
    finally:
        sys.argv, sys.path = saved_argv, saved_path
        if capture is not None:
            capture.close()
        watch = watcher.close()
        sys.stdout.flush()
        if watch is None and created and log_dir.is_dir() and not any(log_dir.iterdir()):
            log_dir.rmdir()  # made by the check above, never used
    _report(watch, console, watcher.detached)
    if capture is not None and watch is not None:
        capture.report(watch, what_if_steps, console)
    return code


class WhatIfCapture:
    """`gradwatch run --what-if`: once the watch has started, global module hooks keep the last
    few (inputs, target) pairs the script trained on: the watched model's input, and the target
    an `nn.*Loss` module compared its output with; that module is the rehearsal's loss. After the
    script, `report` rehearses the diagnosis's remedies on copies of the model as training left
    it. A script whose loss is not an nn.*Loss module (a functional loss) gets a sentence."""

    KEEP = 4  # batches kept for the rehearsal, the latest

    def __init__(self, watcher: ScriptWatcher):
        from collections import deque

        self.watcher = watcher
        self.batches: deque = deque(maxlen=self.KEEP)
        self.loss_fn = None
        self._inputs = None
        hooks = torch.nn.modules.module
        self._handles = [
            hooks.register_module_forward_pre_hook(self._pre),
            hooks.register_module_forward_hook(self._post),
        ]

    def _pre(self, module, args) -> None:
        w = self.watcher.watch
        if w is not None and module is w.model and torch.is_grad_enabled() and args:
            self._inputs = args[0] if len(args) == 1 else tuple(args)

    def _post(self, module, args, output) -> None:
        if (
            self._inputs is not None
            and type(module).__module__ == "torch.nn.modules.loss"
            and len(args) == 2
            and isinstance(args[1], torch.Tensor)
        ):
            self.batches.append((_detached(self._inputs), args[1].detach().clone()))
            self.loss_fn, self._inputs = module, None

    def close(self) -> None:
        for h in self._handles:
            h.remove()

    def report(self, watch, steps: int, console) -> None:
        from rich.console import Console
        from rich.markup import escape

        console = console or Console(stderr=True)
        if not self.batches:
            console.print(
                "gradwatch: --what-if saw no (inputs, target) batch: it needs the script's loss "
                "to be an nn.*Loss module (nn.CrossEntropyLoss(), nn.MSELoss(), ...) called on "
                "the watched model's output; nothing was rehearsed.",
                highlight=False,
            )
            return
        try:
            result = watch.what_if(list(self.batches), steps=steps, loss_fn=self.loss_fn)
        except GradwatchError as exc:
            console.print(f"gradwatch: the what-if did not run: {escape(str(exc))}")
            return
        console.print(escape(str(result)), highlight=False, soft_wrap=True)


def _detached(x):
    if isinstance(x, torch.Tensor):
        return x.detach().clone()
    if isinstance(x, tuple):
        return tuple(_detached(v) for v in x)
    return x


def _print_script_traceback(exc: BaseException, path: Path) -> None:
    """The traceback from the script's first frame on, as Python would print it for the script."""
    tb = exc.__traceback__
    while tb is not None and Path(tb.tb_frame.f_code.co_filename).resolve() != path:
        tb = tb.tb_next
    traceback.print_exception(
        type(exc), exc, tb if tb is not None else exc.__traceback__, file=sys.stderr
    )


def _report(watch, console, detached: str | None = None) -> None:
    from rich.console import Console
    from rich.markup import escape
    from rich.text import Text

    from gradwatch.display.terminal import diagnosis_view

    console = console or Console(stderr=True)
    if watch is None:
        why = detached or "the script took no optimizer step"
        console.print(f"gradwatch: {escape(why)}; nothing was recorded.", highlight=False)
        return
    console.print(
        diagnosis_view(
            watch.diagnose(),
            title=Text(
                f"gradwatch: {type(watch.model).__name__}, {watch.steps_seen} optimizer steps"
            ),
        )
    )
    if watch.log_dir is not None:
        console.print(f"gradwatch: run directory {escape(str(watch.log_dir))}", highlight=False)
