"""transformers.Trainer with GradwatchCallback records what a plain `gw.watch` loop records."""

from __future__ import annotations

import pandas as pd
import pytest
import torch

import gradwatch as gw

transformers = pytest.importorskip("transformers")
pytest.importorskip("accelerate")

METRICS = ["grad_norm", "weight_norm", "update_ratio"]
STEPS = 3


def _model():
    torch.manual_seed(0)
    config = transformers.BertConfig(
        vocab_size=50,
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=16,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        num_labels=3,
    )
    return transformers.BertForSequenceClassification(config)


def _data(n: int = 8):
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(1, 50, (n, 6), generator=g)
    labels = torch.randint(0, 3, (n,), generator=g)
    return [{"input_ids": ids[i], "labels": labels[i]} for i in range(n)]


def _table(stats: pd.DataFrame) -> pd.Series:
    rows = stats[stats["metric"].isin(METRICS)]
    return rows.set_index(["step", "layer", "metric"])["value"].sort_index()


def _plain() -> pd.Series:
    """Full batch, constant lr, no clipping: what the Trainer below does, whatever order it
    shuffles the (single) batch in."""
    model = _model()
    data = _data()
    batch = {k: torch.stack([d[k] for d in data]) for k in data[0]}
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.0)
    with gw.watch(model, opt) as w:
        for _ in range(STEPS):
            opt.zero_grad()
            model(**batch).loss.backward()
            opt.step()
    return _table(w.stats())


def test_hf_trainer_with_accumulation_records_each_optimizer_step_like_a_plain_loop(tmp_path):
    from gradwatch.integrations.transformers import GradwatchCallback

    args = transformers.TrainingArguments(
        output_dir=str(tmp_path / "out"),
        max_steps=STEPS,
        per_device_train_batch_size=8,
        gradient_accumulation_steps=2,  # two passes over the same full batch per optimizer step
        learning_rate=1e-3,
        weight_decay=0.0,
        lr_scheduler_type="constant",
        max_grad_norm=0.0,
        optim="adamw_torch",
        report_to=[],
        use_cpu=True,
        save_strategy="no",
        logging_strategy="no",
        disable_tqdm=True,
    )
    callback = GradwatchCallback()
    trainer = transformers.Trainer(
        model=_model(), args=args, train_dataset=_data(), callbacks=[callback]
    )
    trainer.train()
    run = gw.load(tmp_path / "out" / "gradwatch")
    got, want = _table(run.stats), _plain()
    assert list(got.index) == list(want.index)
    assert ((got - want).abs() / want.abs().clip(lower=1e-12)).max() < 1e-4


def _args(tmp_path, **kw):
    base = dict(
        output_dir=str(tmp_path / "out"),
        max_steps=STEPS,
        per_device_train_batch_size=8,
        gradient_accumulation_steps=2,
        learning_rate=1e-3,
        weight_decay=0.0,
        lr_scheduler_type="constant",
        max_grad_norm=0.0,
        optim="adamw_torch",
        report_to=[],
        use_cpu=True,
        save_strategy="no",
        logging_strategy="no",
        disable_tqdm=True,
    )
    return transformers.TrainingArguments(**{**base, **kw})


def test_hf_callback_records_the_loss_and_sends_scalars_to_the_report_to_loggers(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from gradwatch.integrations.transformers import GradwatchCallback

    args = _args(tmp_path, report_to=["tensorboard"])
    trainer = transformers.Trainer(
        model=_model(), args=args, train_dataset=_data(), callbacks=[GradwatchCallback()]
    )
    trainer.train()
    logged = gw.load(tmp_path / "out" / "gradwatch").stats.query("metric == 'loss'")
    # the plain loop's loss of each step (two passes over the same batch: their mean)
    model, data = _model(), _data()
    batch = {k: torch.stack([d[k] for d in data]) for k in data[0]}
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.0)
    want = []
    for _ in range(STEPS):
        opt.zero_grad()
        loss = model(**batch).loss
        loss.backward()
        opt.step()
        want.append(loss.item())
    assert logged.sort_values("step")["value"].tolist() == pytest.approx(want, rel=1e-4)
    events = next((tmp_path / "out").rglob("events.out.tfevents.*")).parent
    tags = EventAccumulator(str(events)).Reload().Tags()["scalars"]
    assert any(t.endswith("gradwatch/grad_norm/classifier") for t in tags)
    assert any(t.endswith("gradwatch/loss/_model_") for t in tags)
    # to the loggers only: not printed, not in the history every checkpoint saves
    assert not any("gradwatch/step" in h for h in trainer.state.log_history)


class _Interrupt(transformers.TrainerCallback):
    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == 10:
            raise KeyboardInterrupt


def test_hf_callback_flushes_and_detaches_when_training_is_interrupted(tmp_path):
    from gradwatch.integrations.transformers import GradwatchCallback

    callback = GradwatchCallback(flush_every=50)
    trainer = transformers.Trainer(
        model=_model(),
        args=_args(tmp_path, max_steps=20, gradient_accumulation_steps=1),
        train_dataset=_data(),
        callbacks=[callback, _Interrupt()],
    )
    with pytest.raises(KeyboardInterrupt):
        trainer.train()
    opt = callback.watch.optimizer
    assert not opt._optimizer_step_pre_hooks and not opt._optimizer_step_post_hooks
    steps = gw.load(tmp_path / "out" / "gradwatch").stats.query("metric == 'grad_norm'")["step"]
    assert set(steps) == set(range(10))
