"""Stream brokers, opened from the ``stream`` URL of ``gnomon.yaml``.

Accepted URLs:

- ``embedded`` — a durable local log in ``<repo>/stream.db`` (the default);
  ``embedded:///relative/path.db`` (relative to the repo) or ``embedded:////absolute/path.db``;
- ``redis://host:port/db`` (``rediss://`` for TLS) — Redis Streams;
- ``kafka://host:port[,host:port…][?librdkafka.option=value…]`` — Kafka.

Offsets are strings whose order is broker-specific: decimal ints for embedded and Kafka,
``"<ms>-<seq>"`` stream ids for Redis. Compare them with :func:`offset_order`, never as strings.

Broker modules are imported only when their URL is opened, so ``redis`` and ``confluent-kafka`` stay
optional.
"""

from __future__ import annotations

from pathlib import Path

from gnomon.errors import ConfigError, GnomonError
from gnomon.offsets import offset_order
from gnomon.streaming.brokers.base import Broker, Consumer, Record

__all__ = ["Broker", "BrokerError", "Consumer", "Record", "offset_order", "open_broker"]

DEFAULT_EMBEDDED_FILE = "stream.db"
_ACCEPTED = (
    "embedded, embedded:///relative/path.db, embedded:////absolute/path.db, "
    "redis://host:port/db or kafka://host:port"
)


class BrokerError(GnomonError, RuntimeError):
    """The broker refused or lost a publish, or a consumer hit an unrecoverable error."""


def open_broker(url: str, root: Path) -> Broker:
    """The broker at ``url``; relative embedded paths are relative to the repo ``root``.

    >>> import tempfile
    >>> root = Path(tempfile.mkdtemp())
    >>> broker = open_broker("embedded", root)
    >>> broker.path == (root / "stream.db").absolute()
    True
    >>> broker.close()
    >>> open_broker("amqp://rabbit", root)
    Traceback (most recent call last):
    ...
    gnomon.errors.ConfigError: stream broker URL 'amqp://rabbit' is not supported; expected embedded, embedded:///relative/path.db, embedded:////absolute/path.db, redis://host:port/db or kafka://host:port
    """
    if url == "embedded" or url.startswith("embedded:///"):
        from gnomon.streaming.brokers.embedded import EmbeddedBroker

        path = url[len("embedded:///") :] if url != "embedded" else DEFAULT_EMBEDDED_FILE
        if not path or path.endswith("/"):
            raise ConfigError(f"stream broker URL {url!r} names no log file; expected {_ACCEPTED}")
        return EmbeddedBroker(Path(root) / Path(path).expanduser())
    if url.startswith(("redis://", "rediss://")):
        from gnomon.streaming.brokers.redis_streams import RedisStreamsBroker

        return RedisStreamsBroker(url)
    if url.startswith("kafka://"):
        from gnomon.streaming.brokers.kafka import KafkaBroker

        return KafkaBroker(url)
    raise ConfigError(f"stream broker URL {url!r} is not supported; expected {_ACCEPTED}")
