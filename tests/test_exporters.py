"""TensorBoard, W&B (offline) and MLflow (local file store) receive exactly the numbers the
watch recorded: per layer and metric, at the optimizer step they belong to."""

from __future__ import annotations

import json
import struct

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


def _wandb_history(run_dir) -> list[dict]:
    """The history rows of an offline W&B run, read from its `.wandb` file: W&B's LevelDB-style
    log (a 7-byte header, 32 KiB blocks of records with a 7-byte header each) of protobuf
    `Record`s; the SDK has no reader for it."""

    import time

    from wandb.proto import wandb_internal_pb2 as pb

    path = next(run_dir.glob("*.wandb"))
    for _ in range(300):  # W&B's service may still be writing after run.finish() returns
        rows, done = _wandb_records(path.read_bytes(), pb)
        if done:
            return rows
        time.sleep(0.1)
    raise AssertionError(f"{path} has no exit record")


def _wandb_records(data: bytes, pb) -> tuple[list[dict], bool]:
    """The history rows in `data`, and whether the run's exit record is there."""
    assert data[:4] == b":W&B"
    rows, i, record, done = [], 7, b"", False
    while i + 7 <= len(data):
        if 32768 - i % 32768 < 7:  # a block's tail too short for a header is padding
            i += 32768 - i % 32768
            continue
        _, size, kind = struct.unpack("<IHB", data[i : i + 7])
        if i + 7 + size > len(data):
            break  # a piece W&B's service is still writing: read again later
        record, i = record + data[i + 7 : i + 7 + size], i + 7 + size
        if kind == 0 and size == 0:
            break
        if kind in (1, 4):  # a whole record, or the last piece of one
            r = pb.Record()
            r.ParseFromString(record)
            record = b""
            done = done or r.WhichOneof("record_type") == "exit"
            if r.WhichOneof("record_type") == "history":
                row = {"_step": r.history.step.num}
                for it in r.history.item:
                    row[it.key or "/".join(it.nested_key)] = json.loads(it.value_json)
                rows.append(row)
    return rows, done


@pytest.mark.parametrize("user_step", [True, False], ids=["step=s", "plain"])
def test_wandb_exporter_never_moves_the_users_step(tmp_path, monkeypatch, user_step):
    wandb = pytest.importorskip("wandb")
    from gradwatch.integrations import wandb as gw_wandb

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    run = wandb.init(dir=str(tmp_path), project="gradwatch-test")
    torch.manual_seed(0)
    model = mlp([5, 16, 2])
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    try:
        with gw.watch(model, opt, flush_every=5) as w:
            gw_wandb.attach(w)
            for s in range(25):
                opt.zero_grad()
                loss = model(torch.randn(8, 5)).pow(2).mean()
                loss.backward()
                opt.step()
                if user_step:
                    run.log({"user/loss": loss.item(), "user/s": s}, step=s)
                else:
                    run.log({"user/loss": loss.item(), "user/s": s})
    finally:
        run.finish()
    history = _wandb_history(next(tmp_path.glob("wandb/offline-run-*")))
    users = [row for row in history if "user/s" in row]
    assert [(row["_step"], row["user/s"]) for row in users] == [(s, s) for s in range(25)]
    # every recorded step reached W&B, on gradwatch's own axis, with the numbers recorded
    stats = w.stats()
    got = {
        (k, row["gradwatch/step"]): v
        for row in history
        if "gradwatch/step" in row
        for k, v in row.items()
        if k.startswith("gradwatch/") and k != "gradwatch/step" and "/findings" not in k
    }
    want = _expected(stats[stats["index"] == -1])
    assert got == pytest.approx(want, rel=1e-12, nan_ok=True)


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
