"""The stream worker (SPEC §5): topic → the GroupBy's Query → idempotent rows in the online store.

Each micro-batch is evaluated by DuckDB with the very SQL the offline engine runs (selects, wheres,
time column), so an event means the same thing on both paths. Polling, preparing and writing
micro-batches overlap in three threads (`StreamWorker.run`). Every resulting row is stored under
its key with the record's event id: applying a record twice (a replay, a restart after a crash, two
workers in one group) changes nothing, and the consumer offsets are recorded in the same atomic
store write. Malformed events go to the dead-letter set with their reason; the worker goes on.
"""

from __future__ import annotations

import contextlib
import decimal
import io
import json
import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from itertools import repeat
from typing import Any

import duckdb
import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pa_json

from gnomon import jsonio
from gnomon.compile.features import SOURCE_COLUMN, row_columns, stream_id
from gnomon.compile.plan import GroupByPlan, Plan, SourcePlan
from gnomon.compile.sql import quote, row_id_sql
from gnomon.metrics import StreamMetrics
from gnomon.online.fold import Folder, can_fold
from gnomon.online.records import (
    dead_letter_key,
    encode_stream_rows,
    encode_stream_rows_columnar,
    entity_key,
    rows_key,
)
from gnomon.online.stores.base import OnlineStore
from gnomon.streaming.brokers.base import Broker, Consumer, Record
from gnomon.streaming.cdc import MutationFormatError, debezium_rows_table, mutation_rows

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


@dataclass(frozen=True)
class PreparedBatch:
    """A micro-batch ready for the store: (key, event id, value) items and the offsets it covers.
    ``fenced``: the offsets decide whether it is written at all (`OnlineStore.add_rows`), so that a
    batch replayed under offsets already recorded changes nothing (Spark's batch ids)."""

    items: list[tuple[bytes, bytes, bytes]]
    consumer_group: str | None
    offsets: dict[str, str] | None
    rows: int = 0
    dead_letters: int = 0
    fenced: bool = False


class QueryEvaluator:
    """Evaluates a source's Query over JSON events with DuckDB, exactly as the offline engine does.

    Events come in as an Arrow table (`json_table`: a whole micro-batch read by Arrow's JSON reader;
    `table`: events parsed one by one), with each record's partition, offset and arrival order
    (`_seq`). Besides the Query's columns, `evaluate_table` gives what the store needs per row,
    computed column-wise by Arrow: the row key (``rows_prefix`` + the `entity_key` JSON; null where
    only Python can write it) and the event id."""

    def __init__(
        self,
        group_by: GroupByPlan,
        source: SourcePlan,
        schema: pa.Schema | None = None,
        rows_prefix: bytes = b"",
    ) -> None:
        self.group_by = group_by
        # the warehouse table's schema: events are read with the same column types as offline, a
        # field an event leaves out is null, and a value of the wrong type is a dead letter
        self.schema = None if schema is None else pa.schema([f for f in schema if f.name != "ds"])
        self.columns = row_columns(group_by)
        # one thread: a micro-batch is small, and the store's server wants the other core
        self.connection = duckdb.connect(config={"threads": 1})
        selects = dict(source.selects or {c: quote(c) for c in [*group_by.keys, *self.columns]})
        time_column = source.time_column
        selects[SOURCE_COLUMN] = str(group_by.sources.index(source))
        self.mutations = source.kind == "entities"
        if self.mutations:  # mutation rows: their time, their direction, and the identity of their raw row
            if self.schema is None:
                from gnomon.errors import ConfigError

                raise ConfigError(
                    f"GroupBy {group_by.name!r}: snapshot table {source.table!r} has no partition yet, "
                    "so its mutation rows cannot be read; land a snapshot and run `gnomon upload` first"
                )
            mutation_time, reversal = source.mutation_time_column, source.reversal_column
            raw = [n for n in self.schema.names if n not in (mutation_time, reversal)]
            selects.update(
                {
                    "__mutation_ts": f"CAST({quote(mutation_time)} AS BIGINT)",
                    "__is_before": f"CAST({quote(reversal)} AS BOOLEAN)",
                    "__row_id": row_id_sql(raw),
                }
            )
            if time_column == "ts" and "ts" not in raw:  # rows without a time are known as of their mutation
                time_column = quote(mutation_time)
        wanted = [*group_by.keys, *[c for c in self.columns if c not in group_by.keys]]
        select_list = ", ".join(
            f"({selects[c]}) AS {quote(c)}" if c in selects else f"NULL AS {quote(c)}" for c in wanted
        )
        where = " AND ".join(f"({w})" for w in source.wheres) or "TRUE"
        self.sql = (
            f"SELECT __index, __partition, __offset, __seq, __published, {select_list}, "
            f"CAST(({time_column}) AS BIGINT) AS ts FROM __events WHERE {where}"
        )
        self.rows_prefix = rows_prefix
        self.source = source
        self._relation: duckdb.DuckDBPyRelation | None = None
        self._json_parse = _json_parse_options(self.schema)
        self._debezium_parse = _debezium_parse_options(self._json_parse, source) if self.mutations else None
        # the mutation columns as JSON object keys: a batch whose first payload lacks them is not rows
        self._mutation_names = (
            [orjson.dumps(source.mutation_time_column), orjson.dumps(source.reversal_column)]
            if self.mutations
            else []
        )

    def json_table(self, records: Sequence[Record]) -> pa.Table | None:
        """The records' JSON payloads read by Arrow's JSON reader straight into the warehouse
        schema (with ``__index``, ``__partition``, ``__offset``), or None when this fast path does
        not apply: no schema known, a payload that is not one single-line JSON object, or any value
        the reader rejects. The caller then parses event by event, which finds the dead letters.

        On a mutation topic, a batch of Debezium change events is read as their envelopes and
        converted column-wise (`debezium_rows_table`): the table holds their mutation rows, one or
        two per record, ``__index`` being each row's record."""
        if self._json_parse is None or self.schema is None or not records:
            return None
        partitions, offsets, payloads, published = _record_columns(records)
        data = _json_lines(payloads)
        if data is None:
            return None
        if self.mutations and not all(name in payloads[0] for name in self._mutation_names):
            return self._debezium_table(data, len(payloads), (partitions, offsets, published))
        table = _read_json(data, self._json_parse, len(payloads))
        if table is None:
            return None
        columns = self._typed_columns(table)
        if self.mutations and any(
            columns[self.schema.get_field_index(name)].null_count
            for name in (self.source.mutation_time_column, self.source.reversal_column)
        ):
            return None  # not mutation rows (e.g. Debezium events): converted event by event
        return self._with_origins(
            pa.Table.from_arrays(columns, schema=self.schema), (partitions, offsets, published)
        )

    def _debezium_table(
        self, data: bytes, count: int, origins: tuple[Sequence[str], Sequence[str], Sequence[int]]
    ) -> pa.Table | None:
        """`json_table` of ``count`` Debezium change events (``data``: their lines)."""
        if self._debezium_parse is None or b"\\u" in data or any(n in data for n in self._mutation_names):
            # an image with a column named as a mutation column (the reader would drop it, maybe
            # spelled with escapes) is refused event by event
            return None
        envelopes = _read_json(data, self._debezium_parse, count)
        converted = (
            None
            if envelopes is None
            else debezium_rows_table(envelopes, self.source.mutation_time_column, self.source.reversal_column)
        )
        if converted is None:
            return None
        rows, events, suffixes = converted
        partitions, offsets, published = (
            pa.array(values, type_).take(events)
            for values, type_ in zip(origins, (pa.string(), pa.string(), pa.int64()), strict=True)
        )
        table = pa.Table.from_arrays(self._typed_columns(rows), schema=self.schema)
        return self._with_origins(table, (partitions, offsets, published), suffixes, events)

    def _typed_columns(self, table: pa.Table) -> list[pa.ChunkedArray]:
        """The columns of a table the JSON reader read with `_json_parse_options`, as the schema's."""
        assert self.schema is not None
        return [
            column if column.type == wanted.type else column.cast(wanted.type)  # integers to times
            for column, wanted in zip(table.select(self.schema.names).columns, self.schema, strict=True)
        ]

    def table(
        self,
        events: list[dict[str, Any]],
        origins: Sequence[Record] | None = None,
        suffixes: Sequence[str] | None = None,
    ) -> pa.Table:
        """Parsed events as an Arrow table of the warehouse schema, plus ``__index`` (their
        position) and their records' ``__partition`` and ``__offset``.

        Column by column, with the conversions of ``pa.Table.from_pylist`` (a missing field is null,
        a value of the wrong type raises), without its per-row overhead."""
        if self.schema is None:
            table = pa.Table.from_pylist(events)
        else:
            arrays = [
                pa.array(_typed(list(map(dict.get, events, repeat(f.name))), f.type), type=f.type)
                for f in self.schema
            ]
            table = pa.Table.from_arrays(arrays, schema=self.schema)
        if origins is None:
            n = len(events)
            return self._with_origins(table, (["0"] * n, ["0"] * n, [0] * n), suffixes)
        partitions, offsets, _, published = _record_columns(origins)
        return self._with_origins(table, (partitions, offsets, published), suffixes)

    @staticmethod
    def _with_origins(
        table: pa.Table,
        origins: tuple[Sequence[str] | pa.Array, Sequence[str] | pa.Array, Sequence[int] | pa.Array],
        suffixes: Sequence[str] | pa.Array | None = None,
        index: pa.Array | None = None,
    ) -> pa.Table:
        """``origins``: each row's record's partition, offset and publication time (`_record_columns`).
        ``suffixes``: appended to each row's offset in its event id (a record that converts to
        several mutation rows gives each its own id; the order ``__seq`` is the record's).
        ``index``: each row's ``__index`` (default: its position)."""
        partitions, offset_strings, published = origins
        if index is None:
            index = pa.array(np.arange(len(partitions), dtype=np.int64))
        table = table.append_column("__index", index)
        table = table.append_column("__partition", _array(partitions, pa.string()))
        offsets = _array(offset_strings, pa.string())
        seqs = _seqs(offsets)
        if suffixes is not None:
            offsets = pc.binary_join_element_wise(offsets, _array(suffixes, pa.string()), "")
        return (
            table.append_column("__offset", offsets)
            .append_column("__seq", seqs)
            .append_column("__published", _array(published, pa.int64()))
        )

    def evaluate_table(
        self, table: pa.Table, stored: bool = True, arrived_at: int | None = None
    ) -> dict[str, list[Any]]:
        """The Query's output columns (``__index`` = row of ``table``, ``__seq``) for the rows the
        wheres keep; ``stored`` adds each row's store key ``__key`` (``rows_prefix`` + `entity_key`;
        None where only Python can write it) and ``__event_id``, computed column-wise by Arrow; with
        ``arrived_at`` too, ``__row``: the encoded `StreamRow` of each row, in place of the value
        columns, when their types allow (`encode_stream_rows_columnar`)."""
        self.connection.register("__events", table)  # replaces the previous batch's table
        if self.schema is None:  # the table's columns vary with the events: bind the query anew
            result = self.connection.sql(self.sql).to_arrow_table()
        else:
            if self._relation is None:  # bound once; it reads whatever __events holds when run
                self._relation = self.connection.sql(self.sql)
            result = self._relation.to_arrow_table()
        if stored:
            keys = _row_keys(result, self.group_by.keys, self.rows_prefix)
            event_ids = pc.binary_join_element_wise(result["__partition"], result["__offset"], ":")
            if (
                len(streamed_topics(self.group_by)) > 1
            ):  # offsets of two topics may be equal: ids name the topic
                event_ids = pc.binary_join_element_wise(
                    self.source.topic or self.source.mutation_topic, event_ids, ":"
                )
            result = (
                result.drop_columns(["__partition", "__offset"])
                .append_column("__key", keys)
                .append_column("__event_id", event_ids.cast(pa.binary()))
            )
        encoded = None
        if stored and arrived_at is not None:
            column = result.column
            encoded = encode_stream_rows_columnar(
                column("ts").combine_chunks(),
                column("__published").combine_chunks(),
                column("__seq").combine_chunks(),
                [column(c).combine_chunks() for c in self.columns],
            )
            if encoded is not None:  # the value columns need not leave Arrow
                keep = {*self.group_by.keys, "ts"}
                result = result.drop_columns([c for c in {*self.columns, "__seq"} if c not in keep])
        columns: dict[str, list[Any]] = result.to_pydict()
        if encoded is not None:
            columns["__row"] = encoded
        return columns

    def evaluate_columns(
        self,
        events: list[dict[str, Any]],
        origins: Sequence[Record] | None = None,
        suffixes: Sequence[str] | None = None,
    ) -> dict[str, list[Any]]:
        """`evaluate_table` of parsed events (``__index`` = position in ``events``); with
        ``origins`` (the events' records), also ``__key``, ``__event_id`` and ``__seq``."""
        return self.evaluate_table(self.table(events, origins, suffixes), stored=origins is not None)

    def evaluate(self, events: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """`evaluate_columns` as one dict per row."""
        columns = self.evaluate_columns(events)
        names = list(columns)
        return [dict(zip(names, row, strict=True)) for row in zip(*columns.values(), strict=True)]


def _typed(values: list[Any], type_: pa.DataType) -> list[Any]:
    """Values ready for `pa.array` of ``type_``: decimals from numbers and numeric strings; for an
    integer or time column, a number with a fraction is refused (Arrow would truncate it)."""
    if pa.types.is_decimal(type_):
        return _as_decimals(values)
    if pa.types.is_integer(type_) or pa.types.is_timestamp(type_) or pa.types.is_date(type_):
        for value in values:
            if type(value) is float and not value.is_integer():
                raise ValueError(f"{value!r} is not a whole number, for a column of type {type_}")
    return values


def _as_decimals(values: list[Any]) -> list[Any]:
    """JSON numbers and numeric strings for a decimal column, as Decimals (what Arrow's JSON reader
    accepts there too); a value that needs more scale than the column has still fails."""
    out = []
    for value in values:
        if type(value) in (int, float, str):
            with contextlib.suppress(decimal.InvalidOperation):  # else left as is: Arrow rejects it
                value = decimal.Decimal(str(value))
        out.append(value)
    return out


def _json_parse_options(schema: pa.Schema | None) -> pa_json.ParseOptions | None:
    """How the batch reader reads a warehouse schema, or None where it cannot match the
    event-by-event reader: timestamps and dates are read as the integers they are given as (Arrow's
    JSON reader would also take ISO strings there, which the event-by-event reader refuses) and cast
    after; other time types are left to the event-by-event reader."""
    if schema is None:
        return None
    fields = []
    for column in schema:
        if pa.types.is_timestamp(column.type):
            fields.append(pa.field(column.name, pa.int64()))
        elif pa.types.is_date32(column.type):
            fields.append(pa.field(column.name, pa.int32()))
        elif _has_temporal(column.type):
            return None
        else:
            fields.append(column)
    return pa_json.ParseOptions(explicit_schema=pa.schema(fields), unexpected_field_behavior="ignore")


def _debezium_parse_options(
    rows: pa_json.ParseOptions | None, source: SourcePlan
) -> pa_json.ParseOptions | None:
    """How Arrow's JSON reader reads Debezium change events of a mutation table whose rows it reads
    with ``rows``: the envelope's ``before`` and ``after`` as rows (without the two mutation
    columns), ``op`` and ``ts_ms``; anything else in the envelope (``source``, ...) is ignored."""
    if rows is None:
        return None
    reserved = (source.mutation_time_column, source.reversal_column)
    image = pa.struct([f for f in rows.explicit_schema if f.name not in reserved])
    envelope = [("before", image), ("after", image), ("op", pa.string()), ("ts_ms", pa.int64())]
    return pa_json.ParseOptions(explicit_schema=pa.schema(envelope), unexpected_field_behavior="ignore")


def _json_lines(payloads: Sequence[bytes]) -> bytes | None:
    """The payloads as JSON lines, or None unless each is one single-line object: every newline is
    then a separator, between a "}" and a "{"."""
    data = b"\n".join(payloads)
    separators = len(payloads) - 1
    if (
        data[:1] != b"{"
        or data[-1:] != b"}"
        or data.count(b"\n") != separators
        or data.count(b"}\n{") != separators
    ):
        return None
    return data


def _read_json(data: bytes, options: pa_json.ParseOptions, count: int) -> pa.Table | None:
    """JSON lines read by Arrow's JSON reader, or None when it rejects a value or finds other than
    ``count`` objects."""
    try:
        table = pa_json.read_json(io.BytesIO(data), read_options=_JSON_READ, parse_options=options)
    except (pa.ArrowException, ValueError):
        return None
    return table if table.num_rows == count else None


def _array(values: Sequence[Any] | pa.Array, type_: pa.DataType) -> pa.Array:
    return values if isinstance(values, pa.Array) else pa.array(values, type_)


def _has_temporal(type_: pa.DataType) -> bool:
    if pa.types.is_temporal(type_):
        return True
    return any(_has_temporal(type_.field(i).type) for i in range(type_.num_fields))


_JSON_READ = pa_json.ReadOptions(use_threads=False, block_size=1 << 26)
# what orjson escapes in a string (and DuckDB, Arrow or a plain concatenation would not write alike)
_NEEDS_ESCAPE = r'["\\\x00-\x1f]'


def _row_keys(table: pa.Table, keys: Sequence[str], prefix: bytes) -> pa.Array:
    """``prefix`` + `entity_key` of each row's key values, column-wise: exact for integer, boolean
    and string keys (a string holding a quote, a backslash or a control character excepted); null
    where Python must write the key."""
    pieces: list[Any] = [prefix.decode() + "["]
    for index, name in enumerate(keys):
        column = table[name]
        if pa.types.is_integer(column.type) or pa.types.is_boolean(column.type):
            piece = pc.cast(column, pa.string())
        elif pa.types.is_string(column.type) or pa.types.is_large_string(column.type):
            quoted = pc.binary_join_element_wise('"', column, '"', "")
            piece = pc.if_else(
                pc.match_substring_regex(column, _NEEDS_ESCAPE), pa.scalar(None, quoted.type), quoted
            )
        else:
            return pa.nulls(table.num_rows, pa.binary())
        pieces += [piece, "," if index < len(keys) - 1 else "]"]
    return pc.binary_join_element_wise(*pieces, "").cast(pa.binary())


class RecordApplier:
    """Turns records into stored rows (and dead letters) for one GroupBy: the worker's core, also
    used by read-after-write ingestion.

    A micro-batch is read whole by Arrow's JSON reader, evaluated by DuckDB in one query and encoded
    column-wise (`QueryEvaluator.evaluate_table`); only when the batch as a whole cannot be read or
    evaluated are its events parsed (orjson, the standard library for what it rejects, such as
    ``NaN``) and evaluated one by one, to isolate the bad ones as dead letters."""

    def __init__(
        self,
        group_by: GroupByPlan,
        store: OnlineStore,
        clock: Callable[[], float] = time.time,
        schema: pa.Schema | None = None,
        topic: str | None = None,
        plan: Plan | None = None,
        left_schema: pa.Schema | None = None,
    ) -> None:
        topics = streamed_topics(group_by)
        if not topics:
            from gnomon.errors import ConfigError

            raise ConfigError(
                f"GroupBy {group_by.name!r} has no source with a topic; add topic=... to its "
                "EventSource (or mutation_topic=... to its EntitySource) to stream it"
            )
        if topic is not None and topic not in topics:
            from gnomon.errors import UnknownObjectError

            raise UnknownObjectError(f"topic of GroupBy {group_by.name!r}", topic, topics)
        self.group_by = group_by
        self.topic: str = topic or next(iter(topics))
        self.source = topics[self.topic]
        self.store = store
        self.clock = clock
        self.evaluator = _evaluator(group_by, self.source, schema, rows_key(stream_id(group_by), b""))
        self.enricher = None
        if self.source.kind == "join":  # chaining: the parent's left events, enriched with its features
            if plan is None:
                raise ValueError(
                    f"GroupBy {group_by.name!r} reads a JoinSource: pass the plan to enrich its events"
                )
            from gnomon.streaming.chain import Enricher

            self.enricher = Enricher(plan, self.source, store, left_schema)
        self.stats = WorkerStats()

    def apply(self, records: Sequence[Record], consumer_group: str | None = None) -> None:
        """Store the rows of one micro-batch, and the group's offsets, in one atomic write."""
        self.write(self.prepare(records, consumer_group))

    def write(self, batch: PreparedBatch) -> bool:
        """The store write of a prepared micro-batch: rows, dead letters and offsets, atomically;
        False when a fenced batch was skipped (its offsets were recorded before)."""
        return self.store.add_rows(
            batch.items, consumer=batch.consumer_group, offsets=batch.offsets, fence=batch.fenced
        )

    def prepare(self, records: Sequence[Record], consumer_group: str | None = None) -> PreparedBatch:
        """Parse, evaluate and encode one micro-batch (everything but the store write)."""
        if self.enricher is None:
            return self._prepare(records, records, [], consumer_group)
        enriched, dead = self.enricher.enrich(records)  # a JoinSource: the parent's output rows
        return self._prepare(enriched, records, dead, consumer_group)

    def _prepare(
        self,
        records: Sequence[Record],
        consumed: Sequence[Record],
        enrichment_dead: list[tuple[Record, str]],
        consumer_group: str | None,
    ) -> PreparedBatch:
        """`prepare` of ``records`` (what the Query reads), for the ``consumed`` ones (offsets, counts)."""
        arrived_at = int(self.clock() * 1000)
        table = self.evaluator.json_table(records)
        if table is not None:  # the fast path: the whole batch read by Arrow, evaluated in one query
            try:
                rows, dead = self._complete_rows(
                    self.evaluator.evaluate_table(table, arrived_at=arrived_at), records
                )
            except (pa.ArrowException, duckdb.Error, TypeError, ValueError, OverflowError):
                pass  # e.g. a cast in the Query that fails for one event: find it event by event
            else:
                if self.evaluator.mutations and dead:
                    rows, dead = _whole_records(rows, records, dead)
                return self._prepared(
                    consumed,
                    records,
                    rows,
                    enrichment_dead + dead,
                    table.num_rows - len(dead),
                    consumer_group,
                    arrived_at,
                )
        events: list[dict[str, Any]] = []
        origins: list[Record] = []
        suffixes: list[str] = []
        dead = list(enrichment_dead)
        # exact integers (orjson reads huge ones as floats): checked for the whole batch at once
        checked = not jsonio.has_long_digits(b"\n".join([record.payload for record in records]))
        for record in records:
            try:
                event = jsonio.loads(record.payload, checked=checked)
            except (ValueError, UnicodeDecodeError, RecursionError) as error:
                dead.append((record, f"not valid JSON: {type(error).__name__}: {str(error)[:200]}"))
                continue
            if type(event) is not dict:
                dead.append((record, f"an event must be a JSON object, got {type(event).__name__}"))
                continue
            if self.evaluator.mutations:  # a mutation-table row, or a Debezium change event: 1 or 2 rows
                try:
                    converted = mutation_rows(
                        event, self.source.mutation_time_column, self.source.reversal_column
                    )
                except MutationFormatError as error:
                    dead.append((record, str(error)))
                    continue
                events.extend(converted)
                origins.extend([record] * len(converted))
                suffixes.extend([""] if len(converted) == 1 else [f":{i}" for i in range(len(converted))])
                continue
            events.append(event)
            origins.append(record)
            suffixes.append("")
        rows, evaluation_dead = self._evaluate(events, origins, suffixes)
        if self.evaluator.mutations and evaluation_dead:
            rows, evaluation_dead = _whole_records(rows, origins, evaluation_dead)
        dead.extend(evaluation_dead)
        return self._prepared(
            consumed, origins, rows, dead, len(events) - len(evaluation_dead), consumer_group, arrived_at
        )

    def _prepared(
        self,
        records: Sequence[Record],
        origins: Sequence[Record],
        rows: dict[str, list[Any]],
        dead: list[tuple[Record, str]],
        evaluated: int,
        consumer_group: str | None,
        arrived_at: int,
    ) -> PreparedBatch:
        """The store items of a micro-batch: ``rows`` (whose ``__index`` points into ``origins``), of
        the ``evaluated`` events the Query read, and the ``dead`` letters; counted in the stats."""
        items = self._stored_rows(rows, origins, arrived_at)
        for record, reason in dead:
            letter = json.dumps(
                {
                    "reason": reason,
                    "payload": record.payload.decode("utf-8", "replace"),
                    "group_by": self.group_by.name,
                    "event_id": record.event_id,
                }
            )
            items.append((dead_letter_key(self.topic), record.event_id.encode(), letter.encode()))
            kind = reason.split(":")[0]
            self.stats.dead_letter_reasons[kind] = self.stats.dead_letter_reasons.get(kind, 0) + 1
        offsets = {record.partition: record.offset for record in records} if consumer_group else None
        kept = len(rows["ts"]) if rows else 0
        self.stats.records += len(records)
        self.stats.rows += kept
        self.stats.dead_letters += len(dead)
        self.stats.filtered += evaluated - kept
        self.stats.batches += 1
        return PreparedBatch(items, consumer_group, offsets, kept, len(dead))

    def _stored_rows(
        self, rows: dict[str, list[Any]], origins: Sequence[Record], arrived_at: int
    ) -> list[tuple[bytes, bytes, bytes]]:
        """(row key, event id, encoded StreamRow) per evaluated row."""
        if not rows or not rows["ts"]:
            return []
        keys = rows["__key"]
        if None in keys:  # key types the Query cannot encode exactly as entity_key does
            prefix = self.evaluator.rows_prefix
            encoded = _entity_keys([rows[k] for k in self.group_by.keys])
            keys = [
                key if key is not None else prefix + python_key
                for key, python_key in zip(keys, encoded, strict=True)
            ]
        blobs = rows.get("__row") or encode_stream_rows(
            rows["ts"],
            rows["__published"],
            rows["__seq"],
            zip(*[rows[c] for c in self.evaluator.columns], strict=True),
        )
        return list(zip(keys, rows["__event_id"], blobs, strict=True))

    def _evaluate(
        self, events: list[dict[str, Any]], origins: list[Record], suffixes: list[str]
    ) -> tuple[dict[str, list[Any]], list[tuple[Record, str]]]:
        if not events:
            return {}, []
        try:
            rows = self.evaluator.evaluate_columns(events, origins, suffixes)
        except (pa.ArrowException, duckdb.Error, TypeError, ValueError, OverflowError):
            if len(events) == 1:
                return {}, [
                    (origins[0], f"the Query cannot read this event: {_why(self.evaluator, events[0])}")
                ]
            merged: dict[str, list[Any]] = {}
            dead: list[tuple[Record, str]] = []
            for index, (event, origin) in enumerate(
                zip(events, origins, strict=True)
            ):  # isolate the bad events
                one, bad = self._evaluate([event], [origin], [suffixes[index]])
                dead.extend(bad)
                if one:
                    one["__index"] = [index] * len(one["__index"])
                    for name, values in one.items():
                        merged.setdefault(name, []).extend(values)
            return merged, dead
        return self._complete_rows(rows, origins)

    def _complete_rows(
        self, rows: dict[str, list[Any]], origins: Sequence[Record]
    ) -> tuple[dict[str, list[Any]], list[tuple[Record, str]]]:
        """The rows with every key and the time, and dead letters for the others."""
        keys, ts = [rows[k] for k in self.group_by.keys], rows["ts"]
        if all(None not in column for column in keys) and None not in ts:
            return rows, []
        keep, dead = [], []
        for position, index in enumerate(rows["__index"]):
            missing = [
                k for k, column in zip(self.group_by.keys, keys, strict=True) if column[position] is None
            ]
            if missing:
                dead.append((origins[index], f"missing key: {missing[0]!r} is null or absent"))
            elif ts[position] is None:
                dead.append((origins[index], f"missing time: {self.source.time_column!r} is null or absent"))
            else:
                keep.append(position)
        return {name: [values[p] for p in keep] for name, values in rows.items()}, dead


class StreamWorker:
    """Consumes one GroupBy's topic into the online store."""

    def __init__(
        self,
        group_by: GroupByPlan,
        store: OnlineStore,
        broker: Broker,
        group: str | None = None,
        name: str | None = None,
        clock: Callable[[], float] = time.time,
        schema: pa.Schema | None = None,
        metrics: StreamMetrics | None = None,
        topic: str | None = None,
        plan: Plan | None = None,
        left_schema: pa.Schema | None = None,
        fold_every: int = 0,
        fold_delay_ms: int = 300_000,
    ) -> None:
        self.applier = RecordApplier(group_by, store, clock, schema, topic, plan, left_schema)
        self.metrics = metrics
        self.group_by = group_by
        self.topic = self.applier.topic
        self.store = store
        self.broker = broker
        self.group = group or consumer_group(group_by, self.topic)
        self.consumer: Consumer = broker.consumer(self.topic, self.group, name)
        self.folder = folder_for(group_by, store, fold_every, fold_delay_ms, clock)

    @property
    def stats(self) -> WorkerStats:
        return self.applier.stats

    def run(
        self,
        until_caught_up: bool = False,
        max_records: int = 2000,
        poll_timeout_s: float = 0.5,
        stop: Callable[[], bool] | None = None,
    ) -> WorkerStats:
        """Process micro-batches until stopped (or, with ``until_caught_up``, until the topic's end).

        Three stages overlap, one thread each: polling micro-batch N+1, preparing N (parse, Query,
        encode; this thread) and writing N-1 to the store. Writes stay in order, and a batch is
        committed to the broker only after its write returned, so what a crash can leave is batches
        polled or written and not committed: re-delivered and applied again, which changes nothing.
        While records flow, the next poll does not block; once one comes back empty, the next waits
        up to ``poll_timeout_s``."""
        target = self.broker.end_offsets(self.topic) if until_caught_up else None
        seen: dict[str, str] = {}
        write: Future[None] | None = None
        with (
            ThreadPoolExecutor(1, thread_name_prefix="gnomon-poll") as reader,
            ThreadPoolExecutor(1, thread_name_prefix="gnomon-write") as writer,
        ):
            polled = reader.submit(self.consumer.poll, max_records, poll_timeout_s)
            try:
                while stop is None or not stop():
                    records = polled.result()
                    polled = reader.submit(
                        self.consumer.poll, max_records, 0.0 if records else poll_timeout_s
                    )
                    if records:
                        batch = self.applier.prepare(records, self.group)
                        if write is not None:
                            write.result()
                        write = writer.submit(self._write_and_commit, batch, records)
                        for record in records:
                            seen[record.partition] = record.offset
                    if target is not None and (
                        _caught_up(seen, target, {})
                        or (not records and _caught_up(seen, target, self.store.offsets(self.group)))
                    ):  # other members of the group may have consumed the rest: their committed
                        # offsets count once polls run dry
                        if write is not None:
                            write.result()
                        if not self.consumer.pending():
                            break  # nothing delivered and left uncommitted (e.g. by a killed worker)
            finally:
                if write is not None:
                    write.result()
                # a prefetched batch is not processed: left uncommitted, the broker delivers it again
                polled.cancel()
        return self.stats

    def _write_and_commit(self, batch: PreparedBatch, records: Sequence[Record]) -> None:
        write_batch(self.applier, batch, records, self.folder, self.metrics)
        self.consumer.commit(records)

    def process(self, records: Sequence[Record]) -> None:
        """Apply one micro-batch (rows and offsets atomically), then commit it to the broker."""
        self.applier.apply(records, self.group)
        self.consumer.commit(records)

    def close(self) -> None:
        """Close the consumer; a broker that is gone by then (the reason the worker stops, often)
        must not hide why it stopped."""
        try:
            self.consumer.close()
        except Exception as error:  # noqa: BLE001
            log.warning("closing the consumer of %s failed: %s", self.topic, error)


def folder_for(
    group_by: GroupByPlan,
    store: OnlineStore,
    fold_every: int,
    fold_delay_ms: int,
    clock: Callable[[], float] = time.time,
) -> Folder | None:
    """What folds a key's rows into hop tiles every ``fold_every`` rows a worker writes for it (None:
    never, for ``fold_every`` 0 or a GroupBy that keeps rows; `gnomon.online.fold`)."""
    if fold_every > 0 and can_fold(group_by):
        return Folder(group_by, store, stream_id(group_by), fold_every, fold_delay_ms, clock)
    return None


def write_batch(
    applier: RecordApplier,
    batch: PreparedBatch,
    records: Sequence[Record],
    folder: Folder | None = None,
    metrics: StreamMetrics | None = None,
) -> bool:
    """The write step of a micro-batch, whichever engine runs it: the atomic store write, then
    folding the keys it wrote and the metrics. False (and nothing else done) when a fenced batch was
    skipped."""
    if not applier.write(batch):
        return False
    if folder is not None:
        prefix = folder.rows_prefix
        folder.wrote([key for key, _, _ in batch.items if key.startswith(prefix)])
    if metrics is not None:
        name, now_ms = applier.group_by.name, applier.clock() * 1000
        metrics.freshness.observe_many(name, [(now_ms - r.published_at_ms) / 1000 for r in records])
        metrics.records.inc(name, len(records))
        metrics.rows.inc(name, batch.rows)
        metrics.dead_letters.inc(name, batch.dead_letters)
    return True


_EVALUATORS: dict[tuple[str, int, int, str | None], QueryEvaluator] = {}


def _evaluator(
    group_by: GroupByPlan, source: SourcePlan, schema: pa.Schema | None, rows_prefix: bytes
) -> QueryEvaluator:
    """One evaluator per GroupBy, source, schema and thread (DuckDB connections are not shared across
    threads)."""
    import threading

    index = group_by.sources.index(source)
    key = (group_by.name, index, threading.get_ident(), None if schema is None else schema.to_string())
    evaluator = _EVALUATORS.get(key)
    if evaluator is None or evaluator.group_by is not group_by:
        evaluator = _EVALUATORS[key] = QueryEvaluator(group_by, source, schema, rows_prefix)
    return evaluator


def consumer_group(group_by: GroupByPlan, topic: str) -> str:
    """The default consumer group of a GroupBy's topic: ``gnomon.<stream id>`` (`stream_id`: a new
    definition reads its topics anew), and ``gnomon.<stream id>.<topic>`` for each topic of a
    GroupBy with several."""
    name = f"gnomon.{stream_id(group_by)}"
    return name if len(streamed_topics(group_by)) == 1 else f"{name}.{topic}"


def streamed_topics(group_by: GroupByPlan) -> dict[str, SourcePlan]:
    """Every topic a GroupBy streams from (event topics and mutation topics), with its source."""
    topics: dict[str, SourcePlan] = {}
    for source in group_by.sources:
        topic = source.topic or source.mutation_topic
        if topic is not None:
            topics.setdefault(topic, source)
    return topics


def _whole_records(
    rows: dict[str, list[Any]], origins: Sequence[Record], dead: list[tuple[Record, str]]
) -> tuple[dict[str, list[Any]], list[tuple[Record, str]]]:
    """A record that became several mutation rows (a Debezium update: the old row out, the new one
    in) is applied whole or not at all: when one of its rows is a dead letter, so is the record,
    once, and none of its rows is stored."""
    refused = {record.event_id for record, _ in dead}
    keep = [p for p, index in enumerate(rows.get("__index", [])) if origins[index].event_id not in refused]
    once: dict[str, tuple[Record, str]] = {}
    for record, reason in dead:
        once.setdefault(record.event_id, (record, reason))
    return {name: [values[p] for p in keep] for name, values in rows.items()}, list(once.values())


def _why(evaluator: QueryEvaluator, event: dict[str, Any]) -> str:
    try:
        evaluator.evaluate([event])
    except Exception as error:  # noqa: BLE001 — the message is the reason we store
        return f"{type(error).__name__}: {str(error).splitlines()[0]}"
    return "unknown"


def _entity_keys(columns: list[list[Any]]) -> list[bytes]:
    """`entity_key` of each row of the key columns (a fast path for the usual one-column key)."""
    if len(columns) == 1:
        dumps = orjson.dumps
        try:
            return [dumps([value]) for value in columns[0]]
        except TypeError:
            return [entity_key([value]) for value in columns[0]]
    return [entity_key(list(values)) for values in zip(*columns, strict=True)]


def _record_columns(
    records: Sequence[Record],
) -> tuple[Sequence[str], Sequence[str], Sequence[bytes], Sequence[int]]:
    """The records' partitions, offsets, payloads and publication times, one sequence each (the
    records transposed in one pass)."""
    if not records:
        return [], [], [], []
    _, partitions, offsets, payloads, published = zip(*records, strict=True)
    return partitions, offsets, payloads, published


def _seqs(offsets: pa.Array) -> pa.Array:
    """`_seq` of each offset, computed column-wise when all offsets have one form."""
    dashed = pc.match_substring(offsets, "-")
    if pc.all(dashed).as_py() is not False:  # Redis stream ids (or no offsets at all)
        parts = pc.split_pattern(offsets, "-", max_splits=1)
        if pc.all(pc.equal(pc.list_value_length(parts), 2)).as_py() is not False:
            try:
                ms, counter = (pc.cast(pc.list_element(parts, i), pa.int64()) for i in (0, 1))
                return pc.add(pc.multiply(ms, 1_000_000), counter)
            except pa.ArrowInvalid:
                pass
    elif not pc.any(dashed).as_py():
        try:
            return pc.cast(offsets, pa.int64())
        except pa.ArrowInvalid:
            pass
    return pa.array([_seq(offset) for offset in offsets.to_pylist()], pa.int64())


def _seq(offset: str) -> int:
    """Arrival order within a partition, as an int (embedded and Kafka: the offset; Redis: ms-seq)."""
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
