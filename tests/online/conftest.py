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
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

KAFKA_ENV = "GNOMON_TEST_KAFKA"


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def _unavailable(reason: str) -> None:
    if in_ci():
        pytest.fail(f"{reason}, and CI is set: the Redis tests must run in CI", pytrace=False)
    pytest.skip(reason)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _start_redis(server: str, directory: Path) -> tuple[subprocess.Popen[bytes], int]:
    import redis

    last_output = b""
    for _attempt in range(3):  # another process may take the probed port first
        port = _free_port()
        process = subprocess.Popen(
            [server, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", str(directory)],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        client = redis.Redis(host="127.0.0.1", port=port, socket_connect_timeout=0.2)
        deadline = time.monotonic() + 10
        while process.poll() is None and time.monotonic() < deadline:
            try:
                client.ping()
                client.close()
                return process, port
            except redis.ConnectionError:
                time.sleep(0.02)
        client.close()
        if process.poll() is None:
            process.kill()
        last_output = process.communicate()[0]
    raise RuntimeError(f"redis-server did not start: {last_output.decode(errors='replace')[-2000:]}")


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``redis://127.0.0.1:<port>/0`` of a private redis-server, stopped after the session."""
    server = shutil.which("redis-server") or next(
        (path for path in ("/usr/bin/redis-server", "/usr/local/bin/redis-server") if os.path.exists(path)),
        None)
    if server is None:
        _unavailable("redis-server is not installed")
    try:
        import redis  # noqa: F401
    except ImportError:
        _unavailable("the redis package is not installed (pip install 'gnomon[redis]')")
    assert server is not None
    process, port = _start_redis(server, tmp_path_factory.mktemp("redis"))
    try:
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        process.terminate()
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        if process.stdout is not None:
            process.stdout.close()


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
        pytest.skip(f"set {KAFKA_ENV}=host:port (or {KAFKA_ENV}=mock for librdkafka's mock cluster) "
                    "to run the Kafka tests")
    confluent_kafka = pytest.importorskip("confluent_kafka")
    if target != "mock":
        yield f"kafka://{target}"
        return
    # The mock cluster lives as long as the client that created it; its address is only logged.
    handler = _MockAddress()
    logger = logging.getLogger("gnomon.tests.kafka-mock")
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    holder: Any = confluent_kafka.Producer({"bootstrap.servers": "unused", "test.mock.num.brokers": 1,
                                            "logger": logger})
    deadline = time.monotonic() + 10
    while handler.address is None and time.monotonic() < deadline:
        holder.poll(0.1)
    if handler.address is None:
        pytest.fail("librdkafka's mock cluster did not report its address")
    # The mock coordinator ignores LeaveGroup: a short session lets the next consumer join soon.
    yield f"kafka://{handler.address}?session.timeout.ms=6000&heartbeat.interval.ms=500"
    holder.flush(1)
    logger.removeHandler(handler)
