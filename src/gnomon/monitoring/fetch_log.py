"""The fetch log (SPEC §5): a key-hash sample of Join fetches, written to the warehouse table
``logs.<join>`` so that the consistency job can recompute them offline.

``serving: {log: {sample: 0.05}}`` in gnomon.yaml logs the keys whose hash falls below 5% of the
hash range: a key is either always or never logged, in every server process. Each logged key is one
row of ``logs.<join name with . as _>`` at ``<warehouse>/logs/<table>/ds=YYYY-MM-DD/*.parquet``,
partitioned by the day of the time asked for:

====================  ========  ==========================================================
column                type      what
====================  ========  ==========================================================
``ts``                int64     the time asked for (epoch ms): the request's ``at``, or the
                                server's now that the fetcher used when there was none
``keys``              string    the request's key fields, JSON, sorted keys, compact
``status``            string    the key's result status (``Success`` or why not)
``features``          string    the served feature values, JSON, as in the HTTP response
``fetched_at``        int64     wall clock of the fetch (epoch ms)
``join_fingerprint``  string    `join_fingerprint`: changes when the Join's plan changes
====================  ========  ==========================================================

The request path only appends the sampled results to a bounded in-memory queue (a full queue drops
them and counts ``gnomon_fetch_log_dropped_total``; a fetch never waits). A writer thread flushes every
``flush_interval`` seconds, or sooner once ``batch_rows`` keys are queued: per Join and day one new
Parquet file, written under a hidden temporary name and renamed into place, so a reader never sees
half a file. A clean shutdown writes everything queued.

A crash (``kill -9``, out of memory) loses what was queued but not yet written — at most one flush
interval of fetches — and says how many: each server keeps a *journal*, a small memory-mapped file
under ``<warehouse>/logs/.journal/`` holding per Join the count of keys queued and of keys written.
Updating it is a store into memory (no system call on the request path), and the kernel keeps a dead
process's writes to a shared mapping. The server holds a lock on its journal while it runs; a server
that starts and finds an unlocked journal reports ``fetch log: N records of join X were lost in a
crash`` (a warning, and ``gnomon_fetch_log_lost_total``) and removes it.
"""

from __future__ import annotations

import atexit
import fcntl
import hashlib
import json
import logging
import mmap
import os
import struct
import threading
import time
import uuid
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from gnomon import jsonio
from gnomon.compile.plan import JoinPlan, Plan, output_table, without_meta
from gnomon.errors import ConfigError, did_you_mean
from gnomon.metrics import Metrics
from gnomon.offline.warehouse import Warehouse
from gnomon.online.fetcher import FetchResult
from gnomon.timeline import DAY_MS, ms_to_ds

__all__ = [
    "LOG_NAMESPACE",
    "LOG_SCHEMA",
    "FetchLog",
    "LogSettings",
    "canonical_keys",
    "is_sampled",
    "join_fingerprint",
    "join_key_fields",
    "key_fraction",
    "log_table",
    "read_log",
    "report_lost_records",
]

LOG_NAMESPACE = "logs"
JOURNAL_FOLDER = ".journal"
LOG_SCHEMA = pa.schema(
    [
        ("ts", pa.int64()),
        ("keys", pa.string()),
        ("status", pa.string()),
        ("features", pa.string()),
        ("fetched_at", pa.int64()),
        ("join_fingerprint", pa.string()),
    ]
)
_SETTINGS = ("sample", "flush_interval", "batch_rows")
_QUEUE_BATCHES = 10  # the queue holds at most this many batches of batch_rows keys

_logger = logging.getLogger(__name__)


# ------------------------------------------------------------------ the table, for its readers


def log_table(join_name: str) -> str:
    """The warehouse table of a Join's fetch log.

    >>> log_table("team.user_item")
    'logs.team_user_item'
    """
    return output_table(join_name, LOG_NAMESPACE)


def read_log(warehouse: str | Path | Warehouse, join_name: str, ds: str) -> pa.Table:
    """Every row logged for ``join_name`` on day ``ds`` (the day of the time asked for), in the
    order written; an empty table with `LOG_SCHEMA` when there are none."""
    root = warehouse.root if isinstance(warehouse, Warehouse) else Path(warehouse)
    folder = Warehouse(root).table_path(log_table(join_name)) / f"ds={ds}"
    files = sorted(folder.glob("*.parquet")) if folder.is_dir() else []
    if not files:
        return LOG_SCHEMA.empty_table()
    return pa.concat_tables([pq.read_table(file, schema=LOG_SCHEMA) for file in files])


def join_fingerprint(plan: Plan, join_name: str) -> str:
    """A short hash of a Join's plan and the plans of its GroupBys (16 hex digits): a logged row
    whose fingerprint differs from the current one was served by another definition."""
    join = plan.joins[join_name]
    body = {
        "join": without_meta(join),  # an owner, tag or description is not another definition
        "group_bys": {part.group_by: without_meta(plan.group_bys[part.group_by]) for part in join.parts},
    }
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def join_key_fields(join: JoinPlan) -> list[str]:
    """The request fields a Join's fetch needs (its parts' left key columns), sorted."""
    return sorted({column for part in join.parts for column in part.key_columns.values()})


def canonical_keys(request: Mapping[str, Any], fields: Sequence[str]) -> bytes:
    """The key fields of a request as compact JSON with sorted keys: what is logged and hashed.

    >>> canonical_keys({"user": "bob", "item": "i42", "other": 1}, ["user", "item"])
    b'{"item":"i42","user":"bob"}'
    """
    return jsonio.dumps({field: request.get(field) for field in sorted(fields)})


def key_fraction(canonical: bytes) -> float:
    """Where a key falls in ``[0, 1)``: its BLAKE2b hash as a fraction, the same in every process.

    >>> key_fraction(b'{"user":"bob"}') == key_fraction(b'{"user":"bob"}') < 1
    True
    """
    return int.from_bytes(hashlib.blake2b(canonical, digest_size=8).digest(), "big") / 2.0**64


def is_sampled(canonical: bytes, sample: float) -> bool:
    """Whether a key (`canonical_keys`) is logged at this sample rate: always or never."""
    return key_fraction(canonical) < sample


# ------------------------------------------------------------------ settings


@dataclass(frozen=True)
class LogSettings:
    """``serving: {log: {sample, flush_interval, batch_rows}}``: the share of keys logged (0: off),
    how often the writer flushes (seconds) and how many queued keys make it flush sooner."""

    sample: float = 0.0
    flush_interval: float = 1.0
    batch_rows: int = 10_000

    @property
    def queue_rows(self) -> int:
        """Keys the queue holds at most; beyond, sampled keys are dropped and counted."""
        return _QUEUE_BATCHES * self.batch_rows

    @classmethod
    def parse(cls, raw: Mapping[str, Any], where: str | Path = "gnomon.yaml") -> LogSettings:
        """Validate ``serving.log`` as written in gnomon.yaml (``where`` names the file in errors).

        >>> LogSettings.parse({"sample": 0.05})
        LogSettings(sample=0.05, flush_interval=1.0, batch_rows=10000)
        """
        if not raw:
            return cls()
        for key in raw:
            if key not in _SETTINGS:
                raise ConfigError(
                    f"{where}: unknown setting serving.log.{key}."
                    + did_you_mean(str(key), _SETTINGS)
                    + f" Known: {', '.join(_SETTINGS)}."
                )
        if "sample" not in raw:
            raise ConfigError(
                f"{where}: serving.log.sample is missing: give the share of keys to log, e.g. "
                "serving: {log: {sample: 0.05}} (or remove serving.log to log nothing)"
            )
        return cls(
            sample=_fraction(raw["sample"], where),
            flush_interval=_seconds(raw.get("flush_interval", 1.0), where),
            batch_rows=_rows(raw.get("batch_rows", 10_000), where),
        )


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def _fraction(value: Any, where: str | Path) -> float:
    number = _number(value)
    if number is None or not 0.0 <= number <= 1.0:
        raise ConfigError(
            f"{where}: serving.log.sample must be a number from 0 to 1 (the share of keys logged: "
            f"0.05 logs 5%, 1 every key, 0 none), got {value!r}"
        )
    return number


def _seconds(value: Any, where: str | Path) -> float:
    number = _number(value)
    if number is None or not 0.0 < number <= 3600.0:
        raise ConfigError(
            f"{where}: serving.log.flush_interval must be a number of seconds above 0 and at most 3600 "
            f"(how often logged fetches are written; a crash loses at most that much), got {value!r}"
        )
    return number


def _rows(value: Any, where: str | Path) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(
            f"{where}: serving.log.batch_rows must be a positive integer (queued keys that make the "
            f"writer flush before flush_interval; default 10000), got {value!r}"
        )
    return value


# ------------------------------------------------------------------ the journal of a server


_MAGIC = b"GNMJRNL1"
_HEAD = struct.Struct("<8sQ")  # magic, header length (a multiple of 8)


class _Journal:
    """Per Join, keys queued and keys written by this server, in a locked, memory-mapped file.

    Layout: magic, header length, a JSON header ``{"server", "joins"}`` padded to 8 bytes, then two
    little-endian uint64 per Join (queued, written). Each counter has one writer thread: the event
    loop adds to ``queued``, the log writer to ``written``.
    """

    def __init__(self, folder: Path, server: str, joins: Sequence[str]) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        header = json.dumps({"server": server, "joins": list(joins)}).encode()
        header += b" " * (-len(header) % 8)
        counts_at = _HEAD.size + len(header)
        self.path = folder / f"{server}.journal"
        temp = folder / f".{server}.journal.tmp"
        self._fd = os.open(temp, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
        fcntl.flock(self._fd, fcntl.LOCK_EX)  # held while this server lives
        os.write(self._fd, _HEAD.pack(_MAGIC, len(header)) + header + bytes(16 * len(joins)))
        os.replace(temp, self.path)  # locked before any other server can see it
        self._map = mmap.mmap(self._fd, counts_at + 16 * len(joins))
        self._counts = memoryview(self._map)[counts_at:].cast("Q")

    def queued(self, slot: int, count: int) -> None:
        self._counts[2 * slot] += count

    def written(self, slot: int, count: int) -> None:
        self._counts[2 * slot + 1] += count

    def close(self, remove: bool) -> None:
        """Unmap and unlock; ``remove``: delete the file (nothing is unwritten)."""
        self._counts.release()
        self._map.close()
        if remove:
            self.path.unlink(missing_ok=True)
        os.close(self._fd)


def _journal_folder(warehouse: Path) -> Path:
    return warehouse / LOG_NAMESPACE / JOURNAL_FOLDER


def _read_journal(data: bytes) -> tuple[str, dict[str, int]]:
    """(server, Join -> keys queued but never written) of a journal's bytes."""
    magic, header_length = _HEAD.unpack_from(data)
    if magic != _MAGIC:
        raise ValueError("not a fetch log journal")
    header = json.loads(data[_HEAD.size : _HEAD.size + header_length])
    joins = header["joins"]
    counts = struct.unpack_from(f"<{2 * len(joins)}Q", data, _HEAD.size + header_length)
    lost = {join: counts[2 * i] - counts[2 * i + 1] for i, join in enumerate(joins)}
    return str(header["server"]), lost


def _claim_dead_journal(path: Path) -> tuple[str, dict[str, int]] | None:
    """Read and remove the journal of a server that no longer runs (None: it runs, or another
    starting server claimed it first)."""
    try:
        fd = os.open(path, os.O_RDWR)
    except FileNotFoundError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return None  # its server is alive
        try:
            if os.fstat(fd).st_ino != os.stat(path).st_ino:
                return None
        except FileNotFoundError:
            return None  # claimed by another server between our open and our lock
        with open(fd, "rb", closefd=False) as file:
            data = file.read()
        path.unlink()
    finally:
        os.close(fd)
    try:
        return _read_journal(data)
    except (ValueError, KeyError, struct.error) as error:
        _logger.warning("fetch log: the journal %s of a stopped server could not be read (%s)", path, error)
        return None


def report_lost_records(warehouse: str | Path, metrics: Metrics | None = None) -> dict[str, int]:
    """At a server's start: the keys that servers which crashed queued but never wrote, per Join.

    Each is logged as a warning (``fetch log: N records of join X were lost in a crash``) and added
    to ``gnomon_fetch_log_lost_total``; the dead servers' journals and half-written files are removed.
    """
    folder = _journal_folder(Path(warehouse))
    lost: dict[str, int] = {}
    if not folder.is_dir():
        return lost
    for path in sorted(folder.glob("*.journal")):
        claimed = _claim_dead_journal(path)
        if claimed is None:
            continue
        server, counts = claimed
        _remove_temp_files(Path(warehouse), server)
        for join, count in counts.items():
            if count > 0:
                lost[join] = lost.get(join, 0) + count
    for join, count in sorted(lost.items()):
        _logger.warning("fetch log: %d records of join %s were lost in a crash", count, join)
        if metrics is not None:
            metrics.fetch_log_lost.inc(join, count)
    return lost


def _remove_temp_files(warehouse: Path, server: str) -> None:
    for temp in (warehouse / LOG_NAMESPACE).glob(f"*/ds=*/.part-*-{server}-*.tmp"):
        temp.unlink(missing_ok=True)


# ------------------------------------------------------------------ the log itself


@dataclass
class _Slot:
    """One Join's fixed facts: its journal position, table folder, key fields and fingerprint."""

    index: int
    join: str
    folder: Path
    fields: list[str]
    fingerprint: str


# one logged key as queued: Join slot index, time asked for, wall clock, keys JSON, status, features
# JSON. A tuple of plain values: the garbage collector stops tracking it, so a full queue costs the
# collections of the request path nothing.
_Row = tuple[int, int, int, bytes, str, bytes]


@dataclass
class _Rows:
    """Logged keys of one Join and day, column by column."""

    slot: _Slot
    ds: str
    ts: tuple[int, ...]
    fetched_at: tuple[int, ...]
    keys: tuple[bytes, ...]
    status: tuple[str, ...]
    features: tuple[bytes, ...]

    @classmethod
    def of(cls, slot: _Slot, ds: str, rows: list[_Row]) -> _Rows:
        """Queued rows (of one Join and day) transposed into columns."""
        _, ts, fetched_at, keys, status, features = zip(*rows, strict=True)
        return cls(slot, ds, ts, fetched_at, keys, status, features)

    def table(self) -> pa.Table:
        return pa.table(
            {
                "ts": pa.array(self.ts, pa.int64()),
                "keys": pa.array(self.keys, pa.string()),
                "status": pa.array(self.status, pa.string()),
                "features": pa.array(self.features, pa.string()),
                "fetched_at": pa.array(self.fetched_at, pa.int64()),
                "join_fingerprint": pa.array([self.slot.fingerprint] * len(self.ts), pa.string()),
            },
            schema=LOG_SCHEMA,
        )


class FetchLog:
    """Samples Join fetches on the request path and writes them to ``logs.<join>`` from a thread.

    ``record`` is all the request path calls. ``flush`` writes what is queued now; ``close`` (the
    server's shutdown; also run at interpreter exit) stops the writer and writes everything.
    """

    def __init__(self, warehouse: str | Path, plan: Plan, settings: LogSettings, metrics: Metrics) -> None:
        self.settings, self.metrics = settings, metrics
        self.server = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
        tables = Warehouse(warehouse)
        self._slots = {
            name: _Slot(
                index,
                name,
                tables.table_path(log_table(name)),
                join_key_fields(join),
                join_fingerprint(plan, name),
            )
            for index, (name, join) in enumerate(sorted(plan.joins.items()))
        }
        folder = _journal_folder(Path(warehouse))
        try:
            self._journal = _Journal(folder, self.server, list(self._slots))
        except OSError as error:
            raise ConfigError(
                f"serving.log: the fetch log cannot write under {folder} ({error}); make the warehouse "
                "writable by the server, or remove serving.log from gnomon.yaml"
            ) from None
        self._by_index = {slot.index: slot for slot in self._slots.values()}
        self._queue: deque[_Row] = deque()
        self._retry: list[_Rows] = []  # files that could not be written, for the next flush
        self._files = 0
        self._flushing = threading.Lock()
        self._wake = threading.Event()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="gnomon-fetch-log", daemon=True)
        self._thread.start()
        atexit.register(self.close)

    # -------------------------------------------------------------- the request path

    def record(self, join: str, at: int, results: Sequence[FetchResult]) -> None:
        """Queue the sampled keys of one Join fetch at time ``at``, encoded: no I/O, never waits.
        Costs a few microseconds per logged key (two small JSON encodings)."""
        slot = self._slots.get(join)
        if slot is None or not results:
            return
        fields, sample, dumps = slot.fields, self.settings.sample, jsonio.dumps
        keys = [dumps({field: result.entity_keys.get(field) for field in fields}) for result in results]
        if sample < 1.0:
            chosen = [index for index, key in enumerate(keys) if key_fraction(key) < sample]
            if not chosen:
                return
            keys = [keys[index] for index in chosen]
            results = [results[index] for index in chosen]
        count, queue = len(keys), self._queue
        if self._closed or len(queue) + count > self.settings.queue_rows:
            self.metrics.fetch_log_dropped.inc(join, count)
            return
        index, now = slot.index, int(time.time() * 1000)
        if count == 1:
            queue.append((index, at, now, keys[0], results[0].status, dumps(results[0].features)))
        else:
            queue.extend(
                [
                    (index, at, now, key, result.status, dumps(result.features))
                    for key, result in zip(keys, results, strict=True)
                ]
            )
        self._journal.queued(index, count)
        if len(queue) >= self.settings.batch_rows:
            self._wake.set()

    # -------------------------------------------------------------- the writer

    def _run(self) -> None:
        while not self._closed:
            self._wake.wait(self.settings.flush_interval)
            self._wake.clear()
            try:
                self.flush()
            except Exception:  # noqa: BLE001 — the writer must outlive any one bad batch
                _logger.exception("fetch log: a flush failed")

    def flush(self) -> int:
        """Write every queued key now, one file per Join and day; returns the keys written. A file
        that cannot be written is kept for the next flush (while the queue has room)."""
        with self._flushing:
            groups = self._retry + self._take()
            self._retry = []
            written = 0
            for rows in groups:
                try:
                    self._write(rows)
                except OSError as error:
                    self._keep_for_retry(rows, error)
                    continue
                written += len(rows.ts)
                self._journal.written(rows.slot.index, len(rows.ts))
                self.metrics.fetch_log_records.inc(rows.slot.join, len(rows.ts))
            return written

    def _take(self) -> list[_Rows]:
        """Empty the queue into one `_Rows` per (Join, day of the time asked for)."""
        groups: dict[tuple[int, int], list[_Row]] = {}
        queue = self._queue
        for _ in range(len(queue)):  # what is queued now; the event loop may append meanwhile
            row = queue.popleft()
            groups.setdefault((row[0], row[1] // DAY_MS), []).append(row)
        return [
            _Rows.of(self._by_index[index], ms_to_ds(day * DAY_MS), rows)
            for (index, day), rows in groups.items()
        ]

    def _keep_for_retry(self, rows: _Rows, error: OSError) -> None:
        join, count = rows.slot.join, len(rows.ts)
        self.metrics.fetch_log_errors.inc(join)
        if sum(len(kept.ts) for kept in self._retry) + count > self.settings.queue_rows:
            _logger.error("fetch log: %d records of join %s dropped, not writable: %s", count, join, error)
            self.metrics.fetch_log_dropped.inc(join, count)
            self._journal.written(rows.slot.index, count)  # dropped on purpose and counted: not a crash loss
            return
        _logger.warning("fetch log: %d records of join %s not written yet: %s", count, join, error)
        self._retry.append(rows)

    def _write(self, rows: _Rows) -> None:
        """One new Parquet file in the day's partition, renamed into place once complete."""
        table = rows.table()
        folder = rows.slot.folder / f"ds={rows.ds}"
        folder.mkdir(parents=True, exist_ok=True)
        self._files += 1
        name = f"part-{int(time.time() * 1000):013d}-{self.server}-{self._files:06d}"
        temp = folder / f".{name}.tmp"
        try:
            pq.write_table(table, temp)
            os.replace(temp, folder / f"{name}.parquet")
        finally:
            temp.unlink(missing_ok=True)

    # -------------------------------------------------------------- shutdown

    def close(self) -> None:
        """Stop the writer and write everything queued; the journal goes once all is written.
        Idempotent; keys fetched afterwards are counted as dropped."""
        if self._closed:
            return
        self._closed = True
        atexit.unregister(self.close)
        self._wake.set()
        self._thread.join(timeout=60)
        self.flush()
        unwritten = sum(len(rows.ts) for rows in self._retry)
        if unwritten:
            _logger.error(
                "fetch log: %d records could not be written at shutdown; the next server start reports them",
                unwritten,
            )
        self._journal.close(remove=not unwritten)
