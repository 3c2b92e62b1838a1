"""One test body per behaviour, run on every broker (embedded log, real Redis, Kafka when configured)."""

from __future__ import annotations

import multiprocessing
import sys
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from gnomon.errors import ConfigError, MissingExtraError
from gnomon.streaming.brokers import Broker, Consumer, Record, offset_order, open_broker
from gnomon.streaming.brokers.embedded import EmbeddedBroker
from gnomon.streaming.brokers.kafka import KafkaBroker, kafka_config
from gnomon.streaming.brokers.redis_streams import RedisStreamsBroker

CLAIM_IDLE_MS = 200  # the Redis test brokers treat a consumer idle this long as dead


@pytest.fixture(params=["embedded", "redis", "kafka"])
def broker(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Broker]:
    opened: Broker
    if request.param == "embedded":
        opened = EmbeddedBroker(tmp_path / "stream.db")
    elif request.param == "redis":
        opened = RedisStreamsBroker(
            request.getfixturevalue("redis_url"),
            namespace=f"test-{uuid.uuid4().hex}",
            claim_idle_ms=CLAIM_IDLE_MS,
        )
    else:
        opened = KafkaBroker(request.getfixturevalue("kafka_url"))
    yield opened
    opened.close()


@pytest.fixture
def topic() -> str:
    return f"topic-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def group() -> str:
    return f"group-{uuid.uuid4().hex[:12]}"


def patience(broker: Broker) -> float:
    """Seconds to wait for records that should come: Kafka group joins take seconds."""
    return 30.0 if isinstance(broker, KafkaBroker) else 10.0


def drain(consumer: Consumer, count: int, within_s: float) -> list[Record]:
    """Poll until ``count`` records came (or the time is up)."""
    records: list[Record] = []
    deadline = time.monotonic() + within_s
    while len(records) < count and time.monotonic() < deadline:
        records.extend(consumer.poll(max_records=count - len(records), timeout_s=0.2))
    return records


def assert_quiet(consumer: Consumer, for_s: float = 0.5) -> None:
    extra = drain(consumer, 1, for_s)
    assert extra == [], f"unexpected records: {extra}"


def payloads(records: Sequence[Record]) -> list[bytes]:
    """Payloads in publish order (each partition's records are in offset order)."""
    return [record.payload for record in sorted(records, key=lambda r: (r.partition, offset_order(r.offset)))]


def last_of_each_partition(records: Sequence[Record]) -> list[Record]:
    last: dict[str, Record] = {}
    for record in records:
        if record.partition not in last or offset_order(record.offset) > offset_order(
            last[record.partition].offset
        ):
            last[record.partition] = record
    return list(last.values())


# -- every broker -------------------------------------------------------------------------------------


def test_publish_then_consume(broker: Broker, topic: str, group: str) -> None:
    sent = [f"event {n}".encode() for n in range(7)] + [b"", b"\x00\xff binary"]
    before_ms = time.time_ns() // 1_000_000
    ids = broker.publish(topic, sent)
    assert len(ids) == len(set(ids)) == len(sent)
    consumer = broker.consumer(topic, group)
    records = drain(consumer, len(sent), patience(broker))
    assert sorted(record.event_id for record in records) == sorted(ids)
    assert {record.topic for record in records} == {topic}
    by_id = {record.event_id: record.payload for record in records}
    assert [by_id[event_id] for event_id in ids] == sent
    for partition in {record.partition for record in records}:  # offsets grow within a partition
        offsets = [offset_order(r.offset) for r in records if r.partition == partition]
        assert offsets == sorted(offsets)
    assert all(
        before_ms - 5_000 <= record.published_at_ms <= time.time_ns() // 1_000_000 + 5_000
        for record in records
    )
    consumer.close()


def test_commit_then_resume_after_restart(broker: Broker, topic: str, group: str) -> None:
    broker.publish(topic, [b"a", b"b", b"c"])
    first = broker.consumer(topic, group, name="first")
    records = drain(first, 3, patience(broker))
    first.commit(records)
    first.close()
    broker.publish(topic, [b"d", b"e"])
    second = broker.consumer(topic, group, name="second")
    assert sorted(payloads(drain(second, 2, patience(broker)))) == [b"d", b"e"]
    assert_quiet(second)
    second.close()


def test_uncommitted_records_are_delivered_again(broker: Broker, topic: str, group: str) -> None:
    broker.publish(topic, [b"a", b"b", b"c", b"d"])
    first = broker.consumer(topic, group, name="first")
    records = drain(first, 4, patience(broker))
    unprocessed = last_of_each_partition(records)
    first.commit([record for record in records if record not in unprocessed])
    first.close()
    second = broker.consumer(topic, group, name="second")
    again = drain(second, len(unprocessed), patience(broker))
    assert sorted(record.event_id for record in again) == sorted(record.event_id for record in unprocessed)
    second.commit(again)
    assert_quiet(second)
    second.close()


def test_two_groups_each_see_everything(broker: Broker, topic: str, group: str) -> None:
    sent = [str(n).encode() for n in range(20)]
    broker.publish(topic, sent)
    one, other = broker.consumer(topic, group + "-one"), broker.consumer(topic, group + "-other")
    seen_by_one = drain(one, 20, patience(broker))
    one.commit(seen_by_one)
    seen_by_other = drain(other, 20, patience(broker))
    assert sorted(payloads(seen_by_one)) == sorted(payloads(seen_by_other)) == sorted(sent)
    one.close()
    other.close()


def test_poll_respects_max_records_and_topic(broker: Broker, topic: str, group: str) -> None:
    broker.publish(topic + "-elsewhere", [b"not mine"])
    broker.publish(topic, [str(n).encode() for n in range(10)])
    consumer = broker.consumer(topic, group)
    records = drain(consumer, 1, patience(broker))  # Kafka: wait for the group join
    while len(records) < 10:
        batch = consumer.poll(max_records=3, timeout_s=patience(broker))
        assert 0 < len(batch) <= 3
        records.extend(batch)
    assert sorted(payloads(records), key=int) == [str(n).encode() for n in range(10)]
    consumer.close()


def test_poll_of_an_empty_topic_waits_for_its_timeout(broker: Broker, topic: str, group: str) -> None:
    consumer = broker.consumer(topic, group)
    started = time.monotonic()
    assert consumer.poll(timeout_s=0.3) == []
    assert 0.25 <= time.monotonic() - started < 3
    consumer.close()


def test_end_offsets(broker: Broker, topic: str) -> None:
    assert broker.end_offsets(topic) == {}
    ids = broker.publish(topic, [b"x"] * 5)
    last: dict[str, str] = {}
    for event_id in ids:
        partition, offset = event_id.split(":", 1)
        if partition not in last or offset_order(offset) > offset_order(last[partition]):
            last[partition] = offset
    assert broker.end_offsets(topic) == last


# -- embedded -----------------------------------------------------------------------------------------


def test_embedded_offsets_are_decimal_ints_from_zero(tmp_path: Path, topic: str) -> None:
    broker = EmbeddedBroker(tmp_path / "stream.db")
    assert broker.publish(topic, [b"x"] * 8) + broker.publish(topic, [b"y"] * 4) == [
        f"0:{n}" for n in range(12)
    ]
    records = broker.consumer(topic, "g").poll()
    assert [record.offset for record in records] == [str(n) for n in range(12)]
    assert broker.end_offsets(topic) == {"0": "11"}
    broker.close()


def test_embedded_commit_never_moves_back(tmp_path: Path, topic: str) -> None:
    broker = EmbeddedBroker(tmp_path / "stream.db")
    broker.publish(topic, [b"x"] * 12)
    consumer = broker.consumer(topic, "g")
    records = consumer.poll()
    consumer.commit(records[:11])
    consumer.commit(records[:2])
    assert broker.committed(topic, "g") == 10
    assert [r.offset for r in broker.consumer(topic, "g").poll()] == ["11"]
    broker.close()


def test_embedded_poll_wakes_up_on_publish(tmp_path: Path, topic: str) -> None:
    broker = EmbeddedBroker(tmp_path / "stream.db")
    consumer = broker.consumer(topic, "g")
    timer = threading.Timer(0.1, broker.publish, args=(topic, [b"late"]))
    started = time.monotonic()
    timer.start()
    records = consumer.poll(timeout_s=5)
    timer.join()
    assert [record.payload for record in records] == [b"late"]
    assert time.monotonic() - started < 1
    broker.close()


APPENDS, BATCH = 40, 5


def _append(path: str, writer: int, start: multiprocessing.synchronize.Barrier) -> None:
    broker = EmbeddedBroker(path)
    start.wait()
    for batch in range(APPENDS):
        broker.publish("shared", [f"{writer}/{batch}/{n}".encode() for n in range(BATCH)])
    broker.close()


def test_embedded_two_writer_processes_lose_nothing(tmp_path: Path) -> None:
    path = tmp_path / "stream.db"
    context = multiprocessing.get_context("spawn")
    start = context.Barrier(2)
    writers = [context.Process(target=_append, args=(str(path), n, start)) for n in range(2)]
    for writer in writers:
        writer.start()
    broker = EmbeddedBroker(path)  # reads while they write
    consumer = broker.consumer("shared", "g")
    records = drain(consumer, 2 * APPENDS * BATCH, within_s=60)
    for writer in writers:
        writer.join(timeout=60)
    assert [writer.exitcode for writer in writers] == [0, 0]
    assert [record.offset for record in records] == [str(n) for n in range(2 * APPENDS * BATCH)]
    assert sorted(record.payload for record in records) == sorted(
        f"{w}/{b}/{n}".encode() for w in range(2) for b in range(APPENDS) for n in range(BATCH)
    )
    for writer_id in range(2):  # each writer's batches stay whole and in order
        mine = [r.payload for r in records if r.payload.startswith(f"{writer_id}/".encode())]
        assert mine == [f"{writer_id}/{b}/{n}".encode() for b in range(APPENDS) for n in range(BATCH)]
    assert_quiet(consumer, 0.1)
    broker.close()


# -- Redis Streams ------------------------------------------------------------------------------------


@pytest.fixture
def redis_broker(redis_url: str) -> Iterator[RedisStreamsBroker]:
    broker = RedisStreamsBroker(redis_url, namespace=f"test-{uuid.uuid4().hex}", claim_idle_ms=CLAIM_IDLE_MS)
    yield broker
    broker.close()


def test_redis_redelivers_records_of_a_crashed_consumer(redis_broker: RedisStreamsBroker, topic: str) -> None:
    redis_broker.publish(topic, [b"a", b"b", b"c"])
    crashed = redis_broker.consumer(topic, "g", name="crashed")
    taken = crashed.poll()
    assert payloads(taken) == [b"a", b"b", b"c"]  # …and it dies before committing
    survivor = redis_broker.consumer(topic, "g", name="survivor")
    again = drain(survivor, 3, within_s=5)
    assert [record.offset for record in again] == [record.offset for record in taken]
    assert [record.published_at_ms for record in again] == [record.published_at_ms for record in taken]
    survivor.commit(again)
    time.sleep(2 * CLAIM_IDLE_MS / 1000)
    late = redis_broker.consumer(topic, "g", name="late")
    assert_quiet(late, 0.3)


def test_redis_restart_under_the_same_name_gets_its_pending_records(
    redis_broker: RedisStreamsBroker, topic: str
) -> None:
    redis_broker.publish(topic, [b"a", b"b"])
    assert payloads(redis_broker.consumer(topic, "g", name="worker-1").poll()) == [b"a", b"b"]  # then dies
    redis_broker.publish(topic, [b"c"])
    restarted = redis_broker.consumer(topic, "g", name="worker-1")
    assert payloads(restarted.poll(timeout_s=0)) == [b"a", b"b", b"c"]
    assert_quiet(restarted, 0.1)  # what it got since the restart is not "its backlog" again


def test_redis_consumer_does_not_take_back_its_own_records_in_flight(
    redis_broker: RedisStreamsBroker, topic: str
) -> None:
    redis_broker.publish(topic, [b"a", b"b"])
    consumer = redis_broker.consumer(topic, "g")
    assert len(consumer.poll()) == 2
    time.sleep(2 * CLAIM_IDLE_MS / 1000)  # its own records are now idle enough to be claimed
    assert_quiet(consumer, 0.3)


def test_redis_offsets_are_stream_ids(redis_broker: RedisStreamsBroker, topic: str) -> None:
    ids = redis_broker.publish(topic, [b"x", b"y"])
    for event_id in ids:
        partition, offset = event_id.split(":")
        milliseconds, sequence = offset.split("-")
        assert partition == "0" and milliseconds.isdigit() and sequence.isdigit()
    assert redis_broker.end_offsets(topic) == {"0": ids[-1].split(":")[1]}


def test_redis_close_leaves_the_group_when_nothing_is_pending(
    redis_broker: RedisStreamsBroker, redis_url: str, topic: str
) -> None:
    import redis

    redis_broker.publish(topic, [b"x"])
    done, busy = (
        redis_broker.consumer(topic, "g", name="done"),
        redis_broker.consumer(topic, "g", name="busy"),
    )
    done.commit(done.poll())
    redis_broker.publish(topic, [b"y"])
    assert len(busy.poll()) == 1
    done.close()
    busy.close()
    client = redis.Redis.from_url(redis_url)
    names = {info["name"] for info in client.xinfo_consumers(redis_broker.stream_key(topic), "g")}
    client.close()
    assert names == {b"busy"}  # its pending record must stay claimable


# -- URLs and extras ----------------------------------------------------------------------------------


def test_open_broker_resolves_embedded_paths(tmp_path: Path) -> None:
    default = open_broker("embedded", tmp_path)
    relative = open_broker("embedded:///logs/events.db", tmp_path)
    absolute = open_broker(f"embedded:///{tmp_path / 'abs.db'}", Path("/nonexistent-root"))
    assert isinstance(default, EmbeddedBroker) and default.path == tmp_path / "stream.db"
    assert isinstance(relative, EmbeddedBroker) and relative.path == tmp_path / "logs" / "events.db"
    assert isinstance(absolute, EmbeddedBroker) and absolute.path == tmp_path / "abs.db"
    for broker in (default, relative, absolute):
        broker.close()


def test_open_broker_opens_redis_and_kafka(redis_url: str, tmp_path: Path) -> None:
    redis_broker = open_broker(redis_url, tmp_path)
    assert isinstance(redis_broker, RedisStreamsBroker)
    redis_broker.close()
    pytest.importorskip("confluent_kafka")
    kafka = open_broker("kafka://k1:9092,k2:9092?client.rack=r1", tmp_path)  # connects lazily
    assert isinstance(kafka, KafkaBroker)
    assert kafka.config == {"bootstrap.servers": "k1:9092,k2:9092", "client.rack": "r1"}


@pytest.mark.parametrize("url", ["amqp://rabbit", "embedded://stream.db", "embedded:///", "kafka", ""])
def test_open_broker_rejects_other_urls(url: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="embedded") as raised:
        open_broker(url, tmp_path)
    assert repr(url) in str(raised.value)


def test_kafka_url_needs_hosts() -> None:
    with pytest.raises(ConfigError, match="kafka://host:port"):
        kafka_config("kafka://")


@pytest.mark.parametrize(
    ("module", "url", "extra"),
    [
        ("redis", "redis://localhost:6379/0", "redis"),
        ("confluent_kafka", "kafka://localhost:9092", "kafka"),
    ],
)
def test_missing_client_package_says_which_extra(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, module: str, url: str, extra: str
) -> None:
    monkeypatch.setitem(sys.modules, module, None)
    with pytest.raises(MissingExtraError, match=rf"pip install 'gnomon\[{extra}\]'"):
        open_broker(url, tmp_path)
