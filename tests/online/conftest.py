"""Servers for the online store and broker tests: a private redis-server, and Kafka when asked for.

Redis: a session-wide ``redis-server`` on a free loopback port, without persistence. When it is not
installed the Redis tests are skipped — unless ``CI`` is set, where they must run, so they fail.

Kafka: only when ``GNOMON_TEST_KAFKA`` is set, to ``host:port`` of a real cluster or to ``mock`` for
librdkafka's in-process mock cluster.
"""

from __future__ import annotations

import logging
import os
import re
import time
from collections.abc import Iterator
from typing import Any

import pytest

from gnomon.testing import find_redis_server, redis_server

KAFKA_ENV = "GNOMON_TEST_KAFKA"


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def _unavailable(reason: str) -> None:
    if in_ci():
        pytest.fail(f"{reason}, and CI is set: the Redis tests must run in CI", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``redis://127.0.0.1:<port>/0`` of a private redis-server, stopped after the session."""
    if find_redis_server() is None:
        _unavailable("redis-server is not installed")
    try:
        import redis  # noqa: F401
    except ImportError:
        _unavailable("the redis package is not installed (pip install 'gnomon[redis]')")
    with redis_server(tmp_path_factory.mktemp("redis")) as url:
        yield f"{url}/0"


class _MockAddress(logging.Handler):
    address: str | None = None

    def emit(self, record: logging.LogRecord) -> None:
        found = re.search(r"replaced with (\S+)", record.getMessage())
        if found:
            self.address = found.group(1).rstrip(",")


@pytest.fixture(scope="session")
def kafka_url() -> Iterator[str]:
    """``kafka://…`` of the cluster named by ``GNOMON_TEST_KAFKA`` (skips when it is not set)."""
    target = os.environ.get(KAFKA_ENV, "").strip()
    if not target:
        pytest.skip(
            f"set {KAFKA_ENV}=host:port (or {KAFKA_ENV}=mock for librdkafka's mock cluster) "
            "to run the Kafka tests"
        )
    confluent_kafka = pytest.importorskip("confluent_kafka")
    if target != "mock":
        yield f"kafka://{target}"
        return
    # The mock cluster lives as long as the client that created it; its address is only logged.
    handler = _MockAddress()
    logger = logging.getLogger("gnomon.tests.kafka-mock")
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    holder: Any = confluent_kafka.Producer(
        {"bootstrap.servers": "unused", "test.mock.num.brokers": 1, "logger": logger}
    )
    deadline = time.monotonic() + 10
    while handler.address is None and time.monotonic() < deadline:
        holder.poll(0.1)
    if handler.address is None:
        pytest.fail("librdkafka's mock cluster did not report its address")
    # The mock coordinator ignores LeaveGroup: a short session lets the next consumer join soon.
    yield f"kafka://{handler.address}?session.timeout.ms=6000&heartbeat.interval.ms=500"
    holder.flush(1)
    logger.removeHandler(handler)
