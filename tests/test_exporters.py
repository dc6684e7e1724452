"""TensorBoard, W&B (offline) and MLflow (local file store) receive exactly the numbers the
watch recorded: per layer and metric, at the optimizer step they belong to."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import torch

import gradwatch as gw
from conftest import mlp
from gradwatch.integrations._common import tag


def _train(attach, steps: int = 4) -> pd.DataFrame:
    torch.manual_seed(0)
    model = mlp([5, 16, 16, 2])
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    g = torch.Generator().manual_seed(1)
    with gw.watch(model, opt, flush_every=2, backflow=True) as w:
        exporter = attach(w)
        for _ in range(steps):
            x = torch.randn(8, 5, generator=g)
            opt.zero_grad()
            model(x).pow(2).mean().backward()
            opt.step()
    stats = w.stats()
    assert exporter is not None
    return stats[stats["index"] == -1]


def _expected(stats: pd.DataFrame) -> dict[tuple[str, int], float]:
    return {(tag(r.metric, r.layer), int(r.step)): r.value for r in stats.itertuples()}


def test_tensorboard_gets_a_scalar_per_layer_and_metric_and_the_findings(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from gradwatch.integrations import tensorboard

    stats = _train(lambda w: tensorboard.attach(w, tmp_path / "tb"))
    events = EventAccumulator(
        str(tmp_path / "tb"), size_guidance={"scalars": 0, "tensors": 0}
    ).Reload()
    got = {(t, e.step): e.value for t in events.Tags()["scalars"] for e in events.Scalars(t)}
    expected = _expected(stats)
    assert got.keys() == expected.keys()
    assert all(got[k] == pytest.approx(v, rel=1e-6, nan_ok=True) for k, v in expected.items())
    assert "gradwatch/findings/text_summary" in events.Tags()["tensors"]


def test_mlflow_gets_every_step_of_every_layer_metric(tmp_path, monkeypatch):
    mlflow = pytest.importorskip("mlflow")
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # a local store without a database
    from gradwatch.integrations import mlflow as gw_mlflow
    from gradwatch.integrations.mlflow import _key

    mlflow.set_tracking_uri((tmp_path / "mlruns").as_uri())
    try:
        with mlflow.start_run() as run:
            stats = _train(gw_mlflow.attach)
        client = mlflow.tracking.MlflowClient()
        expected = _expected(stats)
        for name in {k for k, _ in expected}:
            history = {
                m.step: m.value for m in client.get_metric_history(run.info.run_id, _key(name))
            }
            want = {s: v for (k, s), v in expected.items() if k == name}
            assert history == pytest.approx(want, rel=1e-6)
        findings = mlflow.artifacts.load_dict(run.info.artifact_uri + "/gradwatch/findings.json")
        assert set(findings) == {"ok", "findings", "summary"}
    finally:
        mlflow.set_tracking_uri(None)


def test_wandb_offline_run_gets_the_layer_metrics_on_its_own_step_axis(tmp_path, monkeypatch):
    wandb = pytest.importorskip("wandb")
    from gradwatch.integrations import wandb as gw_wandb

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    run = wandb.init(dir=str(tmp_path), project="gradwatch-test")
    # W&B 0.31 keeps history in a binary log with no reader in the SDK: check what it was handed
    logged: list[dict] = []
    real_log = run.log
    monkeypatch.setattr(
        run, "log", lambda data, *a, **k: (logged.append(dict(data)), real_log(data, *a, **k))
    )
    try:
        stats = _train(gw_wandb.attach)
    finally:
        run.finish()
    got = {
        (k, row["gradwatch/step"]): v
        for row in logged
        if "gradwatch/step" in row
        for k, v in row.items()
        if k != "gradwatch/step"
    }
    expected = _expected(stats)
    assert got.keys() == expected.keys()
    assert all(got[k] == pytest.approx(v, rel=1e-12, nan_ok=True) for k, v in expected.items())
    # what reached the offline run's files: the findings table (the scalars sit in W&B's binary log)
    table = json.loads(
        next(
            tmp_path.glob("wandb/offline-run-*/files/media/table/gradwatch/findings_*.table.json")
        ).read_text()
    )
    assert table["columns"] == ["severity", "kind", "layers", "summary"]


def test_a_missing_framework_is_one_sentence_naming_the_extra(monkeypatch):
    import sys

    from gradwatch.errors import IntegrationError
    from gradwatch.integrations._common import require

    monkeypatch.setitem(sys.modules, "notthere_pkg", None)
    with pytest.raises(IntegrationError, match=r"pip install 'gradwatch\[lightning\]'\.$"):
        require("notthere_pkg", "lightning")


@pytest.mark.parametrize(
    ("module", "framework", "extra"),
    [
        ("lightning", "lightning.pytorch", "lightning"),
        ("transformers", "transformers", "transformers"),
    ],
)
def test_importing_a_callback_without_its_framework_names_the_extra(
    monkeypatch, module, framework, extra
):
    import importlib
    import sys

    from gradwatch.errors import IntegrationError

    monkeypatch.setitem(sys.modules, framework, None)  # as if not installed
    monkeypatch.delitem(sys.modules, f"gradwatch.integrations.{module}", raising=False)
    with pytest.raises(IntegrationError, match=rf"pip install 'gradwatch\[{extra}\]'"):
        importlib.import_module(f"gradwatch.integrations.{module}")
