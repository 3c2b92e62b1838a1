"""Incremental GroupBy backfills: daily IR tables, so that day D+1 reads one new day of events.

Enabled by ``offline: {incremental: true}`` in gnomon.yaml (event sources only; anything else keeps the
SQL path). Partition D of a GroupBy is its values at ``q = D+1 00:00`` (SPEC §2). At a midnight every
window is ``[q - W', q)`` with ``W' = ceil(W / hop) * hop``, i.e. ``n`` whole days and, when ``W'`` is
not a whole number of days, the last ``r = W' mod 1 day`` of the day before them. So each feature's
value is a merge of per-day IRs (SPEC §3's monoids, `gnomon.aggregation`), kept per (key, day) in a
*daily IR table*:

- ``day``: the IR of the key's events of that day (windows of a day or more);
- ``tail``: the IR of the events of the day's last ``r`` ms (windows that are not whole days);
- ``chunk``: on the last day of every aligned block of `CHUNK_DAYS` days (epoch-aligned), the merge of
  the block's ``day`` IRs, so a 90-day window merges at most ~25 IRs per key instead of 90;
- ``cum``: unbounded windows, the IR of every event before the next midnight (yesterday's ``cum``
  merged with today's ``day``).

A window's IRs are merged oldest first along a decomposition that depends only on the window's days,
so a day-by-day run and a full recompute merge exactly the same IRs in the same order: their outputs
are byte-identical (operations whose sketches use randomness, APPROX_PERCENTILE past k, are not
reproducible between any two runs). Values are the IR library's, as the online path computes them
(exact operations equal the SQL path's up to float summation order, SPEC §3).

Where the tables live: ``<output table>/.ir/<definition>/ds=D/part-0.parquet`` inside the warehouse; the
folder is hidden (`Warehouse.partitions` and `Warehouse.tables` list only ``ds=`` folders and tables).
``<definition>`` hashes `GroupByPlan.fingerprint` (sources, keys, accuracy), the feature ids and the
table format, so a changed definition reads none of the old tables, and writing under a new one
removes the others. Each table records the source files it was computed from (name, size, mtime) and
the tables it merged (``chunk``, ``cum``); a table whose inputs changed, or a missing one, is recomputed
from that day's events (and, for ``chunk``/``cum``, from its neighbours' tables, recursively). Events
are taken from the partition of their own day (SPEC §2: partition D holds the events of day D).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.parquet as pq

from gnomon.aggregation import Aggregator, decode_ir, encode_ir
from gnomon.compile.features import OnlineFeature, online_features, row_columns
from gnomon.compile.plan import FeaturePlan, GroupByPlan
from gnomon.timeline import DAY_MS, ds_to_ms, shift_ds

if TYPE_CHECKING:
    from gnomon.offline.warehouse import Warehouse

log = logging.getLogger("gnomon.offline")

FORMAT = 1  # bump when the table layout or its meaning changes
CHUNK_DAYS = 8
IR_FOLDER = ".ir"
_META = b"gnomon.ir"

Key = tuple[Any, ...]


def supported(group_by: GroupByPlan) -> bool:
    """Whether a GroupBy's backfill can run from daily IR tables: aggregations over plain event sources."""
    return bool(group_by.features) and all(s.kind == "events" and not s.cumulative for s in group_by.sources)


@dataclass(frozen=True)
class Span:
    """A feature's window at a midnight: ``days`` whole days plus the last ``tail_ms`` of the day before
    them; ``days`` None: unbounded."""

    days: int | None
    tail_ms: int

    @staticmethod
    def of(feature: FeaturePlan) -> Span:
        if feature.window_ms is None:
            return Span(None, 0)
        hop = feature.hop_ms or DAY_MS
        effective = (
            -(-feature.window_ms // hop) * hop
        )  # floor(q - W, hop) = q - ceil(W / hop) * hop at midnight
        return Span(effective // DAY_MS, effective % DAY_MS)


def definition_key(group_by: GroupByPlan) -> str:
    text = json.dumps([FORMAT, CHUNK_DAYS, group_by.fingerprint, group_by.feature_ids()])
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def epoch_day(ds: str) -> int:
    return ds_to_ms(ds) // DAY_MS


def is_chunk_end(ds: str) -> bool:
    return (epoch_day(ds) + 1) % CHUNK_DAYS == 0


def decomposition(first: str, last: str) -> list[tuple[str, str]]:
    """The (column kind, day) IRs whose merge, in this order, covers days ``first..last``: whole aligned
    chunks where they fit, single days elsewhere.

    >>> decomposition("2026-01-01", "2026-01-12")  # the chunk of 2026-01-03..10 (epoch day 20456 = 8 * 2557)
    [('day', '2026-01-01'), ('day', '2026-01-02'), ('chunk', '2026-01-10'), ('day', '2026-01-11'), ('day', '2026-01-12')]
    """
    parts: list[tuple[str, str]] = []
    day = first
    while day <= last:
        end = shift_ds(day, CHUNK_DAYS - 1)
        if epoch_day(day) % CHUNK_DAYS == 0 and end <= last:
            parts.append(("chunk", end))
            day = shift_ds(end, 1)
        else:
            parts.append(("day", day))
            day = shift_ds(day, 1)
    return parts


class DayTable:
    """One day's IRs: per key, per feature column name, the decoded IR (read and decoded on first use).

    Decoded IRs are shared between keys with equal bytes and are never mutated: every merge starts
    from a clone (``merge(None, ir)``), as `Aggregator.merge` guarantees for its second argument."""

    def __init__(self, day: str, table: pa.Table | Path, key_names: Sequence[str], chain: str) -> None:
        self.day = day
        self.chain = chain
        self.path = table if isinstance(table, Path) else None
        self.table = (
            table if isinstance(table, pa.Table) else pq.read_table(table, columns=[*key_names, "__last_ts"])
        )
        self.names = set(pq.read_schema(table).names if isinstance(table, Path) else table.column_names)
        self.keys: list[Key] = list(zip(*(self.table.column(k).to_pylist() for k in key_names), strict=True))
        self._decoded: dict[str, list[Any]] = {}

    def column(self, name: str, aggregator: Aggregator) -> dict[Key, Any]:
        if name not in self._decoded:
            if name not in self.names:
                self._decoded[name] = [None] * len(self.keys)
            else:
                if name in self.table.column_names:
                    raw = self.table.column(name).to_pylist()
                else:
                    raw = pq.read_table(self.path, columns=[name]).column(name).to_pylist()
                seen: dict[bytes, Any] = {}
                decoded: list[Any] = []
                for data in raw:
                    if data is None:
                        decoded.append(None)
                        continue
                    ir = seen.get(data)
                    if ir is None:
                        ir = seen[data] = decode_ir(aggregator, data)
                    decoded.append(ir)
                self._decoded[name] = decoded
        values = self._decoded[name]
        return {key: values[row] for row, key in enumerate(self.keys) if values[row] is not None}

    def last_ts(self) -> dict[Key, int]:
        stamps = self.table.column("__last_ts").to_pylist()
        return {key: ts for key, ts in zip(self.keys, stamps, strict=True) if ts is not None}


class DailyIRs:
    """The daily IR tables of one GroupBy definition, computed on demand from a day's events.

    ``read_day(day)`` gives that day's rows as an Arrow table sorted by (keys, ts, __seq), with the
    keys, ``ts``, ``__seq`` and the value columns; ``signature(day)`` identifies the source files it
    reads; ``types`` are the aggregation-library types of the value columns.
    """

    def __init__(
        self,
        warehouse: Warehouse,
        group_by: GroupByPlan,
        types: dict[str, str],
        read_day: Callable[[str], pa.Table],
        signature: Callable[[str], str],
        first_day: str | None,
    ) -> None:
        self.group_by = group_by
        self.keys = list(group_by.keys)
        self.features: list[OnlineFeature] = online_features(group_by, types)
        self.spans = [Span.of(f.plan) for f in self.features]
        self.columns = row_columns(group_by)
        self.read_day = read_day
        self.signature = signature
        self.first_day = first_day
        self.root = warehouse.table_path(group_by.output_table) / IR_FOLDER / definition_key(group_by)
        self.unbounded = any(span.days is None for span in self.spans)
        self.chunked = any(span.days is not None and span.days >= CHUNK_DAYS for span in self.spans)
        self._tables: dict[str, DayTable] = {}
        self._chains: dict[str, str] = {}
        self.computed: list[str] = []  # days recomputed from events in this run
        self.key_types: dict[str, pa.DataType] = {}

    # -------------------------------------------------------------- storage

    def _path(self, day: str) -> Path:
        return self.root / f"ds={day}" / "part-0.parquet"

    def drop_other_definitions(self) -> None:
        """Tables written for another definition of this GroupBy are never read again."""
        parent = self.root.parent
        if parent.is_dir():
            for folder in parent.iterdir():
                if folder.name != self.root.name and not folder.name.startswith(".tmp"):
                    shutil.rmtree(folder, ignore_errors=True)

    def _deps(self, day: str) -> list[str]:
        deps = []
        if self.unbounded:
            deps.append(shift_ds(day, -1))
        if self.chunked and is_chunk_end(day):
            deps += [shift_ds(day, -i) for i in range(CHUNK_DAYS - 1, 0, -1)]
        return deps

    def expected_chain(self, day: str) -> str:
        """A hash of the source files of ``day`` and of every table its table merges (recursively)."""
        if day in self._chains:
            return self._chains[day]
        pending = [day]
        while pending:  # iteratively, oldest dependency first (cum chains reach back to the first day)
            current = pending[-1]
            missing = [d for d in self._deps(current) if d not in self._chains and self._has_history(d)]
            if missing:
                pending += missing
                continue
            pending.pop()
            if current in self._chains:
                continue
            parts = [self.signature(current)] + [
                self._chains[d] if self._has_history(d) else "" for d in self._deps(current)
            ]
            self._chains[current] = hashlib.sha256("|".join(parts).encode()).hexdigest()[:24]
        return self._chains[day]

    def _has_history(self, day: str) -> bool:
        return self.first_day is not None and day >= self.first_day

    def table(self, day: str) -> DayTable | None:
        """The IR table of ``day`` (None: no event can be that old), stored or recomputed."""
        if not self._has_history(day):
            return None
        if day in self._tables:
            return self._tables[day]
        chain = self.expected_chain(day)
        path = self._path(day)
        if path.exists():
            schema = pq.read_schema(path)
            meta = json.loads((schema.metadata or {}).get(_META, b"{}"))
            if meta.get("chain") == chain:
                for name in self.keys:
                    self.key_types.setdefault(name, schema.field(name).type)
                self._tables[day] = DayTable(day, path, self.keys, chain)
                return self._tables[day]
            log.info("%s: IR table of %s is stale (its inputs changed): recomputing", self.group_by.name, day)
        if self.unbounded:  # each cum merges the previous day's: compute forward from the oldest missing one
            start = day
            while True:
                previous = shift_ds(start, -1)
                if (
                    not self._has_history(previous)
                    or previous in self._tables
                    or self._stored_valid(previous)
                ):
                    break
                start = previous
            current = start
            while current < day:
                self.table(current)
                current = shift_ds(current, 1)
        self._tables[day] = self._compute(day, chain)
        return self._tables[day]

    def _stored_valid(self, day: str) -> bool:
        path = self._path(day)
        if not path.exists():
            return False
        meta = json.loads((pq.read_schema(path).metadata or {}).get(_META, b"{}"))
        return bool(meta.get("chain") == self.expected_chain(day))

    # -------------------------------------------------------------- computing a day

    def _compute(self, day: str, chain: str) -> DayTable:
        """A day's table from its events (and, for ``chunk`` and ``cum``, its neighbours' tables)."""
        per_key, last = self._fold_day(day)
        if self.chunked and is_chunk_end(day):
            self._add_chunks(day, per_key)
        if self.unbounded:
            self._add_cums(day, per_key)
        order = sorted(per_key, key=_sort_key)
        names = sorted({name for irs in per_key.values() for name in irs}, key=_column_order)
        arrays: dict[str, pa.Array] = {}
        for position, name in enumerate(self.keys):
            arrays[name] = pa.array([key[position] for key in order], self.key_types.get(name, pa.null()))
        arrays["__last_ts"] = pa.array([last.get(key) for key in order], pa.int64())
        for name in names:
            aggregator = self.features[int(name.split("_")[0][1:])].aggregator
            encoded = [per_key[key].get(name) for key in order]
            arrays[name] = pa.array(
                [None if ir is None else encode_ir(aggregator, ir) for ir in encoded], pa.binary()
            )
        meta = {"chain": chain, "day": day, "group_by": self.group_by.name}
        table = pa.table(arrays).replace_schema_metadata({_META: json.dumps(meta).encode()})
        self._write(day, table)
        self.computed.append(day)
        return DayTable(day, table, self.keys, chain)

    def _fold_day(self, day: str) -> tuple[dict[Key, dict[str, Any]], dict[Key, int]]:
        """Per key with events that day: its ``day`` and ``tail`` IRs, and its last event time."""
        rows = self.read_day(day)
        start, end = ds_to_ms(day), ds_to_ms(day) + DAY_MS
        per_key: dict[Key, dict[str, Any]] = {}
        last: dict[Key, int] = {}
        if not rows.num_columns:
            return per_key, last
        for name in self.keys:
            self.key_types[name] = rows.schema.field(name).type
        key_columns = [rows.column(k).to_pylist() for k in self.keys]
        stamps = rows.column("ts").to_pylist()
        seqs = rows.column("__seq").to_pylist()
        values = [rows.column(c).to_pylist() if c in rows.column_names else None for c in self.columns]
        slots = [
            (feature, f"f{index}_day" if span.days != 0 else None, f"f{index}_tail", end - span.tail_ms)
            for index, (feature, span) in enumerate(zip(self.features, self.spans, strict=True))
        ]
        for row in range(rows.num_rows):
            ts = stamps[row]
            if ts < start or ts >= end:  # an event outside its partition's day is not this day's
                continue
            key = tuple(column[row] for column in key_columns)
            irs = per_key.setdefault(key, {})
            last[key] = ts
            row_values = [None if column is None else column[row] for column in values]
            for feature, day_name, tail_name, tail_start in slots:
                if day_name is not None:
                    irs[day_name] = feature.accumulate(irs.get(day_name), row_values, ts, seqs[row])
                if tail_start < end and ts >= tail_start:
                    irs[tail_name] = feature.accumulate(irs.get(tail_name), row_values, ts, seqs[row])
        return per_key, last

    def _add_chunks(self, day: str, per_key: dict[Key, dict[str, Any]]) -> None:
        """On a chunk's last day: the merge of the chunk's ``day`` IRs, oldest first."""
        blocks = [self.table(shift_ds(day, -i)) for i in range(CHUNK_DAYS - 1, 0, -1)]
        for index, (feature, span) in enumerate(zip(self.features, self.spans, strict=True)):
            if span.days is None or span.days < CHUNK_DAYS:
                continue
            name = f"f{index}_day"
            sources = [block.column(name, feature.aggregator) for block in blocks if block is not None]
            sources.append({key: irs[name] for key, irs in per_key.items() if name in irs})
            merged: dict[Key, Any] = {}
            for source in sources:
                for key, ir in source.items():
                    merged[key] = feature.aggregator.merge(merged.get(key), ir)
            for key, ir in merged.items():
                per_key.setdefault(key, {})[f"f{index}_chunk"] = ir

    def _add_cums(self, day: str, per_key: dict[Key, dict[str, Any]]) -> None:
        """Unbounded windows: yesterday's ``cum`` merged with today's ``day``, for every key seen so far."""
        previous = self.table(shift_ds(day, -1))
        for key in previous.keys if previous else []:
            per_key.setdefault(key, {})
        for index, (feature, span) in enumerate(zip(self.features, self.spans, strict=True)):
            if span.days is not None:
                continue
            before = previous.column(f"f{index}_cum", feature.aggregator) if previous else {}
            for key, irs in per_key.items():
                cum = feature.aggregator.merge(None, before.get(key))
                irs[f"f{index}_cum"] = feature.aggregator.merge(cum, irs.get(f"f{index}_day"))

    def _write(self, day: str, table: pa.Table) -> None:
        path = self._path(day)
        path.parent.parent.mkdir(parents=True, exist_ok=True)
        staging = path.parent.parent / f".tmp-{uuid.uuid4().hex}"
        staging.mkdir()
        try:
            pq.write_table(table, staging / path.name)
            if path.parent.exists():
                shutil.rmtree(path.parent)
            os.replace(staging, path.parent)
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    # -------------------------------------------------------------- values at D + 1 00:00

    def values(self, day: str) -> tuple[list[Key], list[list[Any]]]:
        """The keys with an event in some window at ``D+1 00:00`` (sorted) and each feature's value."""
        longest = self._longest()
        present: set[Key] = set()
        if longest.days is None:
            table = self.table(day)
            present.update(table.keys if table else [])
        else:
            for offset in range(longest.days):
                table = self.table(shift_ds(day, -offset))
                if table is not None:
                    present.update(table.last_ts())
            if longest.tail_ms:
                table = self.table(shift_ds(day, -longest.days))
                threshold = ds_to_ms(day) + DAY_MS - longest.days * DAY_MS - longest.tail_ms
                if table is not None:
                    present.update(k for k, ts in table.last_ts().items() if ts >= threshold)
        keys = sorted(present, key=_sort_key)
        out: list[list[Any]] = []
        for index, (feature, span) in enumerate(zip(self.features, self.spans, strict=True)):
            aggregator = feature.aggregator
            if span.days is None:
                table = self.table(day)
                cum = table.column(f"f{index}_cum", aggregator) if table else {}
                out.append([aggregator.finalize(cum.get(key)) for key in keys])
                continue
            parts: list[dict[Key, Any]] = []
            if span.tail_ms:
                table = self.table(shift_ds(day, -span.days))
                parts.append(table.column(f"f{index}_tail", aggregator) if table else {})
            if span.days:
                for kind, part_day in decomposition(shift_ds(day, 1 - span.days), day):
                    table = self.table(part_day)
                    parts.append(table.column(f"f{index}_{kind}", aggregator) if table else {})
            column = []
            for key in keys:
                ir = None
                for part in parts:
                    piece = part.get(key)
                    if piece is not None:
                        ir = aggregator.merge(ir, piece)
                column.append(aggregator.finalize(ir))
            out.append(column)
        return keys, out

    def _longest(self) -> Span:
        if self.unbounded:
            return Span(None, 0)
        return max(self.spans, key=lambda s: (s.days or 0) * DAY_MS + s.tail_ms)

    def forget_before(self, day: str) -> None:
        """Drop cached tables no window of ``day`` or later reads."""
        longest = self._longest()
        keep_from = shift_ds(day, -1) if longest.days is None else shift_ds(day, -longest.days - CHUNK_DAYS)
        for cached in [d for d in self._tables if d < keep_from]:
            del self._tables[cached]


def _sort_key(key: Key) -> tuple[Any, ...]:
    return tuple((value is None, value) for value in key)


def _column_order(name: str) -> tuple[int, str]:
    feature, _, kind = name.partition("_")
    return (int(feature[1:]), kind)


def first_partition(warehouse: Warehouse, group_by: GroupByPlan) -> str | None:
    """The oldest partition of any source: no table before it holds an event."""
    firsts = []
    for source in group_by.sources:
        partitions = warehouse.partitions(source.table)
        if source.start_partition:
            partitions = [p for p in partitions if p >= source.start_partition]
        if partitions:
            firsts.append(partitions[0])
    return min(firsts) if firsts else None


def signature(warehouse: Warehouse, group_by: GroupByPlan, day: str) -> str:
    """What a day's table is computed from: each source's files of that day (name, size, mtime)."""
    parts = []
    for source in group_by.sources:
        inside = (not source.start_partition or day >= source.start_partition) and (
            not source.end_partition or day <= source.end_partition
        )
        files = warehouse.partition_files(source.table, day, day) if inside else []
        for file in files:
            stat = os.stat(file)
            parts.append(f"{source.table}:{Path(file).name}:{stat.st_size}:{stat.st_mtime_ns}")
        parts.append("#")
    return ";".join(parts)


def arrow_type(feature: FeaturePlan, aggregator: Aggregator, input_type: pa.DataType) -> pa.DataType:
    """The output column type the SQL path gives a feature (the input's own type where it keeps it)."""
    whole = feature.operation in ("first", "last", "first_k", "last_k")
    scalar = input_type
    if pa.types.is_map(input_type):
        scalar = input_type.item_type
    elif (pa.types.is_list(input_type) or pa.types.is_large_list(input_type)) and (
        feature.element_wise or not whole
    ):
        scalar = input_type.value_type
    operation = feature.operation
    if operation in ("count", "unique_count", "bounded_unique_count", "approx_unique_count"):
        base: pa.DataType = pa.int64()
    elif operation == "sum":
        base = pa.float64() if pa.types.is_floating(scalar) or pa.types.is_decimal(scalar) else pa.int64()
    elif operation in ("average", "variance", "skew", "kurtosis"):
        base = pa.float64()
    elif operation in ("min", "max", "first", "last"):
        base = scalar
    elif operation in ("first_k", "last_k", "top_k", "bottom_k"):
        base = pa.list_(scalar)
    elif operation == "approx_percentile":
        base = pa.list_(pa.float64())
    else:  # histogram, approx_histogram_k
        base = pa.map_(pa.string(), pa.int64())
    if feature.element_wise:
        return pa.list_(base)
    if feature.bucket or pa.types.is_map(input_type):
        return pa.map_(pa.string(), base)
    return base


def to_arrow(values: list[Any], type_: pa.DataType) -> pa.Array:
    """Finalized IR values as an Arrow array of ``type_`` (maps given as dicts)."""
    return pa.array([_plain(v, type_) for v in values], type_)


def _plain(value: Any, type_: pa.DataType) -> Any:
    if value is None:
        return None
    if pa.types.is_map(type_):
        return [(k, _plain(v, type_.item_type)) for k, v in value.items()]
    if pa.types.is_list(type_):
        return [_plain(v, type_.value_type) for v in value]
    return value
