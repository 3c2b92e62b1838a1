"""The JSON API behind the web UI: pure functions from a served repo (`UiData`) and a request's
parameters to JSON-able dicts. `gnomon.ui.routes` serves them as ``GET /v1/...``; scripts may call
either. Every function raises `BadParameter` (HTTP 400) naming the parameter, or
`gnomon.errors.UnknownObjectError` (HTTP 404) for an unknown object, table, node or Join.

Beside this module: `gnomon.ui.columns` (an object's features and output columns from the plan),
`gnomon.ui.sql` (the SQL an object's page shows), `gnomon.ui.lineage` (the graph) and
`gnomon.ui.streams` (upload key counts and stream positions, per store and broker).

Notes on the shapes of the answers:

- Consistency figures keep the column names of the ``consistency.<join>`` table
  (`gnomon.monitoring.consistency.CONSISTENCY_SCHEMA`): ``rows_compared`` (not ``compared``),
  ``online_null_rate`` and ``offline_null_rate`` (not ``null_rate_online`` / ``null_rate_offline``).
  ``mismatching_keys`` is a list of ``{"keys": {...}, "ts": MS, "online": V, "offline": V}``. A day's
  ``rows_compared`` is the largest of its features' (each feature compares the same logged fetches)
  and its ``mismatches`` their sum.
- ``/v1/objects/{kind}/{name}``: ``upstream`` and ``downstream`` are the object's *direct* neighbours
  in the lineage graph (node ids as in ``/v1/lineage``); the whole chain is
  ``/v1/lineage?focus=<kind>:<name>``. ``columns[].type`` is the Arrow type as text (``int64``,
  ``double``, ``string``, ``list<item: string>``, ``map<string, int64>``), null when it cannot be known
  (a source table without any partition). ``sql`` labels: ``source N: <table>`` (a source's Query as
  the engine runs it over each partition), ``aggregation`` (the aggregates, in the range-join form of
  the DuckDB engine; ``__q`` is the time a value is asked for), ``part N: <group_by>`` (a Join's query
  set for that GroupBy), ``derivations``, and ``query`` (a StagingQuery's SQL, templates unfilled).
- ``/v1/freshness``: ``upload.uploaded_at`` and ``topics[].last_event_ms`` are epoch ms;
  ``upload.keys`` is the number of keys the upload wrote (null for a store that cannot count them);
  ``topics[].lag`` counts the records published and not yet applied (Redis: at most `REDIS_LAG_CAP`);
  ``last_event_ms`` is when the broker accepted the last record applied (null: none yet, or a broker
  that does not say — Kafka); ``freshness_ms`` is 0 when everything published is applied, else how
  long the oldest unapplied record has waited. ``status``: ``never_uploaded`` (no upload),
  ``definition_changed`` (the upload cannot serve the current definition), ``stale`` (the upload is
  older than ``online.horizon``, so fetches fail, or a record has waited more than
  `STREAM_STALE_MS`), else ``fresh``; each entry also has ``reason`` (a sentence, null when fresh).
- ``/v1/partitions``: ``tables`` are sorted by role (source, output, log, consistency), then name;
  each also has ``first`` (its first partition, null when none) and, for outputs, ``object``
  (``<kind>:<name>`` of what writes it).
"""

from __future__ import annotations

import datetime as dt
import os
import re
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from gnomon import jsonio
from gnomon.compile.plan import GroupByPlan, JoinPlan, Plan, SourcePlan, StagingQueryPlan
from gnomon.errors import GnomonError, UnknownObjectError
from gnomon.timeline import DAY_MS, ds_range, ms_to_ds, shift_ds
from gnomon.ui.columns import PlanSchemas, TypeProbe, features_of, staging_inputs
from gnomon.ui.lineage import Lineage, build_lineage
from gnomon.ui.sql import compiled_sql
from gnomon.ui.streams import REDIS_LAG_CAP, TopicState, count_batch_keys, topic_reader

__all__ = [
    "KINDS",
    "MAX_DAYS",
    "REDIS_LAG_CAP",
    "STREAM_STALE_MS",
    "BadParameter",
    "UiData",
    "catalog",
    "consistency_history",
    "consistency_overview",
    "freshness",
    "lineage",
    "object_detail",
    "partitions",
    "runs",
    "stats",
]

#: the object kinds, in the order the catalog lists them
KINDS = ("group_by", "join", "staging_query")
_KIND_LABELS = {"group_by": "GroupBy", "join": "Join", "staging_query": "StagingQuery"}
MAX_DAYS = 3660  # ten years of days: more is a typo, not a page
STREAM_STALE_MS = 60_000  # a record unapplied this long makes its GroupBy stale
_ROLE_ORDER = ("source", "output", "log", "consistency")
_DS = re.compile(r"\d{4}-\d{2}-\d{2}")
STATS_FILE = "part-0.parquet"  # one per partition under <table>/.stats/ds=D/ (`gnomon.offline.stats`)
_SETTLE_NS = 50_000_000  # a folder changed this recently may change again within its mtime's tick


class BadParameter(GnomonError, ValueError):
    """A request parameter that is malformed or out of range (HTTP 400); names the parameter."""

    def __init__(self, parameter: str, message: str) -> None:
        self.parameter = parameter
        super().__init__(f"{parameter}: {message}")


# ---------------------------------------------------------------------------------------- parameters


def check_ds(value: str | None, parameter: str) -> str | None:
    """``value`` when it is a real day ``YYYY-MM-DD`` (or None), else `BadParameter`.

    >>> check_ds("2026-10-30", "end")
    '2026-10-30'
    >>> check_ds("2026-02-30", "end")
    Traceback (most recent call last):
    ...
    gnomon.ui.api.BadParameter: end: expected a day as YYYY-MM-DD, got '2026-02-30'
    """
    if value is None:
        return None
    try:
        if not _DS.fullmatch(value):
            raise ValueError(value)
        dt.date.fromisoformat(value)
    except ValueError:
        raise BadParameter(parameter, f"expected a day as YYYY-MM-DD, got {value!r}") from None
    return value


def check_days(value: int, parameter: str = "days") -> int:
    """A number of days between 1 and `MAX_DAYS`."""
    if not 1 <= value <= MAX_DAYS:
        raise BadParameter(parameter, f"expected a number of days from 1 to {MAX_DAYS}, got {value}")
    return value


def check_kind(value: str | None, parameter: str = "kind") -> str | None:
    if value is not None and value not in KINDS:
        raise BadParameter(parameter, f"expected one of {', '.join(KINDS)}, got {value!r}")
    return value


# ---------------------------------------------------------------------------------------- the served repo


Node = GroupByPlan | JoinPlan | StagingQueryPlan


class UiData:
    """A served repo and what the UI keeps about it between requests.

    The plan is the server's (compiled once when it starts), so the catalog and the lineage graph
    are computed once. Partition listings are cached per table folder and re-read when the folder
    changes (its mtime, inode or link count: adding, replacing or removing a partition changes
    them), and small Parquet reads per partition folder the same way — a backfill shows at once.
    """

    def __init__(self, project: Any, store: Any = None) -> None:
        self.project = project
        self.plan: Plan = project.plan
        self.warehouse = project.warehouse
        self.root: Path = project.root
        self._store = store
        self._broker: Any = None
        self._lock = threading.Lock()
        self._listings: dict[str, tuple[tuple[int, int, int], list[str]]] = {}
        self._reads: dict[str, tuple[tuple[int, int], Any]] = {}
        self._catalog: list[dict[str, Any]] | None = None
        self._lineage: Lineage | None = None
        self._upload_keys: dict[tuple[str, int, int], int | None] = {}
        self._stats: dict[tuple[str, str], tuple[tuple[int, int, int], dict[str, Any]]] = {}
        self._runs: dict[tuple[str | None, int], tuple[Any, list[dict[str, Any]]]] = {}
        self._groups: dict[str, dict[str, str]] = {}  # GroupBy -> topic -> consumer group
        self._uploads: dict[str, tuple[bytes, Any, str | None]] = {}  # GroupBy -> (record, meta, changed)
        self.types = TypeProbe()

    # -------------------------------------------------------------- the plan's objects

    def nodes(self) -> Iterable[tuple[str, Node]]:
        """(kind, plan object) of every object, by kind then name."""
        plan = self.plan
        for kind, objects in (
            ("group_by", plan.group_bys),
            ("join", plan.joins),
            ("staging_query", plan.staging_queries),
        ):
            for name in sorted(objects):
                yield kind, objects[name]

    def node(self, kind: str, name: str) -> Node:
        """The plan object of that kind and name (`UnknownObjectError` naming close names)."""
        check_kind(kind)
        objects: Mapping[str, Node]
        if kind == "group_by":
            objects = self.plan.group_bys
        elif kind == "join":
            objects = self.plan.joins
        else:
            objects = self.plan.staging_queries
        if name not in objects:
            raise UnknownObjectError(_KIND_LABELS[kind], name, objects)
        return objects[name]

    # -------------------------------------------------------------- the warehouse, cached

    def partitions(self, table: str) -> list[str]:
        """The partitions of ``table`` (`Warehouse.partitions`), cached until its folder changes."""
        path = self.warehouse.table_path(table)
        try:
            status = os.stat(path)
        except (FileNotFoundError, NotADirectoryError):
            return []
        key = (status.st_mtime_ns, status.st_ino, status.st_nlink)
        cached = self._listings.get(table)
        if cached is not None and cached[0] == key:
            return cached[1]
        found = sorted(
            entry.name[3:] for entry in os.scandir(path) if entry.name.startswith("ds=") and entry.is_dir()
        )
        if time.time_ns() - status.st_mtime_ns > _SETTLE_NS:
            self._listings[table] = (key, found)
        return found

    def namespace_tables(self, namespace: str) -> list[str]:
        """The tables of one warehouse namespace (``logs``, ``consistency``) that exist."""
        folder = self.warehouse.root / namespace
        if not folder.is_dir():
            return []
        return sorted(
            f"{namespace}.{entry.name}"
            for entry in os.scandir(folder)
            if entry.is_dir() and not entry.name.startswith(".")
        )

    def read_partition(self, table: str, ds: str, read: Callable[[list[Path]], Any]) -> Any:
        """``read(files)`` of partition ``ds`` of ``table``, cached until the partition is replaced."""
        folder = self.warehouse.table_path(table) / f"ds={ds}"
        try:
            status = os.stat(folder)
        except FileNotFoundError:  # removed since it was listed
            return read([])
        key = (status.st_mtime_ns, status.st_ino)
        cache_key = f"{folder}|{getattr(read, '__name__', id(read))}"
        cached = self._reads.get(cache_key)
        if cached is not None and cached[0] == key:
            return cached[1]
        value = read(sorted(folder.glob("*.parquet")))
        if time.time_ns() - status.st_mtime_ns > _SETTLE_NS:
            self._reads[cache_key] = (key, value)
        return value

    def latest_schema(self, table: str) -> pa.Schema | None:
        """The Arrow schema of the newest file of the table's newest partition (None: no data)."""
        days = self.partitions(table)
        if not days:
            return None
        files: list[pa.Schema] = self.read_partition(table, days[-1], _schemas)
        return files[-1] if files else None

    # -------------------------------------------------------------- online store and broker

    def store(self) -> Any:
        if self._store is None:
            with self._lock:
                if self._store is None:
                    self._store = self.project.store()
        return self._store

    def broker(self) -> Any:
        """The stream broker (opened on first use; the embedded log's file is not created by it)."""
        if self._broker is None:
            with self._lock:
                if self._broker is None:
                    self._broker = self.project.broker()
        return self._broker


def _schemas(files: list[Path]) -> list[pa.Schema]:
    return [pq.read_schema(file) for file in files]


# ---------------------------------------------------------------------------------------- catalog


def _meta(node: Node) -> dict[str, Any]:
    """What the definition says about itself (`gnomon.compile.plan.Meta`)."""
    meta = node.meta
    return {
        "owner": meta.owner,
        "tags": list(meta.tags),
        "description": meta.description,
        "defined_in": meta.defined_in,
    }


def _catalog_entry(data: UiData, kind: str, node: Node) -> dict[str, Any]:
    meta = _meta(node)
    return {
        "kind": kind,
        "name": node.name,
        "owner": meta["owner"],
        "tags": meta["tags"],
        "description": meta["description"],
        "output_table": node.output_table,
        "online": bool(getattr(node, "online", False)),
        "features": features_of(node, data.plan),
        "defined_in": meta["defined_in"],
    }


def _matches(entry: Mapping[str, Any], needle: str) -> bool:
    texts = [entry["name"], entry["owner"], entry["description"], *entry["tags"], *entry["features"]]
    return any(needle in text.lower() for text in texts if text)


def catalog(data: UiData, q: str | None = None, kind: str | None = None) -> dict[str, Any]:
    """``/v1/catalog``: every GroupBy, Join and StagingQuery, by kind then name; ``q`` keeps those
    whose name, owner, a tag, the description or a feature name contains it (any case)."""
    check_kind(kind)
    if data._catalog is None:
        data._catalog = [_catalog_entry(data, k, node) for k, node in data.nodes()]
    entries = [e for e in data._catalog if kind is None or e["kind"] == kind]
    needle = (q or "").strip().lower()
    if needle:
        entries = [e for e in entries if _matches(e, needle)]
    return {"objects": entries}


# ---------------------------------------------------------------------------------------- lineage


def _lineage(data: UiData) -> Lineage:
    if data._lineage is None:
        data._lineage = build_lineage(data.plan)
    return data._lineage


def lineage(data: UiData, focus: str | None = None) -> dict[str, Any]:
    """``/v1/lineage``: the whole graph, or only what ``focus`` (a node id) reads and feeds, transitively."""
    graph = _lineage(data)
    if focus is None:
        return graph.to_json()
    if focus not in graph.nodes:
        raise UnknownObjectError("lineage node", focus, graph.nodes)
    return graph.to_json(graph.connected(focus))


# ---------------------------------------------------------------------------------------- one object


def object_detail(data: UiData, kind: str, name: str) -> dict[str, Any]:
    """``/v1/objects/{kind}/{name}``: metadata, the compiled plan, its SQL, output columns and types,
    lineage neighbours and output partitions."""
    node = data.node(kind, name)
    meta = _meta(node)
    upstream, downstream = _lineage(data).neighbours(f"{kind}:{name}")
    days = data.partitions(node.output_table)
    schema = data.latest_schema(node.output_table)
    if schema is not None:
        columns = [{"name": f.name, "type": str(f.type)} for f in schema if f.name != "ds"]
        columns_from = "warehouse"
    else:
        columns = [{"name": c, "type": None if t is None else str(t)} for c, t in PlanSchemas(data).of(node)]
        columns_from = "plan"
    return {
        "kind": kind,
        "name": name,
        "owner": meta["owner"],
        "tags": meta["tags"],
        "description": meta["description"],
        "defined_in": meta["defined_in"],
        "output_table": node.output_table,
        "online": bool(getattr(node, "online", False)),
        "definition": asdict(node),
        "sql": compiled_sql(node, data),
        "columns": columns,
        "columns_from": columns_from,
        "upstream": upstream,
        "downstream": downstream,
        "partitions": {
            "first": days[0] if days else None,
            "last": days[-1] if days else None,
            "count": len(days),
        },
    }


# ---------------------------------------------------------------------------------------- partitions


def _expected_start(role: str, first: str | None, writer: Node | None) -> str | None:
    """The first day a table is expected to have: sources, logs and consistency tables from their
    first partition (history before it is no gap); outputs from their object's start."""
    if role == "output" and writer is not None:
        start = getattr(writer, "backfill_start_date", None) or getattr(writer, "start_partition", None)
        if start:
            return start  # type: ignore[no-any-return]
    return first


def table_roles(data: UiData) -> dict[str, str]:
    """Every table of the page: the plan's source and output tables, and the logs and consistency
    tables that exist (an output read as a source is an output)."""
    roles: dict[str, str] = {}
    plan = data.plan
    sources: list[SourcePlan] = [s for g in plan.group_bys.values() for s in g.sources]
    sources += [j.left for j in plan.joins.values()]
    for source in sources:
        if source.kind != "join":
            roles[source.table] = "source"
        if source.mutation_table:
            roles[source.mutation_table] = "source"
    for query in plan.staging_queries.values():
        roles.update((table, "source") for table in staging_inputs(query) or [])
    for _, node in data.nodes():
        roles[node.output_table] = "output"
    roles.update((t, "log") for t in data.namespace_tables("logs"))
    roles.update((t, "consistency") for t in data.namespace_tables("consistency"))
    return roles


def partitions(
    data: UiData, days: int = 30, end: str | None = None, table: str | None = None
) -> dict[str, Any]:
    """``/v1/partitions``: which partitions of every table exist over ``days`` days ending at ``end``
    (default: the newest partition of any of them, else yesterday UTC), and which are missing."""
    check_days(days)
    check_ds(end, "end")
    roles = table_roles(data)
    if table is not None and table not in roles:
        raise UnknownObjectError("table", table, roles)
    listed = {t: data.partitions(t) for t in roles}
    if end is None:  # the same window with or without ``table``: the newest partition of any table
        newest = [p[-1] for p in listed.values() if p]
        end = max(newest) if newest else (dt.datetime.now(dt.UTC).date() - dt.timedelta(days=1)).isoformat()
    start = shift_ds(end, -(days - 1))
    wanted = ds_range(start, end)
    writers = {node.output_table: (kind, node) for kind, node in data.nodes()}
    rows = []
    for name, have in listed.items():
        if table is not None and name != table:
            continue
        role = roles[name]
        present = set(have)
        writer = writers.get(name)
        expected = _expected_start(role, have[0] if have else None, writer[1] if writer else None)
        row: dict[str, Any] = {
            "table": name,
            "role": role,
            "first": have[0] if have else None,
            "present": [d for d in wanted if d in present],
            "missing": [d for d in wanted if d not in present and expected is not None and d >= expected],
        }
        if role == "output" and writer is not None:
            row["object"] = f"{writer[0]}:{writer[1].name}"
        rows.append(row)
    rows.sort(key=lambda r: (_ROLE_ORDER.index(r["role"]), r["table"]))
    return {"start": start, "end": end, "days": wanted, "tables": rows}


# ---------------------------------------------------------------------------------------- runs


def _file_signature(path: Path) -> tuple[int, int] | None:
    try:
        status = os.stat(path)
    except FileNotFoundError:
        return None
    return (status.st_mtime_ns, status.st_size)


def runs(data: UiData, ds: str | None = None, days: int = 3) -> dict[str, Any]:
    """``/v1/runs``: the latest attempt of each task per day, as `gnomon status --json` prints them
    (of ``ds``, or of the ``days`` most recent days run).

    An answer is cached until the history's files change (a commit writes its write-ahead log), and
    only when no attempt in it is waiting or running: whether such a row's process still lives is
    asked anew each time (`Attempt.interrupted`)."""
    from gnomon.orchestration.history import HISTORY_FILE, History

    check_ds(ds, "ds")
    check_days(days)
    path = data.root / HISTORY_FILE
    if not path.exists():  # reading must not create the history of a repo never run
        return {"runs": []}
    signature = (_file_signature(path), _file_signature(path.with_name(path.name + "-wal")))
    cached = data._runs.get((ds, days))
    if cached is not None and cached[0] == signature:
        return {"runs": cached[1]}
    history = History(path)
    try:
        attempts = history.latest(ds, days)
    finally:
        history.close()
    found = [attempt.to_json() for attempt in attempts]
    settled = all(time.time_ns() - s[0] > _SETTLE_NS for s in signature if s is not None)
    if settled and not any(a.status in ("waiting", "running") for a in attempts):
        data._runs[ds, days] = (signature, found)
    return {"runs": found}


# ---------------------------------------------------------------------------------------- freshness


def _upload_keys(data: UiData, group_by: str, batch_end: int, uploaded_at: int) -> int | None:
    """How many keys an upload wrote: its batch records counted in the store (cached per upload:
    an upload's records never change once its meta is written)."""
    cache_key = (group_by, batch_end, uploaded_at)
    if cache_key not in data._upload_keys:
        data._upload_keys[cache_key] = count_batch_keys(data.store(), group_by, batch_end)
    return data._upload_keys[cache_key]


def _stream(data: UiData, group_by: GroupByPlan, reader: Any, now_ms: int) -> dict[str, Any] | None:
    from gnomon.streaming.worker import consumer_group, streamed_topics

    if group_by.name not in data._groups:  # the plan is fixed: hash each definition once
        data._groups[group_by.name] = {
            t: consumer_group(group_by, t) for t in sorted(streamed_topics(group_by))
        }
    groups = data._groups[group_by.name]
    if not groups:
        return None
    found = []
    for topic, group in groups.items():
        state: TopicState = reader.state(topic, data.store().offsets(group))
        if state.lag == 0:
            waited: int | None = 0
        elif state.oldest_pending_ms is not None:
            waited = max(now_ms - state.oldest_pending_ms, 0)
        else:
            waited = None
        found.append(
            {"topic": topic, "lag": state.lag, "last_event_ms": state.last_applied_ms, "freshness_ms": waited}
        )
    return {"topics": found}


def _upload(data: UiData, group_by: GroupByPlan, record: bytes | None) -> tuple[Any, str | None]:
    """The upload's meta and why it cannot serve the current definition (None: it can), cached per
    stored record (the check hashes the definition)."""
    from gnomon.online.fetcher import FetchError, stored_features
    from gnomon.online.records import UploadMeta

    if record is None:
        return None, None
    cached = data._uploads.get(group_by.name)
    if cached is not None and cached[0] == record:
        return cached[1], cached[2]
    meta = UploadMeta.decode(record)
    try:
        stored_features(group_by, meta)
        changed = None
    except FetchError as error:
        changed = str(error)
    data._uploads[group_by.name] = (record, meta, changed)
    return meta, changed


def _status(
    data: UiData,
    group_by: GroupByPlan,
    meta: Any,
    changed: str | None,
    stream: dict[str, Any] | None,
    now_ms: int,
) -> tuple[str, str | None]:
    if meta is None:
        return "never_uploaded", f"no upload yet: run `gnomon upload {group_by.name} --ds <day>`"
    if changed is not None:
        return "definition_changed", changed
    horizon = data.project.config.online_horizon_ms
    if now_ms - meta.batch_end > horizon:
        return "stale", (
            f"the upload's batch end {ms_to_ds(meta.batch_end)} is more than online.horizon "
            f"({horizon // 3_600_000} h) ago: fetches fail until a newer upload"
        )
    for topic in (stream or {}).get("topics", []):
        if topic["freshness_ms"] is not None and topic["freshness_ms"] > STREAM_STALE_MS:
            return "stale", (
                f"topic {topic['topic']!r}: {topic['lag']} record(s) waiting, the oldest for "
                f"{topic['freshness_ms'] // 1000} s; is its stream worker running?"
            )
    return "fresh", None


def freshness(data: UiData, now_ms: int | None = None) -> dict[str, Any]:
    """``/v1/freshness``: every online GroupBy's upload, stream positions and status."""
    from gnomon.online.records import meta_key

    now_ms = int(time.time() * 1000) if now_ms is None else now_ms
    online = [g for _, g in data.nodes() if isinstance(g, GroupByPlan) and g.online]
    if not online:
        return {"group_bys": []}
    raw = data.store().get([meta_key(g.name) for g in online])
    reader = topic_reader(data.project.config.stream, data.broker)
    entries = []
    try:
        for group_by, record in zip(online, raw, strict=True):
            meta, changed = _upload(data, group_by, record)
            stream = _stream(data, group_by, reader, now_ms)
            status, reason = _status(data, group_by, meta, changed, stream, now_ms)
            upload = None
            if meta is not None:
                upload = {
                    "ds": ms_to_ds(meta.batch_end - DAY_MS),
                    "uploaded_at": meta.uploaded_at,
                    "keys": _upload_keys(data, group_by.name, meta.batch_end, meta.uploaded_at),
                }
            entries.append(
                {
                    "name": group_by.name,
                    "online": True,
                    "upload": upload,
                    "stream": stream,
                    "status": status,
                    "reason": reason,
                }
            )
    finally:
        if hasattr(reader, "close"):
            reader.close()
    return {"group_bys": entries}


# ---------------------------------------------------------------------------------------- data quality


def resolve_table(data: UiData, table: str) -> str:
    """A warehouse table, or the output table of a GroupBy, Join or StagingQuery of that name."""
    for _, node in data.nodes():
        if node.name == table:
            return node.output_table
    try:
        exists = data.warehouse.exists(table)
    except GnomonError:
        exists = False
    if not exists:
        known = [*(n.name for _, n in data.nodes()), *table_roles(data)]
        raise UnknownObjectError("table or object", table, known)
    return table


def stats(data: UiData, table: str, start_ds: str | None = None, end_ds: str | None = None) -> dict[str, Any]:
    """``/v1/stats/{table}``: the data-quality figures of a table's partitions (`gnomon.offline.stats`),
    each cached until its stored file changes."""
    from gnomon.offline.stats import read_stats, stats_table

    check_ds(start_ds, "start_ds")
    check_ds(end_ds, "end_ds")
    if start_ds and end_ds and end_ds < start_ds:
        raise BadParameter("end_ds", f"{end_ds} is before start_ds {start_ds}")
    resolved = resolve_table(data, table)
    folder = data.warehouse.root / stats_table(resolved)
    days = sorted(
        entry.name[3:]
        for entry in (os.scandir(folder) if folder.is_dir() else ())
        if entry.name.startswith("ds=")
    )
    days = [d for d in days if (start_ds is None or d >= start_ds) and (end_ds is None or d <= end_ds)]
    keys: dict[str, tuple[int, int, int]] = {}
    for day in days:
        try:
            status = os.stat(folder / f"ds={day}" / STATS_FILE)
        except FileNotFoundError:
            continue
        keys[day] = (status.st_mtime_ns, status.st_ino, status.st_size)
    stale = [day for day, key in keys.items() if data._stats.get((resolved, day), ((0, 0, 0), {}))[0] != key]
    if stale:  # one read of the range of what changed; each file's key was taken before reading it
        for partition in read_stats(data.warehouse, resolved, stale[0], stale[-1]):
            if partition.ds in keys:
                data._stats[resolved, partition.ds] = (keys[partition.ds], partition.to_json())
    cached = [data._stats.get((resolved, day)) for day in keys]
    found = [entry[1] for day, entry in zip(keys, cached, strict=True) if entry and entry[0] == keys[day]]
    return {"table": resolved, "partitions": found}


# ---------------------------------------------------------------------------------------- consistency


def _consistency_rows(files: list[Path]) -> list[dict[str, Any]]:
    """The feature rows of one ``consistency.<join>`` partition, mismatching keys parsed."""
    rows = []
    for file in files:
        for row in pq.read_table(file).to_pylist():
            row.pop("ds", None)
            keys = row.get("mismatching_keys")
            row["mismatching_keys"] = jsonio.loads(keys.encode()) if keys else []
            rows.append(row)
    return rows


def _consistency_day(data: UiData, table: str, ds: str) -> dict[str, Any]:
    features: list[dict[str, Any]] = data.read_partition(table, ds, _consistency_rows)
    return {
        "ds": ds,
        "rows_compared": max((f["rows_compared"] or 0 for f in features), default=0),
        "mismatches": sum(f["mismatches"] or 0 for f in features),
        "features": features,
    }


def _join(data: UiData, name: str) -> JoinPlan:
    if name not in data.plan.joins:
        raise UnknownObjectError("Join", name, data.plan.joins)
    return data.plan.joins[name]


def consistency_overview(data: UiData) -> dict[str, Any]:
    """``/v1/consistency``: the latest consistency figures of every online Join (null: none yet)."""
    from gnomon.monitoring.consistency import consistency_table

    joins = []
    for name, join in sorted(data.plan.joins.items()):
        if not join.online:
            continue
        table = consistency_table(name)
        days = data.partitions(table)
        joins.append({"join": name, "latest": _consistency_day(data, table, days[-1]) if days else None})
    return {"joins": joins}


def consistency_history(data: UiData, join: str, days: int = 30) -> dict[str, Any]:
    """``/v1/consistency/{join}``: the figures of each day over the ``days`` days ending at the
    newest one, oldest first."""
    from gnomon.monitoring.consistency import consistency_table

    check_days(days)
    _join(data, join)
    table = consistency_table(join)
    have = data.partitions(table)
    if not have:
        return {"join": join, "partitions": []}
    start = shift_ds(have[-1], -(days - 1))
    return {"join": join, "partitions": [_consistency_day(data, table, ds) for ds in have if ds >= start]}
