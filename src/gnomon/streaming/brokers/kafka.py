"""The Kafka broker (``kafka://host:port``) through confluent-kafka.

URL: ``kafka://host1:9092[,host2:9092…][?option=value&…]``; the hosts become ``bootstrap.servers`` and
every query option is passed to librdkafka as is (``?security.protocol=SSL&sasl.mechanism=PLAIN``).

- ``publish`` produces with ``acks=all`` and idempotence, flushes, and returns the ``partition:offset``
  ids from the delivery reports; any failed delivery raises :class:`BrokerError`. Topics are not
  created here: create them (with the partitions you want) or let the cluster auto-create them.
- A consumer joins ``group.id`` = the group with ``enable.auto.commit=false`` and
  ``auto.offset.reset=earliest`` (a new group reads from the beginning); ``commit`` synchronously
  commits, per partition, the highest committed record's offset + 1 (Kafka's "next to read").
  Records polled and not committed are redelivered after a restart or a rebalance.
- Offsets are Kafka's, plain decimal strings; ``published_at_ms`` is the message timestamp (the time
  of acceptance when no timestamp is set).
- ``end_offsets`` gives, per partition holding records, the last offset (high watermark - 1).

``confluent_kafka`` is imported lazily through :func:`import_confluent_kafka`.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Sequence
from types import ModuleType
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from gnomon.errors import ConfigError
from gnomon.extras import require
from gnomon.streaming.brokers import BrokerError
from gnomon.streaming.brokers.base import Broker, Consumer, Record

FLUSH_TIMEOUT_S = 30.0
METADATA_TIMEOUT_S = 10.0


def import_confluent_kafka() -> ModuleType:
    """The ``confluent_kafka`` package, or a :class:`MissingExtraError` that says how to install it."""
    return require("confluent_kafka", "kafka", "the Kafka stream broker")


def kafka_config(url: str) -> dict[str, str]:
    """The librdkafka settings a ``kafka://`` URL stands for.

    >>> kafka_config("kafka://k1:9092,k2:9092?security.protocol=SSL")
    {'bootstrap.servers': 'k1:9092,k2:9092', 'security.protocol': 'SSL'}
    """
    parts = urlsplit(url)
    if parts.scheme != "kafka" or not parts.netloc:
        raise ConfigError(f"Kafka broker URL {url!r} is invalid; expected kafka://host:port[,host:port…]")
    return {"bootstrap.servers": parts.netloc, **dict(parse_qsl(parts.query))}


class KafkaBroker(Broker):
    """Publishes with one shared idempotent producer; each consumer is its own Kafka consumer."""

    def __init__(self, url: str, *, flush_timeout_s: float = FLUSH_TIMEOUT_S) -> None:
        self.url = url
        self.config = kafka_config(url)
        self.flush_timeout_s = flush_timeout_s
        self._kafka = import_confluent_kafka()
        self._producer: Any = None
        self._metadata: Any = None

    def __repr__(self) -> str:
        return f"KafkaBroker({self.url!r})"

    def publish(self, topic: str, payloads: Sequence[bytes]) -> list[str]:
        if not payloads:
            return []
        if self._producer is None:
            self._producer = self._kafka.Producer({**self.config, "acks": "all", "enable.idempotence": True})
        producer = self._producer
        ids: list[str | None] = [None] * len(payloads)
        failures: list[str] = []

        def delivered(index: int, error: Any, message: Any) -> None:
            if error is not None:
                failures.append(str(error))
            else:
                ids[index] = f"{message.partition()}:{message.offset()}"

        for index, payload in enumerate(payloads):
            while True:
                try:
                    producer.produce(
                        topic,
                        value=payload,
                        on_delivery=lambda error, message, index=index: delivered(index, error, message),
                    )
                    break
                except BufferError:  # the local queue is full: let deliveries drain it
                    producer.poll(0.1)
        remaining = producer.flush(self.flush_timeout_s)
        if failures or remaining or None in ids:
            reason = failures[0] if failures else f"{remaining} not delivered within {self.flush_timeout_s}s"
            raise BrokerError(
                f"publishing {len(payloads)} records to Kafka topic {topic!r} at {self.url} failed: {reason}"
            )
        return [event_id for event_id in ids if event_id is not None]

    def consumer(self, topic: str, group: str, name: str | None = None) -> KafkaConsumer:
        return KafkaConsumer(self._kafka, self.config, topic, group, name)

    def end_offsets(self, topic: str) -> dict[str, str]:
        if self._metadata is None:
            # Never subscribes nor commits, so this group id leaves nothing on the cluster.
            self._metadata = self._kafka.Consumer(
                {
                    **self.config,
                    "group.id": f"gnomon-metadata-{uuid.uuid4().hex}",
                    "enable.auto.commit": False,
                }
            )
        metadata = self._metadata.list_topics(topic, timeout=METADATA_TIMEOUT_S).topics.get(topic)
        if metadata is None or metadata.error is not None:
            return {}
        result: dict[str, str] = {}
        for partition in sorted(metadata.partitions):
            low, high = self._metadata.get_watermark_offsets(
                self._kafka.TopicPartition(topic, partition), timeout=METADATA_TIMEOUT_S
            )
            if high > low:
                result[str(partition)] = str(high - 1)
        return result

    def close(self) -> None:
        if self._producer is not None:
            self._producer.flush(self.flush_timeout_s)
            self._producer = None
        if self._metadata is not None:
            self._metadata.close()
            self._metadata = None


class KafkaConsumer(Consumer):
    """A Kafka consumer subscribed to one topic, committing by hand."""

    def __init__(
        self, kafka: ModuleType, config: dict[str, str], topic: str, group: str, name: str | None = None
    ) -> None:
        self.topic, self.group, self.name = topic, group, name
        self._kafka = kafka
        settings = {**config, "group.id": group, "enable.auto.commit": False, "auto.offset.reset": "earliest"}
        if name:
            settings["client.id"] = name
        self._consumer = kafka.Consumer(settings)
        self._consumer.subscribe([topic])
        self._ignored = {
            kafka.KafkaError._PARTITION_EOF,
            kafka.KafkaError.UNKNOWN_TOPIC_OR_PART,
            kafka.KafkaError._UNKNOWN_TOPIC,
        }

    def __repr__(self) -> str:
        return f"KafkaConsumer(topic={self.topic!r}, group={self.group!r})"

    def poll(self, max_records: int = 1000, timeout_s: float = 0.5) -> list[Record]:
        records: list[Record] = []
        for message in self._consumer.consume(num_messages=max_records, timeout=max(timeout_s, 0.0)):
            error = message.error()
            if error is not None:
                # librdkafka recovers from non-fatal errors (broker restarts, rebalances) by itself.
                if error.fatal() and error.code() not in self._ignored:
                    raise BrokerError(
                        f"Kafka consumer of topic {self.topic!r} (group {self.group!r}) failed: {error}"
                    )
                continue
            kind, timestamp = message.timestamp()
            if kind == self._kafka.TIMESTAMP_NOT_AVAILABLE or timestamp < 0:
                timestamp = time.time_ns() // 1_000_000
            records.append(
                Record(
                    message.topic(),
                    str(message.partition()),
                    str(message.offset()),
                    message.value() or b"",
                    int(timestamp),
                )
            )
        return records

    def commit(self, records: Sequence[Record]) -> None:
        last: dict[tuple[str, int], int] = {}
        for record in records:
            key = (record.topic, int(record.partition))
            last[key] = max(last.get(key, -1), int(record.offset))
        if last:
            self._consumer.commit(
                offsets=[
                    self._kafka.TopicPartition(topic, partition, offset + 1)
                    for (topic, partition), offset in last.items()
                ],
                asynchronous=False,
            )

    def close(self) -> None:
        self._consumer.close()
