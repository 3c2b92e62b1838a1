"""The stream worker (SPEC §5): topic → the GroupBy's Query → idempotent rows in the online store.

Each micro-batch is evaluated by DuckDB with the very SQL the offline engine runs (selects, wheres,
time column), so an event means the same thing on both paths. Every resulting row is stored under
its key with the record's event id: applying a record twice (a replay, a restart after a crash, two
workers in one group) changes nothing, and the consumer offsets are recorded in the same atomic
store write. Malformed events go to the dead-letter set with their reason; the worker goes on.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import duckdb
import pyarrow as pa

from gnomon.compile.plan import GroupByPlan, SourcePlan
from gnomon.compile.sql import quote
from gnomon.online.features import row_columns
from gnomon.online.records import StreamRow, dead_letter_key, entity_key, rows_key
from gnomon.online.stores.base import OnlineStore
from gnomon.streaming.brokers.base import Broker, Consumer, Record

log = logging.getLogger("gnomon.stream")


@dataclass
class WorkerStats:
    """Counters of one worker's run."""

    records: int = 0
    rows: int = 0
    filtered: int = 0
    dead_letters: int = 0
    batches: int = 0
    dead_letter_reasons: dict[str, int] = field(default_factory=dict)


class QueryEvaluator:
    """Evaluates a source's Query over JSON events with DuckDB, exactly as the offline engine does."""

    def __init__(self, group_by: GroupByPlan, source: SourcePlan, schema: pa.Schema | None = None) -> None:
        self.group_by = group_by
        # the warehouse table's schema: events are read with the same column types as offline, a
        # field an event leaves out is null, and a value of the wrong type is a dead letter
        self.schema = None if schema is None else pa.schema([f for f in schema if f.name != "ds"]).append(
            pa.field("__index", pa.int64()))
        self.columns = row_columns(group_by)
        self.connection = duckdb.connect()
        selects = source.selects or {c: quote(c) for c in [*group_by.keys, *self.columns]}
        wanted = [*group_by.keys, *[c for c in self.columns if c not in group_by.keys]]
        select_list = ", ".join(f"({selects[c]}) AS {quote(c)}" if c in selects else f"NULL AS {quote(c)}"
                                for c in wanted)
        where = " AND ".join(f"({w})" for w in source.wheres) or "TRUE"
        self.sql = (f"SELECT __index, {select_list}, CAST(({source.time_column}) AS BIGINT) AS ts "
                    f"FROM __events WHERE {where}")

    def evaluate(self, events: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Rows (with ``__index`` = position in ``events``) for the events the wheres keep."""
        table = pa.Table.from_pylist([{**event, "__index": index} for index, event in enumerate(events)],
                                     schema=self.schema)
        self.connection.register("__events", table)
        try:
            return self.connection.sql(self.sql).to_arrow_table().to_pylist()  # type: ignore[no-any-return]
        finally:
            self.connection.unregister("__events")


class RecordApplier:
    """Turns records into stored rows (and dead letters) for one GroupBy: the worker's core, also
    used by read-after-write ingestion."""

    def __init__(self, group_by: GroupByPlan, store: OnlineStore, clock: Callable[[], float] = time.time,
                 schema: pa.Schema | None = None) -> None:
        streamed = [s for s in group_by.sources if s.topic]
        if not streamed:
            from gnomon.errors import ConfigError

            raise ConfigError(f"GroupBy {group_by.name!r} has no source with a topic; add topic=... to its "
                              "EventSource to stream it")
        self.group_by = group_by
        self.source = streamed[0]
        self.topic: str = streamed[0].topic  # type: ignore[assignment]
        self.store = store
        self.clock = clock
        self.evaluator = _evaluator(group_by, self.source, schema)
        self.stats = WorkerStats()

    def apply(self, records: Sequence[Record], consumer_group: str | None = None) -> None:
        """Store the rows of one micro-batch, and the group's offsets, in one atomic write."""
        events: list[dict[str, Any]] = []
        origins: list[Record] = []
        dead: list[tuple[Record, str]] = []
        for record in records:
            try:
                event = json.loads(record.payload)
            except (ValueError, UnicodeDecodeError) as error:
                dead.append((record, f"not valid JSON: {error}"))
                continue
            if not isinstance(event, dict):
                dead.append((record, f"an event must be a JSON object, got {type(event).__name__}"))
                continue
            events.append(event)
            origins.append(record)
        rows, evaluation_dead = self._evaluate(events, origins)
        dead.extend(evaluation_dead)
        arrived_at = int(self.clock() * 1000)
        items = []
        columns = self.evaluator.columns
        for row in rows:
            record = origins[row["__index"]]
            key = entity_key([row[k] for k in self.group_by.keys])
            stored = StreamRow(row["ts"], arrived_at, _seq(record), [row[c] for c in columns])
            items.append((rows_key(self.group_by.name, key), record.event_id.encode(), stored.encode()))
        for record, reason in dead:
            letter = json.dumps({"reason": reason, "payload": record.payload.decode("utf-8", "replace"),
                                 "group_by": self.group_by.name, "event_id": record.event_id})
            items.append((dead_letter_key(self.topic), record.event_id.encode(), letter.encode()))
            kind = reason.split(":")[0]
            self.stats.dead_letter_reasons[kind] = self.stats.dead_letter_reasons.get(kind, 0) + 1
        offsets = {record.partition: record.offset for record in records} if consumer_group else None
        self.store.add_rows(items, consumer=consumer_group, offsets=offsets)
        self.stats.records += len(records)
        self.stats.rows += len(rows)
        self.stats.dead_letters += len(dead)
        self.stats.filtered += len(events) - len(rows) - len(evaluation_dead)
        self.stats.batches += 1

    def _evaluate(self, events: list[dict[str, Any]], origins: list[Record]) -> tuple[list[dict[str, Any]],
                                                                                     list[tuple[Record, str]]]:
        if not events:
            return [], []
        try:
            rows = self.evaluator.evaluate(events)
        except (pa.ArrowException, duckdb.Error, TypeError, ValueError):
            if len(events) == 1:
                return [], [(origins[0], f"the Query cannot read this event: {_why(self.evaluator, events[0])}")]
            rows = []
            dead: list[tuple[Record, str]] = []
            for index, (event, origin) in enumerate(zip(events, origins, strict=True)):  # isolate the bad events
                one, bad = self._evaluate([event], [origin])
                rows.extend({**row, "__index": index} for row in one)
                dead.extend(bad)
            return rows, dead
        good, dead = [], []
        for row in rows:
            missing = [k for k in self.group_by.keys if row[k] is None]
            if missing:
                dead.append((origins[row["__index"]], f"missing key: {missing[0]!r} is null or absent"))
            elif row["ts"] is None:
                dead.append((origins[row["__index"]], f"missing time: {self.source.time_column!r} is null or absent"))
            else:
                good.append(row)
        return good, dead


class StreamWorker:
    """Consumes one GroupBy's topic into the online store."""

    def __init__(self, group_by: GroupByPlan, store: OnlineStore, broker: Broker, group: str | None = None,
                 name: str | None = None, clock: Callable[[], float] = time.time,
                 schema: pa.Schema | None = None) -> None:
        self.applier = RecordApplier(group_by, store, clock, schema)
        self.group_by = group_by
        self.topic = self.applier.topic
        self.store = store
        self.broker = broker
        self.group = group or f"gnomon.{group_by.name}"
        self.consumer: Consumer = broker.consumer(self.topic, self.group, name)

    @property
    def stats(self) -> WorkerStats:
        return self.applier.stats

    def run(self, until_caught_up: bool = False, max_records: int = 2000, poll_timeout_s: float = 0.5,
            stop: Callable[[], bool] | None = None) -> WorkerStats:
        """Process micro-batches until stopped (or, with ``until_caught_up``, until the topic's end)."""
        target = self.broker.end_offsets(self.topic) if until_caught_up else None
        seen: dict[str, str] = {}
        while stop is None or not stop():
            records = self.consumer.poll(max_records, poll_timeout_s)
            if records:
                self.process(records)
                for record in records:
                    seen[record.partition] = record.offset
            if target is not None and _caught_up(seen, target, self.store.offsets(self.group)):
                break
        return self.stats

    def process(self, records: Sequence[Record]) -> None:
        """Apply one micro-batch (rows and offsets atomically), then commit it to the broker."""
        self.applier.apply(records, self.group)
        self.consumer.commit(records)

    def close(self) -> None:
        self.consumer.close()


_EVALUATORS: dict[tuple[str, int, str | None], QueryEvaluator] = {}


def _evaluator(group_by: GroupByPlan, source: SourcePlan, schema: pa.Schema | None) -> QueryEvaluator:
    """One evaluator per GroupBy, schema and thread (DuckDB connections are not shared across threads)."""
    import threading

    key = (group_by.name, threading.get_ident(), None if schema is None else schema.to_string())
    evaluator = _EVALUATORS.get(key)
    if evaluator is None or evaluator.group_by is not group_by:
        evaluator = _EVALUATORS[key] = QueryEvaluator(group_by, source, schema)
    return evaluator


def _why(evaluator: QueryEvaluator, event: dict[str, Any]) -> str:
    try:
        evaluator.evaluate([event])
    except Exception as error:  # noqa: BLE001 — the message is the reason we store
        return f"{type(error).__name__}: {str(error).splitlines()[0]}"
    return "unknown"


def _seq(record: Record) -> int:
    """Arrival order within a partition, as an int (embedded: the offset; Redis: ms-seq)."""
    offset = record.offset
    if "-" in offset:
        ms, _, counter = offset.partition("-")
        return int(ms) * 1_000_000 + int(counter)
    try:
        return int(offset)
    except ValueError:
        return 0


def _caught_up(seen: dict[str, str], target: dict[str, str], committed: dict[str, str]) -> bool:
    from gnomon.streaming.brokers import offset_order

    for partition, end in target.items():
        done = [o for o in (committed.get(partition), seen.get(partition)) if o is not None]
        if not done or max(offset_order(o) for o in done) < offset_order(end):
            return False
    return True
