"""Entity sources with mutations online (SPEC §4, §5): upload the snapshot rows of day D, stream the
mutations that come after (mutation-table rows and Debezium change events), and fetch at q >= the
batch end. The yardstick is the offline engine over a warehouse that also holds the later days'
snapshot and mutation partitions: ``Client.fetch_join(..., at=q) == Project.training_data`` at q.

Also: replays (duplicate delivery, a second consumer group, a worker killed mid-way), read-after-write
pushes (``push(..., sync=True)``), malformed mutation events, a GroupBy with two event topics, and an
entity GroupBy without a mutation topic (stale after its snapshot day). Tests marked xfail(strict) pin
src bugs found here; their reasons name the function at fault.
"""

from __future__ import annotations

import itertools
import json
import random
import signal
import subprocess
import sys
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

import gnomon
from gnomon import Project
from gnomon.online.records import dead_letter_key
from gnomon.streaming import worker
from gnomon.streaming.brokers.base import Record
from gnomon.streaming.cdc import debezium_rows_table
from gnomon.streaming.worker import StreamWorker, consumer_group

from .helpers import (
    DAY,
    HOUR,
    START,
    ds_of,
    feature_columns,
    mismatches,
    offline_rows,
    own_redis_db,
    publish,
    subprocess_env,
)

USERS = ["u1", "u2", "u3", "u4"]
KEYS = [{"user": u} for u in [*USERS, "nobody"]]
ITEMS = "abcdef"

SNAPSHOTS, MUTATIONS, PROBES = "crm.accounts", "crm.account_mutations", "crm.probes"
TOPIC = "account_mutations"
STATS, ROWS, RECENT, JOIN, STATIC = "ent.stats", "ent.rows", "ent.recent", "ent.join", "ent.static"
STREAMED = (STATS, ROWS, RECENT)

FIRST_DS = "2026-01-01"  # the initial snapshot
UPLOAD_DS = "2026-01-04"  # batch end = 2026-01-05 00:00
BATCH_END = START + 4 * DAY
END = START + 7 * DAY  # 2026-01-08 00:00: the last q (batch end + the 3d horizon)
LAST_DAY = 6  # mutations on days 1 .. 6 (2026-01-02 .. 2026-01-07)
WAREHOUSE_DAYS = [ds_of(START + d * DAY) for d in range(4)]  # 01-01 .. 01-04: before the upload
LATER_DAYS = [ds_of(START + d * DAY) for d in range(4, LAST_DAY + 1)]  # 01-05 .. 01-07: streamed

RAW = ["id", "user_id", "price", "item", "ts"]
ROW_SCHEMA = pa.schema(
    [
        ("id", pa.int64()),
        ("user_id", pa.string()),
        ("price", pa.float64()),
        ("item", pa.string()),
        ("ts", pa.int64()),
    ]
)
MUTATION_SCHEMA = pa.schema([*ROW_SCHEMA, ("mutation_ts", pa.int64()), ("is_before", pa.bool_())])
PROBE_SCHEMA = pa.schema([("user_id", pa.string()), ("ts", pa.int64())])

ENTITY_PY = """
from gnomon import Accuracy, Aggregation, EntitySource, EventSource, GroupBy, Join, JoinPart, Operation, Query

def accounts(selects, topic="account_mutations"):
    return EntitySource(snapshot_table="crm.accounts", mutation_table="crm.account_mutations", mutation_topic=topic,
                        query=Query(selects=selects, time_column="ts"))

def windowed_and_unbounded(column, operation):
    return [Aggregation(column, operation, windows=["5h", "2d"]), Aggregation(column, operation)]

stats = GroupBy(
    name="ent.stats",
    sources=[accounts({"user": "user_id", "price": "price", "item": "item"})],
    keys=["user"],
    aggregations=[
        *windowed_and_unbounded("price", Operation.COUNT),
        *windowed_and_unbounded("price", Operation.SUM),
        *windowed_and_unbounded("price", Operation.AVERAGE),
        *windowed_and_unbounded("price", Operation.MIN),
        *windowed_and_unbounded("price", Operation.MAX),
        *windowed_and_unbounded("item", Operation.LAST),
        *windowed_and_unbounded("item", Operation.LAST_K(2)),
        *windowed_and_unbounded("price", Operation.TOP_K(2)),
        *windowed_and_unbounded("item", Operation.UNIQUE_COUNT),
        *windowed_and_unbounded("item", Operation.HISTOGRAM),
        *windowed_and_unbounded("item", Operation.APPROX_UNIQUE_COUNT),
    ],
    online=True,
)
rows = GroupBy(
    name="ent.rows",
    sources=[accounts({"user": "user_id", "row_id": "id", "row_price": "price", "row_item": "item"})],
    keys=["user"],
    online=True,
)
recent = GroupBy(  # bounded windows only: the upload keeps only the rows a window can still reach
    name="ent.recent",
    sources=[accounts({"user": "user_id", "price": "price", "item": "item"})],
    keys=["user"],
    aggregations=[Aggregation("price", Operation.SUM, windows=["5h", "13h"]),
                  Aggregation("item", Operation.LAST, windows=["2d"]),
                  Aggregation("price", Operation.MAX, windows=["1d"])],
    online=True,
)
join = Join(
    name="ent.join",
    left=EventSource(table="crm.probes", query=Query(selects={"user": "user_id"})),
    right_parts=[JoinPart(stats), JoinPart(rows), JoinPart(recent, prefix="r")],
    online=True,
)
static = GroupBy(
    name="ent.static",
    sources=[accounts({"user": "user_id", "price": "price"}, topic=None)],
    keys=["user"],
    aggregations=[Aggregation("price", Operation.SUM), Aggregation("price", Operation.COUNT, windows=["2d"])],
    accuracy=Accuracy.TEMPORAL,
    online=True,
)
static_join = Join(name="ent.static_join", left=join.left, right_parts=[JoinPart(static)])
"""


# ------------------------------------------------------------------ fixtures and the repo


@pytest.fixture(params=["sqlite", "redis"])
def store_url(request: pytest.FixtureRequest) -> str:
    if request.param == "sqlite":
        return "sqlite:///online.db"
    return own_redis_db(request, 11)  # a database of this file's own


def make_repo(root: Path, store_url: str, features_py: str = ENTITY_PY) -> Project:
    root.mkdir(parents=True, exist_ok=True)
    (root / "gnomon.yaml").write_text(
        f"project: entity_online\nonline: {{url: '{store_url}', horizon: 3d}}\nstream: embedded\n"
    )
    (root / "features").mkdir(exist_ok=True)
    (root / "features" / "__init__.py").write_text("")
    (root / "features" / "defs.py").write_text(textwrap.dedent(features_py))
    project = Project(root)
    project.warehouse.write_partition(
        PROBES, FIRST_DS, pa.Table.from_pylist([{"user_id": "u1", "ts": START}], schema=PROBE_SCHEMA)
    )
    return project


# ------------------------------------------------------------------ random, consistent entity data


@dataclass
class Op:
    """One change of the source table: its mutation time and its row images (old image first)."""

    kind: str  # insert | duplicate | update | move | delete | ghost
    mutation_ts: int
    images: list[tuple[dict[str, Any], bool]]  # (raw row, is_before)

    def rows(self) -> list[dict[str, Any]]:
        return [{**row, "mutation_ts": self.mutation_ts, "is_before": before} for row, before in self.images]


def partition_of(ops: list[Op], copies: int = 1) -> list[dict[str, Any]]:
    """A mutation partition as a CDC export writes it: sorted by (mutation_ts, is_before desc),
    ties in the order the changes were made (a re-published copy after every original)."""
    rows = [row for op in ops for row in op.rows()] * copies
    return sorted(rows, key=lambda r: (r["mutation_ts"], not r["is_before"]))


def replay(state: list[dict[str, Any]], partition: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """SPEC §4: an after row is appended; a before row removes the first equal row, or nothing."""
    state = list(state)
    for mutation in partition:
        raw = {c: mutation[c] for c in RAW}
        if not mutation["is_before"]:
            state.append(raw)
        elif raw in state:
            state.remove(raw)
    return state


class History:
    """An initial table (snapshot 2026-01-01) and ``ops_per_day`` changes on each later day."""

    def __init__(self, rng: random.Random, ops_per_day: int = 16, initial_rows: int = 16) -> None:
        self.rng = rng
        self.ids = itertools.count(1)
        self.initial = [self.new_row(START + rng.randrange(DAY)) for _ in range(initial_rows)]
        self.ops: dict[str, list[Op]] = {}
        state = self.initial
        for day in range(1, LAST_DAY + 1):
            ds = ds_of(START + day * DAY)
            self.ops[ds] = self.day(START + day * DAY, state, ops_per_day)
            state = replay(state, partition_of(self.ops[ds]))

    def new_row(self, t: int) -> dict[str, Any]:
        rng = self.rng
        draw = rng.random()
        if draw < 0.15:
            ts = t + rng.randrange(1, 10 * HOUR)  # a row time after its mutation time
        elif draw < 0.25:
            ts = t  # exactly its mutation time
        elif draw < 0.35:
            ts = t - rng.randrange(0, 2 * DAY)
            ts -= ts % HOUR  # on an hour: window tails land on hop boundaries
        else:
            ts = t - rng.randrange(0, 3 * DAY)
        return {
            "id": next(self.ids),
            "user_id": rng.choice(USERS),
            "price": None if rng.random() < 0.12 else round(rng.uniform(-5, 50), 2),
            "item": None if rng.random() < 0.1 else rng.choice(ITEMS),
            "ts": ts,
        }

    def day(self, day_start: int, state: list[dict[str, Any]], count: int) -> list[Op]:
        rng = self.rng
        times = [day_start + rng.randrange(DAY) for _ in range(count)]
        times = [t - t % HOUR if rng.random() < 0.15 else t for t in times]
        times[0] = day_start  # a change at exactly midnight (for the first streamed day: the batch end)
        times[1] = day_start + DAY - 1  # and at the day's last millisecond
        times.sort()
        for index in range(1, count):
            if rng.random() < 0.12:
                times[index] = times[index - 1]  # two changes at the same mutation time
        live = list(state)
        ops = []
        kinds = ["insert", "duplicate", "update", "move", "delete", "ghost"]
        for t in times:
            kind = rng.choices(kinds, weights=[30, 6, 25, 8, 18, 13])[0]
            if not live and kind != "insert":
                kind = "insert"
            if kind == "insert":
                images = [(self.new_row(t), False)]
            elif kind == "duplicate":  # a row equal on every column to one that exists
                images = [(dict(rng.choice(live)), False)]
            elif kind in ("update", "move"):
                old = rng.choice(live)
                new = dict(old)
                if kind == "move":
                    new["user_id"] = rng.choice([u for u in USERS if u != old["user_id"]])
                changes = rng.sample(["price", "item", "ts"], rng.randrange(1, 3))
                if "price" in changes:
                    new["price"] = None if rng.random() < 0.15 else round(rng.uniform(-5, 50), 2)
                if "item" in changes:
                    new["item"] = None if rng.random() < 0.1 else rng.choice(ITEMS)
                if "ts" in changes:
                    new["ts"] = (
                        t + rng.randrange(1, 6 * HOUR)
                        if rng.random() < 0.2
                        else t - rng.randrange(0, 2 * DAY)
                    )
                if new == old:
                    new["price"] = (old["price"] or 0.0) + 1.25
                images = [(old, True), (new, False)]
            elif kind == "delete":
                images = [(rng.choice(live), True)]
            else:  # a delete of a row that never existed, or of a near miss of one that does
                ghost = self.new_row(t) if rng.random() < 0.5 else {**rng.choice(live), "price": 123.5}
                images = [(ghost, True)]
            op = Op(kind, t, images)
            ops.append(op)
            live = replay(live, op.rows())
        return ops

    def tables(
        self, copies: dict[str, int] | None = None
    ) -> tuple[dict[str, list[Any]], dict[str, list[Any]]]:
        """(snapshot partitions, mutation partitions) by ds; ``copies``: days whose changes were
        published that many times (the mutation table then holds every row that many times)."""
        snapshots = {FIRST_DS: self.initial}
        mutations = {}
        state = self.initial
        for ds, ops in self.ops.items():
            mutations[ds] = partition_of(ops, (copies or {}).get(ds, 1))
            state = snapshots[ds] = replay(state, mutations[ds])
        return snapshots, mutations

    def streamed_ops(self) -> list[Op]:
        return [op for ds in LATER_DAYS for op in self.ops[ds]]


def write_entity_tables(
    project: Project, snapshots: dict[str, list[Any]], mutations: dict[str, list[Any]], days: list[str]
) -> None:
    for ds in days:
        project.warehouse.write_partition(
            SNAPSHOTS, ds, pa.Table.from_pylist(snapshots[ds], schema=ROW_SCHEMA)
        )
        if ds in mutations:
            project.warehouse.write_partition(
                MUTATIONS, ds, pa.Table.from_pylist(mutations[ds], schema=MUTATION_SCHEMA)
            )


def debezium(op: Op, rng: random.Random, wrap: bool | None = None) -> dict[str, Any]:
    """The change event a Debezium connector publishes for ``op`` (with the payload wrapper or not;
    ``wrap`` None: either, at random)."""
    envelope: dict[str, Any]
    if op.kind in ("update", "move"):
        envelope = {"before": op.images[0][0], "after": op.images[1][0], "op": "u"}
    elif op.images[0][1]:
        envelope = {"before": op.images[0][0], "after": None, "op": "d"}
    else:
        envelope = {"before": None, "after": op.images[0][0], "op": rng.choice("cr")}
    envelope.update(
        ts_ms=op.mutation_ts,
        source={"connector": "postgresql", "table": "accounts", "ts_ms": op.mutation_ts - 3},
        transaction=None,
    )
    if rng.random() < 0.5 if wrap is None else wrap:
        return {
            "schema": {"type": "struct", "name": "crm.accounts.Envelope", "optional": False},
            "payload": envelope,
        }
    return envelope


def mutation_events(ops: list[Op], rng: random.Random) -> list[dict[str, Any]]:
    """The topic's events for ``ops``: about half as mutation-table rows, half as Debezium events."""
    events: list[dict[str, Any]] = []
    for op in ops:
        if rng.random() < 0.5:
            events.extend(op.rows())
        else:
            events.append(debezium(op, rng))
    return events


def query_times(rng: random.Random, history: History, count: int = 14) -> list[int]:
    """q after the batch end: at and 1 ms after mutation times, midnights, future row times, random."""
    times = sorted({op.mutation_ts for op in history.streamed_ops()})
    queries = {BATCH_END, BATCH_END + 1, END}
    for day in (5, 6):
        queries |= {START + day * DAY - 1, START + day * DAY, START + day * DAY + 1}
    for t in rng.sample(times, min(count, len(times))):
        queries |= {t, t + 1}
    future = [
        row["ts"] for op in history.streamed_ops() for row, _ in op.images if row["ts"] > op.mutation_ts
    ]
    for t in rng.sample(future, min(5, len(future))):
        queries |= {t, t + 1}
    queries |= {rng.randrange(BATCH_END, END) for _ in range(count)}
    return sorted(q for q in queries if BATCH_END <= q <= END)


def uploaded_repo(
    root: Path,
    store_url: str,
    seed: int,
    copies: dict[str, int] | None = None,
) -> tuple[Project, History]:
    """A repo with the warehouse up to UPLOAD_DS, uploaded; then the later days written to the
    warehouse (the offline side sees them; online only what is streamed)."""
    history = History(random.Random(seed))
    project = make_repo(root, store_url)
    snapshots, mutations = history.tables(copies)
    write_entity_tables(project, snapshots, mutations, WAREHOUSE_DAYS)
    written = project.upload(JOIN, UPLOAD_DS)
    assert set(written) == set(STREAMED)
    write_entity_tables(project, snapshots, mutations, LATER_DAYS)
    return project, history


def assert_parity(
    project: Project, queries: list[int], join: str = JOIN, keys: list[dict[str, Any]] = KEYS
) -> list[list[dict[str, Any]]]:
    """``gnomon.Client(repo).fetch_join`` at each q == ``training_data`` at q, for every key, all
    "Success"; returns the fetched results (per q, per key)."""
    expected = offline_rows(project, keys, queries, join)
    client = gnomon.Client(project.root)
    fetched = []
    problems = []
    try:
        for position, q in enumerate(queries):
            results = client.fetch_join(join, keys, at=q)
            fetched.append(results)
            for index, (key, result) in enumerate(zip(keys, results, strict=True)):
                assert result["status"] == "Success", (key, q, result.get("error"))
                row = expected[position * len(keys) + index]
                diff = mismatches(feature_columns(row, ("user", "ts")), result["features"])
                if diff:
                    problems.append((key["user"], q, diff[:4]))
    finally:
        client.close()
    assert not problems, f"{len(problems)} mismatching (key, q): {problems[:5]}"
    return fetched


def dead_letters(project: Project) -> list[dict[str, Any]]:
    store = project.store()
    try:
        [rows] = store.get_rows([dead_letter_key(TOPIC)])
    finally:
        store.close()
    return [json.loads(row) for row in rows]


def stored_offset(project: Project, group: str) -> int:
    store = project.store()
    try:
        offset = store.offsets(group).get("0")
    finally:
        store.close()
    return -1 if offset is None else int(offset)


# ------------------------------------------------------------------ 1. parity


def test_entity_online_equals_offline(tmp_path: Path, store_url: str) -> None:
    history = History(random.Random(3))
    project = make_repo(tmp_path / "repo", store_url)
    snapshots, mutations = history.tables()
    write_entity_tables(project, snapshots, mutations, WAREHOUSE_DAYS)
    rng = random.Random(4)
    earlier = mutation_events(history.ops[UPLOAD_DS], rng)
    later = mutation_events(history.streamed_ops(), rng)
    kinds = {op.kind for op in history.streamed_ops()}
    assert kinds == {"insert", "duplicate", "update", "move", "delete", "ghost"}, kinds
    assert (
        any("payload" in e for e in later)
        and any("op" in e for e in later)
        and any("is_before" in e for e in later)
    )
    # the worker runs before the upload too: the upload day's changes (in its snapshot: never applied
    # twice) and the first ones after its batch end
    early = len(later) // 5
    publish(project, earlier + later[:early], batch=7, topic=TOPIC)
    first = project.stream(JOIN, until_caught_up=True)
    assert set(project.upload(JOIN, UPLOAD_DS)) == set(STREAMED)
    write_entity_tables(project, snapshots, mutations, LATER_DAYS)  # offline sees the later days
    publish(project, later[early:], batch=7, topic=TOPIC)
    second = project.stream(JOIN, until_caught_up=True, max_records=50)
    streamed_rows = sum(
        len(op.images) for ops in (history.ops[UPLOAD_DS], history.streamed_ops()) for op in ops
    )
    for name in STREAMED:
        assert first[name].records + second[name].records == len(earlier) + len(later)
        assert first[name].dead_letters == second[name].dead_letters == 0, second[name].dead_letter_reasons
        assert first[name].rows + second[name].rows == streamed_rows
    queries = query_times(rng, history)
    assert len(queries) > 40
    fetched = assert_parity(project, queries)
    # the data is not trivial: every feature has values, and they change between the queries
    features = {c for results in fetched for r in results for c, v in r["features"].items() if v is not None}
    assert len(features) == len(fetched[0][0]["features"]), set(fetched[0][0]["features"]) - features
    assert len({repr([r["features"] for r in results]) for results in fetched}) > len(queries) // 2
    # the next day's upload replaces the snapshot; the streamed changes after its batch end still count
    project.upload(JOIN, LATER_DAYS[0])
    assert_parity(project, [q for q in queries if q >= BATCH_END + DAY])


def test_debezium_batches_online_equal_offline(
    tmp_path: Path, store_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Unwrapped change events only: every micro-batch is converted column-wise
    (`debezium_rows_table`), not event by event."""
    converted: list[int] = []

    def counted(envelopes: pa.Table, *columns: str) -> Any:
        converted.append(envelopes.num_rows)
        return debezium_rows_table(envelopes, *columns)

    monkeypatch.setattr(worker, "debezium_rows_table", counted)
    project, history = uploaded_repo(tmp_path / "repo", store_url, seed=21)
    rng = random.Random(22)
    events = [debezium(op, rng, wrap=False) for op in history.streamed_ops()]
    publish(project, events, batch=9, topic=TOPIC)
    stats = project.stream(JOIN, until_caught_up=True, max_records=40)
    for name in STREAMED:
        assert stats[name].dead_letters == 0, stats[name].dead_letter_reasons
        assert stats[name].rows == sum(len(op.images) for op in history.streamed_ops())
    assert sum(converted) == len(events) * len(STREAMED)
    assert_parity(project, query_times(rng, history, count=8))


# ------------------------------------------------------------------ 2. replays, duplicates, crashes


def test_replays_and_duplicate_delivery_change_nothing(tmp_path: Path, store_url: str) -> None:
    project, history = uploaded_repo(tmp_path / "repo", store_url, seed=5)
    rng = random.Random(6)
    events = mutation_events(history.streamed_ops(), rng)
    publish(project, events, batch=11, topic=TOPIC)
    project.stream(JOIN, until_caught_up=True)
    queries = query_times(rng, history, count=6)
    before = assert_parity(project, queries)
    plan = project.plan
    store, broker = project.store(), project.broker()
    try:
        # the same records again (as a broker redelivers them), copies, reversed, split differently
        for name in STREAMED:
            worker = StreamWorker(
                plan.group_bys[name],
                store,
                broker,
                group=f"dup-{name}",
                schema=project.source_schema(name, TOPIC),
            )
            records = worker.consumer.poll(5000, 1.0)
            assert len(records) == len(events)
            worker.process(records)
            worker.process(
                [Record(r.topic, r.partition, r.offset, r.payload, r.published_at_ms + 7) for r in records]
            )
            worker.process(records[::-1][: len(records) // 2])
            for start in range(0, len(records), 3):
                worker.process(records[start : start + 3])
            worker.close()
    finally:
        store.close()
        broker.close()
    # other consumer groups re-read the whole topic, in micro-batches of other sizes
    for name, size in ((STATS, 4), (ROWS, 13), (RECENT, 1000)):
        replay_stats = project.stream(name, until_caught_up=True, group=f"replay-{name}", max_records=size)[
            name
        ]
        assert replay_stats.records == len(events)
    # and the default groups' workers again: nothing left to do
    again = project.stream(JOIN, until_caught_up=True, poll_timeout_s=0.05)
    assert all(s.records == 0 for s in again.values()), again
    after = assert_parity(project, queries)
    assert after == before


# A worker that runs until killed, in small micro-batches so that a kill lands in the middle.
WORKER = (
    "import sys; from gnomon import Project; "
    "Project(sys.argv[1]).stream(sys.argv[2], max_records=2, poll_timeout_s=0.05)"
)


def test_worker_killed_mid_way_then_restarted(tmp_path: Path, store_url: str) -> None:
    project, history = uploaded_repo(tmp_path / "repo", store_url, seed=7)
    rng = random.Random(8)
    events = mutation_events(history.streamed_ops(), rng)
    published = 0
    for _ in range(3):  # until a kill lands while the worker still has mutations to apply
        worker = subprocess.Popen(
            [sys.executable, "-c", WORKER, str(project.root), JOIN],
            env=subprocess_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            upto = published + len(events) // 3
            publish(project, events[published:upto], batch=5, topic=TOPIC)
            threshold, published = published + (upto - published) // 4, upto
            deadline = time.monotonic() + 30
            while (
                min(
                    stored_offset(project, consumer_group(project.plan.group_bys[g], TOPIC)) for g in STREAMED
                )
                < threshold
            ):
                if worker.poll() is not None:
                    raise AssertionError(f"the worker exited: {worker.communicate()[1][-3000:]}")
                assert time.monotonic() < deadline, "timed out waiting for the worker"
                time.sleep(0.002)
        finally:
            if worker.poll() is None:
                worker.send_signal(signal.SIGKILL)
            worker.communicate(timeout=20)
        assert worker.returncode == -signal.SIGKILL
        if (
            min(stored_offset(project, consumer_group(project.plan.group_bys[g], TOPIC)) for g in STREAMED)
            < published - 1
        ):
            break
    else:
        raise AssertionError("the worker was never killed while it had mutations left to apply")
    publish(project, events[published:], batch=5, topic=TOPIC)
    project.stream(JOIN, until_caught_up=True)
    for name in STREAMED:
        assert stored_offset(project, consumer_group(project.plan.group_bys[name], TOPIC)) == len(events) - 1
    assert_parity(project, query_times(rng, history, count=6))


def test_republished_mutations_are_the_table_with_every_row_twice(tmp_path: Path, store_url: str) -> None:
    """Publishing the same changes again gives them new offsets, so they are new mutations (an insert
    published twice inserts two equal rows), not a replay: online equals the offline values of a
    mutation table that holds every row twice — as it would, had the CDC export been doubled too."""
    copies = dict.fromkeys(LATER_DAYS, 2)
    project, history = uploaded_repo(tmp_path / "repo", store_url, seed=9, copies=copies)
    rng = random.Random(10)
    events = mutation_events(history.streamed_ops(), rng)
    publish(project, events + events, batch=9, topic=TOPIC)
    project.stream(JOIN, until_caught_up=True)
    assert_parity(project, query_times(rng, history, count=6))


# ------------------------------------------------------------------ 3. read-after-write pushes


def test_sync_pushes_are_servable_at_once(tmp_path: Path, store_url: str) -> None:
    project, history = uploaded_repo(tmp_path / "repo", store_url, seed=11)
    rng = random.Random(12)
    events = mutation_events(history.streamed_ops(), rng)
    client = gnomon.Client(project.root)
    try:
        for start in range(0, len(events), 9):
            ids = client.push(TOPIC, events[start : start + 9], sync=True)
            assert len(ids) == len(events[start : start + 9])
    finally:
        client.close()
    queries = query_times(rng, history, count=6)
    before = assert_parity(project, queries)  # no worker has run: the pushes alone are servable
    # the workers apply the very same events (event ids) again later: nothing changes
    stats = project.stream(JOIN, until_caught_up=True)
    assert stats[STATS].records == len(events) and stats[STATS].dead_letters == 0
    assert assert_parity(project, queries) == before


def test_a_sync_push_is_servable_for_the_next_fetch(tmp_path: Path, store_url: str) -> None:
    """One mutation at a time: each fetch right after its push sees it (an insert, then an update of
    it, then its delete), through the Join and through the GroupBy."""
    project, _ = uploaded_repo(tmp_path / "repo", store_url, seed=13)
    t = BATCH_END + 2 * HOUR
    row = {"id": 900, "user_id": "fresh", "price": 10.0, "item": "z", "ts": t - HOUR}
    updated = {**row, "price": 4.0}
    steps: list[tuple[list[dict[str, Any]], dict[str, Any]]] = [
        ([{**row, "mutation_ts": t, "is_before": False}], {"price_sum": 10.0, "item_last": "z"}),
        ([{"payload": {"before": row, "after": updated, "op": "u", "ts_ms": t + 1}}], {"price_sum": 4.0}),
        (
            [{"before": updated, "after": None, "op": "d", "ts_ms": t + 2}],
            {"price_sum": None, "price_count": None},
        ),
    ]
    with gnomon.Client(project.root) as client:
        for events, expected in steps:
            client.push(TOPIC, events, sync=True)
            [stats] = client.fetch_group_by(STATS, [{"user": "fresh"}], at=t + 10)
            [joined] = client.fetch_join(JOIN, [{"user": "fresh"}], at=t + 10)
            assert stats["status"] == joined["status"] == "Success", (stats, joined)
            for column, value in expected.items():
                assert stats["features"][column] == value, (events, column, stats["features"])
                assert joined["features"][f"ent_stats_{column}"] == value
        [looked_up] = client.fetch_group_by(ROWS, [{"user": "fresh"}], at=t + 10)
        assert looked_up["features"] == {"row_id": None, "row_price": None, "row_item": None}
        [looked_up] = client.fetch_group_by(ROWS, [{"user": "fresh"}], at=t + 1)  # before the update
        assert looked_up["features"] == {"row_id": 900, "row_price": 10.0, "row_item": "z"}


# ------------------------------------------------------------------ 4. bad input


def test_malformed_mutations_are_dead_letters_and_the_rest_is_applied(tmp_path: Path, store_url: str) -> None:
    history = History(random.Random(15))
    project = make_repo(tmp_path / "repo", store_url)
    snapshots, mutations = history.tables()
    write_entity_tables(project, snapshots, mutations, WAREHOUSE_DAYS)
    project.upload(JOIN, UPLOAD_DS)
    snapshot = snapshots[UPLOAD_DS]
    t = BATCH_END + 3 * HOUR
    victim = next(r for r in snapshot if r["user_id"] == "u2")
    doomed = next(r for r in snapshot if r["user_id"] == "u3")
    fresh = {"id": 1000, "user_id": "u1", "price": 7.5, "item": "q", "ts": t - 2 * HOUR}
    fresh2 = {"id": 1001, "user_id": "m1", "price": 2.0, "item": "r", "ts": t - HOUR}
    extra = {"id": 1002, "user_id": "m1", "price": 3.0, "item": "s", "ts": t - HOUR}
    changed = {**victim, "price": 99.0}
    good: list[tuple[dict[str, Any], list[dict[str, Any]]]] = [  # (event, its mutation-table rows)
        ({**fresh, "mutation_ts": t, "is_before": False}, [{**fresh, "mutation_ts": t, "is_before": False}]),
        (
            {"payload": {"before": victim, "after": changed, "op": "u", "ts_ms": t + 10}},
            [
                {**victim, "mutation_ts": t + 10, "is_before": True},
                {**changed, "mutation_ts": t + 10, "is_before": False},
            ],
        ),
        (
            {"before": None, "after": fresh2, "op": "c", "ts_ms": t + 20},
            [{**fresh2, "mutation_ts": t + 20, "is_before": False}],
        ),
        (
            {"before": doomed, "after": None, "op": "d", "ts_ms": t + 30},
            [{**doomed, "mutation_ts": t + 30, "is_before": True}],
        ),
        # a column the table does not have: ignored, like a field the Query does not read
        (
            {**extra, "color": "red", "mutation_ts": t + 40, "is_before": False},
            [{**extra, "mutation_ts": t + 40, "is_before": False}],
        ),
    ]
    bad: list[tuple[dict[str, Any], str]] = [  # (event, the kind of its dead-letter reason)
        ({**fresh, "id": 2000, "is_before": False}, "missing mutation time"),
        ({**fresh, "id": 2001, "mutation_ts": t + 1}, "missing reversal flag"),
        ({"before": None, "after": {**fresh, "id": 2002}, "ts_ms": t + 2}, "bad Debezium event"),
        ({"payload": {"before": None, "after": {**fresh, "id": 2003}, "ts_ms": t + 3}}, "bad Debezium event"),
        (
            {"before": None, "after": {**victim, "price": 1.0}, "op": "u", "ts_ms": t + 4},
            "missing before image",
        ),
        ({"before": None, "after": None, "op": "d", "ts_ms": t + 5}, "missing before image"),
        ({**fresh, "id": 2004, "mutation_ts": "soon", "is_before": False}, "bad mutation time"),
        ({**fresh, "id": 2005, "mutation_ts": t + 6, "is_before": "no"}, "bad reversal flag"),
        (
            {"before": None, "after": {**fresh, "id": 2006}, "op": "t", "ts_ms": t + 7},
            "unsupported Debezium op",
        ),
        ({**fresh, "id": 2007, "user_id": None, "mutation_ts": t + 8, "is_before": False}, "missing key"),
        ({**fresh, "id": 2008, "ts": None, "mutation_ts": t + 9, "is_before": False}, "missing time"),
    ]
    payloads: list[Any] = [good[0][0]]  # one micro-batch: good and bad interleaved
    for index, (event, _) in enumerate(bad):
        payloads.append(event)
        if index + 1 < len(good):
            payloads.append(good[index + 1][0])
    payloads.append(b"{not json")
    ids = publish(project, payloads, batch=len(payloads), topic=TOPIC)
    stats = project.stream(JOIN, until_caught_up=True, max_records=len(payloads))
    expected_kinds: dict[str, int] = {"not valid JSON": 1}
    for _, kind in bad:
        expected_kinds[kind] = expected_kinds.get(kind, 0) + 1
    for name in STREAMED:
        assert stats[name].records == len(payloads)
        assert stats[name].dead_letters == len(bad) + 1, stats[name].dead_letter_reasons
        assert stats[name].dead_letter_reasons == expected_kinds
        assert stats[name].rows == sum(len(rows) for _, rows in good)
    letters_by_id = {letter["event_id"]: letter for letter in dead_letters(project)}
    bad_ids = {ids[payloads.index(event)] for event, _ in bad} | {ids[-1]}
    assert set(letters_by_id) == bad_ids
    for event, kind in bad:
        assert letters_by_id[ids[payloads.index(event)]]["reason"].startswith(kind)
    # a micro-batch of mutation-table rows only (read whole by Arrow): an unknown column is ignored
    # there too, and a value of the wrong type is a dead letter of its own
    more = {"id": 1003, "user_id": "m1", "price": 4.0, "item": "s", "ts": t + HOUR}
    wrong_type = {**more, "id": 1004, "price": "cheap", "mutation_ts": t + 60, "is_before": False}
    stage_two = [
        {**more, "tier": 3, "mutation_ts": t + 50, "is_before": False},
        wrong_type,
        {**extra, "mutation_ts": t + 70, "is_before": True},
    ]  # deletes the row with the unknown column
    good += [
        (stage_two[0], [{**more, "mutation_ts": t + 50, "is_before": False}]),
        (stage_two[2], [{**extra, "mutation_ts": t + 70, "is_before": True}]),
    ]
    stage_two_ids = publish(project, stage_two, batch=len(stage_two), topic=TOPIC)
    stats = project.stream(JOIN, until_caught_up=True, max_records=len(stage_two))
    for name in STREAMED:
        assert (stats[name].records, stats[name].rows, stats[name].dead_letters) == (3, 2, 1), stats[name]
        assert list(stats[name].dead_letter_reasons) == ["the Query cannot read this event"]
    assert len(dead_letters(project)) == len(bad) + 2
    assert stage_two_ids[1] in {letter["event_id"] for letter in dead_letters(project)}
    # the good events are applied, nothing else: online == offline over the good rows alone
    partition = sorted(
        [row for _, rows in good for row in rows], key=lambda r: (r["mutation_ts"], not r["is_before"])
    )
    next_ds = ds_of(BATCH_END)
    project.warehouse.write_partition(
        MUTATIONS, next_ds, pa.Table.from_pylist(partition, schema=MUTATION_SCHEMA)
    )
    project.warehouse.write_partition(
        SNAPSHOTS, next_ds, pa.Table.from_pylist(replay(snapshot, partition), schema=ROW_SCHEMA)
    )
    keys = [*KEYS, {"user": "m1"}]
    queries = [
        BATCH_END,
        t,
        t + 1,
        t + 11,
        t + 25,
        t + 31,
        t + 41,
        t + 51,
        t + 71,
        t + HOUR + 1,
        BATCH_END + DAY - 1,
        BATCH_END + DAY,
    ]
    results = assert_parity(project, queries, keys=keys)
    m1 = [results[queries.index(q)][-1]["features"] for q in (t + 41, t + 51, t + HOUR + 1)]
    assert [f["ent_stats_price_sum"] for f in m1] == [5.0, 5.0, 6.0]
    assert [f["ent_rows_row_id"] for f in m1] == [1001, 1001, 1003]


def test_a_delete_matches_a_row_equal_up_to_the_sign_of_zero(tmp_path: Path, store_url: str) -> None:
    project = make_repo(tmp_path / "repo", store_url)
    row = {"id": 1, "user_id": "z", "price": 0.0, "item": "a", "ts": BATCH_END - HOUR}
    other = {"id": 2, "user_id": "z", "price": 3.0, "item": "b", "ts": BATCH_END - 2 * HOUR}
    snapshots = dict.fromkeys(WAREHOUSE_DAYS, [row, other])
    delete = {**row, "price": -0.0, "mutation_ts": BATCH_END + 10, "is_before": True}
    mutations: dict[str, list[Any]] = {ds: [] for ds in WAREHOUSE_DAYS[1:]} | {ds_of(BATCH_END): [delete]}
    write_entity_tables(project, snapshots, mutations, WAREHOUSE_DAYS)
    project.upload(JOIN, UPLOAD_DS)
    write_entity_tables(project, {ds_of(BATCH_END): [other]}, mutations, [ds_of(BATCH_END)])
    publish(project, [delete], topic=TOPIC)
    project.stream(JOIN, until_caught_up=True)
    [expected] = offline_rows(project, [{"user": "z"}], [BATCH_END + 100], JOIN)
    assert expected["ent_stats_price_count"] == 1  # offline, -0.0 == 0.0: the row is deleted
    assert_parity(project, [BATCH_END + 100, BATCH_END + DAY], keys=[{"user": "z"}])


# ------------------------------------------------------------------ 5. two event topics


MULTI_PY = """
from gnomon import Aggregation, EventSource, GroupBy, Join, JoinPart, Operation, Query

orders = EventSource(table="shop.orders", topic="orders",
                     query=Query(selects={"user": "user_id", "amount": "amount"}, time_column="ts"))
sales = EventSource(table="shop.sales", topic="sales",
                    query=Query(selects={"user": "buyer", "amount": "CAST(price * qty AS DOUBLE)"},
                                wheres=["qty > 0"], time_column="ts"))
spend = GroupBy(
    name="shop.spend",
    sources=[orders, sales],
    keys=["user"],
    aggregations=[
        Aggregation("amount", Operation.SUM, windows=["1h", "1d"]),
        Aggregation("amount", Operation.COUNT, windows=["5h", "2d"]),
        Aggregation("amount", Operation.AVERAGE),
        Aggregation("amount", Operation.MAX, windows=["2d"]),
        Aggregation("amount", Operation.LAST),
        Aggregation("amount", Operation.LAST_K(3), windows=["1d"]),
    ],
    online=True,
)
spend_join = Join(name="shop.join", left=EventSource(table="crm.probes", query=Query(selects={"user": "user_id"})),
                  right_parts=[JoinPart(spend)], online=True)
"""
ORDER_SCHEMA = pa.schema([("user_id", pa.string()), ("amount", pa.float64()), ("ts", pa.int64())])
SALE_SCHEMA = pa.schema(
    [("buyer", pa.string()), ("price", pa.float64()), ("qty", pa.int64()), ("ts", pa.int64())]
)


def shop_events(
    rng: random.Random, count: int, shared_keys: bool
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Orders and sales over 2026-01-01 .. 01-07, every ts distinct (a ts tie across two topics: see
    `test_a_ts_tie_across_two_topics_breaks_in_source_order`). ``shared_keys``: both topics carry
    events of every user; otherwise orders are u1's and u2's, sales u3's and u4's."""
    times = rng.sample(range(START, START + LAST_DAY * DAY + DAY), count)
    orders, sales = [], []
    for index, ts in enumerate(times):
        if index % 2:
            orders.append(
                {
                    "user_id": rng.choice(USERS if shared_keys else USERS[:2]),
                    "amount": None if index % 11 == 1 else round(rng.uniform(1, 80), 2),
                    "ts": ts,
                }
            )
        else:
            sales.append(
                {
                    "buyer": rng.choice(USERS if shared_keys else USERS[2:]),
                    "price": round(rng.uniform(0.5, 20), 3),
                    "qty": rng.randrange(0, 5),
                    "ts": ts,
                }
            )
    return orders, sales


def write_events(
    project: Project, table: str, schema: pa.Schema, events: list[dict[str, Any]], days: list[str]
) -> None:
    for ds in days:
        rows = sorted((e for e in events if ds_of(e["ts"]) == ds), key=lambda e: e["ts"])
        project.warehouse.write_partition(table, ds, pa.Table.from_pylist(rows, schema=schema))


@pytest.mark.parametrize(
    "shared_keys",
    [
        pytest.param(False, id="keys-per-topic"),
        pytest.param(True, id="shared-keys"),
    ],
)
def test_two_event_topics_with_their_own_queries(tmp_path: Path, store_url: str, shared_keys: bool) -> None:
    rng = random.Random(17)
    orders, sales = shop_events(rng, 500, shared_keys)
    project = make_repo(tmp_path / "repo", store_url, MULTI_PY)
    all_days = [ds_of(START + d * DAY) for d in range(LAST_DAY + 1)]
    # late events (ts before the batch end) reach the warehouse only after the upload
    late_orders = [e for e in orders if BATCH_END - DAY <= e["ts"] < BATCH_END][::3]
    late_sales = [e for e in sales if BATCH_END - DAY <= e["ts"] < BATCH_END][::3]
    write_events(
        project, "shop.orders", ORDER_SCHEMA, [e for e in orders if e not in late_orders], WAREHOUSE_DAYS
    )
    write_events(
        project, "shop.sales", SALE_SCHEMA, [e for e in sales if e not in late_sales], WAREHOUSE_DAYS
    )
    project.upload("shop.join", UPLOAD_DS)
    later_orders = sorted((e for e in orders if e["ts"] >= BATCH_END), key=lambda e: e["ts"])
    later_sales = sorted((e for e in sales if e["ts"] >= BATCH_END), key=lambda e: e["ts"])
    # the first half of each topic goes through the workers (one per topic), the rest by sync pushes
    half_orders, half_sales = len(later_orders) // 2, len(later_sales) // 2
    publish(project, later_orders[:half_orders], topic="orders")
    publish(project, later_sales[:half_sales], topic="sales")
    stats = project.stream("shop.join", until_caught_up=True)["shop.spend"]
    assert stats.records == half_orders + half_sales and stats.dead_letters == 0
    assert stats.rows == half_orders + sum(e["qty"] > 0 for e in later_sales[:half_sales])
    with gnomon.Client(project.root) as client:
        rest = [
            ("orders", later_orders[half_orders:]),
            ("sales", later_sales[half_sales:]),
            ("orders", late_orders),
            ("sales", late_sales),
        ]
        for topic, events in rest:
            for start in range(0, len(events), 25):
                client.push(topic, events[start : start + 25], sync=True)
    write_events(project, "shop.orders", ORDER_SCHEMA, orders, all_days)
    write_events(project, "shop.sales", SALE_SCHEMA, sales, all_days)
    queries = sorted(
        {
            BATCH_END,
            BATCH_END + 1,
            END,
            *(rng.randrange(BATCH_END, END) for _ in range(25)),
            *(e["ts"] + d for e in rng.sample(later_orders + later_sales, 10) for d in (0, 1)),
        }
    )
    keys = [*[{"user": u} for u in USERS], {"user": "nobody"}]
    fetched = assert_parity(project, queries, join="shop.join", keys=keys)
    assert any(r["features"]["shop_spend_amount_sum_1h"] is not None for results in fetched for r in results)
    # streaming both topics once more (other groups, from the start) changes nothing
    project.stream("shop.spend", until_caught_up=True, group="again")
    assert assert_parity(project, queries, join="shop.join", keys=keys) == fetched


def shop_repo(root: Path, store_url: str) -> Project:
    """The two-topic repo with one order and one sale in the warehouse, uploaded at UPLOAD_DS."""
    project = make_repo(root, store_url, MULTI_PY)
    write_events(
        project, "shop.orders", ORDER_SCHEMA, [{"user_id": "u1", "amount": 1.0, "ts": START}], WAREHOUSE_DAYS
    )
    write_events(
        project,
        "shop.sales",
        SALE_SCHEMA,
        [{"buyer": "u1", "price": 1.0, "qty": 1, "ts": START + 1}],
        WAREHOUSE_DAYS,
    )
    project.upload("shop.join", UPLOAD_DS)
    return project


def test_rows_of_two_topics_with_equal_offsets_are_both_kept(tmp_path: Path, store_url: str) -> None:
    """The minimal case: the first event of each topic, for one key (both get event id '0:0')."""
    project = shop_repo(tmp_path / "repo", store_url)
    with gnomon.Client(project.root) as client:
        order = {"user_id": "x", "amount": 5.0, "ts": BATCH_END + 10}
        sale = {"buyer": "x", "price": 7.0, "qty": 1, "ts": BATCH_END + 20}
        assert client.push("orders", [order], sync=True) == client.push("sales", [sale], sync=True) == ["0:0"]
        [result] = client.fetch_group_by("shop.spend", [{"user": "x"}], at=BATCH_END + 100)
    assert result["status"] == "Success"
    assert result["features"]["amount_count_5h"] == 2 and result["features"]["amount_sum_1h"] == 12.0, result


def test_a_ts_tie_across_two_topics_breaks_in_source_order(tmp_path: Path, store_url: str) -> None:
    """An order and a sale of one key at the same ts (the order: source 0, but a higher offset in its
    topic than the sale in its own; offsets differ, so the two event ids do not collide)."""
    project = shop_repo(tmp_path / "repo", store_url)
    t = BATCH_END + 1000
    orders = [
        {"user_id": "o1", "amount": 1.0, "ts": BATCH_END},
        {"user_id": "o2", "amount": 1.0, "ts": BATCH_END},
        {"user_id": "x", "amount": 5.0, "ts": t},
    ]
    sales = [{"buyer": "x", "price": 7.0, "qty": 1, "ts": t}]
    with gnomon.Client(project.root) as client:
        client.push("orders", orders, sync=True)
        client.push("sales", sales, sync=True)
    write_events(project, "shop.orders", ORDER_SCHEMA, orders, [ds_of(BATCH_END)])
    write_events(project, "shop.sales", SALE_SCHEMA, sales, [ds_of(BATCH_END)])
    [expected] = offline_rows(project, [{"user": "x"}], [t + 1], "shop.join")
    assert expected["shop_spend_amount_last"] == 5.0  # the order: first in source order
    with gnomon.Client(project.root) as client:
        [result] = client.fetch_join("shop.join", [{"user": "x"}], at=t + 1)
    assert not mismatches(feature_columns(expected, ("user", "ts")), result["features"])


# ------------------------------------------------------------------ 6. no mutation topic


def test_entity_group_by_without_a_mutation_topic_is_stale_after_its_day(
    tmp_path: Path, store_url: str
) -> None:
    history = History(random.Random(19))
    project = make_repo(tmp_path / "repo", store_url)
    snapshots, mutations = history.tables()
    write_entity_tables(project, snapshots, mutations, WAREHOUSE_DAYS)
    assert project.upload(STATIC, UPLOAD_DS) == {STATIC: 4}
    write_entity_tables(project, snapshots, mutations, LATER_DAYS)
    keys = [{"user": u} for u in USERS]
    with gnomon.Client(project.root) as client:
        # at the batch end the snapshot is the whole truth
        got = client.fetch_group_by(STATIC, keys, at=BATCH_END)
        assert [r["status"] for r in got] == ["Success"] * len(keys)
        left = pa.Table.from_pylist([{"user": k["user"], "ts": BATCH_END} for k in keys])
        expected = [
            r["ent_static_price_sum"] for r in project.training_data("ent.static_join", left).to_pylist()
        ]
        assert [r["features"]["price_sum"] for r in got] == pytest.approx(expected, rel=1e-9)
        for q in (BATCH_END + DAY, BATCH_END + DAY + 1, BATCH_END + DAY + 5 * HOUR, END):
            for result in client.fetch_group_by(STATIC, keys, at=q):
                assert result["status"] == "StaleUpload", (q, result)
                assert result["features"] == {} or all(v is None for v in result["features"].values())
                assert "mutation_topic" in result["error"]


def test_entity_group_by_without_a_mutation_topic_is_never_silently_wrong(
    tmp_path: Path, store_url: str
) -> None:
    """Between the batch end and the next midnight, the changes of that day are in the mutation table
    offline but nowhere online: a fetch must equal offline or say it cannot (SPEC §5)."""
    history = History(random.Random(19))
    project = make_repo(tmp_path / "repo", store_url)
    snapshots, mutations = history.tables()
    write_entity_tables(project, snapshots, mutations, WAREHOUSE_DAYS)
    project.upload(STATIC, UPLOAD_DS)
    write_entity_tables(project, snapshots, mutations, LATER_DAYS)
    keys = [{"user": u} for u in USERS]
    q = BATCH_END + DAY - 1
    left = pa.Table.from_pylist([{"user": k["user"], "ts": q} for k in keys])
    expected = project.training_data("ent.static_join", left).to_pylist()
    with gnomon.Client(project.root) as client:
        got = client.fetch_group_by(STATIC, keys, at=q)
    wrong = []
    for key, row, result in zip(keys, expected, got, strict=True):
        offline = {
            "price_sum": row["ent_static_price_sum"],
            "price_count_2d": row["ent_static_price_count_2d"],
        }
        if result["status"] == "Success" and mismatches(offline, result["features"]):
            wrong.append((key["user"], offline, result["features"]))
    assert not wrong, f"Success with values other than offline's (key, offline, online): {wrong}"
