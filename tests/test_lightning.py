"""Lightning's Trainer with GradwatchCallback records what a plain `gw.watch` loop records."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import torch
from torch import nn

import gradwatch as gw
from conftest import mlp

pl = pytest.importorskip("lightning.pytorch")

METRICS = ["grad_norm", "weight_norm", "update_ratio"]
STEPS = 4


def _batches(n: int = STEPS * 2, batch: int = 8):
    g = torch.Generator().manual_seed(1)
    return [
        (torch.randn(batch, 5, generator=g), torch.randn(batch, 2, generator=g)) for _ in range(n)
    ]


class Module(pl.LightningModule):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.net = mlp([5, 16, 16, 2])

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return nn.functional.mse_loss(self(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.05)


def _plain(accumulate: int = 1) -> pd.Series:
    module = Module()
    opt = module.configure_optimizers()
    batches = _batches()
    with gw.watch(module, opt) as w:
        for i in range(STEPS):
            opt.zero_grad()
            for x, y in batches[i * accumulate : (i + 1) * accumulate]:
                (nn.functional.mse_loss(module(x), y) / accumulate).backward()
            opt.step()
    return _table(w.stats())


def _table(stats: pd.DataFrame) -> pd.Series:
    rows = stats[stats["metric"].isin(METRICS)]
    return rows.set_index(["step", "layer", "metric"])["value"].sort_index()


def _fit(tmp_path, accumulate: int = 1, log_dir="gw", **trainer_kw):
    from gradwatch.integrations.lightning import GradwatchCallback

    callback = GradwatchCallback(log_dir=tmp_path / log_dir if log_dir else None)
    trainer = pl.Trainer(
        max_steps=STEPS,
        accelerator="cpu",
        devices=1,
        accumulate_grad_batches=accumulate,
        callbacks=[callback],
        logger=pl.loggers.CSVLogger(tmp_path / "logs"),
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        **trainer_kw,
    )
    loader = torch.utils.data.DataLoader(_batches(), batch_size=None)  # each item is a batch
    trainer.fit(Module(), train_dataloaders=loader)
    return trainer, callback


@pytest.mark.parametrize("accumulate", [1, 2])
def test_lightning_records_each_optimizer_step_like_a_plain_loop(tmp_path, accumulate):
    trainer, callback = _fit(tmp_path, accumulate)
    run = gw.load(tmp_path / "gw")
    pd.testing.assert_series_equal(_table(run.stats), _plain(accumulate), rtol=1e-6)
    metrics = pd.read_csv(next((tmp_path / "logs").rglob("metrics.csv")))
    logged = metrics.dropna(subset=["gradwatch/grad_norm/net.0"]).set_index("step")[
        "gradwatch/grad_norm/net.0"
    ]
    recorded = run.stats.query("metric == 'grad_norm' and layer == 'net.0'").set_index("step")[
        "value"
    ]
    pd.testing.assert_series_equal(
        logged.sort_index(), recorded.sort_index(), check_names=False, check_index_type=False
    )
    findings = run.findings
    assert metrics["gradwatch/findings_error"].dropna().tolist() == [
        float(sum(f["severity"] == "error" for f in findings))
    ]


def test_lightning_mixed_precision_records_unscaled_gradients(tmp_path):
    from lightning.pytorch.plugins import MixedPrecision

    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    plugin = MixedPrecision("16-mixed", "cpu", scaler=scaler)
    trainer, callback = _fit(tmp_path, log_dir=None, plugins=[plugin])
    assert callback.watch._scaler is scaler
    assert callback.watch.log_dir.parent == Path(trainer.log_dir)  # the run sits beside the logs
    stats = gw.load(callback.watch.log_dir).stats
    assert set(stats.query("metric == 'skipped'")["value"]) <= {0.0, 1.0}
    grads = stats.query("metric == 'grad_norm'")["value"]
    # float16 forward: the same order of magnitude as float32, nowhere near the 2**10 scale
    reference = _plain().xs("grad_norm", level="metric")
    assert grads.max() < 10 * reference.max()


def test_lightning_with_accumulation_logs_the_undivided_loss_under_one_key(tmp_path):
    _fit(tmp_path, accumulate=2)
    run = gw.load(tmp_path / "gw")
    logged = run.stats.query("metric == 'loss'").set_index("step")["value"]
    # the plain loop's loss: the mean of the two micro-batches' losses, not divided by 2
    module, batches, want = Module(), _batches(), []
    opt = module.configure_optimizers()
    for i in range(STEPS):
        opt.zero_grad()
        losses = []
        for x, y in batches[i * 2 : i * 2 + 2]:
            loss = nn.functional.mse_loss(module(x), y)
            (loss / 2).backward()
            losses.append(loss.item())
        opt.step()
        want.append(sum(losses) / 2)
    assert logged.tolist() == pytest.approx(want, rel=1e-5)
    metrics = pd.read_csv(next((tmp_path / "logs").rglob("metrics.csv")))
    assert "gradwatch/loss/_model_" in metrics.columns
    assert metrics["gradwatch/loss/_model_"].dropna().tolist() == pytest.approx(want, rel=1e-5)


def test_lightning_gradient_clipping_is_recorded_after_the_gradients_it_clipped(tmp_path):
    _fit(tmp_path, gradient_clip_val=1e-3)
    stats = gw.load(tmp_path / "gw").stats
    # step 0 starts from the same weights as the unclipped loop: the same gradients, unclipped
    got = _table(stats).xs(0, level="step").xs("grad_norm", level="metric")
    want = _plain().xs(0, level="step").xs("grad_norm", level="metric")
    pd.testing.assert_series_equal(got, want, rtol=1e-6)
    coef = stats.query("metric == 'clip_coef' and layer == '(model)'")
    assert coef["step"].tolist() == list(range(STEPS)) and (coef["value"] < 1).all()


class SoftmaxClassifier(pl.LightningModule):
    """A classifier whose forward ends in nn.Softmax before cross_entropy: a real bug."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 3), nn.Softmax(-1))

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = nn.functional.cross_entropy(self(x), y)
        self.log("train_loss", loss)  # the copies must not log to the trainer
        return loss

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=1e-2)


def _blob_batches(n: int = 4, batch: int = 32):
    g = torch.Generator().manual_seed(0)
    centres = torch.randn(3, 4, generator=g) * 2
    out = []
    for _ in range(n):
        y = torch.randint(0, 3, (batch,), generator=g)
        out.append((centres[y] + torch.randn(batch, 4, generator=g), y))
    return out


def _fit_classifier(tmp_path, **callback_kw):
    from gradwatch.integrations.lightning import GradwatchCallback

    callback = GradwatchCallback(log_dir=tmp_path / "gw", **callback_kw)
    trainer = pl.Trainer(
        max_steps=4,
        accelerator="cpu",
        devices=1,
        callbacks=[callback],
        logger=pl.loggers.CSVLogger(tmp_path / "logs"),
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    module = SoftmaxClassifier()
    loader = torch.utils.data.DataLoader(_blob_batches(), batch_size=None)
    trainer.fit(module, train_dataloaders=loader)
    return callback, module, trainer


@pytest.fixture
def one_thread():
    """Tiny models train several times faster on one thread where other jobs share the cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.usefixtures("one_thread")
def test_lightning_what_if_rehearses_at_fit_end_without_touching_the_model(tmp_path):
    callback, module, trainer = _fit_classifier(
        tmp_path, what_if=True, what_if_steps=25, what_if_batches=2
    )
    _, plain, _ = _fit_classifier(tmp_path / "plain")
    r = callback.what_if_result
    assert r is not None and r.steps == 25 and r.baseline.name == "baseline"
    # Dropping the softmax (the copy's own training_step then takes logits) is the fix.
    assert r.top is not None and r.top.action == "loss" and "Softmax" in r.top.name, str(r)
    # The rehearsal trained copies: the fitted weights are those of a fit without it.
    assert all(
        torch.equal(a, b) for a, b in zip(module.parameters(), plain.parameters(), strict=True)
    )
    assert module.trainer is trainer  # the trainer was set aside for the copies, then restored
    assert "train_loss" in trainer.logged_metrics  # the copies' self.log went nowhere


@pytest.mark.usefixtures("one_thread")
def test_lightning_what_if_without_batches_is_one_clear_error(tmp_path):
    callback, _, _ = _fit_classifier(tmp_path)
    with pytest.raises(gw.errors.WatchError, match="no batches"):
        callback.what_if()
    r = callback.what_if(_blob_batches(2), steps=5)
    assert r.steps == 5 and r.changes
