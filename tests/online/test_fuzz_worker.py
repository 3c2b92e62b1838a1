"""Fuzzing the stream worker (SPEC §5, §6): Hypothesis mixes malformed events with good ones in the same
micro-batches and runs them through a `StreamWorker` over the embedded broker.

Whatever comes in, no exception escapes; every bad event is a dead letter with a reason of the
expected kind; the good events' rows are exactly the rows a run of the good events alone writes (and
what a direct computation from the events says); the counters add up. Two GroupBys: one over an event
topic read with its warehouse schema, one over an entity's mutation topic (mutation-table rows and
Debezium change events). Each example publishes to the broker and runs a fresh worker of one consumer
group, which consumes just that example's records; its keys carry the example's number, so examples
never share a key.
"""

from __future__ import annotations

import itertools
import json
import sqlite3
import textwrap
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from gnomon import Project
from gnomon.compile.features import row_columns, stream_id
from gnomon.online.records import StreamRow, dead_letter_key, entity_key, rows_key
from gnomon.online.stores.sqlite import SQLiteStore
from gnomon.streaming.brokers.base import Record
from gnomon.streaming.worker import RecordApplier, StreamWorker

from .helpers import BATCH_END, DAY, START, build_repo, close, make_events

EVENTS_PY = """
from gnomon import Accuracy, Aggregation, EventSource, GroupBy, Operation, Query

source = EventSource(
    table="act.events",
    topic="events",
    query=Query(selects={"user": "user_id", "item": "item_id", "price": "price", "qty": "qty"},
                wheres=["qty IS NULL OR qty < 1000"], time_column="ts"),
)
events = GroupBy(
    name="fz.events",
    sources=[source],
    keys=["user"],
    aggregations=[
        Aggregation("price", Operation.SUM, windows=["1d"]),
        Aggregation("qty", Operation.COUNT),
        Aggregation("item", Operation.LAST),
    ],
    accuracy=Accuracy.TEMPORAL,
    online=True,
)
"""

ENTITY_PY = """
from gnomon import Aggregation, EntitySource, GroupBy, Operation, Query

accounts = GroupBy(
    name="fz.accounts",
    sources=[EntitySource(snapshot_table="crm.accounts", mutation_table="crm.account_mutations",
                          mutation_topic="account_mutations",
                          query=Query(selects={"user": "user_id", "price": "price", "item": "item"},
                                      wheres=["price IS NULL OR price < 1000"], time_column="ts"))],
    keys=["user"],
    aggregations=[Aggregation("price", Operation.SUM), Aggregation("item", Operation.LAST)],
    online=True,
)
"""

EVENT_GROUP_BY, EVENT_TOPIC = "fz.events", "events"
ENTITY_GROUP_BY, ENTITY_TOPIC = "fz.accounts", "account_mutations"
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
INT64 = (-(2**63), 2**63 - 1)
CLOCK_S = 1_800_000_000.0
CASES: Counter[str] = Counter()
# no shrinking: an example takes tens of ms, and shrinking one of these batches takes minutes
PHASES = [Phase.explicit, Phase.reuse, Phase.generate]


def clock() -> float:
    return CLOCK_S


# ------------------------------------------------------------------ repos and the harness


@dataclass
class Harness:
    """One GroupBy's worker setting: its repo, store, broker and a scratch store for good-only runs."""

    project: Project
    group_by_name: str
    topic: str
    scratch: SQLiteStore
    counter: Iterator[int] = field(default_factory=itertools.count)

    def __post_init__(self) -> None:
        self.group_by = self.project.plan.group_bys[self.group_by_name]
        self.schema = self.project.source_schema(self.group_by_name, self.topic)
        assert self.schema is not None
        self.store = self.project.store()
        self.broker = self.project.broker()
        self.columns = row_columns(self.group_by)
        self.prefix = rows_key(stream_id(self.group_by), b"")

    def key(self, user: str) -> bytes:
        return self.prefix + entity_key([user])

    def run_worker(self, payloads: list[bytes], max_records: int) -> tuple[list[Record], Any]:
        """Publish, then consume exactly those records with a fresh worker of the fuzz group."""
        ids = self.broker.publish(self.topic, payloads)
        worker = StreamWorker(
            self.group_by, self.store, self.broker, group="fuzz", clock=clock, schema=self.schema
        )
        try:
            stats = worker.run(until_caught_up=True, max_records=max_records, poll_timeout_s=0.05)
        finally:
            worker.close()
        records = []
        for event_id, payload in zip(ids, payloads, strict=True):
            partition, _, offset = event_id.partition(":")
            records.append(Record(self.topic, partition, offset, payload, 0))
        assert self.store.offsets("fuzz") == {records[-1].partition: records[-1].offset}
        return records, stats

    def good_only(self, records: list[Record]) -> None:
        """The good records alone, same event ids, into the scratch store (one micro-batch)."""
        if records:
            RecordApplier(self.group_by, self.scratch, clock=clock, schema=self.schema).apply(records)

    def rows(self, store: Any, user: str) -> list[tuple[Any, ...]]:
        [blobs] = store.get_rows([self.key(user)])
        decoded = [StreamRow.decode(blob) for blob in blobs]
        # (ts, seq, values); not arrived_at: the worker's rows carry the broker's publish time
        found = [(row.ts, row.seq, ["NaN" if v != v else v for v in row.values]) for row in decoded]
        return sorted(found, key=repr)  # the two rows of an update share ts and seq

    def keys_with_prefix(self, text: str) -> set[bytes]:
        """Row keys in the worker's store whose user begins with ``text`` (JSON-plain text)."""
        start = self.prefix + b'["' + text.encode()
        connection = sqlite3.connect(self.store.path)
        try:
            found = connection.execute(
                "SELECT DISTINCT key FROM rows WHERE key >= ? AND key < ?", (start, start + b"\xff")
            ).fetchall()
        finally:
            connection.close()
        return {key for (key,) in found}

    def dead_letters(self, ids: set[str]) -> dict[str, dict[str, Any]]:
        [letters] = self.store.get_rows([dead_letter_key(self.topic)])
        found = {}
        for blob in letters:
            letter = json.loads(blob)
            if letter["event_id"] in ids:
                found[letter["event_id"]] = letter
        return found


@pytest.fixture(scope="module")
def event_harness(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Harness]:
    root = tmp_path_factory.mktemp("fuzz_events")
    project = build_repo(root / "repo", make_events(30), features_py=EVENTS_PY)
    harness = Harness(project, EVENT_GROUP_BY, EVENT_TOPIC, SQLiteStore(root / "scratch.db"))
    yield harness
    harness.store.close()
    harness.broker.close()
    harness.scratch.close()


@pytest.fixture(scope="module")
def entity_harness(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Harness]:
    root = tmp_path_factory.mktemp("fuzz_entities")
    repo = root / "repo"
    (repo / "features").mkdir(parents=True)
    (repo / "gnomon.yaml").write_text("project: fuzz\nonline: sqlite:///online.db\nstream: embedded\n")
    (repo / "features" / "__init__.py").write_text("")
    (repo / "features" / "defs.py").write_text(textwrap.dedent(ENTITY_PY))
    project = Project(repo)
    row = {"id": 1, "user_id": "seed", "price": 1.0, "item": "a", "ts": START}
    project.warehouse.write_partition(
        "crm.accounts", "2026-01-01", pa.Table.from_pylist([row], schema=ROW_SCHEMA)
    )
    project.warehouse.write_partition(
        "crm.account_mutations",
        "2026-01-01",
        pa.Table.from_pylist([{**row, "mutation_ts": START, "is_before": False}], schema=MUTATION_SCHEMA),
    )
    harness = Harness(project, ENTITY_GROUP_BY, ENTITY_TOPIC, SQLiteStore(root / "scratch.db"))
    yield harness
    harness.store.close()
    harness.broker.close()
    harness.scratch.close()


@pytest.fixture(scope="module", autouse=True)
def report_cases(request: pytest.FixtureRequest) -> Iterator[None]:
    yield
    line = "fuzz_worker cases: " + ", ".join(f"{name} {count}" for name, count in sorted(CASES.items()))
    plugins = request.config.pluginmanager
    reporter, capture = plugins.get_plugin("terminalreporter"), plugins.get_plugin("capturemanager")
    if reporter is not None and capture is not None:
        with capture.global_and_fixture_disabled():
            reporter.write_line(line)


# ------------------------------------------------------------------ strategies

# JSON of any shape: what a broken producer may send
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(st.characters(exclude_categories=("Cs",)), max_size=8),
)
junk = st.recursive(
    scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=3), st.dictionaries(st.text(max_size=5), children, max_size=3)
    ),
    max_leaves=8,
)
user_text = st.text(st.characters(exclude_categories=("Cs",)), max_size=6)  # quotes, \, controls, any plane
timestamps = st.one_of(
    st.integers(BATCH_END - 3 * DAY, BATCH_END + 3 * DAY), st.integers(*INT64), st.just(BATCH_END)
)
finite = st.floats(allow_nan=False, allow_infinity=False)
prices = st.one_of(st.none(), finite, st.integers(-(2**53), 2**53), st.floats(990, 1010))
quantities = st.one_of(st.none(), st.integers(*INT64), st.integers(-5, 1500))
items = st.one_of(st.none(), st.text(max_size=5))
not_a_string = st.one_of(
    st.booleans(),
    st.integers(),
    finite,
    st.lists(scalars, max_size=2),
    st.dictionaries(st.text(max_size=3), scalars, max_size=2),
)
not_an_integer = st.one_of(
    st.text(max_size=5),
    st.booleans(),
    st.lists(scalars, max_size=2),
    st.dictionaries(st.text(max_size=3), scalars, max_size=2),
    st.integers(2**63, 2**70),
    st.integers(-(2**70), -(2**64)),
)
not_a_number = st.one_of(
    st.text(max_size=5),
    st.lists(scalars, max_size=2),
    st.dictionaries(st.text(max_size=3), scalars, max_size=2),
)
extra_columns = st.dictionaries(  # unknown columns (even "op", "before"): ignored
    st.text(max_size=6).filter(lambda k: k not in set(MUTATION_SCHEMA.names)),
    junk,
    max_size=2,
)
extra_fields = st.dictionaries(
    st.text(max_size=6).filter(lambda k: k not in {"user_id", "item_id", "price", "qty", "ts"}),
    junk,
    max_size=2,
)


def encode(event: Any, draw: st.DrawFn) -> bytes:
    """JSON as a producer may write it: compact or spaced, ASCII-escaped or UTF-8, on one line or several."""
    indent = draw(st.sampled_from([None, None, None, 1]))
    ascii_only = draw(st.booleans())
    separators = (",", ":") if indent is None and draw(st.booleans()) else None
    return json.dumps(event, ensure_ascii=ascii_only, indent=indent, separators=separators).encode()


def garbage(draw: st.DrawFn, good_payload: bytes) -> bytes:
    """Bytes that are not JSON: random bytes, a truncated event, invalid UTF-8 inside a string."""
    choice = draw(st.integers(0, 3))
    if choice == 0:
        payload = draw(st.binary(max_size=12))
    elif choice == 1:
        payload = good_payload[: draw(st.integers(0, max(len(good_payload) - 1, 0)))]
    elif choice == 2:
        payload = (
            b'{"user_id": "' + draw(st.sampled_from([b"\xff", b"\xc3", b"\xed\xa0\x80", b"\x80x"])) + b'"}'
        )
    else:
        payload = good_payload + draw(st.sampled_from([b"{}", b"]", b",", b" x"]))
    if not _parses(payload):
        return payload
    return b"\xff" + payload  # what happened to parse (e.g. b"1") made invalid


def _parses(payload: bytes) -> bool:
    try:
        json.loads(payload)
    except (ValueError, UnicodeDecodeError):
        return False
    return True


@dataclass
class Item:
    """One published payload and what it must become."""

    payload: bytes
    kind: str  # good | bad | ambiguous
    reason: str = ""  # bad: the dead-letter reason's kind (text before the first colon); "" = any
    user: str | None = None  # good/ambiguous: whose rows it may write
    event: Any = None  # good: the event (the direct computation reads it)
    rows: list[dict[str, Any]] = field(default_factory=list)  # entity: its mutation-table rows


# ------------------------------------------------------------------ event GroupBy


@st.composite
def event_items(draw: st.DrawFn, users: list[str], ambiguous_user: str) -> Item:
    user = draw(st.sampled_from(users))
    event: dict[str, Any] = {"user_id": user, "ts": draw(timestamps)}
    for name, values in (("item_id", items), ("price", prices), ("qty", quantities)):
        if draw(st.integers(0, 4)):  # else left out: null
            event[name] = draw(values)
    if draw(st.integers(0, 3)) == 0:
        event = {**draw(extra_fields), **event}  # fields the table does not have: ignored
    good_payload = encode(event, draw)
    fault = draw(
        st.sampled_from(
            ["good"] * 8
            + ["garbage", "non-object", "no key", "null key", "no time", "null time", "NaN time"]
            + ["key type", "time type", "qty type", "price type", "item type", "ambiguous"]
        )
    )
    if fault == "good":
        return Item(good_payload, "good", user=user, event=event)
    if fault == "garbage":
        return Item(garbage(draw, good_payload), "bad", "not valid JSON")
    if fault == "non-object":
        value = draw(st.one_of(scalars, st.lists(junk, max_size=3)))
        return Item(json.dumps(value).encode(), "bad", "an event must be a JSON object")
    bad = dict(event)
    if (bad.get("qty") or 0) >= 1000:  # what the where filters out is not read further (nor a dead letter)
        bad["qty"] = 1
    reason = "the Query cannot read this event"
    if fault in ("no key", "null key"):
        bad.pop("user_id") if fault == "no key" else bad.update(user_id=None)
        reason = "missing key"
    elif fault in ("no time", "null time"):
        bad.pop("ts") if fault == "no time" else bad.update(ts=None)
        reason = "missing time"
    elif fault == "NaN time":
        literal = draw(st.sampled_from(["NaN", "Infinity", "-Infinity"]))
        return Item(json.dumps({**bad, "ts": "@"}).replace('"@"', literal).encode(), "bad", reason)
    elif fault == "key type":
        bad["user_id"] = draw(not_a_string)
    elif fault == "time type":
        bad["ts"] = draw(not_an_integer)
    elif fault == "qty type":
        bad["qty"] = draw(not_an_integer)
    elif fault == "price type":
        bad["price"] = draw(not_a_number)
    elif fault == "item type":
        bad["item_id"] = draw(not_a_string)
    else:  # values whose reading is a policy (kept or set aside): either is fine, the counts still add up
        value = draw(
            st.sampled_from(
                [
                    ("price", True),
                    ("price", 10**30),
                    ("price", 2**60 + 1),
                    ("price", -(2**63)),
                    ("qty", 2.0),
                    ("ts", float(BATCH_END)),
                    ("price", "NaN"),
                ]
            )
        )
        bad = {**event, "user_id": ambiguous_user, value[0]: value[1]}
        payload = json.dumps(bad).encode()
        if value[1] == "NaN":
            payload = payload.replace(b'"NaN"', b"NaN")
        return Item(payload, "ambiguous", user=ambiguous_user)
    return Item(encode(bad, draw), "bad", reason)


def expected_event_row(event: dict[str, Any]) -> list[Any] | None:
    """The row's values (`row_columns` order), or None when the Query's where filters it out."""
    qty = event.get("qty")
    if qty is not None and qty >= 1000:
        return None
    price = event.get("price")
    by_column = {"item": event.get("item_id"), "price": None if price is None else float(price), "qty": qty}
    return [by_column[c] for c in ("item", "price", "qty")]


@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck), phases=PHASES)
@given(data=st.data())
def test_event_worker_fuzz(event_harness: Harness, data: st.DataObject) -> None:
    h = event_harness
    assert h.columns == ["item", "price", "qty"]
    n = next(h.counter)
    tag = f"e{n:06d}|"
    users = [tag + text for text in data.draw(st.lists(user_text, min_size=1, max_size=3, unique=True))]
    ambiguous_user = f"a{n:06d}|"
    batch = data.draw(st.lists(event_items(users, ambiguous_user), min_size=1, max_size=25), label="batch")
    max_records = data.draw(st.sampled_from([1, 2, 3, 7, 2000]), label="max_records")
    CASES["event examples"] += 1
    CASES["event records"] += len(batch)

    records, stats = h.run_worker([item.payload for item in batch], max_records)
    by_id = {record.event_id: item for record, item in zip(records, batch, strict=True)}
    good = [(r, i) for r, i in zip(records, batch, strict=True) if i.kind == "good"]
    h.good_only([r for r, _ in good])

    # every bad event is a dead letter with its reason; no good event is one
    letters = h.dead_letters(set(by_id))
    for event_id, item in by_id.items():
        if item.kind == "bad":
            assert event_id in letters, (item.payload, stats.dead_letter_reasons)
            reason = letters[event_id]["reason"]
            assert isinstance(reason, str) and reason.strip()
            assert reason.startswith(item.reason), (item.payload, reason)
            assert letters[event_id]["payload"] == item.payload.decode("utf-8", "replace")
        elif item.kind == "good":
            assert event_id not in letters, (item.payload, letters[event_id]["reason"])

    # the counters add up
    n_bad = sum(item.kind == "bad" for item in batch)
    n_ambiguous = sum(item.kind == "ambiguous" for item in batch)
    kept = [(r, i) for r, i in good if expected_event_row(i.event) is not None]
    n_filtered = len(good) - len(kept)
    assert stats.records == len(batch)
    assert len(letters) == stats.dead_letters, stats
    assert stats.records == stats.rows + stats.filtered + stats.dead_letters, stats
    assert sum(stats.dead_letter_reasons.values()) == stats.dead_letters
    assert stats.dead_letters >= n_bad and stats.rows >= len(kept) and stats.filtered >= n_filtered, stats
    assert (stats.dead_letters - n_bad) + (stats.rows - len(kept)) + (
        stats.filtered - n_filtered
    ) == n_ambiguous

    # the good events' rows, nothing more: as a run of them alone, and as computed from the events
    for user in users:
        mine = [(r, i) for r, i in kept if i.user == user]
        stored = h.rows(h.store, user)
        assert stored == h.rows(h.scratch, user), user
        assert sorted((ts, seq) for ts, seq, _ in stored) == sorted(
            (i.event["ts"], int(r.offset)) for r, i in mine
        )
        expected = {int(r.offset): expected_event_row(i.event) for r, i in mine}
        for _, seq, values in stored:
            assert close(expected[seq], values), (expected[seq], values)
    with_rows = {h.key(user) for user in users if any(i.user == user for _, i in kept)}
    assert h.keys_with_prefix(tag) == with_rows
    CASES["event dead letters"] += stats.dead_letters
    CASES["event rows"] += stats.rows


# ------------------------------------------------------------------ entity GroupBy, mutation topic


@st.composite
def images(draw: st.DrawFn, users: list[str]) -> dict[str, Any]:
    row: dict[str, Any] = {"user_id": draw(st.sampled_from(users)), "ts": draw(timestamps)}
    for name, values in (
        ("id", st.integers(*INT64)),
        ("price", st.one_of(st.none(), finite, st.floats(990, 1010))),
        ("item", items),
    ):
        if draw(st.integers(0, 5)):
            row[name] = draw(values)
    return row


def debezium(op: Any, before: Any, after: Any, ts_ms: Any, wrap: bool) -> dict[str, Any]:
    envelope = {"before": before, "after": after, "op": op, "ts_ms": ts_ms, "source": {"table": "accounts"}}
    return {"schema": {"type": "struct"}, "payload": envelope} if wrap else envelope


def bad_image(draw: st.DrawFn, image: dict[str, Any]) -> tuple[dict[str, Any], str]:
    """A row image the Query must refuse, and the reason's kind."""
    fault = draw(
        st.sampled_from(["no key", "null key", "no time", "null time", "key type", "price type", "id"])
    )
    bad = dict(image)
    if (bad.get("price") or 0) >= 1000:  # what the where filters out is not read further (nor a dead letter)
        bad["price"] = 1.0
    if fault == "no key":
        del bad["user_id"]
    elif fault == "null key":
        bad["user_id"] = None
    elif fault == "no time":
        del bad["ts"]
    elif fault == "null time":
        bad["ts"] = None
    elif fault == "key type":
        bad["user_id"] = draw(not_a_string)
        return bad, "the Query cannot read this event"
    elif fault == "price type":
        bad["price"] = draw(not_a_number)
        return bad, "the Query cannot read this event"
    else:
        bad["id"] = draw(not_an_integer)
        return bad, "the Query cannot read this event"
    return bad, "missing key" if "key" in fault else "missing time"


@st.composite
def mutation_items(draw: st.DrawFn, users: list[str]) -> Item:
    image = draw(images(users))
    other = draw(images(users))
    mutation_ts = draw(timestamps)
    wrap = draw(st.booleans())
    fault = draw(
        st.sampled_from(
            ["row", "row", "row", "c", "r", "u", "u", "d"]
            + ["garbage", "non-object", "bad image", "row time", "row flag", "row half", "neither"]
            + ["op", "no op", "non-row op", "no ts_ms", "ts_ms", "image type", "no after", "no before"]
            + ["reserved"]
        )
    )
    if fault == "row":
        is_before = draw(st.booleans())
        event = {**draw(extra_columns), **image}
        event.update(mutation_ts=mutation_ts, is_before=is_before)
        rows = [{**image, "mutation_ts": mutation_ts, "is_before": is_before}]
        return Item(encode(event, draw), "good", event=event, rows=rows)
    if fault in ("c", "r"):
        rows = [{**image, "mutation_ts": mutation_ts, "is_before": False}]
        before = draw(st.sampled_from([None, "absent"]))
        event = debezium(fault, before, image, mutation_ts, wrap)
        if before == "absent":
            del (event["payload"] if wrap else event)["before"]
        return Item(encode(event, draw), "good", event=event, rows=rows)
    if fault == "u":
        rows = [{**image, "mutation_ts": mutation_ts, "is_before": True}]
        rows.append({**other, "mutation_ts": mutation_ts, "is_before": False})
        event = debezium("u", image, other, mutation_ts, wrap)
        return Item(encode(event, draw), "good", event=event, rows=rows)
    if fault == "d":
        rows = [{**image, "mutation_ts": mutation_ts, "is_before": True}]
        event = debezium("d", image, None, mutation_ts, wrap)
        return Item(encode(event, draw), "good", event=event, rows=rows)
    good_payload = json.dumps({**image, "mutation_ts": mutation_ts, "is_before": False}).encode()
    if fault == "garbage":
        return Item(garbage(draw, good_payload), "bad", "not valid JSON")
    if fault == "non-object":
        value = draw(st.one_of(scalars, st.lists(junk, max_size=3)))
        return Item(json.dumps(value).encode(), "bad", "an event must be a JSON object")
    if fault == "bad image":  # one image, refused by the Query: the row format, a create or a delete
        bad, reason = bad_image(draw, image)
        shape = draw(st.sampled_from(["row", "c", "d"]))
        if shape == "row":
            event = {**bad, "mutation_ts": mutation_ts, "is_before": draw(st.booleans())}
        else:
            event = debezium(
                shape, bad if shape == "d" else None, bad if shape == "c" else None, mutation_ts, wrap
            )
        return Item(encode(event, draw), "bad", reason)
    if fault == "row time":
        event = {
            **image,
            "mutation_ts": draw(
                st.one_of(
                    not_an_integer, st.none(), st.floats(0.5, 1e12).filter(lambda f: not f.is_integer())
                )
            ),
            "is_before": False,
        }
        return Item(encode(event, draw), "bad", "bad mutation time")
    if fault == "row flag":
        flag = draw(
            st.one_of(st.integers(0, 1), st.none(), st.text(max_size=5), st.lists(st.booleans(), max_size=1))
        )
        event = {**image, "mutation_ts": mutation_ts, "is_before": flag}
        return Item(encode(event, draw), "bad", "bad reversal flag")
    if fault == "row half":
        if draw(st.booleans()):
            return Item(encode({**image, "mutation_ts": mutation_ts}, draw), "bad", "missing reversal flag")
        return Item(encode({**image, "is_before": True}, draw), "bad", "missing mutation time")
    if fault == "neither":
        return Item(encode(image, draw), "bad", "unknown mutation format")
    if fault == "op":
        op = draw(
            st.one_of(
                st.text(max_size=3).filter(lambda o: o not in {"c", "u", "d", "r", "t", "m"}),
                st.integers(),
                st.none(),
            )
        )
        return Item(encode(debezium(op, None, image, mutation_ts, wrap), draw), "bad", "bad Debezium event")
    if fault == "no op":
        event = debezium("c", None, image, mutation_ts, wrap)
        del (event["payload"] if wrap else event)["op"]
        return Item(encode(event, draw), "bad", "bad Debezium event")
    if fault == "non-row op":
        op = draw(st.sampled_from(["t", "m"]))
        return Item(
            encode(debezium(op, None, None, mutation_ts, wrap), draw), "bad", "unsupported Debezium op"
        )
    if fault == "no ts_ms":
        event = debezium("c", None, image, mutation_ts, wrap)
        del (event["payload"] if wrap else event)["ts_ms"]
        return Item(encode(event, draw), "bad", "missing mutation time")
    if fault == "ts_ms":
        ts_ms = draw(st.one_of(not_an_integer, st.none()))
        return Item(encode(debezium("u", image, other, ts_ms, wrap), draw), "bad", "bad mutation time")
    if fault == "image type":
        which = draw(st.sampled_from(["before", "after"]))
        value = draw(
            st.one_of(st.lists(scalars, max_size=2), st.text(max_size=3), st.integers(), st.booleans())
        )
        event = debezium("u", image, other, mutation_ts, wrap)
        (event["payload"] if wrap else event)[which] = value
        return Item(encode(event, draw), "bad", "bad Debezium event")
    if fault == "no after":
        op = draw(st.sampled_from(["c", "r", "u"]))
        return Item(encode(debezium(op, image, None, mutation_ts, wrap), draw), "bad", "bad Debezium event")
    if fault == "no before":
        op = draw(st.sampled_from(["u", "d"]))
        return Item(encode(debezium(op, None, other, mutation_ts, wrap), draw), "bad", "missing before image")
    # reserved: a row image holding the mutation time or reversal column
    column = draw(st.sampled_from(["mutation_ts", "is_before"]))
    event = debezium("c", None, {**image, column: draw(junk)}, mutation_ts, wrap)
    return Item(encode(event, draw), "bad", "reserved column")


def expected_mutation_row(row: dict[str, Any]) -> list[Any] | None:
    """Values of a mutation row in `row_columns` order, without the row id; None if filtered out."""
    price = row.get("price")
    if price is not None and price >= 1000:
        return None
    return [row.get("item"), price, row["mutation_ts"], row["is_before"]]


@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck), phases=PHASES)
@given(data=st.data())
def test_entity_worker_fuzz(entity_harness: Harness, data: st.DataObject) -> None:
    h = entity_harness
    assert h.columns == ["item", "price", "__mutation_ts", "__is_before", "__row_id"]
    n = next(h.counter)
    tag = f"m{n:06d}|"
    users = [tag + text for text in data.draw(st.lists(user_text, min_size=1, max_size=3, unique=True))]
    batch = data.draw(st.lists(mutation_items(users), min_size=1, max_size=20), label="batch")
    max_records = data.draw(st.sampled_from([1, 2, 5, 2000]), label="max_records")
    CASES["entity examples"] += 1
    CASES["entity records"] += len(batch)

    records, stats = h.run_worker([item.payload for item in batch], max_records)
    by_id = {record.event_id: item for record, item in zip(records, batch, strict=True)}
    good = [(r, i) for r, i in zip(records, batch, strict=True) if i.kind == "good"]
    h.good_only([r for r, _ in good])

    # counters: a record is rows (1, or 2 for an update) or one dead letter
    n_bad = sum(item.kind == "bad" for item in batch)
    expanded = [(r, row) for r, i in good for row in i.rows]
    kept = [(r, row) for r, row in expanded if expected_mutation_row(row) is not None]
    assert stats.records == len(batch)
    assert stats.dead_letters == n_bad, stats.dead_letter_reasons
    assert sum(stats.dead_letter_reasons.values()) == stats.dead_letters
    assert stats.rows == len(kept), stats
    assert stats.rows + stats.filtered == len(expanded), stats

    letters = h.dead_letters(set(by_id))
    assert len(letters) == n_bad
    for event_id, item in by_id.items():
        if item.kind == "bad":
            assert event_id in letters, item.payload
            reason = letters[event_id]["reason"]
            assert isinstance(reason, str) and reason.strip()
            assert reason.startswith(item.reason), (item.payload, reason)
        else:
            assert event_id not in letters, (item.payload, letters[event_id]["reason"])

    for user in users:
        stored = h.rows(h.store, user)
        assert stored == h.rows(h.scratch, user), user
        mine = [(r, row) for r, row in kept if row["user_id"] == user]
        assert sorted((ts, seq) for ts, seq, _ in stored) == sorted(
            (row["ts"], int(r.offset)) for r, row in mine
        )
        expected = [(row["ts"], int(r.offset), expected_mutation_row(row)) for r, row in mine]
        got = [(ts, seq, values[:-1]) for ts, seq, values in stored]  # the row id: as the good-only run
        assert sorted(expected, key=repr) == sorted(got, key=repr)
    with_rows = {h.key(row["user_id"]) for _, row in kept}
    assert h.keys_with_prefix(tag) == with_rows
    CASES["entity dead letters"] += stats.dead_letters
    CASES["entity rows"] += stats.rows


# ------------------------------------------------------------------ bugs pinned


def _apply_alone(harness: Harness, payloads: list[bytes], offset: int) -> tuple[Any, list[Record]]:
    records = [
        Record(harness.topic, "pinned", str(offset + index), payload, 0)
        for index, payload in enumerate(payloads)
    ]
    applier = RecordApplier(harness.group_by, harness.scratch, clock=clock, schema=harness.schema)
    applier.apply(records)
    return applier.stats, records


@pytest.mark.parametrize(("column", "value"), [("qty", 1.5), ("qty", -2.75), ("ts", BATCH_END + 0.5)])
def test_a_fractional_number_in_an_integer_column_is_a_dead_letter(
    event_harness: Harness, column: str, value: float
) -> None:
    user = f"pinned-{column}-{value}"
    event = {"user_id": user, "item_id": "a", "price": 1.0, "qty": 1, "ts": BATCH_END, column: value}
    stats, _ = _apply_alone(event_harness, [json.dumps(event).encode()], 1000 + int(abs(value) * 10))
    assert (stats.rows, stats.dead_letters) == (0, 1), (
        stats,
        event_harness.rows(event_harness.scratch, user),
    )


@pytest.mark.parametrize("column", ["ts", "qty"])
def test_an_integer_beyond_int64_is_a_dead_letter(event_harness: Harness, column: str) -> None:
    user = f"pinned-beyond-{column}"
    event = {"user_id": user, "item_id": "a", "price": 1.0, "qty": 1, "ts": BATCH_END, column: -(2**63) - 1}
    stats, _ = _apply_alone(event_harness, [json.dumps(event).encode()], 3000 + len(column))
    assert (stats.rows, stats.dead_letters) == (0, 1), (
        stats,
        event_harness.rows(event_harness.scratch, user),
    )


@pytest.mark.parametrize("fault", ["before null key", "before wrong type", "after wrong type", "both"])
def test_a_debezium_update_with_a_refused_image_is_one_dead_letter(
    entity_harness: Harness, fault: str
) -> None:
    user = f"pinned-{fault}"
    good = {"id": 7, "user_id": user, "price": 2.0, "item": "a", "ts": BATCH_END}
    before, after = dict(good), {**good, "price": 3.0}
    if fault == "before null key":
        before["user_id"] = None
    if fault in ("before wrong type", "both"):
        before["price"] = "abc"
    if fault in ("after wrong type", "both"):
        after["price"] = "def"
    event = debezium("u", before, after, BATCH_END + 5, wrap=False)
    offset = 2000 + ["before null key", "before wrong type", "after wrong type", "both"].index(fault)
    stats, _ = _apply_alone(entity_harness, [json.dumps(event).encode()], offset)
    assert (stats.records, stats.rows, stats.dead_letters) == (1, 0, 1), stats
    assert entity_harness.rows(entity_harness.scratch, user) == []
