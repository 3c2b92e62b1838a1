"""The broker interface: topics to publish to and consumer groups to read from.

Every record has an ``event_id`` unique within its topic (``partition:offset``), which the stream
worker uses to make applying a record twice harmless.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import NamedTuple


class Record(NamedTuple):
    """One message as consumed (a named tuple: a worker builds thousands per micro-batch)."""

    topic: str
    partition: str
    offset: str  # broker-specific, ordered within its partition
    payload: bytes
    published_at_ms: int  # when the broker accepted it (for freshness metrics)

    @property
    def event_id(self) -> str:
        return f"{self.partition}:{self.offset}"


class Consumer(ABC):
    """Reads a topic as a member of a consumer group."""

    @abstractmethod
    def poll(self, max_records: int = 1000, timeout_s: float = 0.5) -> list[Record]:
        """Up to ``max_records`` records not yet committed by the group (may be empty after the timeout)."""

    @abstractmethod
    def commit(self, records: Sequence[Record]) -> None:
        """Tell the broker these records are processed (so the group does not deliver them again)."""

    def pending(self) -> int:
        """How many records the group's members were given and did not commit (a broker that gives
        an uncommitted record to the next consumer at once has none to report)."""
        return 0

    def close(self) -> None:
        """Leave the group and release connections."""


class Broker(ABC):
    """A stream broker: embedded (local durable log), Redis Streams or Kafka."""

    url: str

    @abstractmethod
    def publish(self, topic: str, payloads: Sequence[bytes]) -> list[str]:
        """Append payloads to a topic; returns their event ids, in order, once durable."""

    @abstractmethod
    def consumer(self, topic: str, group: str, name: str | None = None) -> Consumer:
        """A consumer in ``group``; a new group starts at the beginning of the topic."""

    @abstractmethod
    def end_offsets(self, topic: str) -> dict[str, str]:
        """The last offset of each partition now (for --until-caught-up)."""

    def close(self) -> None:
        """Release connections."""
