"""`gnomon.Project`: the Python API for notebooks and pipelines (SPEC §6)."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pyarrow as pa

from gnomon.compile.guards import check_supported
from gnomon.compile.plan import GroupByPlan, JoinPlan, Plan, build_plan
from gnomon.compile.repo import LoadedRepo, load_repo
from gnomon.compile.validate import validate
from gnomon.config import Config
from gnomon.definitions import GroupBy, Join, StagingQuery
from gnomon.definitions.join import Definition
from gnomon.errors import ConfigError, ExecutionError, UnknownObjectError, WarehouseError
from gnomon.offline.engine import OfflineEngine, open_engine
from gnomon.offline.warehouse import DAY_MS, Warehouse, as_arrow, ds_range, ds_to_ms, ms_to_ds

log = logging.getLogger("gnomon")
PLAN_FILE = Path("compiled") / "plan.json"


class Project:
    """A feature repo: its configuration, definitions, warehouse and offline engine.

    ``objects`` adds definitions by name (handy in notebooks and tests)::

        project = gnomon.Project("my_repo")
        project.backfill("user_item_training", "2026-10-01", "2026-10-30")
    """

    def __init__(self, repo: str | Path = ".", objects: Mapping[str, Definition] | None = None) -> None:
        self.root = Path(repo).resolve()
        if not self.root.is_dir():
            raise ConfigError(f"repo folder {self.root} does not exist; create one with `gnomon init {repo}`")
        self.config = Config.load(self.root)
        self.warehouse = Warehouse(self.config.warehouse)
        self._objects = dict(objects or {})
        self._loaded: LoadedRepo | None = None
        self._plan: Plan | None = None

    # -------------------------------------------------------------- compile

    def compile(self, write: bool = True) -> Plan:
        """Load and validate every definition; write ``compiled/plan.json`` when ``write``."""
        self._loaded = load_repo(self.root, self._objects)
        plan = build_plan(self._loaded, self.config.dialect)
        validate(plan, self._loaded, self.warehouse)
        check_supported(plan, self.config.offline.engine, self._loaded.files)
        self._plan = plan
        if write and (self.root / "gnomon.yaml").exists():
            path = self.root / PLAN_FILE
            path.parent.mkdir(exist_ok=True)
            path.write_text(plan.to_json())
        return plan

    @property
    def plan(self) -> Plan:
        return self._plan if self._plan is not None else self.compile(write=False)

    @property
    def definitions(self) -> dict[str, Definition]:
        if self._loaded is None:
            self.compile(write=False)
        return dict(self._loaded.objects)  # type: ignore[union-attr]

    def output_table(self, name: str) -> str:
        """The warehouse table a GroupBy, Join or StagingQuery backfills into."""
        node = self._node(name)
        return node.output_table  # type: ignore[no-any-return]

    def _node(self, name: str) -> Any:
        plan = self.plan
        node = plan.group_bys.get(name) or plan.joins.get(name) or plan.staging_queries.get(name)
        if node is None:
            raise UnknownObjectError("GroupBy, Join or StagingQuery", name, plan.names())
        return node

    def _engine(self) -> OfflineEngine:
        from gnomon.compile.guards import check_engine

        check_engine(self.config.offline.engine)
        return open_engine(self.warehouse, self.plan, self.config.offline)

    # -------------------------------------------------------------- offline jobs

    def backfill(
        self, name: str, start_ds: str, end_ds: str, force: bool = False, deps: bool = True
    ) -> list[str]:
        """Compute partitions [start_ds, end_ds] of a GroupBy, Join or StagingQuery's output table.

        Only missing partitions are computed unless ``force``. Every partition is computed into a
        staging folder first, and the partitions are renamed into place one by one at the end: a
        failure (even a SIGKILL) leaves each partition whole or absent, and a rerun computes the
        missing ones. Returns the partitions written.

        Chaining: when the GroupBy (or a GroupBy of the Join) reads a ``JoinSource``, the parent Join's
        missing output partitions that it reads are backfilled first (recursively, each parent
        committed on its own; ``force`` applies to ``name`` only). With ``deps=False`` a missing parent
        partition is a `WarehouseError` naming them, and nothing is written.
        """
        node = self._node(name)
        if end_ds < start_ds:
            raise ConfigError(f"end_ds {end_ds} is before start_ds {start_ds}")
        days = ds_range(start_ds, end_ds)
        start_limit = getattr(node, "backfill_start_date", None) or getattr(node, "start_partition", None)
        if start_limit:
            days = [d for d in days if d >= start_limit]
        if not force:
            have = set(self.warehouse.partitions(node.output_table))
            days = [d for d in days if d not in have]
        if not days:
            log.info(
                "%s: every partition in [%s, %s] exists; use force=True to recompute", name, start_ds, end_ds
            )
            return []
        self._backfill_parents(name, days, deps)
        return self._backfill_days(name, node, days)

    def _backfill_days(self, name: str, node: Any, days: list[str]) -> list[str]:
        """Compute exactly ``days`` of ``name`` and commit them together (`_write_all`)."""
        engine = self._engine()
        try:
            if name in self.plan.group_bys:
                produced = engine.backfill_group_by(node, days)
            elif name in self.plan.joins:
                produced = engine.backfill_join(node, days)
            else:
                produced = engine.run_staging_query(
                    self._render_staging(node.query, days), days, f"StagingQuery({name!r})"
                )
            written = self._write_all(node.output_table, produced)
            engine.publish(node.output_table, written)
            if self.config.offline.stats:  # logs, never raises: the partitions are committed
                from gnomon.offline.stats import update_stats

                update_stats(self.warehouse, node.output_table, written)
            return written
        finally:
            engine.close()

    # -------------------------------------------------------------- chaining: parent Joins first

    def _backfill_parents(self, name: str, days: list[str], deps: bool, chain: tuple[str, ...] = ()) -> None:
        """Backfill (``deps``) or demand (not ``deps``) the parent Join partitions ``name``'s ``days`` read."""
        kind = "GroupBy" if name in self.plan.group_bys else "Join"
        for parent, wanted in self._parent_partitions(name, days).items():
            join = self.plan.joins[parent]
            have = set(self.warehouse.partitions(join.output_table))
            missing = [d for d in wanted if d not in have]
            if not missing:
                continue
            shown = ", ".join(missing[:5]) + (" …" if len(missing) > 5 else "")
            if not deps:
                raise WarehouseError(
                    f"{kind} {name!r} reads the output of Join {parent!r} (JoinSource), and its table "
                    f"{join.output_table!r} is missing {len(missing)} partition(s) ({shown}). Fix: run the backfill "
                    f"without --no-deps (deps=True) to compute them first, or backfill the parent: "
                    f"gnomon backfill {parent} --start-ds {missing[0]} --end-ds {missing[-1]}"
                )
            if parent in chain:
                raise ExecutionError(f"chaining cycle: {' -> '.join([*chain, name, parent])}")
            producible = self._producible_partitions(join)
            blocked = [d for d in missing if d not in producible]
            if blocked:
                raise WarehouseError(
                    f"{kind} {name!r} reads partition ds={blocked[0]} of Join {parent!r}'s output "
                    f"{join.output_table!r}, which cannot be computed: the Join's left table {join.left.table!r} "
                    f"has no partition ds={blocked[0]}. Fix: land that partition, or backfill a range it covers."
                )
            log.info(
                "%s reads Join %s: backfilling its %d missing partition(s) %s first",
                name,
                parent,
                len(missing),
                shown,
            )
            self._backfill_parents(parent, missing, deps, (*chain, name))
            self._backfill_days(parent, join, missing)

    def _parent_partitions(self, name: str, days: list[str]) -> dict[str, list[str]]:
        """Parent Join -> the output partitions that computing ``days`` of ``name`` reads.

        A GroupBy backfill of day D reads its JoinSource from the ds of the earliest window start at
        ``q = D+1 00:00`` (unbounded: from the parent's first computable partition) up to D, and needs D
        itself. A Join's day D asks its GroupBys at times q in [D 00:00, D+1 00:00] (left rows' ``ts``
        in their own day), so reads from the earliest window start at ``D 00:00`` up to D; a JoinSource
        left needs partition D. Windowed reads are clamped to partitions the parent can compute and to
        the JoinSource Query's start/end_partition.
        """
        plan = self.plan
        wanted: dict[str, set[str]] = {}
        if name in plan.group_bys:
            readers = [(plan.group_bys[name], DAY_MS, True)]
        elif name in plan.joins:
            join = plan.joins[name]
            readers = [
                (plan.group_bys[p.group_by], 0, False) for p in join.parts if p.group_by in plan.group_bys
            ]
            if join.left.kind == "join" and join.left.upstream_join in plan.joins:
                wanted.setdefault(join.left.upstream_join, set()).update(days)
        else:
            return {}
        for group_by, offset, strict in readers:
            for source in group_by.sources:
                if source.kind != "join" or source.upstream_join not in plan.joins:
                    continue
                parent = plan.joins[source.upstream_join]
                available = sorted(self._producible_partitions(parent))
                target = wanted.setdefault(parent.name, set())
                for day in days:
                    earliest = self._earliest_window_start(group_by, ds_to_ms(day) + offset)
                    low = ms_to_ds(earliest) if earliest is not None else None
                    if source.start_partition and (low is None or source.start_partition > low):
                        low = source.start_partition
                    high = min(day, source.end_partition) if source.end_partition else day
                    target.update(d for d in available if (low is None or d >= low) and d <= high)
                    if strict:  # the engine requires partition D of every source of a GroupBy backfill
                        target.add(day)
        return {parent: sorted(ds) for parent, ds in wanted.items() if ds}

    @staticmethod
    def _earliest_window_start(group_by: GroupByPlan, q: int) -> int | None:
        """min over features of floor(q - W, hop(W)) (SPEC §2); None when a window is unbounded."""
        if not group_by.features or any(f.window_ms is None or not f.hop_ms for f in group_by.features):
            return None
        return min(
            (q - f.window_ms) - (q - f.window_ms) % f.hop_ms  # type: ignore[operator]
            for f in group_by.features
        )

    def _producible_partitions(self, join: JoinPlan, _seen: frozenset[str] = frozenset()) -> set[str]:
        """The ds a Join's output has or can compute: its left table's partitions (through chained lefts)."""
        left = join.left
        have = set(self.warehouse.partitions(left.table))
        if left.kind == "join" and left.upstream_join in self.plan.joins and join.name not in _seen:
            have |= self._producible_partitions(self.plan.joins[left.upstream_join], _seen | {join.name})
        return have

    def _write_all(self, table: str, produced: Any) -> list[str]:
        import pyarrow.parquet as pq

        self.warehouse.table_path(table).mkdir(parents=True, exist_ok=True)
        with self.warehouse.staging(table) as stage:
            written = []
            for day, data in produced:  # a failure here leaves only the staging folder, which is removed
                folder = stage / f"ds={day}"
                if isinstance(data, Path):  # a folder of Parquet files the engine wrote itself
                    folder.mkdir()
                    for index, file in enumerate(sorted(data.glob("*.parquet"))):
                        os.replace(file, folder / f"part-{index}.parquet")
                else:
                    folder.mkdir()
                    pq.write_table(data, folder / "part-0.parquet")
                written.append(day)
            for day in written:
                self.warehouse.commit_partition(table, day, stage / f"ds={day}")
        return written

    def _render_staging(self, sql: str, days: list[str]) -> str:
        import re

        def max_date(match: re.Match[str]) -> str:
            table = match.group(1).strip()
            partitions = self.warehouse.partitions(table)
            if not partitions:
                raise ExecutionError(f"max_date(table={table}): the table has no partitions")
            return partitions[-1]

        rendered = re.sub(r"\{\{\s*max_date\(\s*table\s*=\s*([\w.]+)\s*\)\s*\}\}", max_date, sql)
        values = {"start_date": days[0], "end_date": days[-1], "latest_date": days[-1]}
        rendered = re.sub(
            r"\{\{\s*(start_date|end_date|latest_date)\s*\}\}", lambda m: values[m.group(1)], rendered
        )
        leftover = re.search(r"\{\{.*?\}\}", rendered)
        if leftover:
            raise ExecutionError(
                f"unknown template variable {leftover.group(0)}; use start_date, end_date, "
                "latest_date or max_date(table=ns.t)"
            )
        return rendered

    def training_data(self, join: str | Join, left: Any) -> pa.Table:
        """Point-in-time correct features for your own left rows (pandas, Polars or Arrow; needs ``ts``)."""
        if isinstance(join, Join):
            if self._loaded is None:
                self.compile(write=False)
            if id(join) not in self._loaded.names_by_id:  # type: ignore[union-attr]
                self._objects[join.name or "__notebook_join"] = join
                self.compile(write=False)
            name = self._loaded.name_of(join)  # type: ignore[union-attr]
        else:
            name = join
        if name not in self.plan.joins:
            raise UnknownObjectError("Join", name, self.plan.joins)
        rows = as_arrow(left)
        days = _left_days(rows)
        if days:  # chained parts read their parent Joins' outputs: backfill what the rows need first
            self._backfill_parents(name, days, deps=True)
        engine = self._engine()
        try:
            return engine.training_data(self.plan.joins[name], rows)
        finally:
            engine.close()

    # -------------------------------------------------------------- online

    def store(self) -> Any:
        """The online store of ``online:`` in gnomon.yaml (SQLite by default)."""
        from gnomon.online.stores import open_store

        return open_store(self.config.online, self.root)

    def broker(self) -> Any:
        """The stream broker of ``stream:`` in gnomon.yaml (the embedded log by default)."""
        from gnomon.streaming.brokers import open_broker

        return open_broker(self.config.stream, self.root)

    def fetcher(self, store: Any = None) -> Any:
        """A fetcher over this repo's plan and online store (horizon from gnomon.yaml)."""
        from gnomon.online.fetcher import Fetcher

        return Fetcher(self.plan, store if store is not None else self.store(), self.config.online_horizon_ms)

    def online_group_bys(self, name: str) -> list[str]:
        """The GroupBy itself, or every online GroupBy of a Join."""
        plan = self.plan
        if name in plan.group_bys:
            return [name]
        if name in plan.joins:
            return [p.group_by for p in plan.joins[name].parts if plan.group_bys[p.group_by].online]
        raise UnknownObjectError("GroupBy or Join", name, [*plan.group_bys, *plan.joins])

    def upload(self, name: str, ds: str) -> dict[str, int]:
        """Write the state as of ``ds + 1 day`` of a GroupBy (or a Join's online GroupBys) online."""
        from gnomon.online.upload import upload_group_by

        names = self.online_group_bys(name)
        for group_by in names:  # a chained GroupBy reads its parent Join's output: backfill what it needs
            self._backfill_parents(group_by, [ds], deps=True)
        store = self.store()
        engine = self._engine()
        try:
            return {
                group_by: upload_group_by(engine, self.plan.group_bys[group_by], ds, store)
                for group_by in names
            }
        finally:
            engine.close()
            store.close()

    def stale_uploads(self) -> dict[str, str]:
        """Online GroupBys whose upload no longer matches their definition, with what changed."""
        from gnomon.online.fetcher import upload_mismatch

        online = [g for g in self.plan.group_bys.values() if g.online]
        if not online:
            return {}
        store = self.store()
        try:
            found = {g.name: upload_mismatch(g, store) for g in online}
        finally:
            store.close()
        return {name: reason for name, reason in found.items() if reason is not None}

    def source_schema(self, group_by: str, topic: str | None = None) -> Any:
        """The Arrow schema events of a GroupBy's topic are read with (its first topic by default):
        the warehouse table behind the source, plus the mutation time and reversal columns for a
        mutation topic; None when the table has no data yet."""
        import pyarrow as pa

        from gnomon.streaming.worker import streamed_topics

        topics = streamed_topics(self.plan.group_bys[group_by])
        source = topics.get(topic) if topic is not None else next(iter(topics.values()), None)
        schema = self.warehouse.latest_schema(source.table) if source is not None else None
        if schema is None or source is None or source.kind != "entities":
            return schema
        mutation_schema = self.warehouse.latest_schema(source.mutation_table) or pa.schema([])
        for name, default in (
            (source.mutation_time_column, pa.int64()),
            (source.reversal_column, pa.bool_()),
        ):
            if name not in schema.names:
                index = mutation_schema.get_field_index(name)
                schema = schema.append(
                    mutation_schema.field(index) if index >= 0 else pa.field(name, default)
                )
        return schema

    def _left_schema(self, group_by: str, topic: str) -> Any:
        """For a JoinSource's topic, the schema of the parent Join's left table (None otherwise)."""
        from gnomon.streaming.worker import streamed_topics

        source = streamed_topics(self.plan.group_bys[group_by]).get(topic)
        if source is None or source.kind != "join":
            return None
        return self.warehouse.latest_schema(self.plan.joins[source.upstream_join].left.table)  # type: ignore[index]

    def stream(
        self, name: str, until_caught_up: bool = False, engine: str = "embedded", **options: Any
    ) -> Any:
        """Run the stream workers of a GroupBy (or of every streamed GroupBy of a Join), one thread per
        topic, until stopped (or caught up); returns each GroupBy's counters. ``options``: ``group``,
        ``name``, ``metrics`` (a `gnomon.metrics.StreamMetrics` the workers report to), and
        `StreamWorker.run`'s ``max_records``, ``poll_timeout_s``, ``stop``.

        ``engine="spark"``: one Spark Structured Streaming query per topic instead, running the same
        micro-batch step in ``foreachBatch``; ``options`` are those of
        `gnomon.streaming.spark.stream_with_spark` (``source_dir``, ``checkpoint``, ``group``,
        ``metrics``, ``stop``, ...)."""
        import threading

        from gnomon.streaming.worker import StreamWorker, WorkerStats, streamed_topics

        names = [g for g in self.online_group_bys(name) if streamed_topics(self.plan.group_bys[g])]
        jobs = [(g, topic) for g in names for topic in streamed_topics(self.plan.group_bys[g])]
        if engine == "spark":
            from gnomon.streaming.spark import stream_with_spark

            totals: dict[str, Any] = {}
            for group_by, result in stream_with_spark(self, jobs, until_caught_up, **options):
                totals[group_by] = _add_stats(totals.get(group_by, WorkerStats()), result)
            return totals
        if engine != "embedded":
            raise ConfigError(f"stream engine must be 'embedded' or 'spark', got {engine!r}")
        store, broker = self.store(), self.broker()
        worker_options = {k: v for k, v in options.items() if k in ("group", "name", "metrics")}
        run_options = {k: v for k, v in options.items() if k not in ("group", "name", "metrics")}
        stats: dict[str, Any] = {}
        errors: list[BaseException] = []
        lock = threading.Lock()

        def run(group_by: str, topic: str) -> None:
            try:
                worker = StreamWorker(
                    self.plan.group_bys[group_by],
                    store,
                    broker,
                    topic=topic,
                    schema=self.source_schema(group_by, topic),
                    fold_every=self.config.online_fold_every,
                    fold_delay_ms=self.config.online_fold_delay_ms,
                    plan=self.plan,
                    left_schema=self._left_schema(group_by, topic),
                    **worker_options,
                )
                try:
                    result = worker.run(until_caught_up=until_caught_up, **run_options)
                finally:
                    worker.close()
                with lock:
                    stats[group_by] = _add_stats(stats.get(group_by, WorkerStats()), result)
            except BaseException as error:  # noqa: BLE001 — re-raised in the caller's thread
                errors.append(error)

        try:
            threads = [
                threading.Thread(target=run, args=job, name=f"gnomon-stream-{job[0]}-{job[1]}", daemon=True)
                for job in jobs
            ]
            for thread in threads:
                thread.start()
            for thread in threads:
                while thread.is_alive():
                    thread.join(0.2)
        finally:
            store.close()
            broker.close()
        if errors:
            raise errors[0]
        return {g: stats[g] for g in names if g in stats}

    def read_table(
        self, name_or_table: str, start_ds: str | None = None, end_ds: str | None = None
    ) -> pa.Table:
        """Read a warehouse table, or the output table of a definition by its name."""
        plan = self.plan
        node = (
            plan.group_bys.get(name_or_table)
            or plan.joins.get(name_or_table)
            or plan.staging_queries.get(name_or_table)
        )
        return self.warehouse.read_table(node.output_table if node else name_or_table, start_ds, end_ds)


def _left_days(rows: pa.Table) -> list[str]:
    """The days a notebook's left rows ask for (by ``ts``, or ``ds`` for entity lefts)."""
    import pyarrow.compute as pc

    if "ts" in rows.column_names and rows.num_rows and rows["ts"].null_count < rows.num_rows:
        bounds = pc.min_max(pc.cast(rows["ts"], pa.int64())).as_py()
        return ds_range(ms_to_ds(bounds["min"]), ms_to_ds(bounds["max"]))
    if "ds" in rows.column_names and rows.num_rows and rows["ds"].null_count < rows.num_rows:
        bounds = pc.min_max(pc.cast(rows["ds"], pa.string())).as_py()
        return ds_range(bounds["min"], bounds["max"])
    return []


def _add_stats(total: Any, more: Any) -> Any:
    """The counters of two workers' runs added up (a GroupBy with several topics)."""
    from dataclasses import fields

    for f in fields(total):
        if f.name == "dead_letter_reasons":
            for reason, count in more.dead_letter_reasons.items():
                total.dead_letter_reasons[reason] = total.dead_letter_reasons.get(reason, 0) + count
        else:
            setattr(total, f.name, getattr(total, f.name) + getattr(more, f.name))
    return total


__all__ = ["GroupBy", "Join", "Project", "StagingQuery"]
