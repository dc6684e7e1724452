"""The run directory: `meta.json`, `stats.parquet/` and `findings.json`, written so a killed process
loses nothing that was flushed.

`stats.parquet` is a Parquet dataset directory: each flush adds one part file, written under a
hidden temporary name and renamed into place (atomic on POSIX), so a reader never sees half a
part. On close the parts are compacted into one; a part whose flush range lies inside another's
is a leftover of a compaction that was interrupted and is skipped when reading.
`pandas.read_parquet(run_dir / "stats.parquet")` works on it directly.

Every file is written under a temporary name unique to its writer (pid and a random suffix) and
renamed into place. A writer holds `.gradwatch.lock` (its pid and a token, created exclusively)
from its start to its finished `meta.json`, so a second live writer on the same directory is
refused instead of mixing its rows with the first's; the lock of a process that died is taken
over. Reading never hides damage: `Run.problems` names every part that could not be read or is
missing, and the parts that can be read are still read.

`findings.json` holds the findings the watch last streamed (those of its recent flushes) and, once
the watch is closed, the whole run's; meta.json's `findings_of` names the rows they judged (first
and last step, row count), so that a report reads them when they judged exactly the stored stats
and runs the detectors itself otherwise. A live watch with a run directory reads its `w.stats()`
back from here (`RunWriter.read`) instead of keeping every flushed row in memory.

pandas and pyarrow are imported where they are first used, not with this module: a watch imports
it, and should not pay for them (a quarter of a second, more than the rest of gradwatch) before its
first flush.
"""

from __future__ import annotations

import functools
import json
import os
import re
import secrets
import warnings
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from gradwatch.errors import (
    CorruptRunError,
    RunError,
    RunExistsError,
    RunLockedError,
    RunNotFoundError,
)

if TYPE_CHECKING:
    import pandas as pd
    import pyarrow as pa

STATS_DIR = "stats.parquet"
META = "meta.json"
FINDINGS = "findings.json"
LOCK = ".gradwatch.lock"
COLUMNS = ("step", "layer", "metric", "value", "index")
_PART = re.compile(r"^part-(\d{8})-(\d{8})\.parquet$")


@functools.cache
def _schema() -> pa.Schema:
    import pyarrow as pa

    return pa.schema(
        [
            ("step", pa.int64()),
            ("layer", pa.string()),
            ("metric", pa.string()),
            ("value", pa.float64()),
            ("index", pa.int64()),
        ]
    )


def empty_stats() -> pd.DataFrame:
    import pandas as pd

    return normalize(pd.DataFrame({c: [] for c in COLUMNS}))


def long_table(blocks: list, steps: np.ndarray) -> pa.Table:
    """Turn a flush's `(metric, rows, values)` blocks into long-format rows, skipping absent
    entries.

    values are `[steps, rows]` (index -1) or `[steps, rows, index]` (a series within a step); a
    negative entry is "not measured" (a measured NaN compares False and stays), unless the block
    carries a fourth item, a boolean mask of the entries measured (for values that can be
    negative). Built with numpy and Arrow's `take` so that no Python string object is made per
    row: a flush happens inside the training loop.
    """
    import pyarrow as pa

    parts: dict[str, list[np.ndarray]] = {c: [] for c in COLUMNS}
    names: dict[str, int] = {}
    metrics: list[str] = []
    for metric, rows, values, *present in blocks:
        values = values[: len(steps), : len(rows)]
        where = np.nonzero(present[0][: len(steps), : len(rows)] if present else ~(values < 0))
        if len(where[0]) == 0:
            continue
        codes = np.fromiter(
            (names.setdefault(r, len(names)) for r in rows), dtype=np.int32, count=len(rows)
        )
        parts["step"].append(steps[where[0]])
        parts["layer"].append(codes[where[1]])
        parts["metric"].append(np.full(len(where[0]), len(metrics), dtype=np.int32))
        parts["value"].append(values[where].astype(np.float64))
        parts["index"].append(
            where[2].astype(np.int64) if values.ndim == 3 else np.full(len(where[0]), -1, np.int64)
        )
        metrics.append(metric)
    if not metrics:
        return _schema().empty_table()
    cols = {c: np.concatenate(v) for c, v in parts.items()}
    order = np.argsort(cols["step"], kind="stable")
    cols = {c: v[order] for c, v in cols.items()}
    return pa.table(
        {
            "step": pa.array(cols["step"], pa.int64()),
            "layer": pa.array(list(names), pa.string()).take(pa.array(cols["layer"])),
            "metric": pa.array(metrics, pa.string()).take(pa.array(cols["metric"])),
            "value": pa.array(cols["value"], pa.float64()),
            "index": pa.array(cols["index"], pa.int64()),
        },
        schema=_schema(),
    )


def to_frame(table: pa.Table) -> pd.DataFrame:
    return normalize(table.to_pandas())


_DTYPES = {"step": "int64", "layer": "str", "metric": "str", "value": "float64", "index": "int64"}


def normalize(df: pd.DataFrame) -> pd.DataFrame:
    """The one dtype layout of a stats table, whether it came from memory or from disk."""
    import pandas as pd

    if list(df.columns) == list(COLUMNS) and all(str(df[c].dtype) == t for c, t in _DTYPES.items()):
        return (
            df.reset_index(drop=True)
            if not isinstance(df.index, pd.RangeIndex) or df.index.start != 0
            else df
        )
    return pd.DataFrame(
        {
            "step": df["step"].to_numpy(dtype="int64"),
            "layer": df["layer"].astype(str).to_numpy(dtype=object),
            "metric": df["metric"].astype(str).to_numpy(dtype=object),
            "value": df["value"].to_numpy(dtype="float64"),
            "index": df["index"].to_numpy(dtype="int64"),
        }
    ).astype({"layer": "str", "metric": "str"})


def judged(stats: pd.DataFrame) -> dict | None:
    """What identifies the stats table a diagnosis was made from: its first and last step and its
    number of rows (None for an empty table)."""
    if stats.empty:
        return None
    step = stats["step"].to_numpy()
    return {"first_step": int(step.min()), "last_step": int(step.max()), "rows": len(stats)}


def findings_current(run: Run) -> bool:
    """Whether the run's stored findings are the diagnosis of exactly the stats it holds (the
    watch stores the whole run's at close): then a report need not run the detectors again."""
    of = run.meta.get("findings_of")
    return bool(of) and not run.problems and of == judged(run.stats)


def _temp_name(path: Path) -> Path:
    """A hidden temporary name next to `path`, unique to this process and call: two writers
    never share one (a shared name let one writer rename the other's file away)."""
    return path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = _temp_name(path)
    try:
        with open(tmp, "xb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_json(path: Path, obj: Any) -> None:
    _write_atomic(path, json.dumps(obj, indent=2, default=_json_default).encode())


def _json_default(o: Any) -> Any:
    if hasattr(o, "to_dict"):
        return o.to_dict()
    if hasattr(o, "item"):
        return o.item()
    return str(o)


class RunWriter:
    """Writes one run directory. Every method leaves the directory readable if the process dies.

    The writer holds the directory's lock until its finished meta is written (`close()`), or until
    it is garbage collected or the process ends.
    """

    def __init__(self, log_dir: str | os.PathLike, overwrite: bool = False):
        self.path = Path(log_dir)
        if self.path.exists() and not self.path.is_dir():
            raise RunExistsError(f"log_dir '{self.path}' is a file; pass a directory path instead.")
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise RunError(
                f"log_dir '{self.path}' cannot be created ({exc.strerror}); "
                "pass a directory you can write to."
            ) from None
        self._lock = _RunLock(self.path)
        # Released when the writer is collected or the interpreter exits, whichever comes first.
        self._release = weakref.finalize(self, self._lock.release)
        try:
            self._prepare(overwrite)
        except BaseException:
            self.close()
            raise
        self._next = 0

    def _prepare(self, overwrite: bool) -> None:
        stats = self.path / STATS_DIR
        if (self.path / META).exists() or stats.exists():
            if not overwrite:
                raise RunExistsError(
                    f"log_dir '{self.path}' already holds a gradwatch run; pass a new directory, "
                    "or overwrite=True to replace it."
                )
            for part in stats.glob("*") if stats.is_dir() else []:
                part.unlink()
            for name in (META, FINDINGS):
                (self.path / name).unlink(missing_ok=True)
        stats.mkdir(parents=True, exist_ok=True)
        self._stats = stats

    def close(self) -> None:
        """Release the directory's lock (idempotent); the files stay as they are."""
        self._release()

    def write_meta(self, meta: dict) -> None:
        if self._judged is not None:
            meta = {**meta, "findings_of": self._judged}
        write_json(self.path / META, meta)
        if meta.get("finished"):
            # The finished meta is a run's last word (Watch.close writes it after compacting).
            self.close()

    _judged: dict | None = None

    def write_findings(self, findings: list, of: dict | None = None) -> None:
        """findings.json; `of` (`judged(stats)`) says which rows the detectors judged, and goes
        to meta.json's `findings_of` at its next write: written after findings.json, so that it
        never claims rows for findings that are not yet there."""
        write_json(self.path / FINDINGS, findings)
        self._judged = of

    def append(self, rows: pa.Table | pd.DataFrame) -> None:
        """Add one flush's rows as a new part file."""
        if len(rows) == 0:
            return
        self._write_part(rows, self._next, self._next)
        self._next += 1

    def _write_part(self, rows: pa.Table | pd.DataFrame, lo: int, hi: int) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        table = (
            rows
            if isinstance(rows, pa.Table)
            else pa.Table.from_pandas(rows, schema=_schema(), preserve_index=False)
        )
        final = self._stats / f"part-{lo:08d}-{hi:08d}.parquet"
        tmp = _temp_name(final)
        try:
            pq.write_table(table, tmp)
            os.replace(tmp, final)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise

    def read(self) -> pd.DataFrame:
        """Every row stored so far, in flush order: what a watch with a run directory returns from
        `w.stats()`, so that it need not keep the rows in memory as well."""
        return to_frame(self.read_table())

    def read_table(self) -> pa.Table:
        """`read()` as an Arrow table."""
        import pyarrow.dataset as ds

        try:
            parts = [str(p) for _, _, p in _live_parts(self._stats)]
            return ds.dataset(parts, schema=_schema(), format="parquet").to_table()
        except (OSError, ValueError) as exc:
            raise RunError(
                f"The stats stored in log_dir '{self.path}' cannot be read back "
                f"({type(exc).__name__}: {exc}); was the directory changed while watching?"
            ) from None

    def compact(self) -> None:
        """Merge the parts into one file (so long runs do not leave thousands of small files)."""
        import pandas as pd

        parts = _live_parts(self._stats)
        if len(parts) < 2:
            return
        lo, hi = parts[0][0], parts[-1][1]
        df = pd.concat([pd.read_parquet(p) for _, _, p in parts], ignore_index=True)
        self._write_part(df, lo, hi)
        for _, _, p in parts:
            p.unlink()


# Locks this process holds, by directory: a second writer in the same process (same pid in the
# lock file) is refused while the first is alive, and takes over from one that was collected.
_HELD: dict[str, str] = {}


class _RunLock:
    """`.gradwatch.lock` in a run directory: "pid token", created with O_EXCL semantics."""

    def __init__(self, run_dir: Path):
        self.path = run_dir / LOCK
        self.key = str(run_dir.resolve())
        self.pid = os.getpid()
        self.token = f"{os.getpid()} {secrets.token_hex(8)}"
        for _ in range(3):
            if self._create():
                _HELD[self.key] = self.token
                return
            holder = self._holder()
            if holder is not None and _alive(holder, self.key):
                raise RunLockedError(
                    f"log_dir '{run_dir}' is being written by another live writer (pid {holder}); "
                    "close that watch first, or pass a different log_dir."
                )
            self.path.unlink(missing_ok=True)  # a dead writer's lock: take it over
        raise RunLockedError(
            f"log_dir '{run_dir}' keeps being locked by other writers; pass a different log_dir."
        )

    def _create(self) -> bool:
        # Written under a private name, then hard-linked into place: the link fails when the lock
        # exists, and a reader never sees a lock without its pid.
        tmp = _temp_name(self.path)
        tmp.write_text(self.token)
        try:
            os.link(tmp, self.path)
            return True
        except FileExistsError:
            return False
        finally:
            tmp.unlink(missing_ok=True)

    def _holder(self) -> int | None:
        try:
            return int(self.path.read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def release(self) -> None:
        if os.getpid() != self.pid:
            return  # a forked child (a DataLoader worker) exiting must not unlock its parent's run
        if _HELD.get(self.key) == self.token:
            del _HELD[self.key]
        try:
            if self.path.read_text() == self.token:
                self.path.unlink()
        except OSError:
            pass


def _alive(pid: int, key: str) -> bool:
    if pid == os.getpid():
        return key in _HELD
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _live_parts(stats: Path) -> list[tuple[int, int, Path]]:
    """Part files in flush order, without those a finished compaction already covers."""
    parts = []
    for p in stats.iterdir():
        m = _PART.match(p.name)
        if m:
            parts.append((int(m.group(1)), int(m.group(2)), p))
    parts.sort(key=lambda t: (t[0], -t[1]))
    live: list[tuple[int, int, Path]] = []
    for lo, hi, p in parts:
        if live and live[-1][0] <= lo and hi <= live[-1][1]:
            continue
        live.append((lo, hi, p))
    return live


@dataclass
class Run:
    """A stored run: `.stats` (the long stats table), `.meta` (dict), `.findings`.

    `.problems` holds one sentence per damaged or missing piece of the stats (empty for a sound
    run); `.stats` then holds what could be read, and `.findings` what the watch last stored.
    """

    path: Path
    meta: dict
    stats: pd.DataFrame
    findings: list = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    def layers(self) -> list[str]:
        """Layer names in forward order, as the watch recorded them."""
        order = self.meta.get("layer_order")
        if order:
            return list(order)
        return list(dict.fromkeys(self.stats["layer"]))


def load(path: str | os.PathLike) -> Run:
    """Read a run directory written by `gw.watch(..., log_dir=path)`.

    A run whose process was killed still loads, with every step flushed before it died.
    """
    return read_run(path)


def read_run(path: str | os.PathLike, categories: bool = False) -> Run:
    """`load(path)`; with `categories`, the layer and metric columns of `.stats` stay pandas
    categoricals, as Parquet stores them (a report of a long run reads them a fifth as fast, and
    groups on their codes), instead of strings."""
    import pandas as pd

    root = Path(path)
    if not root.exists():
        raise RunNotFoundError(
            f"No gradwatch run at '{root}': the path does not exist; "
            "pass the log_dir given to gw.watch()."
        )
    if not root.is_dir():
        raise RunNotFoundError(
            f"'{root}' is a file, not a run directory; pass the log_dir given to gw.watch()."
        )
    stats_dir = root / STATS_DIR
    if not (root / META).exists() and not stats_dir.exists():
        raise RunNotFoundError(
            f"'{root}' is not a gradwatch run (no {META} or {STATS_DIR} inside); "
            "pass the log_dir given to gw.watch()."
        )
    meta = _read_json(root / META, default={})
    findings = _read_json(root / FINDINGS, default=[])
    frames, problems = [], []
    if stats_dir.is_dir():
        frames, problems = _read_parts(stats_dir, meta, categories)
    elif stats_dir.exists():
        try:
            frames.append(_read_parquet(stats_dir, categories))
        except Exception as exc:
            raise CorruptRunError(
                f"'{stats_dir}' cannot be read as Parquet ({type(exc).__name__}); "
                "the file is damaged."
            ) from None
    elif meta.get("steps_seen"):
        problems.append(
            f"{STATS_DIR} is missing, so none of the {meta['steps_seen']} optimizer steps' "
            "stats can be read"
        )
    if not frames:
        stats = empty_stats()
    elif categories:
        stats = _concat_categories(frames)
    else:
        stats = normalize(pd.concat(frames, ignore_index=True))
    if not frames and not problems and meta.get("steps_seen"):
        problems.append(
            f"{STATS_DIR} holds no stats although {meta['steps_seen']} optimizer steps were seen"
        )
    for problem in problems:
        warnings.warn(f"{problem} (run '{root}').", stacklevel=2)
    return Run(root, meta, stats, findings, problems)


def _read_parquet(path: Path, categories: bool) -> pd.DataFrame:
    import pandas as pd

    if not categories:
        return pd.read_parquet(path)
    import pyarrow.parquet as pq

    table = pq.read_table(path, read_dictionary=["layer", "metric"])
    return table.to_pandas()


def _concat_categories(frames: list[pd.DataFrame]) -> pd.DataFrame:
    """One frame from parts whose text columns are categoricals (their categories unified)."""
    import pandas as pd
    from pandas.api.types import union_categoricals

    if len(frames) == 1:
        df = frames[0]
    else:
        text = {
            c: union_categoricals([f[c].astype("category") for f in frames], ignore_order=True)
            for c in ("layer", "metric")
        }
        df = pd.concat([f.drop(columns=list(text)) for f in frames], ignore_index=True)
        for c, values in text.items():
            df[c] = values
    df = df[list(COLUMNS)]
    return df.reset_index(drop=True)


def _read_parts(
    stats_dir: Path, meta: dict, categories: bool = False
) -> tuple[list[pd.DataFrame], list[str]]:
    """Every readable part, and a sentence for each part that is unreadable or missing (a gap in
    the flush numbers the part names carry)."""
    flush_every = meta.get("settings", {}).get("flush_every")
    every = meta.get("settings", {}).get("every") or 1

    def lost(lo: int, hi: int) -> str:
        n = hi - lo + 1
        what = f"flush{'es' if n > 1 else ''} {lo}" + (f"-{hi}" if n > 1 else "")
        if flush_every:
            what += f", up to {n * flush_every} recorded steps"
            if not meta.get("thinned"):  # else the recorded steps were not evenly spaced
                what += f" (optimizer steps {lo * flush_every * every}-"
                what += f"{(hi + 1) * flush_every * every - 1})"
        return what

    frames, problems = [], []
    expected = 0
    for lo, hi, part in _live_parts(stats_dir):
        if lo > expected:
            problems.append(f"Stats of {lost(expected, lo - 1)} are missing")
        expected = max(expected, hi + 1)
        try:
            frames.append(_read_parquet(part, categories))
        except Exception as exc:  # noqa: BLE001 - a damaged part must not hide the others
            problems.append(
                f"Skipped unreadable part {part.name} ({type(exc).__name__}): {lost(lo, hi)} lost"
            )
    return frames, problems


def _read_json(path: Path, default: Any) -> Any:
    if not path.exists():
        return default
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise CorruptRunError(
            f"'{path}' is not valid JSON; the run directory was damaged "
            "(gradwatch writes it atomically), "
            "so restore it or delete the file to load the stats alone."
        ) from None
