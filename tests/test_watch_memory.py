"""What a watch keeps in memory for `w.stats()`: nothing per step when a run directory holds the
flushed rows (read back from it), every step compressed without one, and every step still when a
write to the run directory fails. Each checked against the rows the flushes produced."""

from __future__ import annotations

import warnings

import pandas as pd
import pyarrow as pa
import pytest
import torch
from torch import nn

import gradwatch as gw
from gradwatch.monitor.buffer import RECENT
from gradwatch.store import RunWriter, to_frame


class _Rows:
    """A listener keeping every flush's rows: the naive reference."""

    def __init__(self):
        self.tables: list[pa.Table] = []

    def rows(self, table):
        self.tables.append(table)

    def close(self, watch):
        pass

    def frame(self) -> pd.DataFrame:
        return to_frame(pa.concat_tables(self.tables))


def _train(w, model, opt, steps: int) -> None:
    torch.manual_seed(1)
    for _ in range(steps):
        opt.zero_grad()
        loss = model(torch.randn(8, 4)).pow(2).mean()
        loss.backward()
        w.log_loss(loss)
        opt.step()


def _setup():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 1))
    return model, torch.optim.SGD(model.parameters(), lr=0.05)


def _same(a: pd.DataFrame, b: pd.DataFrame) -> None:
    pd.testing.assert_frame_equal(a.reset_index(drop=True), b.reset_index(drop=True))


@pytest.mark.parametrize("log_dir", [True, False])
def test_stats_mid_run_and_after_close_hold_every_flushed_row(tmp_path, log_dir):
    model, opt = _setup()
    kw = {"log_dir": tmp_path / "run"} if log_dir else {}
    w = gw.watch(model, opt, flush_every=3, **kw)
    ref = _Rows()
    w.add_listener(ref)
    _train(w, model, opt, 4 * RECENT)  # more flushes than the streamed window keeps
    mid = w.stats()
    _same(mid, ref.frame())
    assert mid["step"].nunique() == 4 * RECENT
    _train(w, model, opt, 5)
    w.close()
    _same(w.stats(), ref.frame())
    if log_dir:
        _same(w.stats(), gw.load(tmp_path / "run").stats)


def test_with_a_log_dir_the_watch_keeps_no_flushed_rows_beyond_its_window(tmp_path):
    model, opt = _setup()
    with gw.watch(model, opt, flush_every=2, log_dir=tmp_path / "run") as w:
        _train(w, model, opt, 6 * RECENT)
        buffer = w._buffer
        assert buffer.stored and buffer.held == []
        assert len(buffer.recent) == RECENT


def test_without_a_log_dir_the_rows_are_held_compressed(tmp_path, monkeypatch):
    from gradwatch.monitor import buffer

    monkeypatch.setattr(buffer, "HELD_ROWS", 300)  # a few flushes' rows (~70 each)
    model, opt = _setup()
    with gw.watch(model, opt, flush_every=10) as w:
        ref = _Rows()
        w.add_listener(ref)
        _train(w, model, opt, 200)
        b = w._buffer
        assert len(b.held) >= 2 and b.pending_rows < 300  # each flush encoded once, together
        held = sum(x.size for x in b.held)
        as_arrow = sum(t.nbytes for t in ref.tables[: len(ref.tables) - len(b.pending)])
        assert held < as_arrow / 3, (held, as_arrow)
        _same(w.stats(), ref.frame())  # compressed and pending rows, every step


def test_a_failed_write_keeps_every_step_in_memory(tmp_path, monkeypatch):
    """The store fails at the third flush: the watch stops (with its warning), and w.stats() still
    has every step, those written before the failure read back from the store."""
    real = RunWriter.append
    calls = []

    def failing(self, rows):
        calls.append(1)
        if len(calls) == 3:
            raise OSError(28, "No space left on device")
        return real(self, rows)

    monkeypatch.setattr(RunWriter, "append", failing)
    model, opt = _setup()
    w = gw.watch(model, opt, flush_every=2, log_dir=tmp_path / "run")
    ref = _Rows()
    w.add_listener(ref)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _train(w, model, opt, 12)
    assert any("stopped watching" in str(c.message) for c in caught)
    assert not w._buffer.stored
    stats = w.stats()
    assert sorted(stats["step"].unique()) == list(range(6))  # 3 flushes, the third unwritten
    # The listener got none of the third flush's rows (the write failed first), so compare the
    # first two flushes with it, and the third with the steps the watch recorded.
    _same(stats[stats["step"] < 4], ref.frame())
    w.close()
