"""The embedded broker: a durable local log in one SQLite file (``embedded`` = ``<repo>/stream.db``).

Several processes (``gnomon push``, the HTTP server, stream workers) append to and read the file at
once; it runs in WAL mode with a busy timeout like the SQLite online store.

- ``log(topic, offset, payload, published_at)`` holds every record. Each topic has one partition,
  ``"0"``. A publish takes the write lock (``BEGIN IMMEDIATE``) and numbers its records from
  ``max(offset) + 1``, so offsets are unique, gap-free and in commit order.
- **Offsets are non-negative integers written as plain decimal strings** (``"0"``, ``"1"``, … ``"10"``),
  like Kafka's. Compare them as ints (``int(offset)``), never as strings.
- ``groups(topic, grp, offset)`` holds each consumer group's committed offset (the highest processed;
  a commit never moves it back). A new group starts at the beginning of the topic.
- ``poll`` returns records after ``max(committed offset, last offset this consumer returned)``: what
  was polled but not committed is redelivered to the next consumer of the group, not to this one.
  There is no partition assignment: a group is meant to have one active consumer at a time.
- Nothing is ever deleted from the log.

Waiting in ``poll``: a publish in the same process wakes waiting consumers at once; records from
other processes are noticed by re-querying every few milliseconds (backing off to 25 ms).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from functools import partial
from pathlib import Path

from gnomon.online.stores.sqlite import BUSY_TIMEOUT_MS, SQLiteConnections, write_transaction
from gnomon.streaming.brokers.base import Broker, Consumer, Record

PARTITION = "0"
MAX_WAIT_STEP_S = 0.025

_SCHEMA = (
    'CREATE TABLE IF NOT EXISTS log (topic TEXT, "offset" INTEGER, payload BLOB, published_at INTEGER,'
    ' PRIMARY KEY (topic, "offset")) WITHOUT ROWID',
    'CREATE TABLE IF NOT EXISTS groups (topic TEXT, grp TEXT, "offset" INTEGER,'
    " PRIMARY KEY (topic, grp)) WITHOUT ROWID",
)
_NEXT_OFFSET = 'SELECT COALESCE(MAX("offset"), -1) + 1 FROM log WHERE topic = ?'
_APPEND = 'INSERT INTO log (topic, "offset", payload, published_at) VALUES (?, ?, ?, ?)'
_LAST_OFFSET = 'SELECT MAX("offset") FROM log WHERE topic = ?'
_READ = (
    'SELECT "offset", payload, published_at FROM log WHERE topic = ?1 AND "offset" > max(?2,'
    ' COALESCE((SELECT "offset" FROM groups WHERE topic = ?1 AND grp = ?3), -1))'
    ' ORDER BY "offset" LIMIT ?4'
)
_COMMIT = (
    'INSERT INTO groups (topic, grp, "offset") VALUES (?, ?, ?) ON CONFLICT (topic, grp)'
    ' DO UPDATE SET "offset" = max("offset", excluded."offset")'
)


class EmbeddedBroker(Broker):
    """A durable, multi-process log of topics in one SQLite file.

    >>> import tempfile, pathlib
    >>> broker = EmbeddedBroker(pathlib.Path(tempfile.mkdtemp()) / "stream.db")
    >>> broker.publish("clicks", [b"a", b"b"])
    ['0:0', '0:1']
    >>> consumer = broker.consumer("clicks", group="worker")
    >>> [record.payload for record in consumer.poll()]
    [b'a', b'b']
    >>> broker.end_offsets("clicks")
    {'0': '1'}
    >>> broker.close()
    """

    def __init__(self, path: str | Path, *, busy_timeout_ms: int = BUSY_TIMEOUT_MS) -> None:
        self.path = Path(path).absolute()
        self.url = f"embedded:///{self.path}"
        self._connections = SQLiteConnections(self.path, _SCHEMA, busy_timeout_ms=busy_timeout_ms)
        self._published = threading.Condition()
        self._generation = 0  # bumped by every publish in this process, to wake waiting consumers

    def __repr__(self) -> str:
        return f"EmbeddedBroker({str(self.path)!r})"

    def publish(self, topic: str, payloads: Sequence[bytes]) -> list[str]:
        if not payloads:
            return []
        with write_transaction(self._connections.get()) as connection:
            now_ms = time.time_ns() // 1_000_000  # under the lock: waiting for it is not publishing
            first = int(connection.execute(_NEXT_OFFSET, (topic,)).fetchone()[0])
            connection.executemany(
                _APPEND, [(topic, first + index, payload, now_ms) for index, payload in enumerate(payloads)]
            )
        with self._published:
            self._generation += 1
            self._published.notify_all()
        return [f"{PARTITION}:{first + index}" for index in range(len(payloads))]

    def consumer(self, topic: str, group: str, name: str | None = None) -> EmbeddedConsumer:
        return EmbeddedConsumer(self, topic, group, name)

    def end_offsets(self, topic: str) -> dict[str, str]:
        """``{"0": last offset}``, or ``{}`` while the topic has no records."""
        last = self._connections.get().execute(_LAST_OFFSET, (topic,)).fetchone()[0]
        return {} if last is None else {PARTITION: str(last)}

    def committed(self, topic: str, group: str) -> int | None:
        """The offset ``group`` last committed on ``topic`` (None before its first commit)."""
        found = (
            self._connections.get()
            .execute('SELECT "offset" FROM groups WHERE topic = ? AND grp = ?', (topic, group))
            .fetchone()
        )
        return None if found is None else int(found[0])

    def close(self) -> None:
        self._connections.close()

    def _published_since(self, generation: int) -> bool:
        return self._generation != generation


class EmbeddedConsumer(Consumer):
    """Reads one topic of an :class:`EmbeddedBroker` for a consumer group."""

    def __init__(self, broker: EmbeddedBroker, topic: str, group: str, name: str | None = None) -> None:
        self.broker, self.topic, self.group, self.name = broker, topic, group, name
        self._returned = -1  # the highest offset this consumer has returned

    def __repr__(self) -> str:
        return f"EmbeddedConsumer(topic={self.topic!r}, group={self.group!r})"

    def poll(self, max_records: int = 1000, timeout_s: float = 0.5) -> list[Record]:
        deadline = time.monotonic() + max(timeout_s, 0.0)
        step = 0.001
        published = self.broker._published
        while True:
            generation = self.broker._generation
            records = self._read(max_records)
            remaining = deadline - time.monotonic()
            if records or remaining <= 0:
                return records
            with published:
                published.wait_for(
                    partial(self.broker._published_since, generation), timeout=min(step, remaining)
                )
            step = min(step * 2, MAX_WAIT_STEP_S)

    def _read(self, max_records: int) -> list[Record]:
        connection = self.broker._connections.get()
        found = connection.execute(_READ, (self.topic, self._returned, self.group, max_records)).fetchall()
        if found:
            self._returned = found[-1][0]
        return [
            Record(self.topic, PARTITION, str(offset), payload, published_at)
            for offset, payload, published_at in found
        ]

    def commit(self, records: Sequence[Record]) -> None:
        mine = [int(record.offset) for record in records if record.topic == self.topic]
        if not mine:
            return
        connection = self.broker._connections.get()
        connection.execute(_COMMIT, (self.topic, self.group, max(mine)))
