"""The Redis Streams broker (``redis://host:port/db``, ``rediss://`` for TLS).

- A topic is the stream ``gnomon:topic:<topic>``; each record is an entry with one field ``p`` holding
  the payload, appended with XADD (a publish is one MULTI/EXEC). Nothing is trimmed.
- One partition, ``"0"``; **the offset is the stream entry id** (``"1700000000000-0"``), ordered by
  ``(ms, seq)`` as ints — not as strings. ``published_at_ms`` is the id's ms part.
- Consumer groups are Redis consumer groups (created with ``XGROUP CREATE … 0 MKSTREAM``, so a new
  group starts at the beginning). ``poll`` is XREADGROUP (blocking up to the timeout); ``commit`` is
  XACK.
- Redelivery: a record polled but never committed stays pending. A consumer delivers first its own
  pending records (a restart under the same name), then records claimed with XAUTOCLAIM from any
  consumer of the group that left them idle longer than ``claim_idle_ms`` (a crashed worker) — on
  start and again at most once per ``claim_idle_ms`` — then new records. Records it has returned
  and not yet committed are never claimed back from itself.
- ``close`` removes the consumer from the group when it holds no pending records, so the group does
  not accumulate dead names.
"""

from __future__ import annotations

import os
import socket
import time
import uuid
from collections import deque
from collections.abc import Sequence
from typing import Any

from gnomon.online.stores.redis import connect, import_redis
from gnomon.streaming.brokers.base import Broker, Consumer, Record

PARTITION = "0"
PAYLOAD_FIELD = b"p"
CLAIM_IDLE_MS = 5_000  # a pending record idle this long belongs to a dead consumer
PUBLISH_CHUNK = 1_000


def published_at_ms(entry_id: str) -> int:
    """The ms part of a stream entry id: when Redis accepted the entry.

    >>> published_at_ms("1700000000000-3")
    1700000000000
    """
    return int(entry_id.partition("-")[0])


class RedisStreamsBroker(Broker):
    """Topics as Redis streams, consumer groups as Redis consumer groups."""

    def __init__(self, url: str, *, namespace: str = "gnomon", claim_idle_ms: int = CLAIM_IDLE_MS) -> None:
        self.url = url
        self.namespace = namespace
        self.claim_idle_ms = claim_idle_ms
        self._client = connect(url)

    def __repr__(self) -> str:
        return f"RedisStreamsBroker({self.url!r}, namespace={self.namespace!r})"

    def stream_key(self, topic: str) -> str:
        return f"{self.namespace}:topic:{topic}"

    def publish(self, topic: str, payloads: Sequence[bytes]) -> list[str]:
        key = self.stream_key(topic)
        ids: list[str] = []
        for start in range(0, len(payloads), PUBLISH_CHUNK):
            with self._client.pipeline(transaction=True) as pipe:
                for payload in payloads[start : start + PUBLISH_CHUNK]:
                    pipe.xadd(key, {PAYLOAD_FIELD: payload})
                ids.extend(f"{PARTITION}:{entry_id.decode()}" for entry_id in pipe.execute())
        return ids

    def consumer(self, topic: str, group: str, name: str | None = None) -> RedisStreamsConsumer:
        name = name or f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        return RedisStreamsConsumer(
            self._client, self.stream_key(topic), topic, group, name, self.claim_idle_ms
        )

    def end_offsets(self, topic: str) -> dict[str, str]:
        """``{"0": id of the last entry}``, or ``{}`` while the stream is empty."""
        last = self._client.xrevrange(self.stream_key(topic), count=1)
        return {PARTITION: last[0][0].decode()} if last else {}

    def close(self) -> None:
        self._client.close()


class RedisStreamsConsumer(Consumer):
    """One named member of a Redis consumer group reading one stream."""

    def __init__(self, client: Any, key: str, topic: str, group: str, name: str, claim_idle_ms: int) -> None:
        self.topic, self.group, self.name = topic, group, name
        self.claim_idle_ms = claim_idle_ms
        self._client, self._key = client, key
        # The hot read skips redis-py's reply conversion (a dict per entry): entries stay
        # [id, [field, value, ...]] as the server sent them.
        self._raw = import_redis().Redis(connection_pool=client.connection_pool)
        self._raw.set_response_callback("XREADGROUP", _as_sent)
        try:
            client.xgroup_create(key, group, id="0", mkstream=True)
        except import_redis().ResponseError as error:
            if "BUSYGROUP" not in str(error):  # the group exists already: join it
                raise
        self._own_cursor: str | None = "0"  # where re-reading our own pending records stands
        self._claim_cursor: str | None = "0-0"  # None between XAUTOCLAIM rounds
        self._last_claim = 0.0
        self._in_flight: set[str] = set()  # returned and not committed
        self._claimed: deque[Record] = deque()

    def __repr__(self) -> str:
        return f"RedisStreamsConsumer(topic={self.topic!r}, group={self.group!r}, name={self.name!r})"

    def poll(self, max_records: int = 1000, timeout_s: float = 0.5) -> list[Record]:
        records = self._own_pending(max_records)
        if len(records) < max_records:
            self._claim(max_records - len(records))
            while self._claimed and len(records) < max_records:
                records.append(self._claimed.popleft())
        if len(records) < max_records:
            block_ms = int(timeout_s * 1000) if not records else 0
            reply = self._raw.xreadgroup(
                self.group,
                self.name,
                {self._key: ">"},
                count=max_records - len(records),
                block=block_ms if block_ms > 0 else None,
            )
            records.extend(self._records(_raw_entries(reply)))
        self._in_flight.update(record.offset for record in records)
        return records

    def commit(self, records: Sequence[Record]) -> None:
        ids = [record.offset for record in records if record.topic == self.topic]
        if ids:
            self._client.xack(self._key, self.group, *ids)
            self._in_flight.difference_update(ids)

    def pending(self) -> int:
        return int(self._client.xpending(self._key, self.group)["pending"])

    def close(self) -> None:
        summary = self._client.xpending_range(
            self._key, self.group, min="-", max="+", count=1, consumername=self.name
        )
        if not summary:
            self._client.xgroup_delconsumer(self._key, self.group, self.name)

    def _own_pending(self, max_records: int) -> list[Record]:
        """Records delivered to this consumer name earlier and never acknowledged."""
        if self._own_cursor is None:
            return []
        reply = self._client.xreadgroup(
            self.group, self.name, {self._key: self._own_cursor}, count=max_records
        )
        entries = _entries(reply)
        # A short page means the backlog is read: later pages would repeat what this consumer
        # receives from now on, since that becomes pending under its name too.
        self._own_cursor = entries[-1][0].decode() if len(entries) >= max_records else None
        return self._records([entry for entry in entries if entry[0].decode() not in self._in_flight])

    def _claim(self, wanted: int) -> None:
        """XAUTOCLAIM records left idle by other (dead) consumers, continuing the current round."""
        if self._claimed:
            return
        now = time.monotonic()
        if self._claim_cursor is None:
            if now - self._last_claim < self.claim_idle_ms / 1000:
                return
            self._claim_cursor = "0-0"
        reply = self._client.xautoclaim(
            self._key,
            self.group,
            self.name,
            self.claim_idle_ms,
            start_id=self._claim_cursor,
            count=max(wanted, 1),
        )
        cursor, entries = reply[0], reply[1]
        cursor = cursor.decode() if isinstance(cursor, bytes) else str(cursor)
        if cursor == "0-0":
            self._claim_cursor, self._last_claim = None, now
        else:
            self._claim_cursor = cursor
        fresh = [
            entry for entry in entries if entry[0] is not None and entry[0].decode() not in self._in_flight
        ]
        self._claimed.extend(self._records(fresh))

    def _records(self, entries: list[Any]) -> list[Record]:
        records: list[Record] = []
        trimmed: list[bytes] = []
        topic, make, append = self.topic, Record._make, records.append
        for entry_id, fields in entries:
            if entry_id is None:
                continue
            if not fields:  # the entry was deleted from the stream while pending
                trimmed.append(entry_id)
                continue
            offset = entry_id.decode()
            payload = fields[1] if type(fields) is list and fields[0] == PAYLOAD_FIELD else _payload(fields)
            append(make((topic, PARTITION, offset, payload, published_at_ms(offset))))
        if trimmed:
            self._client.xack(self._key, self.group, *trimmed)
        return records


def _as_sent(response: Any, **options: Any) -> Any:
    return response


def _payload(fields: Any) -> bytes:
    """The payload field of an entry's fields: a dict (redis-py's conversion) or a flat list."""
    if isinstance(fields, dict):
        return fields.get(PAYLOAD_FIELD, b"")  # type: ignore[no-any-return]
    if fields[0] == PAYLOAD_FIELD:
        return fields[1]  # type: ignore[no-any-return]
    pairs: dict[bytes, bytes] = dict(zip(fields[::2], fields[1::2], strict=True))
    return pairs.get(PAYLOAD_FIELD, b"")


def _raw_entries(reply: Any) -> list[Any]:
    """The ``[[id, [field, value, ...]], …]`` of the single stream of an unconverted XREADGROUP reply:
    ``{stream: entries}`` (RESP3) or ``[[stream, entries]]`` (RESP2)."""
    if not reply:
        return []
    if isinstance(reply, dict):
        return [entry for entries in reply.values() for entry in entries]
    return [entry for _key, entries in reply for entry in entries]


def _entries(reply: Any) -> list[Any]:
    """The ``[(id, fields), …]`` of the single stream in an XREADGROUP reply (RESP2 or RESP3)."""
    if not reply:
        return []
    if isinstance(reply, dict):
        return [entry for streams in reply.values() for entry in (streams[0] if streams else [])]
    return [entry for _key, entries in reply for entry in entries]
