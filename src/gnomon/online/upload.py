"""Upload (SPEC §5): a GroupBy's state as of batch end ``D+1 00:00`` written to the online store.

SNAPSHOT GroupBys store final values. TEMPORAL GroupBys store, per key and feature, the *suffix
IRs* of the hop tiles before the batch end: entry ``i`` is the merge of every tile starting at or
after ``starts[i]``. A fetch at any ``q >= batch_end`` needs exactly one of them — the first whose
start is at or after ``window_start(q, W)`` — plus the streamed rows, so it decodes one IR per
feature however long the window.
"""

from __future__ import annotations

import itertools
import json
import time
from collections.abc import Iterator
from typing import Any

from gnomon.aggregation import encode_ir
from gnomon.aggregation.codec import encode_value
from gnomon.compile.plan import GroupByPlan
from gnomon.compile.sql import quote
from gnomon.definitions.windows import floor_to
from gnomon.offline.engines.duckdb import DuckDBEngine
from gnomon.offline.warehouse import DAY_MS, ds_to_ms, entity_partitions, ms_to_ds
from gnomon.online.features import (
    MUTATION_COLUMNS,
    SOURCE_COLUMN,
    aggregation_type,
    keeps_rows,
    online_features,
    row_columns,
    stream_id,
)
from gnomon.online.fold import pending_key
from gnomon.online.records import (
    RECORD_VERSION,
    StreamRow,
    UploadMeta,
    batch_key,
    encode_batch_rows,
    encode_batch_state,
    entity_key,
    meta_key,
    rows_key,
)
from gnomon.online.stores.base import OnlineStore

_CHUNK = 5000
_META_GRACE_S = 1.0  # longer than a fetcher keeps an upload's meta (`Fetcher.meta_ttl_s`)


def upload_group_by(engine: DuckDBEngine, group_by: GroupByPlan, ds: str, store: OnlineStore) -> int:
    """Write the state as of ``ds + 1 day`` for every key; returns the number of keys written."""
    batch_end = ds_to_ms(ds) + DAY_MS
    uploaded_at = int(time.time() * 1000)
    # while the upload runs, stream rows published after it started are not folded (`gnomon.online.fold`)
    store.put([(pending_key(group_by.name), str(uploaded_at).encode())])
    if group_by.accuracy == "snapshot":
        written, types = _upload_snapshot(engine, group_by, ds, batch_end, store)
    elif keeps_rows(group_by):
        written, types = _upload_rows(engine, group_by, ds, batch_end, store)
    else:
        written, types = _upload_temporal(engine, group_by, ds, batch_end, store)
    # the meta record goes last: until it is written, fetchers keep reading the previous upload
    store.put(
        [
            (
                meta_key(group_by.name),
                UploadMeta(
                    batch_end,
                    uploaded_at,
                    group_by.accuracy,
                    types,
                    group_by.fingerprint,
                    tuple(group_by.feature_ids()),
                    tuple(row_columns(group_by)),
                    json.dumps(group_by.semantics(), sort_keys=True),
                ).encode(),
            )
        ]
    )
    store.delete([pending_key(group_by.name)])
    if group_by.accuracy == "temporal":
        time.sleep(_META_GRACE_S)  # fetchers still holding the previous meta may read these rows
        prune_stream_rows(group_by, store, batch_end, uploaded_at)
    return written


def prune_stream_rows(group_by: GroupByPlan, store: OnlineStore, batch_end: int, uploaded_at: int) -> int:
    """Delete the streamed rows no fetch reads any more, now that an upload as of ``batch_end`` is
    served: events the upload covers (``ts < batch_end`` and arrived before it started), events
    older than every window at the batch end, and entity mutations before the batch end (in the
    snapshot). The next upload supersedes what it covers; returns the number of rows deleted."""
    span = group_by.max_window_ms
    entities = any(s.kind == "entities" for s in group_by.sources)
    prefix = rows_key(stream_id(group_by), b"")
    doomed: list[tuple[bytes, bytes]] = []
    deleted = 0
    for key, rows in store.scan_rows(prefix):
        for event_id, blob in rows:
            row = StreamRow.decode(blob)
            if entities:
                gone = row.values[-3] is not None and row.values[-3] < batch_end
            else:
                covered = row.ts < batch_end and row.arrived_at <= uploaded_at
                gone = covered or (span is not None and group_by.features and row.ts < batch_end - span)
            if gone:
                doomed.append((key, event_id))
        if len(doomed) >= _CHUNK:
            store.delete_rows(doomed)
            deleted += len(doomed)
            doomed = []
    store.delete_rows(doomed)
    return deleted + len(doomed)


def _upload_snapshot(
    engine: DuckDBEngine, group_by: GroupByPlan, ds: str, batch_end: int, store: OnlineStore
) -> tuple[int, dict[str, str]]:
    _, table = next(iter(engine.backfill_group_by(group_by, [ds])))
    columns = [c for c in table.column_names if c not in group_by.keys]
    written = 0
    for batch in table.to_batches(_CHUNK):
        rows = batch.to_pylist()
        items = [
            (
                batch_key(group_by.name, batch_end, entity_key([row[k] for k in group_by.keys])),
                encode_value([RECORD_VERSION, {c: row[c] for c in columns}]),
            )
            for row in rows
        ]
        store.put(items)
        written += len(items)
    return written, {}


def _upload_temporal(
    engine: DuckDBEngine, group_by: GroupByPlan, ds: str, batch_end: int, store: OnlineStore
) -> tuple[int, dict[str, str]]:
    owner = f"GroupBy({group_by.name!r})"
    span = group_by.max_window_ms
    start_ds = None if span is None else ms_to_ds(batch_end - span - DAY_MS)
    columns = row_columns(group_by)
    events_sql = engine.source_sql(
        owner, group_by.sources, start_ds, ds, [*group_by.keys, *columns], strict=[ds]
    )
    keys = ", ".join(quote(k) for k in group_by.keys)
    lower = "" if span is None else f" AND ts >= {batch_end - span}"
    not_null = " AND ".join(f"{quote(k)} IS NOT NULL" for k in group_by.keys)
    # the source index only orders streamed rows among themselves; the batch tiles hold offline's order
    selected = ", ".join(f"NULL AS {quote(c)}" if c == SOURCE_COLUMN else quote(c) for c in columns)
    sql = (
        f"SELECT {keys}, ts, __seq, {selected} FROM ({events_sql}) "
        f"WHERE ts < {batch_end}{lower} AND {not_null} ORDER BY {keys}, ts, __seq"
    )
    described = engine.con.sql(sql)
    types = {
        name: aggregation_type(str(kind))
        for name, kind in zip(described.columns, described.types, strict=True)
    }
    relation = engine.con.execute(sql)
    input_types = {c: types[c] for c in columns}
    features = online_features(group_by, input_types)
    written = 0
    items: list[tuple[bytes, bytes]] = []
    key_count = len(group_by.keys)
    for key, rows in itertools.groupby(_rows(relation), key=lambda row: row[:key_count]):
        record = encode_batch_state(_key_state(features, list(rows), key_count, batch_end))
        items.append((batch_key(group_by.name, batch_end, entity_key(list(key))), record))
        if len(items) >= _CHUNK:
            store.put(items)
            written += len(items)
            items = []
    if items:
        store.put(items)
        written += len(items)
    return written, input_types


def _upload_rows(
    engine: DuckDBEngine, group_by: GroupByPlan, ds: str, batch_end: int, store: OnlineStore
) -> tuple[int, dict[str, str]]:
    """Entity GroupBys and lookups keep rows: per key, the rows of the state at the batch end that a
    fetch at or after it may still read (entities: snapshot ``ds``; event lookups: the latest row)."""
    owner = f"GroupBy({group_by.name!r})"
    span = group_by.max_window_ms
    start_ds = None if span is None else ms_to_ds(batch_end - span - DAY_MS)
    columns = row_columns(group_by)
    entities = any(s.kind == "entities" for s in group_by.sources)
    values = [c for c in columns if c not in MUTATION_COLUMNS]
    events_sql = engine.source_sql(
        owner,
        group_by.sources,
        start_ds,
        ds,
        [*group_by.keys, *values],
        strict=[] if entities else [ds],
        entity=entity_partitions([batch_end]),
        row_ids=True,
    )
    keys = ", ".join(quote(k) for k in group_by.keys)
    not_null = " AND ".join(f"{quote(k)} IS NOT NULL" for k in group_by.keys)
    selected = ", ".join(
        [
            *(quote(c) for c in values),
            *(["NULL::BIGINT AS __mutation_ts", "false AS __is_before", "__row_id"] if entities else []),
        ]
    )
    if entities:  # the snapshot's rows; those older than every window can never count again
        lower = "" if span is None else f" AND ts >= {batch_end - span}"
        sql = (
            f"SELECT {keys}, ts, __seq, {selected} FROM ({events_sql}) WHERE __ds = '{ds}'{lower} AND {not_null} "
            f"ORDER BY {keys}, __seq"
        )
    else:  # a lookup over events: the latest row before the batch end is all a later fetch can pick
        sql = (
            f"SELECT {keys}, ts, __seq, {selected} FROM ({events_sql}) WHERE ts < {batch_end} AND {not_null} "
            f"QUALIFY row_number() OVER (PARTITION BY {keys} ORDER BY ts DESC, __seq) = 1 ORDER BY {keys}"
        )
    described = engine.con.sql(sql)
    types = {
        name: aggregation_type(str(kind))
        for name, kind in zip(described.columns, described.types, strict=True)
    }
    key_count = len(group_by.keys)
    written = 0
    items: list[tuple[bytes, bytes]] = []
    for key, rows in itertools.groupby(_rows(engine.con.execute(sql)), key=lambda row: row[:key_count]):
        record = encode_batch_rows([(row[key_count], list(row[key_count + 2 :])) for row in rows])
        items.append((batch_key(group_by.name, batch_end, entity_key(list(key))), record))
        if len(items) >= _CHUNK:
            store.put(items)
            written += len(items)
            items = []
    if items:
        store.put(items)
        written += len(items)
    return written, {c: types[c] for c in values}


def _rows(relation: Any) -> Iterator[tuple[Any, ...]]:
    while True:
        chunk = relation.fetchmany(10_000)
        if not chunk:
            return
        yield from chunk


def _key_state(
    features: list[Any], rows: list[tuple[Any, ...]], key_count: int, batch_end: int
) -> list[tuple[list[int | None], list[bytes]]]:
    """Per feature ``[starts, suffix IR bytes]`` for one key (``starts == [None]`` when unbounded)."""
    state: list[tuple[list[int | None], list[bytes]]] = []
    for feature in features:
        aggregator, window_ms, hop_ms = feature.aggregator, feature.plan.window_ms, feature.plan.hop_ms
        if window_ms is None:
            ir = None
            for row in rows:
                ir = feature.accumulate(ir, list(row[key_count + 2 :]), row[key_count], row[key_count + 1])
            state.append(([None], [encode_ir(aggregator, ir)]) if ir is not None else ([], []))
            continue
        earliest = floor_to(batch_end - window_ms, hop_ms)
        tiles: dict[int, Any] = {}
        for row in rows:
            ts = row[key_count]
            if ts < earliest:
                continue
            start = floor_to(ts, hop_ms)
            ir = feature.accumulate(tiles.get(start), list(row[key_count + 2 :]), ts, row[key_count + 1])
            if ir is not None:
                tiles[start] = ir
        starts = sorted(tiles)
        suffixes: list[bytes] = []
        suffix = None
        for start in reversed(starts):  # merge(earlier, later): the earlier tile's rows count first on ties
            suffix = aggregator.merge(tiles[start], suffix)
            suffixes.append(encode_ir(aggregator, suffix))
        suffixes.reverse()
        state.append((list[int | None](starts), suffixes))
    return state
