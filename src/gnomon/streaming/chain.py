"""Online chaining (SPEC §4): the parent Join's left events, enriched with the parent's features.

A GroupBy over ``JoinSource(parent, query)`` reads, offline, the parent's output rows: each left row
with the parent's features at its ``ts``. Online, its worker consumes the parent's left topic, reads
each event through the parent's left Query, fetches the parent Join's features at the event's
``ts`` from the online store (the same fetcher that serves it), and hands the enriched rows — the
parent's output row, as JSON — to the GroupBy's own worker, which evaluates the JoinSource's
Query over them like any event.

The enrichment sees the parent's online state as it is when the event is processed: run the
parent's own workers ahead of the child's (``gnomon stream`` of the child's Join after its parent's,
or ``?sync=true`` pushes, which apply the parent's GroupBys first). An event the parent cannot
answer exactly for (e.g. older than the parent's upload) becomes a dead letter with the fetch's
status as its reason.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import duckdb
import orjson
import pyarrow as pa

from gnomon.compile.plan import Plan, SourcePlan
from gnomon.compile.sql import quote
from gnomon.offline.warehouse import ms_to_ds
from gnomon.online.fetcher import SUCCESS, Fetcher
from gnomon.online.stores.base import OnlineStore
from gnomon.streaming.brokers.base import Record


class Enricher:
    """Turns records of a parent Join's left topic into records of the parent's output rows."""

    def __init__(
        self,
        plan: Plan,
        source: SourcePlan,
        store: OnlineStore,
        left_schema: pa.Schema | None = None,
        horizon_ms: int | None = None,
    ) -> None:
        self.join = plan.joins[source.upstream_join]  # type: ignore[index]
        self.left = self.join.left
        self.fetcher = Fetcher(plan, store) if horizon_ms is None else Fetcher(plan, store, horizon_ms)
        self.schema = None if left_schema is None else pa.schema([f for f in left_schema if f.name != "ds"])
        self.connection = duckdb.connect(config={"threads": 1})
        selects = self.left.selects or {}
        select_list = "".join(
            f"({expr}) AS {quote(name)}, " for name, expr in selects.items() if name != "ts"
        )
        where = " AND ".join(f"({w})" for w in self.left.wheres) or "TRUE"
        star = "" if selects else "* EXCLUDE (__index), "
        self.sql = (
            f"SELECT __index, {select_list}{star}CAST(({self.left.time_column}) AS BIGINT) AS ts "
            f"FROM __events WHERE {where}"
        )
        self.key_columns = sorted({c for part in self.join.parts for c in part.key_columns.values()})

    def enrich(self, records: Sequence[Record]) -> tuple[list[Record], list[tuple[Record, str]]]:
        """(records whose payload is the parent's output row, dead letters with their reasons)."""
        events: list[dict[str, Any]] = []
        origins: list[Record] = []
        dead: list[tuple[Record, str]] = []
        for record in records:
            try:
                event = orjson.loads(record.payload)
            except orjson.JSONDecodeError:
                try:
                    event = json.loads(record.payload)
                except (ValueError, UnicodeDecodeError) as error:
                    dead.append((record, f"not valid JSON: {error}"))
                    continue
            if type(event) is not dict:
                dead.append((record, f"an event must be a JSON object, got {type(event).__name__}"))
                continue
            events.append(event)
            origins.append(record)
        rows = self._left_rows(events, origins, dead)
        enriched: list[Record] = []
        for index, row in rows:
            record = origins[index]
            ts = row["ts"]
            if ts is None:
                dead.append(
                    (record, f"missing time: the parent Join's left time {self.left.time_column!r} is null")
                )
                continue
            keys = {column: row.get(column) for column in self.key_columns}
            [result] = self.fetcher.fetch_join(self.join.name, [keys], at=ts)
            if result.status != SUCCESS:
                dead.append(
                    (
                        record,
                        f"parent not servable: Join {self.join.name!r} at ts={ts}: {result.status}: "
                        f"{result.error}",
                    )
                )
                continue
            output = {**row, **result.features, "ds": ms_to_ds(ts)}
            payload = orjson.dumps(output, option=orjson.OPT_SERIALIZE_NUMPY, default=_json_default)
            enriched.append(record._replace(payload=payload))
        return enriched, dead

    def _left_rows(
        self, events: list[dict[str, Any]], origins: list[Record], dead: list[tuple[Record, str]]
    ) -> list[tuple[int, dict[str, Any]]]:
        """The parent's left Query over the events (event by event where the batch fails)."""
        if not events:
            return []
        try:
            return self._evaluate(events, list(range(len(events))))
        except (pa.ArrowException, duckdb.Error, TypeError, ValueError, OverflowError):
            rows = []
            for index, event in enumerate(events):
                try:
                    rows.extend(self._evaluate([event], [index]))
                except (pa.ArrowException, duckdb.Error, TypeError, ValueError, OverflowError) as error:
                    reason = f"{type(error).__name__}: {str(error).splitlines()[0]}"
                    dead.append(
                        (origins[index], f"the parent Join's left Query cannot read this event: {reason}")
                    )
            return rows

    def _evaluate(
        self, events: list[dict[str, Any]], positions: list[int]
    ) -> list[tuple[int, dict[str, Any]]]:
        if self.schema is None:
            table = pa.Table.from_pylist(events)
        else:
            table = pa.Table.from_arrays(
                [pa.array([e.get(f.name) for e in events], type=f.type) for f in self.schema],
                schema=self.schema,
            )
        table = table.append_column("__index", pa.array(positions, pa.int64()))
        self.connection.register("__events", table)
        result = self.connection.sql(self.sql).to_arrow_table().to_pylist()
        return [(row.pop("__index"), row) for row in result]


def _json_default(value: Any) -> Any:
    import datetime as dt
    import decimal

    if isinstance(value, decimal.Decimal):
        return float(value)
    if isinstance(value, dt.date | dt.datetime):
        return value.isoformat()
    raise TypeError(f"cannot write {type(value).__name__} as JSON")
