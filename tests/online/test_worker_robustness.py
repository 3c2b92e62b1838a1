"""The stream worker under stress (SPEC §5, §6): SIGKILL mid-consume, duplicate delivery, two workers in
one consumer group, malformed events, late events. The yardstick is always the offline engine:
online values at q >= batch end equal ``Project.training_data`` at q.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from gnomon import Project
from gnomon.compile.features import stream_id
from gnomon.online.records import dead_letter_key, entity_key, rows_key
from gnomon.streaming.brokers.base import Record
from gnomon.streaming.worker import StreamWorker, consumer_group

from .helpers import (
    BATCH_END,
    DAY,
    END,
    GROUP_BY,
    HOUR,
    ITEM_GROUP_BY,
    JOIN,
    TOPIC,
    UPLOAD_DS,
    USERS,
    assert_online_equals_offline,
    build_repo,
    make_events,
    publish,
    run_gnomon,
    subprocess_env,
    write_warehouse,
)

KEYS = [{"user": u, "item": i} for u, i in [("u1", "a"), ("u2", "b"), ("u3", "c"), ("u4", "d"), ("u1", "e")]]
QUERIES = [
    BATCH_END,
    BATCH_END + 1,
    BATCH_END + 7 * HOUR + 123,
    BATCH_END + DAY,
    BATCH_END + DAY + 13 * HOUR,
    END - 1,
]

# A worker that runs until killed, in small micro-batches so that a kill lands in the middle.
WORKER = (
    "import sys; from gnomon import Project; "
    "Project(sys.argv[1]).stream(sys.argv[2], max_records=int(sys.argv[3]), poll_timeout_s=0.05)"
)


@pytest.fixture(params=["sqlite", "redis"])
def store_url(request: pytest.FixtureRequest) -> str:
    if request.param == "sqlite":
        return "sqlite:///online.db"
    return _fresh_redis_db(request.getfixturevalue("redis_url"), 7)


def _fresh_redis_db(url: str, db: int) -> str:
    import redis

    fresh = f"{url.rsplit('/', 1)[0]}/{db}"
    client = redis.Redis.from_url(fresh)
    client.flushdb()
    client.close()
    return fresh


def start_worker(repo: Path, name: str, max_records: int = 10) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", WORKER, str(repo), name, str(max_records)],
        env=subprocess_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def stop(process: subprocess.Popen[str], sig: int = signal.SIGKILL) -> None:
    if process.poll() is None:
        process.send_signal(sig)
    process.communicate(timeout=20)


def wait_for(
    condition: Callable[[], bool],
    timeout: float,
    what: str,
    processes: tuple[subprocess.Popen[str], ...] = (),
) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        for process in processes:
            if process.poll() is not None:
                out, err = process.communicate()
                raise AssertionError(
                    f"worker exited with {process.returncode} while waiting for {what}: {err[-3000:]}"
                )
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


def default_group(project: Project, group_by: str) -> str:
    return consumer_group(project.plan.group_bys[group_by], TOPIC)


def stored_offset(project: Project, group_by: str) -> int:
    store = project.store()
    try:
        offset = store.offsets(default_group(project, group_by)).get("0")
    finally:
        store.close()
    return -1 if offset is None else int(offset)


def broker_committed(project: Project, group_by: str) -> int:
    broker = project.broker()
    try:
        offset = broker.committed(TOPIC, default_group(project, group_by))
    finally:
        broker.close()
    return -1 if offset is None else int(offset)


def stored_rows_per_user(project: Project) -> dict[str, int]:
    store = project.store()
    try:
        prefix = stream_id(project.plan.group_bys[GROUP_BY])
        found = store.get_rows([rows_key(prefix, entity_key([u])) for u in USERS])
    finally:
        store.close()
    return {u: len(rows) for u, rows in zip(USERS, found, strict=True)}


def dead_letters(project: Project, topic: str = TOPIC) -> list[dict[str, Any]]:
    store = project.store()
    try:
        [rows] = store.get_rows([dead_letter_key(topic)])
    finally:
        store.close()
    return [json.loads(row) for row in rows]


def fetch_group_by(project: Project, users: list[str], q: int) -> list[Any]:
    store = project.store()
    try:
        return project.fetcher(store).fetch_group_by(GROUP_BY, [{"user": u} for u in users], at=q)  # type: ignore[no-any-return]
    finally:
        store.close()


@pytest.fixture
def uploaded(tmp_path: Path) -> Iterator[tuple[Project, list[dict[str, Any]]]]:
    """A SQLite repo with every event in the warehouse and day UPLOAD_DS uploaded; nothing streamed."""
    events = make_events(1500, seed=21)
    project = build_repo(tmp_path / "repo", events)
    project.upload(JOIN, UPLOAD_DS)
    yield project, [e for e in events if e["ts"] >= BATCH_END]


# ------------------------------------------------------------------ (a) SIGKILL


def test_sigkill_mid_consume_then_restart_loses_and_doubles_nothing(
    uploaded: tuple[Project, list[Any]],
) -> None:
    project, streamed = uploaded
    repo = project.root
    batches = [streamed[i : i + 50] for i in range(0, len(streamed), 50)]
    assert len(batches) >= 10
    published = unfinished = 0
    for round_ in range(2):  # kill twice, each time after part of what is published has been processed
        workers = [start_worker(repo, GROUP_BY), start_worker(repo, ITEM_GROUP_BY)]
        upto = (round_ + 1) * len(batches) // 3
        for batch in batches[published:upto]:
            publish(project, batch)
        target = sum(len(b) for b in batches[:upto]) - 1
        threshold = (sum(len(b) for b in batches[:published]) + target) // 2
        published = upto
        wait_for(
            lambda threshold=threshold: (
                min(stored_offset(project, g) for g in (GROUP_BY, ITEM_GROUP_BY)) >= threshold
            ),
            30,
            "the workers to process some events",
            tuple(workers),
        )
        for worker in workers:
            stop(worker, signal.SIGKILL)
            assert worker.returncode == -signal.SIGKILL
        unfinished += (
            stored_offset(project, GROUP_BY) < target or stored_offset(project, ITEM_GROUP_BY) < target
        )
    assert unfinished, "the workers were never killed while they had events left to process"
    for batch in batches[published:]:
        publish(project, batch)
    result = run_gnomon("stream", JOIN, "--repo", str(repo), "--until-caught-up")
    assert result.returncode == 0, result.stderr
    assert GROUP_BY in result.stdout and ITEM_GROUP_BY in result.stdout
    assert stored_offset(project, GROUP_BY) == len(streamed) - 1
    assert stored_offset(project, ITEM_GROUP_BY) == len(streamed) - 1
    # each event stored exactly once, under its key
    assert stored_rows_per_user(project) == dict(Counter(e["user_id"] for e in streamed))
    assert_online_equals_offline(project, KEYS, QUERIES)


# ------------------------------------------------------------------ (b) duplicate delivery


def test_duplicate_delivery_changes_nothing(tmp_path: Path, store_url: str) -> None:
    events = make_events(600, seed=5)
    project = build_repo(tmp_path / "repo", events, online=store_url)
    project.upload(JOIN, UPLOAD_DS)
    streamed = [e for e in events if e["ts"] >= BATCH_END]
    publish(project, [*streamed, b"{not json"], batch=1000)
    plan = project.plan
    store, broker = project.store(), project.broker()
    try:
        workers = [StreamWorker(plan.group_bys[g], store, broker) for g in (GROUP_BY, ITEM_GROUP_BY)]
        records = [worker.consumer.poll(5000, 1.0) for worker in workers]
        assert all(len(r) == len(streamed) + 1 for r in records)
        for worker, batch in zip(workers, records, strict=True):
            worker.process(batch)
        fetcher = project.fetcher(store)
        before = [fetcher.fetch_join(JOIN, KEYS, at=q) for q in QUERIES]
        letters_before = sorted(store.get_rows([dead_letter_key(TOPIC)])[0])
        rows_before = stored_rows_per_user(project)
        # the very same Record objects again, then copies of them, then in another order and split
        for worker, batch in zip(workers, records, strict=True):
            worker.process(batch)
            worker.process(
                [Record(r.topic, r.partition, r.offset, r.payload, r.published_at_ms + 5) for r in batch]
            )
            worker.process(batch[::-1][: len(batch) // 2])
            worker.process(batch[len(batch) // 3 :])
        # a worker of another consumer group re-reads the whole topic
        replay = StreamWorker(plan.group_bys[GROUP_BY], store, broker, group="replay")
        replay.run(until_caught_up=True)
        assert replay.stats.rows == len(streamed)
        fetcher = project.fetcher(store)
        after = [fetcher.fetch_join(JOIN, KEYS, at=q) for q in QUERIES]
        assert after == before
        assert sorted(store.get_rows([dead_letter_key(TOPIC)])[0]) == letters_before
        assert len(letters_before) == 1
        assert stored_rows_per_user(project) == rows_before == dict(Counter(e["user_id"] for e in streamed))
    finally:
        store.close()
        broker.close()
    assert_online_equals_offline(project, KEYS, QUERIES)


# ------------------------------------------------------------------ (c) two workers, one group


def test_two_concurrent_workers_in_one_group(uploaded: tuple[Project, list[Any]]) -> None:
    project, streamed = uploaded
    repo = project.root
    workers = [
        start_worker(repo, name, max_records=15)
        for name in (GROUP_BY, GROUP_BY, ITEM_GROUP_BY, ITEM_GROUP_BY)
    ]
    try:
        for start in range(0, len(streamed), 40):
            publish(project, streamed[start : start + 40])
            time.sleep(0.005)
        # the broker's committed offset of a group only moves forward, and follows the store write
        wait_for(
            lambda: min(broker_committed(project, g) for g in (GROUP_BY, ITEM_GROUP_BY)) >= len(streamed) - 1,
            30,
            "the group to reach the end of the topic",
            tuple(workers),
        )
    finally:
        for worker in workers:
            stop(worker, signal.SIGTERM)
    assert stored_rows_per_user(project) == dict(Counter(e["user_id"] for e in streamed))
    assert_online_equals_offline(project, KEYS, QUERIES)


def test_until_caught_up_terminates_after_two_workers_of_one_group_interleaved(
    tmp_path: Path, store_url: str
) -> None:
    """Two workers of one group: the one that lags records an older offset last. A later
    ``--until-caught-up`` run (the broker has nothing left to deliver to the group) must still stop."""
    events = make_events(200, seed=8)
    project = build_repo(tmp_path / "repo", events, online=store_url)
    project.upload(GROUP_BY, UPLOAD_DS)
    streamed = [e for e in events if e["ts"] >= BATCH_END]
    publish(project, streamed)
    group_by = project.plan.group_bys[GROUP_BY]
    store, broker = project.store(), project.broker()
    try:
        fast, slow = StreamWorker(group_by, store, broker), StreamWorker(group_by, store, broker)
        stale = slow.consumer.poll(10, 1.0)  # the slow worker takes a batch ...
        while records := fast.consumer.poll(10, 0.05):  # ... the fast one does everything ...
            fast.process(records)
        slow.process(stale)  # ... and the slow one finishes its old batch last
        assert broker_committed(project, GROUP_BY) == len(streamed) - 1
        rerun = StreamWorker(group_by, store, broker)
        started = time.monotonic()
        rerun.run(until_caught_up=True, poll_timeout_s=0.05, stop=lambda: time.monotonic() - started > 2.5)
        elapsed = time.monotonic() - started
        assert elapsed < 2, f"--until-caught-up did not stop (store offsets {store.offsets(rerun.group)})"
    finally:
        store.close()
        broker.close()


def test_stream_of_a_join_feeds_every_group_by_without_until_caught_up(tmp_path: Path) -> None:
    """`gnomon stream JOIN` runs "every streamed GroupBy of a Join" — also when it runs forever."""
    events = make_events(300, seed=9)
    project = build_repo(tmp_path / "repo", events)
    project.upload(JOIN, UPLOAD_DS)
    streamed = [e for e in events if e["ts"] >= BATCH_END]
    publish(project, streamed)
    worker = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "from gnomon.cli import main; main()",
            "stream",
            JOIN,
            "--repo",
            str(project.root),
        ],
        env=subprocess_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_for(
            lambda: stored_offset(project, GROUP_BY) >= len(streamed) - 1,
            30,
            f"{GROUP_BY} to be streamed",
            (worker,),
        )
        deadline = time.monotonic() + 3
        while stored_offset(project, ITEM_GROUP_BY) < len(streamed) - 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert stored_offset(project, ITEM_GROUP_BY) == len(streamed) - 1, (
            f"`gnomon stream {JOIN}` (no --until-caught-up) never streamed {ITEM_GROUP_BY}"
        )
    finally:
        stop(worker, signal.SIGTERM)


# ------------------------------------------------------------------ (d) malformed events


def good(user: str, ts: int, price: float | None = 1.0, qty: int = 1, item: str = "zz") -> dict[str, Any]:
    return {"user_id": user, "item_id": item, "price": price, "qty": qty, "ts": ts}


def test_malformed_events_are_dead_letters_and_the_rest_is_applied(tmp_path: Path, store_url: str) -> None:
    events = make_events(200, seed=4)
    project = build_repo(tmp_path / "repo", events, online=store_url)
    project.upload(JOIN, UPLOAD_DS)
    t = BATCH_END + HOUR
    valid = [
        good("m1", t, 2.0, 3),
        good("m1", t + 10, 5.0, 1),
        good("m2", t + 20, 7.5, 2),
        good("m3", t + 30, None, 4),
        good("m3", t + 40, 1.5, 0),
    ]
    bad: list[tuple[Any, str]] = [
        (b"{not json", "JSON"),
        (b"\xff\xfe garbage", "JSON"),
        (json.dumps([1, 2, 3]).encode(), "object"),
        (json.dumps("a string").encode(), "object"),
        (json.dumps({"item_id": "zz", "price": 1.0, "qty": 1, "ts": t}).encode(), ""),  # no key field
        (json.dumps(good(None, t)).encode(), ""),  # type: ignore[arg-type]  # null key
        (json.dumps({"user_id": "m1", "item_id": "zz", "price": 1.0, "qty": 1}).encode(), ""),  # no ts
        (json.dumps(good("m1", None)).encode(), ""),  # type: ignore[arg-type]  # null ts
        (json.dumps(good("m2", "yesterday")).encode(), ""),  # type: ignore[arg-type]  # non-numeric ts
    ]
    # one micro-batch: a good event first, then bad and good events interleaved
    payloads: list[bytes] = [json.dumps(valid[0]).encode()]
    for index, (payload, _) in enumerate(bad):
        payloads.append(payload)
        if index + 1 < len(valid):
            payloads.append(json.dumps(valid[index + 1]).encode())
    ids = publish(project, payloads, batch=len(payloads))
    bad_ids = {ids[payloads.index(p)] for p, _ in bad}
    stats = project.stream(GROUP_BY, until_caught_up=True)[GROUP_BY]
    assert stats.records == len(payloads)
    assert stats.dead_letters == len(bad)
    assert stats.rows == len(valid)
    letters = {letter["event_id"]: letter for letter in dead_letters(project)}
    assert set(letters) == bad_ids
    for payload, needle in bad:
        letter = letters[ids[payloads.index(payload)]]
        assert letter["reason"] and needle in letter["reason"], letter
        assert letter["group_by"] == GROUP_BY
        assert letter["payload"] == payload.decode("utf-8", "replace")
    q = t + HOUR
    m1, m2, m3 = fetch_group_by(project, ["m1", "m2", "m3"], q)
    assert m1.status == "Success" and m1.features["price_count_1h"] == 2
    assert m1.features["price_sum_1d"] == 7.0 and m1.features["qty_count"] == 2
    assert m2.features["price_sum_1d"] == 7.5 and m2.features["qty_sum_5h"] == 2
    assert m3.features["price_count_1d"] == 1 and m3.features["qty_count"] == 2  # a null price is fine
    # the worker keeps going: later events are applied, the dead letters stay set aside
    publish(project, [good("m2", t + 50, 2.5)])
    project.stream(GROUP_BY, until_caught_up=True)
    [m2] = fetch_group_by(project, ["m2"], q)
    assert m2.features["price_sum_1d"] == 10.0
    assert len(dead_letters(project)) == len(bad)


def test_wrong_typed_value_in_a_batch_is_a_dead_letter_not_a_poisoned_key(tmp_path: Path) -> None:
    """A string where the Query yields a number (price "abc") among good events: the bad event is set
    aside; the key's other events still serve."""
    project = build_repo(tmp_path / "repo", make_events(100, seed=2))
    project.upload(GROUP_BY, UPLOAD_DS)
    t = BATCH_END + HOUR
    batch = [good("w1", t, 2.0), good("w1", t + 1, "abc"), good("w1", t + 2, 3.0), good("w2", t + 3, 4.0)]  # type: ignore[arg-type]
    ids = publish(project, batch, batch=len(batch))
    stats = project.stream(GROUP_BY, until_caught_up=True)[GROUP_BY]
    w1, w2 = fetch_group_by(project, ["w1", "w2"], t + 10)
    assert w2.status == "Success" and w2.features["price_sum_1d"] == 4.0
    assert w1.status == "Success", (w1.status, w1.error, stats)
    assert w1.features["price_sum_1d"] == 5.0 and w1.features["qty_count"] == 2
    assert stats.rows == 3
    assert stats.dead_letters == 1
    assert [letter["event_id"] for letter in dead_letters(project)] == [ids[1]]


def test_event_omitting_a_nullable_field_counts_like_a_null(tmp_path: Path) -> None:
    """An event without "price" is a row with a null price offline (the warehouse column is null): it must
    count for the other features online too, whatever else is in its micro-batch."""
    project = build_repo(tmp_path / "repo", make_events(100, seed=2))
    project.upload(GROUP_BY, UPLOAD_DS)
    t = BATCH_END + HOUR
    no_price = [{"user_id": u, "item_id": "zz", "qty": 3, "ts": t} for u in ("n1", "n2", "n3")]
    publish(project, [no_price[0]])  # alone in its micro-batch
    publish(project, [no_price[1], good("n9", t)], batch=2)  # first of its micro-batch
    publish(project, [good("n9", t + 1), no_price[2]], batch=2)  # after a complete event
    stats = project.stream(GROUP_BY, until_caught_up=True, max_records=2)[GROUP_BY]
    results = fetch_group_by(project, ["n1", "n2", "n3"], t + 10)
    assert [(r.features.get("qty_count"), r.features.get("price_count_1d")) for r in results] == [
        (1, None)
    ] * 3, (stats, dead_letters(project))
    assert stats.dead_letters == 0


# ------------------------------------------------------------------ (e) late events


def test_late_events_arriving_after_the_upload_are_applied(tmp_path: Path, store_url: str) -> None:
    events = make_events(800, seed=13)
    late = [e for e in events if BATCH_END - DAY <= e["ts"] < BATCH_END][::4]
    early_streamed = [e for e in events if BATCH_END - 6 * HOUR <= e["ts"] < BATCH_END and e not in late]
    on_time = [e for e in events if e not in late]
    assert late and early_streamed
    project = build_repo(tmp_path / "repo", on_time, online=store_url)
    # the stream carried the day's events before the upload (they are in the warehouse too): not counted twice
    publish(project, early_streamed)
    project.stream(JOIN, until_caught_up=True)
    time.sleep(0.01)
    project.upload(JOIN, UPLOAD_DS)
    # after the upload: the events after the batch end, and late ones (ts < batch end) not in the warehouse
    after = [e for e in events if e["ts"] >= BATCH_END]
    publish(project, after[: len(after) // 2] + late + after[len(after) // 2 :])
    project.stream(JOIN, until_caught_up=True)
    write_warehouse(project, events)  # the late events land in the warehouse later
    assert_online_equals_offline(project, KEYS, QUERIES)
    # a later upload of the same day already holds the late events: the streamed copies stop counting
    time.sleep(0.01)
    project.upload(JOIN, UPLOAD_DS)
    assert_online_equals_offline(project, KEYS, QUERIES)
