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

import pyarrow as pa

from gnomon.aggregation import encode_ir
from gnomon.aggregation.codec import encode_value
from gnomon.compile.features import (
    MUTATION_COLUMNS,
    keeps_rows,
    online_features,
    row_columns,
    stream_id,
)
from gnomon.compile.plan import GroupByPlan
from gnomon.definitions.windows import floor_to
from gnomon.offline.engine import OfflineEngine, read_partition
from gnomon.offline.warehouse import DAY_MS, ds_to_ms
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


def upload_group_by(engine: OfflineEngine, group_by: GroupByPlan, ds: str, store: OnlineStore) -> int:
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
    store.put([meta_record(group_by, batch_end, uploaded_at, types)])
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
    engine: OfflineEngine, group_by: GroupByPlan, ds: str, batch_end: int, store: OnlineStore
) -> tuple[int, dict[str, str]]:
    _, partition = next(iter(engine.backfill_group_by(group_by, [ds])))
    table = read_partition(partition)
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
    engine: OfflineEngine, group_by: GroupByPlan, ds: str, batch_end: int, store: OnlineStore
) -> tuple[int, dict[str, str]]:
    columns = row_columns(group_by)
    rows = engine.batch_rows(group_by, ds, columns, "events")
    input_types = {c: rows.types[c] for c in columns}
    features = online_features(group_by, input_types)
    key_count = len(group_by.keys)
    records = (
        (key, encode_batch_state(_key_state(features, list(key_rows), key_count, batch_end)))
        for key, key_rows in itertools.groupby(_rows(rows.batches), key=lambda row: row[:key_count])
    )
    return _put_per_key(group_by, batch_end, records, store), input_types


def _upload_rows(
    engine: OfflineEngine, group_by: GroupByPlan, ds: str, batch_end: int, store: OnlineStore
) -> tuple[int, dict[str, str]]:
    """Entity GroupBys and lookups keep rows: per key, the rows of the state at the batch end that a
    fetch at or after it may still read (entities: snapshot ``ds``; event lookups: the latest row)."""
    columns = row_columns(group_by)
    entities = any(s.kind == "entities" for s in group_by.sources)
    values = [c for c in columns if c not in MUTATION_COLUMNS]
    rows = engine.batch_rows(group_by, ds, columns, "entities" if entities else "latest")
    key_count = len(group_by.keys)
    records = (
        (key, encode_batch_rows([(row[key_count], list(row[key_count + 2 :])) for row in key_rows]))
        for key, key_rows in itertools.groupby(_rows(rows.batches), key=lambda row: row[:key_count])
    )
    return _put_per_key(group_by, batch_end, records, store), {c: rows.types[c] for c in values}


def _put_per_key(
    group_by: GroupByPlan,
    batch_end: int,
    records: Iterator[tuple[tuple[Any, ...], bytes]],
    store: OnlineStore,
) -> int:
    written = 0
    items: list[tuple[bytes, bytes]] = []
    for key, record in records:
        items.append((batch_key(group_by.name, batch_end, entity_key(list(key))), record))
        if len(items) >= _CHUNK:
            store.put(items)
            written += len(items)
            items = []
    if items:
        store.put(items)
        written += len(items)
    return written


def _rows(batches: Iterator[pa.RecordBatch]) -> Iterator[tuple[Any, ...]]:
    for batch in batches:
        yield from zip(*(column.to_pylist() for column in batch.columns), strict=True)


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


def meta_record(
    group_by: GroupByPlan, batch_end: int, uploaded_at: int, types: dict[str, str]
) -> tuple[bytes, bytes]:
    """The store record that makes an upload of ``group_by`` as of ``batch_end`` servable: what the
    fetcher checks a definition against (fingerprint, feature ids, row columns, semantics)."""
    meta = UploadMeta(
        batch_end,
        uploaded_at,
        group_by.accuracy,
        types,
        group_by.fingerprint,
        tuple(group_by.feature_ids()),
        tuple(row_columns(group_by)),
        json.dumps(group_by.semantics(), sort_keys=True),
    )
    return meta_key(group_by.name), meta.encode()
