"""The worker's micro-batch path against its event-by-event path and against the fetcher's encodings.

A micro-batch is normally read by Arrow's JSON reader and evaluated in one DuckDB query that also
writes each row's key, event id and order. These tests hold that path to the slow one (parse each
event, isolate the bad ones) and to the functions the fetcher and the upload use (`entity_key`,
`StreamRow.decode`), on random batches that mix good and malformed events.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gnomon.aggregation.codec import encode_value
from gnomon.compile.features import stream_id
from gnomon.online.records import (
    StreamRow,
    encode_stream_rows,
    encode_stream_rows_columnar,
    entity_key,
    rows_key,
)
from gnomon.online.stores.sqlite import SQLiteStore
from gnomon.streaming.brokers.base import Record
from gnomon.streaming.worker import PreparedBatch, QueryEvaluator, RecordApplier, _seq, _seqs

from .helpers import GROUP_BY, build_repo, make_events

KEYED_BY_NUMBER = """
from gnomon import Accuracy, Aggregation, EventSource, GroupBy, Operation, Query

source = EventSource(table="act.events", topic="events",
                     query=Query(selects={"user": "user_id", "qty": "qty"}, time_column="ts"))
by_qty = GroupBy(name="feat.by_qty", sources=[source], keys=["qty"],
                 aggregations=[Aggregation("user", Operation.COUNT, windows=["1d"])],
                 accuracy=Accuracy.TEMPORAL, online=True)
by_pair = GroupBy(name="feat.by_pair", sources=[source], keys=["user", "qty"],
                  aggregations=[Aggregation("user", Operation.COUNT, windows=["1d"])],
                  accuracy=Accuracy.TEMPORAL, online=True)
"""


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Any:
    return build_repo(tmp_path_factory.mktemp("batches"), make_events(50))


def _applier(project: Any, tmp_path: Path, group_by: str = GROUP_BY) -> RecordApplier:
    plan = project.plan.group_bys[group_by]
    return RecordApplier(
        plan,
        SQLiteStore(tmp_path / "online.db"),
        clock=lambda: 1_800_000_000.0,
        schema=project.source_schema(group_by),
    )


def _records(payloads: list[bytes], redis_ids: bool = True) -> list[Record]:
    records = []
    for index, payload in enumerate(payloads):
        offset = f"17000000000{index:02d}-{index % 3}" if redis_ids else str(100 + index)
        records.append(Record("events", "0", offset, payload, 1_700_000_000_000))
    return records


def _slow(applier: RecordApplier, records: list[Record]) -> PreparedBatch:
    """The same batch through the event-by-event path (the fast reader disabled)."""
    fast = applier.evaluator.json_table
    applier.evaluator.json_table = lambda records: None  # type: ignore[method-assign]
    try:
        return applier.prepare(records, "group")
    finally:
        applier.evaluator.json_table = fast  # type: ignore[method-assign]


def _decoded(items: list[tuple[bytes, bytes, bytes]]) -> list[tuple[bytes, bytes, Any]]:
    """Store items with stream rows decoded (the batch path writes fixed-width MessagePack forms)."""

    def comparable(value: bytes) -> Any:
        row = StreamRow.decode(value)
        return (
            row.ts,
            row.arrived_at,
            row.seq,
            ["NaN" if v != v else v for v in row.values],
        )  # NaN == NaN here

    return sorted(
        (
            (key, event_id, comparable(value) if key.startswith(b"rows|") else value)
            for key, event_id, value in items
        ),
        key=lambda item: (item[0], item[1]),
    )


GOOD = {"user_id": "u1", "item_id": "a", "price": 2.5, "qty": 3, "ts": 1_767_300_000_000}
MALFORMED = [
    b"not json",
    b"[1, 2]",
    b"",
    b'{"user_id": "u1",\n "ts": 1767300000000}',
    b'{"user_id": "u2"}',
    b'{"item_id": "a", "ts": 1767300000000}',
    b'{"user_id": "u1", "qty": "three", "ts": 1767300000000}',
    b'{"user_id": "u1", "price": NaN, "ts": 1767300000000}',
    b'{"user_id": 7, "ts": 1767300000000}',
    b'{"user_id": "u\\u0001x", "ts": 1767300000000}',
    b'{"user_id": "\xff", "ts": 1767300000000}',
    b'{"user_id": "u1", "qty": 1.5, "ts": 1767300000000}',
    b'{"user_id": "u1", "ts": 1767300000000}{}',
]


def _random_batch(rng: random.Random, size: int) -> list[bytes]:
    payloads = []
    for _ in range(size):
        if rng.random() < 0.2:
            payloads.append(rng.choice(MALFORMED))
            continue
        event = {
            **GOOD,
            "user_id": rng.choice(["u1", "u2", 'q"uote', "back\\slash", "é", "日本", "\U0001f600"]),
            "qty": rng.choice([0, 5, -2, None]),
            "price": rng.choice([1.25, None, 1e300, -0.0]),
            "ts": GOOD["ts"] + rng.randrange(-10_000, 10_000),
        }
        if rng.random() < 0.1:
            event["extra"] = {"nested": [1, 2]}
        payloads.append(json.dumps(event).encode())
    return payloads


@pytest.mark.parametrize("seed", range(8))
def test_fast_path_equals_event_by_event(project: Any, tmp_path: Path, seed: int) -> None:
    rng = random.Random(seed)
    records = _records(_random_batch(rng, rng.randrange(1, 60)), redis_ids=seed % 2 == 0)
    applier = _applier(project, tmp_path)
    fast, slow = applier.prepare(records, "group"), _slow(applier, records)
    assert _decoded(fast.items) == _decoded(slow.items)
    assert fast.offsets == slow.offsets == {"0": records[-1].offset}


def test_fast_path_runs_for_clean_batches(project: Any, tmp_path: Path) -> None:
    applier = _applier(project, tmp_path)
    records = _records([json.dumps(GOOD).encode(), json.dumps({**GOOD, "user_id": "u2"}).encode()])
    table = applier.evaluator.json_table(records)
    assert table is not None
    assert None not in applier.evaluator.evaluate_table(table)["__key"]  # written column-wise, not by Python
    items = applier.prepare(records, "group").items
    assert [key for key, _, _ in items] == [
        rows_key(stream_id(project.plan.group_bys[GROUP_BY]), entity_key(["u1"])),
        rows_key(stream_id(project.plan.group_bys[GROUP_BY]), entity_key(["u2"])),
    ]
    assert [event_id for _, event_id, _ in items] == [r.event_id.encode() for r in records]
    row = StreamRow.decode(items[0][2])
    # a row arrived when the broker accepted its event (not when the worker read it): the upload rule
    # "late = arrived after the upload started" is then the same for a worker that lags or replays
    assert (row.ts, row.arrived_at, row.seq) == (
        GOOD["ts"],
        records[0].published_at_ms,
        _seq(records[0].offset),
    )


def test_malformed_batches_fall_back(project: Any, tmp_path: Path) -> None:
    applier = _applier(project, tmp_path)
    for payload in MALFORMED:
        records = _records([json.dumps(GOOD).encode(), payload])
        prepared = applier.prepare(records, "group")
        assert _decoded(prepared.items) == _decoded(_slow(applier, records).items), payload


@settings(max_examples=200, deadline=None)
@given(st.lists(st.text(), min_size=1, max_size=20))
def test_string_keys_written_by_the_query_equal_entity_key(project: Any, users: list[str]) -> None:
    plan = project.plan.group_bys[GROUP_BY]
    prefix = rows_key(GROUP_BY, b"")
    evaluator = QueryEvaluator(plan, plan.sources[0], project.source_schema(GROUP_BY), prefix)
    events = [{**GOOD, "user_id": user} for user in users]
    rows = evaluator.evaluate_table(evaluator.table(events, _records([b"{}"] * len(events))))
    for user, key in zip(users, rows["__key"], strict=True):
        assert key is None or key == prefix + entity_key([user])  # None: written by entity_key instead
        assert (key is None) == (any(c in user for c in '"\\') or any(ord(c) < 0x20 for c in user))


def test_number_and_composite_keys(tmp_path: Path) -> None:
    events = make_events(20)
    project = build_repo(tmp_path / "repo", events, features_py=KEYED_BY_NUMBER)
    for name, keys in (("feat.by_qty", ["qty"]), ("feat.by_pair", ["user", "qty"])):
        applier = _applier(project, tmp_path, name)
        payloads = [
            json.dumps({**GOOD, "user_id": u, "qty": q}).encode()
            for u, q in [("u1", 0), ("u2", -7), ("u3", 2**62), ('a"b', 5)]
        ]
        items = applier.prepare(_records(payloads), "group").items
        expected = [
            rows_key(
                stream_id(project.plan.group_bys[name]),
                entity_key([json.loads(p)[{"user": "user_id"}.get(k, k)] for k in keys]),
            )
            for p in payloads
        ]
        assert [key for key, _, _ in items] == expected


@pytest.mark.parametrize(
    "offsets", [["1700000000000-0", "1700000000000-12", "5-3"], ["0", "17", "99999999999"], ["1-2", "7"], []]
)
def test_seqs_equal_seq(offsets: list[str]) -> None:
    assert _seqs(pa.array(offsets, pa.string())).to_pylist() == [_seq(offset) for offset in offsets]


@given(
    st.integers(-(2**63), 2**63 - 1),
    st.integers(0, 2**62),
    st.integers(0, 2**62),
    st.lists(
        st.one_of(
            st.none(),
            st.booleans(),
            st.integers(-(2**63), 2**64 - 1),
            st.floats(allow_nan=False),
            st.text(),
            st.binary(),
            st.lists(st.integers(-5, 5)),
        )
    ),
)
def test_stream_row_round_trip(ts: int, arrived_at: int, seq: int, values: list[Any]) -> None:
    row = StreamRow(ts, arrived_at, seq, values)
    assert StreamRow.decode(row.encode()) == row


def test_stream_rows_of_version_1_are_still_read() -> None:
    legacy = encode_value([5, 6, 7, ["a", 1.5, None]])  # how version 1 stored a row
    assert legacy[0] == 1
    assert StreamRow.decode(legacy) == StreamRow(5, 6, 7, ["a", 1.5, None])


def test_times_are_read_alike_by_both_readers(project: Any) -> None:
    """The batch reader takes a timestamp or date column only as the integers the event-by-event
    reader takes; an ISO string sends the batch to the event-by-event reader (a dead letter there)."""
    plan = project.plan.group_bys[GROUP_BY]
    schema = pa.schema(
        [
            ("user_id", pa.string()),
            ("item_id", pa.string()),
            ("price", pa.float64()),
            ("qty", pa.int64()),
            ("ts", pa.timestamp("ms")),
            ("day", pa.date32()),
        ]
    )
    evaluator = QueryEvaluator(plan, plan.sources[0], schema, rows_prefix=b"p|")
    events = [{**GOOD, "day": 20_000}, {**GOOD, "ts": 5, "day": -1}]
    records = _records([json.dumps(event).encode() for event in events])
    fast = evaluator.json_table(records)
    assert fast is not None
    assert fast.drop_columns(["__seq"]).equals(evaluator.table(events, records).drop_columns(["__seq"]))
    for bad in ({**GOOD, "ts": "2026-01-01T00:00:00"}, {**GOOD, "day": "2026-01-01"}):
        assert evaluator.json_table(_records([json.dumps(bad).encode()])) is None
        with pytest.raises(pa.ArrowException):
            evaluator.table([bad])
    nested = pa.schema([*schema, ("times", pa.list_(pa.time64("us")))])
    assert QueryEvaluator(plan, plan.sources[0], nested).json_table(records) is None


def test_decimals_are_read_alike_by_both_readers(project: Any) -> None:
    plan = project.plan.group_bys[GROUP_BY]
    schema = pa.schema(
        [
            ("user_id", pa.string()),
            ("item_id", pa.string()),
            ("price", pa.decimal128(10, 2)),
            ("qty", pa.int64()),
            ("ts", pa.int64()),
        ]
    )
    evaluator = QueryEvaluator(plan, plan.sources[0], schema, rows_prefix=b"p|")
    events = [{**GOOD, "price": price} for price in (1.5, 3, "2.25", None, -0.01)]
    records = _records([json.dumps(event).encode() for event in events])
    fast = evaluator.json_table(records)
    assert fast is not None
    assert fast.equals(evaluator.table(events, records))
    for bad in ({**GOOD, "price": 1.005}, {**GOOD, "price": "cheap"}, {**GOOD, "price": True}):
        assert evaluator.json_table(_records([json.dumps(bad).encode()])) is None
        with pytest.raises(pa.ArrowException):
            evaluator.table([bad])


@settings(max_examples=100, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.integers(-(2**63), 2**63 - 1),
            st.one_of(st.none(), st.integers(-(2**63), 2**63 - 1)),
            st.one_of(st.none(), st.floats()),
            st.one_of(st.none(), st.text()),
            st.one_of(st.none(), st.booleans()),
        ),
        min_size=1,
        max_size=30,
    ),
    st.integers(0, 2**62),
)
def test_columnar_stream_rows_decode_like_python_ones(rows: list[tuple[Any, ...]], arrived_at: int) -> None:
    ts, ints, floats, texts, flags = (list(column) for column in zip(*rows, strict=True))
    seq = list(range(len(rows)))
    columns = [
        pa.array(ints, pa.int64()),
        pa.array(floats, pa.float64()),
        pa.array(texts, pa.string()),
        pa.array(flags, pa.bool_()),
        pa.nulls(len(rows)),
        pa.array([1] * len(rows), pa.int8()),
    ]
    columnar = encode_stream_rows_columnar(
        pa.array(ts, pa.int64()), arrived_at, pa.array(seq, pa.int64()), columns
    )
    assert columnar is not None
    python = encode_stream_rows(ts, arrived_at, seq, zip(*[c.to_pylist() for c in columns], strict=True))
    for one, other in zip(columnar, python, strict=True):
        a, b = StreamRow.decode(one), StreamRow.decode(other)
        assert (a.ts, a.arrived_at, a.seq) == (b.ts, b.arrived_at, b.seq)
        assert all(
            x == y or (x != x and y != y) for x, y in zip(a.values, b.values, strict=True)
        )  # NaN == NaN
    assert (
        encode_stream_rows_columnar(
            pa.array(ts, pa.int64()), 0, pa.array(seq, pa.int64()), [pa.array([[1]] * len(rows))]
        )
        is None
    )  # lists: Python encodes them


@pytest.fixture(scope="module")
def entity_project(tmp_path_factory: pytest.TempPathFactory) -> Any:
    from .test_entity_online import WAREHOUSE_DAYS, History, make_repo, write_entity_tables

    project = make_repo(tmp_path_factory.mktemp("entity"), "sqlite:///online.db")
    history = History(random.Random(31))
    snapshots, mutations = history.tables()
    write_entity_tables(project, snapshots, mutations, WAREHOUSE_DAYS)
    return project, history


def _debezium_batch(rng: random.Random, history: Any) -> list[bytes]:
    """Unwrapped change events, some of them malformed (or not change events at all)."""
    from .test_entity_online import debezium

    row = {"id": 1, "user_id": "u1", "price": 2.5, "item": "a", "ts": 1_767_300_000_000}
    malformed: list[dict[str, Any]] = [
        {"before": None, "after": row, "ts_ms": 5},  # no op
        {"before": None, "after": row, "op": "t", "ts_ms": 5},
        {"before": None, "after": row, "op": "x", "ts_ms": 5},
        {"before": None, "after": row, "op": 3, "ts_ms": 5},
        {"before": None, "after": row, "op": "u", "ts_ms": 5},  # no before image
        {"before": row, "after": None, "op": "c", "ts_ms": 5},
        {"before": None, "after": row, "op": "c"},  # no time
        {"before": None, "after": row, "op": "c", "ts_ms": "5"},
        {"before": None, "after": row, "op": "c", "ts_ms": 5.0},  # an integral float: a good event
        {"before": None, "after": row, "op": "c", "ts_ms": 2**63},
        {"before": None, "after": [row], "op": "c", "ts_ms": 5},
        {"before": None, "after": {**row, "mutation_ts": 5}, "op": "c", "ts_ms": 5},
        {"before": {**row, "is_before": None}, "after": row, "op": "u", "ts_ms": 5},
        {"before": None, "after": {**row, "user_id": None}, "op": "c", "ts_ms": 5},  # no key
        {"before": {**row, "ts": None}, "after": row, "op": "u", "ts_ms": 5},  # the before row: no time
        {"before": None, "after": {**row, "price": "cheap"}, "op": "c", "ts_ms": 5},
        {"before": None, "after": {**row, "color": "red"}, "op": "r", "ts_ms": 5},  # an extra column
        {"before": None, "after": {**row, "price": -0.0}, "op": "c", "ts_ms": 5},
        {"payload": {"before": None, "after": row, "op": "c", "ts_ms": 5}},
        {**row, "mutation_ts": 5, "is_before": False},
    ]
    events = [debezium(op, rng, wrap=False) for op in history.streamed_ops()[: rng.randrange(1, 40)]]
    for _ in range(rng.randrange(0, 3)):
        events.insert(rng.randrange(len(events) + 1), rng.choice(malformed))
    payloads = [json.dumps(event).encode() for event in events]
    if rng.random() < 0.2:  # column names spelled with escapes: a reserved one, another one
        reserved = {"before": None, "after": {**row, "mutation_ts": None}, "op": "c", "ts_ms": 5}
        escaped = json.dumps(reserved).encode().replace(b'"mutation_ts"', b'"mutation\\u005fts"')
        payloads.append(rng.choice([escaped, payloads[0].replace(b'"user_id"', b'"\\u0075ser_id"')]))
    return payloads


@pytest.mark.parametrize("seed", range(16))
def test_debezium_batches_equal_event_by_event(entity_project: Any, tmp_path: Path, seed: int) -> None:
    from .test_entity_online import STATS

    project, history = entity_project
    rng = random.Random(seed)
    records = _records(_debezium_batch(rng, history), redis_ids=seed % 2 == 0)
    applier = _applier(project, tmp_path, STATS)
    fast, slow = applier.prepare(records, "group"), _slow(applier, records)
    assert _decoded(fast.items) == _decoded(slow.items)
    assert (fast.rows, fast.dead_letters, fast.offsets) == (slow.rows, slow.dead_letters, slow.offsets)


def test_clean_debezium_batches_are_converted_column_wise(entity_project: Any, tmp_path: Path) -> None:
    from .test_entity_online import STATS, debezium

    project, history = entity_project
    rng = random.Random(1)
    ops = history.streamed_ops()[:30]
    records = _records([json.dumps(debezium(op, rng, wrap=False)).encode() for op in ops])
    applier = _applier(project, tmp_path, STATS)
    table = applier.evaluator.json_table(records)
    assert table is not None and table.num_rows == sum(len(op.images) for op in ops)
    prepared = applier.prepare(records, "group")
    assert prepared.rows == table.num_rows and prepared.dead_letters == 0
