"""Nothing lost, nothing crashed (issue 22): gradwatch's own failures never stop training,
arguments are checked with one sentence, and what the watch says is what the run did."""

from __future__ import annotations

import io
import math
import warnings

import pytest
import torch
from torch import nn

import gradwatch as gw
from conftest import mlp
from gradwatch.errors import NonFiniteGradientError, WatchError


def _sigmoid_net(depth: int = 20, width: int = 16) -> nn.Sequential:
    torch.manual_seed(0)
    layers: list[nn.Module] = []
    for _ in range(depth):
        layers += [nn.Linear(width, width), nn.Sigmoid()]
    return nn.Sequential(*layers, nn.Linear(width, 1))


# ----------------------------------------------------------------- arguments


def test_raise_on_a_single_string_is_one_kind():
    model = mlp([3, 4, 2])
    with gw.watch(model, raise_on="nonfinite") as w:
        assert w._raise_on == ("nonfinite",)
    model[0].weight.data[0, 0] = float("nan")
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with gw.watch(model, opt, raise_on="nonfinite"), pytest.raises(NonFiniteGradientError):
        model(torch.randn(4, 3)).sum().backward()
        opt.step()


@pytest.mark.parametrize("value", [-1, 0, 5, 1.5, "a lot"])
def test_update_memory_outside_zero_to_one_is_one_sentence_naming_the_value(value):
    with pytest.raises(WatchError, match=r"update_memory must be a fraction .* got " + repr(value)):
        gw.watch(mlp([3, 4, 2]), update_memory=value)


# ----------------------------------------------------------------- text


def test_printed_diagnosis_has_no_remedy_line_ending_in_a_colon():
    diagnosis = gw.check(_sigmoid_net(), torch.randn(32, 16))
    remedies = [line for line in str(diagnosis).splitlines() if line.strip().startswith("->")]
    assert remedies
    assert not [line for line in remedies if line.rstrip().endswith(":")]


def test_a_printed_finding_is_a_short_paragraph():
    finding = gw.check(_sigmoid_net(), torch.randn(32, 16)).findings[0]
    text = str(finding)
    assert len(text) < 600
    assert text.startswith(f"[{finding.severity}] {finding.kind} in {finding.layers[0]}")
    assert finding.summary in text
    assert "evidence" not in text and "Remedy(" not in text
    assert text.splitlines()[-1].startswith("  -> ") and not text.endswith(":")


# ----------------------------------------------------------------- the live side tells the truth


def _manual_steps(w, model, steps: int, lr: float = 0.5) -> None:
    g = torch.Generator().manual_seed(1)
    for _ in range(steps):
        model.zero_grad()
        x = torch.randn(32, 16, generator=g)
        model(x).pow(2).mean().backward()
        w.step()
        with torch.no_grad():
            for p in model.parameters():
                p -= lr * p.grad


def test_without_an_optimizer_live_stats_and_diagnosis_see_every_step_so_far():
    model = _sigmoid_net()
    with gw.watch(model) as w:
        _manual_steps(w, model, 12)
        live = w.stats()
        assert set(live.query("metric == 'grad_norm'")["step"]) == set(range(12))
        diagnosis = w.diagnose()
        assert not diagnosis.ok and "vanishing_gradient" in diagnosis.kinds()
        _manual_steps(w, model, 3)
    steps = set(w.stats().query("metric == 'grad_norm'")["step"])
    assert steps == set(range(15))


def test_meta_json_follows_each_flush_and_is_finished_only_at_close(tmp_path):
    import json

    model = mlp([3, 4, 2])
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    w = gw.watch(model, opt, flush_every=5, log_dir=tmp_path / "run")
    for _ in range(12):  # two flushes, then a "kill": no close
        opt.zero_grad()
        model(torch.randn(4, 3)).sum().backward()
        opt.step()
    meta = json.loads((tmp_path / "run" / "meta.json").read_text())
    assert meta["steps_seen"] == 10 and meta["finished"] is None
    w.close()
    meta = json.loads((tmp_path / "run" / "meta.json").read_text())
    assert meta["steps_seen"] == 12 and meta["finished"] is not None


# ----------------------------------------------------------------- gradwatch never breaks training


def _hooks_left(model: nn.Module, opt: torch.optim.Optimizer) -> int:
    n = len(opt._optimizer_step_pre_hooks) + len(opt._optimizer_step_post_hooks)
    for m in model.modules():
        n += len(m._forward_pre_hooks) + len(m._forward_hooks) + len(m._backward_hooks)
    return n


def _fit(model, opt, steps: int = 10) -> list[float]:
    g = torch.Generator().manual_seed(1)
    losses = []
    for _ in range(steps):
        opt.zero_grad()
        loss = model(torch.randn(8, 3, generator=g)).pow(2).mean()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


def _break(monkeypatch, where: str, after: int):
    """Make gradwatch's own code raise from its `after`-th call on: in a probe, in a flush, or
    in writing the store."""
    from gradwatch.monitor.buffer import StepBuffer
    from gradwatch.probes.params import ParamProbe
    from gradwatch.store import RunWriter

    cls, name = {
        "probe": (ParamProbe, "record"),
        "flush": (StepBuffer, "_flush"),
        "store": (RunWriter, "append"),
    }[where]
    real, calls = getattr(cls, name), []

    def broken(self, *args, **kwargs):
        calls.append(1)
        if len(calls) > after:
            raise RuntimeError("an error inside gradwatch")
        return real(self, *args, **kwargs)

    monkeypatch.setattr(cls, name, broken)


def _break_hook(monkeypatch, where: str, after: int):
    """Make a probe's hook raise inside the user's forward or backward, from its `after`-th call
    on."""
    from gradwatch.probes.activations import ActivationProbe
    from gradwatch.probes.backflow import BackflowProbe

    cls, name = {
        "forward hook": (ActivationProbe, "_module_post"),
        "backward hook": (BackflowProbe, "_accumulate"),
    }[where]
    real, calls = getattr(cls, name), []

    def check():
        calls.append(1)
        if len(calls) > after:
            raise RuntimeError("an error inside gradwatch")

    if name == "_accumulate":

        def broken(self, *args, **kwargs):
            check()
            return real(self, *args, **kwargs)

    else:  # a factory of hooks: break the hooks it makes

        def broken(self, *args, **kwargs):
            hook = real(self, *args, **kwargs)

            def breaking(*a, **k):
                check()
                return hook(*a, **k)

            return breaking

    monkeypatch.setattr(cls, name, broken)


@pytest.mark.parametrize("where", ["forward hook", "backward hook"])
def test_an_error_in_a_probes_hook_detaches_gradwatch_and_training_goes_on(where, monkeypatch):
    torch.manual_seed(0)
    model = mlp([3, 8, 8, 2])
    plain = _fit(model, torch.optim.SGD(model.parameters(), lr=0.1))
    torch.manual_seed(0)
    model = mlp([3, 8, 8, 2])
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    _break_hook(monkeypatch, where, after=12)  # a few steps in
    watched = gw.watch(model, opt, activations=True, backflow=True, flush_every=2)
    with pytest.warns(RuntimeWarning, match="gradwatch stopped watching") as caught, watched as w:
        losses = _fit(model, opt)
    assert losses == plain  # the user's forward and backward never saw the error
    assert len([c for c in caught if "gradwatch" in str(c.message)]) == 1
    assert _hooks_left(model, opt) == 0
    assert not w.stats().empty  # what was recorded before the error stays readable


@pytest.mark.parametrize("where", ["probe", "flush", "store"])
def test_an_error_inside_gradwatch_detaches_it_and_training_goes_on(where, tmp_path, monkeypatch):
    torch.manual_seed(0)
    model = mlp([3, 8, 8, 2])
    plain = _fit(model, torch.optim.SGD(model.parameters(), lr=0.1))
    torch.manual_seed(0)
    model = mlp([3, 8, 8, 2])
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    _break(monkeypatch, where, after=4 if where == "probe" else 1)
    watched = gw.watch(model, opt, flush_every=2, log_dir=tmp_path / "run")
    with pytest.warns(RuntimeWarning, match="gradwatch stopped watching") as caught, watched as w:
        losses = _fit(model, opt)
    assert losses == plain  # training went on, unchanged
    assert len([c for c in caught if "gradwatch" in str(c.message)]) == 1
    assert _hooks_left(model, opt) == 0
    steps = set(w.stats().query("metric == 'grad_norm'")["step"])
    assert steps and steps <= set(range(4))  # what was recorded before the error stays readable


def test_an_error_inside_gradwatch_without_an_optimizer_lets_training_go_on(monkeypatch):
    model = _sigmoid_net(depth=3)
    _break(monkeypatch, "probe", after=2)
    with (
        pytest.warns(RuntimeWarning, match="stopped watching"),
        gw.watch(model, flush_every=2) as w,
    ):
        _manual_steps(w, model, 6)
    assert set(w.stats().query("metric == 'grad_norm'")["step"]) == {0, 1}


def test_a_requested_stop_still_raises():
    model = mlp([3, 4, 2])
    model[0].weight.data[0, 0] = float("nan")
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with gw.watch(model, opt, raise_on=("nonfinite",)), pytest.raises(NonFiniteGradientError):
        _fit(model, opt, 2)


# ----------------------------------------------------------------- runs that trained nothing


def _amp_steps(model, opt, scaler, bad: range, steps: int) -> None:
    g = torch.Generator().manual_seed(1)
    for i in range(steps):
        opt.zero_grad()
        x = torch.randn(8, 3, generator=g)
        if i in bad:
            x[0, 0] = float("nan")  # the scaler finds NaN gradients and skips this step
        scaler.scale(model(x).pow(2).mean()).backward()
        scaler.step(opt)
        scaler.update()


def test_a_run_whose_every_step_was_skipped_says_nothing_was_trained():
    model = mlp([3, 8, 2])
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    scaler = torch.amp.GradScaler("cpu")
    with gw.watch(model, opt, scaler=scaler, flush_every=5) as w:
        _amp_steps(model, opt, scaler, bad=range(12), steps=12)
    diagnosis = w.diagnose()
    assert "no problem found" not in str(diagnosis)
    assert "skipped every one of the 12 recorded optimizer steps" in str(diagnosis)
    assert diagnosis.to_dict()["summary"]["warnings"]


def test_skipped_steps_before_the_first_real_one_are_recorded():
    model = mlp([3, 8, 2])
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    scaler = torch.amp.GradScaler("cpu")
    with gw.watch(model, opt, scaler=scaler) as w:
        _amp_steps(model, opt, scaler, bad=range(3), steps=6)
    skipped = w.stats().query("metric == 'skipped'").set_index("step")["value"]
    assert skipped.to_dict() == {0: 1.0, 1: 1.0, 2: 1.0, 3: 0.0, 4: 0.0, 5: 0.0}
    assert "warnings" not in w.diagnose().summary


def test_a_model_with_only_frozen_parameters_is_warned_about_and_diagnosed_so():
    model = mlp([3, 8, 2]).requires_grad_(False)
    with pytest.warns(UserWarning, match="No parameter of the model requires grad"):
        w = gw.watch(model)
    w.close()
    text = str(w.diagnose())
    assert "no problem found" not in text and "requires grad" in text


def _shown(diagnosis) -> dict[str, str]:
    """The diagnosis as the terminal, the notebook and the HTML report show it."""
    from rich.console import Console

    from gradwatch.display.notebook import findings_list_html
    from gradwatch.display.terminal import findings_view
    from gradwatch.report.data import ReportRun
    from gradwatch.report.html import findings_html

    console = Console(width=200, record=True, file=io.StringIO())
    console.print(findings_view(diagnosis))
    run = ReportRun("run", diagnosis.stats, diagnosis.meta, [], diagnosis, 0, 0)
    return {
        "terminal": " ".join(console.export_text().split()),
        "notebook": findings_list_html(diagnosis),
        "html": findings_html(0, run),
    }


def test_every_view_says_what_the_run_left_undiagnosed():
    model = mlp([3, 8, 2])
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    scaler = torch.amp.GradScaler("cpu")
    with gw.watch(model, opt, scaler=scaler) as w:
        _amp_steps(model, opt, scaler, bad=range(4), steps=4)
    skipped = w.diagnose()
    assert not skipped.findings  # no gradient was recorded on purpose: not "no_gradient"
    frozen = mlp([3, 8, 2]).requires_grad_(False)
    with pytest.warns(UserWarning):
        f = gw.watch(frozen)
    f.close()
    frozen_d = f.diagnose()
    assert not frozen_d.findings
    for diagnosis, words in [(skipped, "skipped every one of the 4"), (frozen_d, "requires grad")]:
        for view, shown in _shown(diagnosis).items():
            assert words in shown, (view, shown)
            assert "no problem found" not in shown.lower(), view


# ----------------------------------------------------------------- what backward produced


def _clipped_run(clip, steps: int = 6, lr: float = 0.5):
    """A net whose gradients grow step after step, clipped by `clip(params)`; returns the watch
    and the total gradient norm backward produced at each step (before clipping)."""
    torch.manual_seed(0)
    model = mlp([3, 16, 16, 2], act=nn.ReLU)
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    g = torch.Generator().manual_seed(1)
    backward_norms = []
    with gw.watch(model, opt, flush_every=4) as w:
        for i in range(steps):
            opt.zero_grad()
            x = torch.randn(8, 3, generator=g) * 10 ** (i / 2)
            model(x).pow(2).mean().backward()
            backward_norms.append(
                math.sqrt(sum(float(p.grad.double().pow(2).sum()) for p in model.parameters()))
            )
            clip(model.parameters())
            opt.step()
    return w, backward_norms


def _recorded_total(stats) -> list[float]:
    grads = stats.query("metric == 'grad_norm'").groupby("step")["value"]
    return grads.apply(lambda v: math.sqrt((v**2).sum())).tolist()


def test_gradient_norms_are_recorded_before_clip_grad_norm_and_the_clip_is_recorded():
    w, backward = _clipped_run(lambda ps: torch.nn.utils.clip_grad_norm_(ps, max_norm=1.0))
    stats = w.stats()
    assert _recorded_total(stats) == pytest.approx(backward, rel=1e-5)
    coef = stats.query("metric == 'clip_coef' and layer == '(model)'")["value"].tolist()
    assert coef == pytest.approx([min(1.0, 1.0 / (n + 1e-6)) for n in backward], rel=1e-5)


def test_gradient_norms_are_recorded_before_clip_grad_value_():
    w, backward = _clipped_run(lambda ps: torch.nn.utils.clip_grad_value_(ps, clip_value=0.01))
    stats = w.stats()
    assert _recorded_total(stats) == pytest.approx(backward, rel=1e-5)
    coef = stats.query("metric == 'clip_coef'")["value"]
    assert len(coef) == 6 and (coef < 1).all() and (coef > 0).all()


def test_clipping_outside_a_watch_is_torchs_own_again():
    import gc

    gc.collect()  # watches other tests left open and unreachable
    real = torch.nn.utils.clip_grad_norm_
    from gradwatch.monitor import clipping

    assert real is not clipping.clip_grad_norm_
    with gw.watch(mlp([3, 4, 2])):
        assert torch.nn.utils.clip_grad_norm_ is not real
    assert torch.nn.utils.clip_grad_norm_ is real


def test_a_clipped_step_the_scaler_then_skips_records_no_gradient():
    model = mlp([3, 8, 2])
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    scaler = torch.amp.GradScaler("cpu")
    g = torch.Generator().manual_seed(1)
    with gw.watch(model, opt, scaler=scaler) as w:
        for i in range(4):
            opt.zero_grad()
            x = torch.randn(8, 3, generator=g)
            if i == 1:
                x[0, 0] = float("nan")
            scaler.scale(model(x).pow(2).mean()).backward()
            scaler.unscale_(opt)
            torch.nn.utils.clip_grad_norm_(model.parameters(), 0.1)
            scaler.step(opt)
            scaler.update()
    stats = w.stats()
    assert set(stats.query("metric == 'grad_norm'")["step"]) == {0, 2, 3}
    assert set(stats.query("metric == 'clip_coef'")["step"]) == {0, 2, 3}
    assert stats.query("metric == 'skipped' and value == 1")["step"].tolist() == [1]


def test_clipping_without_an_optimizer_is_recorded_across_flushes():
    model = _sigmoid_net(depth=2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # gradwatch must not detach itself
        with gw.watch(model, flush_every=3) as w:
            g = torch.Generator().manual_seed(1)
            for _ in range(8):
                model.zero_grad()
                (model(torch.randn(8, 16, generator=g)) * 100).pow(2).mean().backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                w.step()
                with torch.no_grad():
                    for p in model.parameters():
                        p -= 0.01 * p.grad
    stats = w.stats()
    assert set(stats.query("metric == 'clip_coef'")["step"]) == set(range(8))
    assert (stats.query("metric == 'grad_norm'")["value"] > 1).any()  # unclipped norms
    # the update ratios of a run that does not clip (every other step once settled)
    assert set(stats.query("metric == 'update_ratio'")["step"]) == {0, 1, 2, 4, 6}
