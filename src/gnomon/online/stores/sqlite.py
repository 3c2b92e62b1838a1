"""The embedded online store: one SQLite file (``sqlite:///online.db``, relative to the repo).

A stream worker and several server processes use the file at once, so:

- the database runs in WAL mode (readers never block the writer, nor the writer the readers), with
  ``synchronous=NORMAL`` (a power cut may lose the last commits, never corrupt the file) and a busy
  timeout, so concurrent writers wait for each other instead of failing;
- every write is one ``BEGIN IMMEDIATE`` transaction, taking the write lock up front so two writers
  can never deadlock upgrading a read lock;
- each thread (and each process, after a fork) gets its own connection: servers call from threads,
  and SQLite connections must not cross a fork.

Reads are the fetch hot path: a ``get`` of a few keys is one ``SELECT … WHERE key IN (…)`` through a
prepared statement the connection keeps cached (one SQL text per list length), on a memory-mapped
file. Long key lists are split into chunks of :data:`CHUNK` parameters.

Tables::

    kv(key BLOB PRIMARY KEY, value BLOB) WITHOUT ROWID
    rows(key BLOB, event_id BLOB, row BLOB, PRIMARY KEY (key, event_id)) WITHOUT ROWID
    offsets(consumer TEXT, partition TEXT, offset TEXT, PRIMARY KEY (consumer, partition))

:class:`SQLiteConnections` and :func:`write_transaction` are shared with the embedded stream broker.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
import weakref
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from functools import cache
from pathlib import Path

from gnomon.online.stores.base import OnlineStore

CHUNK = 500  # keys per IN list: far below SQLite's parameter limit, and few distinct SQL texts
BUSY_TIMEOUT_MS = 30_000
MMAP_SIZE = 256 * 1024 * 1024
_STATEMENT_CACHE = CHUNK + 64  # every IN-list length of one chunk stays prepared

_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS kv (key BLOB PRIMARY KEY, value BLOB) WITHOUT ROWID",
    "CREATE TABLE IF NOT EXISTS rows (key BLOB, event_id BLOB, row BLOB,"
    " PRIMARY KEY (key, event_id)) WITHOUT ROWID",
    'CREATE TABLE IF NOT EXISTS offsets (consumer TEXT, "partition" TEXT, "offset" TEXT,'
    ' PRIMARY KEY (consumer, "partition"))',
)

_GET_ONE = "SELECT value FROM kv WHERE key = ?"
_PUT = "INSERT OR REPLACE INTO kv (key, value) VALUES (?, ?)"
_ADD_ROW = "INSERT OR IGNORE INTO rows (key, event_id, row) VALUES (?, ?, ?)"
_SET_OFFSET = (
    'INSERT INTO offsets (consumer, "partition", "offset") VALUES (?, ?, ?)'
    ' ON CONFLICT (consumer, "partition") DO UPDATE SET "offset" = excluded."offset"'
)
_GET_OFFSETS = 'SELECT "partition", "offset" FROM offsets WHERE consumer = ?'


class SQLiteConnections:
    """One connection per thread and per process to a SQLite file in WAL mode.

    ``schema`` statements run once per process, in a write transaction, before the first connection
    is handed out. Connections are made with ``check_same_thread=False`` only so that :meth:`close`
    can close every thread's connection; each is otherwise used by its own thread alone.
    """

    def __init__(
        self,
        path: Path,
        schema: Sequence[str] = (),
        *,
        busy_timeout_ms: int = BUSY_TIMEOUT_MS,
        mmap_size: int = MMAP_SIZE,
    ) -> None:
        self.path = path
        self.schema = tuple(schema)
        self.busy_timeout_ms = busy_timeout_ms
        self.mmap_size = mmap_size
        self._lock = threading.Lock()
        self._local = threading.local()
        self._open: list[sqlite3.Connection] = []
        self._schema_ready = False
        _INSTANCES.add(self)

    def get(self) -> sqlite3.Connection:
        """This thread's connection, opened on first use."""
        connection: sqlite3.Connection | None = getattr(self._local, "connection", None)
        if connection is None:
            connection = self._connect()
            self._local.connection = connection
        return connection

    def close(self) -> None:
        """Close every thread's connection; later calls reconnect."""
        with self._lock:
            connections, self._open = self._open, []
            self._local = threading.local()
        for connection in connections:
            connection.close()

    def _connect(self) -> sqlite3.Connection:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        connection = sqlite3.connect(
            self.path,
            timeout=self.busy_timeout_ms / 1000,
            isolation_level=None,
            check_same_thread=False,
            cached_statements=_STATEMENT_CACHE,
        )
        try:
            # Switching to WAL needs an exclusive lock that the busy handler does not always wait
            # for, so retry while another process is creating the same file.
            _retry_locked(lambda: connection.execute("PRAGMA journal_mode=WAL"), self.busy_timeout_ms)
            connection.execute(f"PRAGMA busy_timeout={int(self.busy_timeout_ms)}")
            connection.execute("PRAGMA synchronous=NORMAL")
            connection.execute(f"PRAGMA mmap_size={int(self.mmap_size)}")
            with self._lock:
                if not self._schema_ready:
                    with write_transaction(connection):
                        for statement in self.schema:
                            connection.execute(statement)
                    self._schema_ready = True
                self._open.append(connection)
        except BaseException:
            connection.close()
            raise
        return connection

    def _after_fork(self) -> None:
        # The parent's connections must be neither used nor closed in the child (closing would touch
        # the parent's locks and WAL index); keep them referenced so they are never finalized.
        _ABANDONED.extend(self._open)
        self._open = []
        self._local = threading.local()
        self._lock = threading.Lock()


_INSTANCES: weakref.WeakSet[SQLiteConnections] = weakref.WeakSet()
_ABANDONED: list[sqlite3.Connection] = []


def _reset_after_fork() -> None:
    for instance in list(_INSTANCES):
        instance._after_fork()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reset_after_fork)


def _retry_locked(action: Callable[[], object], timeout_ms: int) -> None:
    deadline = time.monotonic() + timeout_ms / 1000
    delay = 0.001
    while True:
        try:
            action()
            return
        except sqlite3.OperationalError as error:
            if "locked" not in str(error) or time.monotonic() > deadline:
                raise
            time.sleep(delay)
            delay = min(delay * 2, 0.05)


@contextmanager
def write_transaction(connection: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """``BEGIN IMMEDIATE`` … ``COMMIT``, rolled back if the body raises."""
    connection.execute("BEGIN IMMEDIATE")
    try:
        yield connection
        connection.execute("COMMIT")
    except BaseException:
        if connection.in_transaction:
            connection.execute("ROLLBACK")
        raise


def _unfolded(
    connection: sqlite3.Connection, rows: Sequence[tuple[bytes, bytes, bytes]]
) -> Sequence[tuple[bytes, bytes, bytes]]:
    """The rows that a key's fold marks do not refuse (`gnomon.online.fold`): replays of folded
    events are left out."""
    from gnomon.online.fold import marks_key_of

    wanted = sorted(
        {m for key, _, _ in rows if isinstance(key, bytes) and (m := marks_key_of(key)) is not None}
    )
    marks: dict[bytes, bytes] = {}
    for chunk in _chunks(wanted):
        marks.update(
            connection.execute(f"SELECT key, value FROM kv WHERE key IN ({_in_list(len(chunk))})", chunk)
        )
    if not marks:
        return rows
    from gnomon.online.fold import refused
    from gnomon.online.records import StreamRow

    return [
        (key, event_id, row)
        for key, event_id, row in rows
        if not refused(marks.get(marks_key_of(key) or b""), event_id, StreamRow.decode(row).ts)
    ]


@cache
def _in_list(count: int) -> str:
    return ",".join("?" * count)


@cache
def _select_values(count: int) -> str:
    return f"SELECT key, value FROM kv WHERE key IN ({_in_list(count)})"


@cache
def _select_rows(count: int) -> str:
    return f"SELECT key, row FROM rows WHERE key IN ({_in_list(count)})"


def _chunks(keys: Sequence[bytes]) -> Iterator[Sequence[bytes]]:
    for start in range(0, len(keys), CHUNK):
        yield keys[start : start + CHUNK]


class SQLiteStore(OnlineStore):
    """The online store in one SQLite file, shared safely by a stream worker and several servers.

    >>> import tempfile, pathlib
    >>> store = SQLiteStore(pathlib.Path(tempfile.mkdtemp()) / "online.db")
    >>> store.put([(b"\\x00k", b"v")])
    >>> store.get([b"\\x00k", b"missing"])
    [b'v', None]
    >>> store.add_rows([(b"k", b"0:1", b"r"), (b"k", b"0:1", b"r")], consumer="w", offsets={"0": "1"})
    True
    >>> store.get_rows([b"k"]), store.offsets("w")
    ([[b'r']], {'0': '1'})
    >>> store.close()
    """

    def __init__(
        self, path: str | Path, *, busy_timeout_ms: int = BUSY_TIMEOUT_MS, mmap_size: int = MMAP_SIZE
    ) -> None:
        self.path = Path(path).absolute()
        self.url = f"sqlite:///{self.path}"
        self._connections = SQLiteConnections(
            self.path, _SCHEMA, busy_timeout_ms=busy_timeout_ms, mmap_size=mmap_size
        )

    def __repr__(self) -> str:
        return f"SQLiteStore({str(self.path)!r})"

    def get(self, keys: Sequence[bytes]) -> list[bytes | None]:
        connection = self._connections.get()
        if len(keys) == 1:
            found = connection.execute(_GET_ONE, (keys[0],)).fetchone()
            return [found[0] if found is not None else None]
        values: dict[bytes, bytes] = {}
        for chunk in _chunks(keys):
            values.update(connection.execute(_select_values(len(chunk)), chunk).fetchall())
        return [values.get(key) for key in keys]

    def put(self, items: Sequence[tuple[bytes, bytes]]) -> None:
        if not items:
            return
        with write_transaction(self._connections.get()) as connection:
            connection.executemany(_PUT, items)

    def delete(self, keys: Sequence[bytes]) -> None:
        if not keys:
            return
        with write_transaction(self._connections.get()) as connection:
            for chunk in _chunks(keys):
                connection.execute(f"DELETE FROM kv WHERE key IN ({_in_list(len(chunk))})", chunk)
                connection.execute(f"DELETE FROM rows WHERE key IN ({_in_list(len(chunk))})", chunk)

    def add_rows(
        self,
        rows: Sequence[tuple[bytes, bytes, bytes]],
        consumer: str | None = None,
        offsets: Mapping[str, str] | None = None,
        *,
        fence: bool = False,
    ) -> bool:
        if offsets and consumer is None:
            raise ValueError("add_rows: offsets need a consumer name to be recorded under")
        if not rows and not offsets:
            return True
        from gnomon.offsets import offset_order

        with write_transaction(self._connections.get()) as connection:
            current = dict(connection.execute(_GET_OFFSETS, (consumer,)).fetchall()) if offsets else {}
            # offsets only move forward: a worker finishing an older batch after another worker
            # of its group went further must not move them back
            advanced = [
                (consumer, partition, offset)
                for partition, offset in (offsets or {}).items()
                if partition not in current or offset_order(offset) > offset_order(current[partition])
            ]
            if fence and len(advanced) < len(offsets or {}):
                return False  # a batch applied before: nothing is written
            connection.executemany(_ADD_ROW, _unfolded(connection, rows))
            connection.executemany(_SET_OFFSET, advanced)
        return True

    def get_rows(self, keys: Sequence[bytes]) -> list[list[bytes]]:
        connection = self._connections.get()
        found: dict[bytes, list[bytes]] = {}
        for chunk in _chunks(keys):
            for key, row in connection.execute(_select_rows(len(chunk)), chunk):
                found.setdefault(key, []).append(row)
        return [list(found.get(key, ())) for key in keys]

    def scan_rows(self, prefix: bytes) -> Iterator[tuple[bytes, list[tuple[bytes, bytes]]]]:
        connection = self._connections.get()
        cursor = connection.execute(
            "SELECT key, event_id, row FROM rows WHERE key >= ? AND key < ? ORDER BY key",
            (prefix, prefix + b"\xff"),
        )
        current: bytes | None = None
        found: list[tuple[bytes, bytes]] = []
        for key, event_id, row in cursor:
            if key != current:
                if current is not None:
                    yield current, found
                current, found = key, []
            found.append((event_id, row))
        if current is not None:
            yield current, found

    def get_rows_with_ids(self, keys: Sequence[bytes]) -> list[list[tuple[bytes, bytes]]]:
        connection = self._connections.get()
        found: dict[bytes, list[tuple[bytes, bytes]]] = {}
        for chunk in _chunks(keys):
            sql = f"SELECT key, event_id, row FROM rows WHERE key IN ({_in_list(len(chunk))})"
            for key, event_id, row in connection.execute(sql, chunk):
                found.setdefault(key, []).append((event_id, row))
        return [found.get(key, []) for key in keys]

    def apply_fold(
        self,
        row_key: bytes,
        fold_key: bytes,
        expected: bytes | None,
        fold: bytes,
        marks_key: bytes,
        marks: bytes,
        delete: Sequence[bytes],
    ) -> bool:
        with write_transaction(self._connections.get()) as connection:
            current = connection.execute(_GET_ONE, (fold_key,)).fetchone()
            if (current[0] if current else None) != expected:
                return False
            connection.executemany(_PUT, [(fold_key, fold), (marks_key, marks)])
            connection.executemany(
                "DELETE FROM rows WHERE key = ? AND event_id = ?",
                [(row_key, event_id) for event_id in delete],
            )
        return True

    def delete_rows(self, rows: Sequence[tuple[bytes, bytes]]) -> None:
        if not rows:
            return
        with write_transaction(self._connections.get()) as connection:
            connection.executemany("DELETE FROM rows WHERE key = ? AND event_id = ?", rows)

    def offsets(self, consumer: str) -> dict[str, str]:
        return dict(self._connections.get().execute(_GET_OFFSETS, (consumer,)).fetchall())

    def close(self) -> None:
        self._connections.close()
