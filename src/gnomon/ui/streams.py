"""What the online store and the broker say about an online GroupBy's upload and streams: how many
keys an upload wrote, and per topic how many records wait and since when (`gnomon.ui.api.freshness`).

Brokers differ in what their offsets tell: the embedded log is read from its file (read only), Redis
Streams entry ids hold the time Redis accepted each entry, and any other broker (Kafka) gives its
end offsets only.
"""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REDIS_LAG_CAP = 100_000  # entries counted per topic when a Redis stream lags (a lower bound beyond)


def count_batch_keys(store: Any, group_by: str, batch_end: int) -> int | None:
    """The number of ``batch|<group_by>|<batch_end>|<key>`` records (`gnomon.online.records`) in the
    store: a range count in SQLite, a SCAN in Redis; None for another store."""
    from gnomon.online.records import batch_key

    prefix = batch_key(group_by, batch_end, b"")
    url = str(getattr(store, "url", ""))
    if url.startswith("sqlite:///") and hasattr(store, "path"):
        # the store's kv table (`gnomon.online.stores.sqlite`), read only: keys sort as bytes
        connection = sqlite3.connect(f"file:{store.path}?mode=ro", uri=True, timeout=5)
        try:
            high = prefix[:-1] + bytes([prefix[-1] + 1])
            found = connection.execute("SELECT count(*) FROM kv WHERE key >= ? AND key < ?", (prefix, high))
            return int(found.fetchone()[0])
        except sqlite3.Error:
            return None
        finally:
            connection.close()
    if url.startswith(("redis://", "rediss://")):
        from gnomon.online.stores.redis import connect

        client = connect(url)
        try:
            pattern = re.sub(rb"([*?\[\]\\])", rb"\\\1", f"{store.namespace}:v:".encode() + prefix) + b"*"
            return sum(1 for _ in client.scan_iter(match=pattern, count=1000))
        finally:
            client.close()
    return None


@dataclass(frozen=True)
class TopicState:
    """What is known of one topic of a GroupBy's stream."""

    lag: int | None  # records published and not applied
    last_applied_ms: int | None  # when the broker accepted the last record applied
    oldest_pending_ms: int | None  # when it accepted the oldest record not applied yet


class EmbeddedLogReader:
    """Topic positions read from the embedded broker's file, read only (its documented table
    ``log(topic, offset, payload, published_at)``; see `gnomon.streaming.brokers.embedded`): one
    connection per request, opened on first use."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._connection: sqlite3.Connection | None = None

    def state(self, topic: str, committed: Mapping[str, str]) -> TopicState:
        if self._connection is None:
            if not self.path.exists():
                return TopicState(0, None, None)
            self._connection = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, timeout=5)
        done = int(committed.get("0", "-1"))
        query = self._connection.execute
        try:
            last = query('SELECT MAX("offset") FROM log WHERE topic = ?', (topic,)).fetchone()[0]
            applied = query(
                'SELECT published_at FROM log WHERE topic = ? AND "offset" = ?', (topic, done)
            ).fetchone()
            pending = query(
                'SELECT published_at FROM log WHERE topic = ? AND "offset" > ? ORDER BY "offset" LIMIT 1',
                (topic, done),
            ).fetchone()
        except sqlite3.OperationalError:  # no log table yet: nothing was ever published
            return TopicState(0, None, None)
        lag = 0 if last is None else max(int(last) - done, 0)
        return TopicState(lag, applied[0] if applied else None, pending[0] if pending else None)

    def close(self) -> None:
        if self._connection is not None:
            self._connection.close()


class RedisStreamsReader:
    """Topic positions of the Redis Streams broker: an entry id is ``<ms>-<seq>``, the ms when Redis
    accepted it (`gnomon.streaming.brokers.redis_streams`)."""

    def __init__(self, broker: Any) -> None:
        from gnomon.online.stores.redis import connect

        self.broker = broker
        self.client = connect(broker.url)

    def state(self, topic: str, committed: Mapping[str, str]) -> TopicState:
        key = self.broker.stream_key(topic)
        done = committed.get("0")
        after = f"({done}" if done else "-"
        lag = 0
        oldest: int | None = None
        start = after
        while lag < REDIS_LAG_CAP:
            entries = self.client.xrange(key, min=start, max="+", count=1000)
            if not entries:
                break
            if oldest is None:
                oldest = _entry_ms(entries[0][0])
            lag += len(entries)
            start = "(" + _text(entries[-1][0])
        return TopicState(lag, _entry_ms(done) if done else None, oldest)

    def close(self) -> None:
        self.client.close()


class OffsetsReader:
    """Any other broker (Kafka): the lag from its end offsets; no publish times."""

    def __init__(self, broker: Any) -> None:
        self.broker = broker

    def state(self, topic: str, committed: Mapping[str, str]) -> TopicState:
        from gnomon.orchestration.supervisor import lag_records

        return TopicState(lag_records(self.broker.end_offsets(topic), committed), None, None)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _entry_ms(entry_id: bytes | str) -> int:
    return int(_text(entry_id).partition("-")[0])


def topic_reader(url: str, broker: Callable[[], Any]) -> Any:
    """The reader of the positions of the broker at ``url`` (``stream:`` of gnomon.yaml; ``broker``
    opens it): embedded, Redis Streams, or by end offsets."""
    if url == "embedded" or url.startswith("embedded:///"):
        return EmbeddedLogReader(Path(broker().path))
    if url.startswith(("redis://", "rediss://")):
        return RedisStreamsReader(broker())
    return OffsetsReader(broker())
