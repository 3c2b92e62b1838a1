"""The task graph of a compiled plan: what is due for one day, in dependency order (SPEC §7).

The graph is a template, independent of the day: sensors name partitions as day offsets relative to
the run's ``ds``, so the daily runner instantiates it per day and the Airflow export writes it with
Airflow's execution date in place of ``ds``.

Edges come from tables: a task that reads the output table of another task of the graph needs that
task; a table nothing in the graph writes is a sensor (an external partition to wait for). Which
partitions a task reads follows SPEC §2 (`gnomon.timeline`): a GroupBy's day ``D`` asks for values at
``D + 1 00:00``; a Join's day ``D`` asks at its left rows' times inside ``D``.
"""

from __future__ import annotations

import heapq
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace

from gnomon.compile.plan import (
    GroupByPlan,
    JoinPlan,
    Plan,
    SourcePlan,
    StagingQueryPlan,
    _digest,
    without_meta,
)
from gnomon.errors import ExecutionError, UnknownObjectError
from gnomon.timeline import DAY_MS, ds_range, ds_to_ms, entity_partitions, ms_to_ds, shift_ds, window_start

#: task kinds, in the order SPEC §7 runs them
KINDS = ("staging_query", "group_by_backfill", "upload", "join_backfill", "chained", "consistency")

#: the kinds whose work is a backfill of partition ``ds`` of ``output_table``
BACKFILL_KINDS = ("staging_query", "group_by_backfill", "join_backfill", "chained")

# Offsets are computed on a reference day and expressed relative to it.
_REFERENCE_DS = "2000-01-01"
_REFERENCE_MS = ds_to_ms(_REFERENCE_DS)


@dataclass(frozen=True)
class Sensor:
    """Partitions ``ds + first .. ds + last`` (day offsets, ``first <= last``) of a table the repo does
    not produce itself; ``first`` None: only ``ds + last`` is waited for (an unbounded window reads
    all history, and a sensor cannot know where history starts).

    ``start_partition``/``end_partition``: the source Query's bounds; no partition outside them is
    waited for.
    """

    table: str
    first: int | None
    last: int
    start_partition: str | None = None
    end_partition: str | None = None

    def partitions(self, ds: str) -> list[str]:
        """The partitions of ``table`` this sensor waits for on day ``ds``, oldest first.

        >>> Sensor("data.views", -2, 0).partitions("2026-04-10")
        ['2026-04-08', '2026-04-09', '2026-04-10']
        >>> Sensor("data.views", None, -1, start_partition="2026-04-10").partitions("2026-04-10")
        []
        """
        last = shift_ds(ds, self.last)
        if self.end_partition and last > self.end_partition:
            last = self.end_partition
        first = last if self.first is None else shift_ds(ds, self.first)
        if self.start_partition and first < self.start_partition:
            first = self.start_partition
        return ds_range(first, last) if first <= last else []


@dataclass(frozen=True)
class Task:
    """One unit of a day's work: a CLI command over one definition for one ``ds``."""

    id: str  # "<kind>/<name>", unique in the graph
    kind: str  # one of KINDS
    name: str  # the definition's name
    needs: tuple[str, ...]  # ids of the tasks that must succeed first
    sensors: tuple[Sensor, ...]  # external partitions it reads
    output_table: str | None  # the warehouse table it writes partition ``ds`` of (None: upload)
    fingerprint: str = ""  # a hash of the definition and of those of its needs: a change means recompute
    start_ds: str | None = None  # the first day the task is due (backfill_start_date, start_partition)

    def command(self, ds: str) -> list[str]:
        """The `gnomon` CLI arguments that run this task for ``ds`` (without ``--repo``).

        >>> Task("upload/u", "upload", "u", (), (), None).command("2026-04-10")
        ['upload', 'u', '--ds', '2026-04-10']
        """
        if self.kind in BACKFILL_KINDS:
            return ["backfill", self.name, "--start-ds", ds, "--end-ds", ds]
        if self.kind == "upload":
            return ["upload", self.name, "--ds", ds]
        if self.kind == "consistency":
            return ["consistency", self.name, "--ds", ds]
        raise ExecutionError(
            f"task {self.id!r}: unknown kind {self.kind!r}; expected one of {', '.join(KINDS)}"
        )

    def due(self, ds: str) -> bool:
        """Whether the task has work on ``ds`` (not before its definition's first day)."""
        return self.start_ds is None or ds >= self.start_ds


# ------------------------------------------------------------------ what a task reads


def _offset(ds: str) -> int:
    """Day offset of ``ds`` from the reference day."""
    return (ds_to_ms(ds) - _REFERENCE_MS) // DAY_MS


def _bounded(source: SourcePlan, table: str, first: str | None, last: str) -> Sensor:
    """A read of ``table`` partitions [first, last] (reference days), clamped to the source Query.
    A read becomes an edge instead when the graph writes the table."""
    return Sensor(
        table,
        None if first is None else _offset(first),
        _offset(last),
        source.start_partition,
        source.end_partition,
    )


def _earliest_event(group_by: GroupByPlan, q: int) -> int | None:
    """The earliest event time a value at q reads: the earliest window start (SPEC §2); None when a
    window is unbounded or the GroupBy looks up the latest row (no aggregations)."""
    if not group_by.features or any(f.window_ms is None for f in group_by.features):
        return None
    return min(window_start(q, f.window_ms) or 0 for f in group_by.features)


def _source_reads(source: SourcePlan, group_by: GroupByPlan, query_times: Sequence[int]) -> list[Sensor]:
    """The partitions a source is read over for values at ``query_times`` (SPEC §2, §4): events from
    the day of the earliest window start to the day of the last event before the latest q."""
    low, high = min(query_times), max(query_times)
    if source.kind == "entities":
        snapshots, mutations = entity_partitions(query_times)
        reads = [_bounded(source, source.table, snapshots[0], snapshots[-1])]
        if mutations and source.mutation_table:
            reads.append(_bounded(source, source.mutation_table, mutations[0], mutations[-1]))
        return reads
    end = ms_to_ds(high - 1)
    earliest = _earliest_event(group_by, low)
    if source.cumulative or earliest is None:  # cumulative: every partition holds the whole history
        return [_bounded(source, source.table, None, end)]
    return [_bounded(source, source.table, ms_to_ds(earliest), end)]


def _group_by_reads(group_by: GroupByPlan, query_times: Sequence[int]) -> list[Sensor]:
    return [r for s in group_by.sources for r in _source_reads(s, group_by, query_times)]


def _day_end_times() -> list[int]:
    """A GroupBy backfill or upload of day D: values at ``D + 1 00:00``."""
    return [_REFERENCE_MS + DAY_MS]


def _join_part_times(join: JoinPlan, group_by: GroupByPlan) -> list[int]:
    """The times a Join's day D asks a right GroupBy for (SPEC §2's table)."""
    if join.left.kind == "entities":
        return [_REFERENCE_MS + DAY_MS]
    if group_by.accuracy == "snapshot":
        return [_REFERENCE_MS]
    # a row's own ts inside day D: the midnight itself, any time after it, up to the last ms
    return [_REFERENCE_MS, _REFERENCE_MS + 1, _REFERENCE_MS + DAY_MS - 1]


def _join_reads(join: JoinPlan, plan: Plan) -> list[Sensor]:
    left = join.left
    reads = [_bounded(left, left.table, _REFERENCE_DS, _REFERENCE_DS)]  # left rows of day D
    for part in join.parts:
        group_by = plan.group_bys[part.group_by]
        reads += _group_by_reads(group_by, _join_part_times(join, group_by))
    return reads


_TEMPLATE = re.compile(r"\{\{.*?\}\}", re.S)
_MAX_DATE = re.compile(r"\{\{\s*max_date\(\s*table\s*=\s*([\w.]+)\s*\)\s*\}\}")


def staging_tables(sql: str) -> list[str]:
    """The warehouse tables (``ns.name``) a StagingQuery's SQL reads, templates included.

    >>> staging_tables("SELECT * FROM act.views v JOIN x.y USING (k) WHERE ds = '{{ max_date(table=a.b) }}'")
    ['a.b', 'act.views', 'x.y']
    """
    import sqlglot
    from sqlglot import exp

    tables = set(_MAX_DATE.findall(sql))
    tree = sqlglot.parse_one(_TEMPLATE.sub("TEMPLATE", sql), read="duckdb")
    ctes = {cte.alias_or_name for cte in tree.find_all(exp.CTE)}
    for table in tree.find_all(exp.Table):
        if table.db and table.name not in ctes:
            tables.add(f"{table.db}.{table.name}")
    return sorted(tables)


def _staging_reads(query: StagingQueryPlan) -> list[Sensor]:
    """A StagingQuery's day D waits for partition D of every table its SQL names."""
    return [Sensor(table, 0, 0) for table in staging_tables(query.query)]


# ------------------------------------------------------------------ building the graph


@dataclass
class _Draft:
    """A task before its reads are split into edges and sensors."""

    kind: str
    name: str
    output_table: str | None
    reads: list[Sensor]
    fingerprint: str
    start_ds: str | None = None
    extra_needs: tuple[str, ...] = ()

    @property
    def id(self) -> str:
        return f"{self.kind}/{self.name}"


def _is_chained(group_by: GroupByPlan) -> bool:
    return any(s.kind == "join" for s in group_by.sources)


def _join_fingerprint(join: JoinPlan, plan: Plan) -> str:
    """A Join's values depend on its own plan and on its parts' GroupBy plans (not on their `Meta`)."""
    return _digest(
        {"join": without_meta(join), "parts": [without_meta(plan.group_bys[p.group_by]) for p in join.parts]}
    )


def _drafts(plan: Plan, consistency: bool) -> list[_Draft]:
    """One draft per task of the whole plan."""
    drafts = [
        _Draft(
            "staging_query",
            sq.name,
            sq.output_table,
            _staging_reads(sq),
            _digest(without_meta(sq)),
            sq.start_partition,
        )
        for sq in plan.staging_queries.values()
    ]
    for group_by in plan.group_bys.values():
        reads = _group_by_reads(group_by, _day_end_times())
        fingerprint = _digest(without_meta(group_by))
        kind = "chained" if _is_chained(group_by) else "group_by_backfill"
        drafts.append(
            _Draft(
                kind, group_by.name, group_by.output_table, reads, fingerprint, group_by.backfill_start_date
            )
        )
        if group_by.online:
            drafts.append(_Draft("upload", group_by.name, None, reads, fingerprint))
    for join in plan.joins.values():
        fingerprint = _join_fingerprint(join, plan)
        drafts.append(
            _Draft("join_backfill", join.name, join.output_table, _join_reads(join, plan), fingerprint)
        )
        if consistency and join.online:
            drafts.append(
                _Draft(
                    "consistency",
                    join.name,
                    None,
                    [],
                    fingerprint,
                    extra_needs=(f"join_backfill/{join.name}",),
                )
            )
    return drafts


def _finish(draft: _Draft, producers: dict[str, str]) -> Task:
    """Split a draft's reads into edges (tables the graph writes) and sensors (the others)."""
    needs = list(draft.extra_needs)
    sensors: list[Sensor] = []
    for read in draft.reads:
        producer = producers.get(read.table)
        if producer is None:
            if read not in sensors:
                sensors.append(read)
        elif producer != draft.id and producer not in needs:
            needs.append(producer)
    return Task(
        id=draft.id,
        kind=draft.kind,
        name=draft.name,
        needs=tuple(sorted(needs)),
        sensors=tuple(sensors),
        output_table=draft.output_table,
        fingerprint=draft.fingerprint,
        start_ds=draft.start_ds,
    )


def _selected(tasks: dict[str, Task], names: Iterable[str], plan: Plan) -> set[str]:
    """The tasks of ``names`` and every task they need, transitively."""
    wanted: list[str] = []
    for name in names:
        own = [task.id for task in tasks.values() if task.name == name]
        if not own:
            raise UnknownObjectError("GroupBy, Join or StagingQuery", name, plan.names())
        wanted += own
    chosen: set[str] = set()
    while wanted:
        task_id = wanted.pop()
        if task_id not in chosen:
            chosen.add(task_id)
            wanted.extend(tasks[task_id].needs)
    return chosen


def _topological(tasks: dict[str, Task]) -> list[Task]:
    """Kahn's order; among ready tasks, SPEC §7's kind order, then by name (deterministic)."""
    waiting = {task_id: set(task.needs) for task_id, task in tasks.items()}
    users: dict[str, list[str]] = {task_id: [] for task_id in tasks}
    for task_id, needs in waiting.items():
        for need in needs:
            users[need].append(task_id)
    ready = [(KINDS.index(t.kind), t.name, t.id) for t in tasks.values() if not t.needs]
    heapq.heapify(ready)
    ordered: list[Task] = []
    while ready:
        task_id = heapq.heappop(ready)[2]
        ordered.append(tasks[task_id])
        for user in users[task_id]:
            waiting[user].discard(task_id)
            if not waiting[user]:
                heapq.heappush(ready, (KINDS.index(tasks[user].kind), tasks[user].name, user))
    if len(ordered) < len(tasks):
        stuck = sorted(set(tasks) - {t.id for t in ordered})
        raise ExecutionError(
            f"the task graph has a cycle among {', '.join(stuck)}; check the JoinSources and tables"
        )
    return ordered


def _chain_fingerprints(ordered: list[Task]) -> list[Task]:
    """Each task's fingerprint also covers those of the tasks it needs: a changed upstream definition
    changes the data a task reads, so its day is recomputed too."""
    chained: dict[str, str] = {}
    out = []
    for task in ordered:
        own = (
            _digest([task.fingerprint, *[chained[n] for n in task.needs]]) if task.needs else task.fingerprint
        )
        chained[task.id] = own
        out.append(replace(task, fingerprint=own))
    return out


def build_graph(plan: Plan, names: Sequence[str] | None = None, consistency: bool = False) -> list[Task]:
    """The tasks of ``plan`` (or of ``names`` and what they need), in a valid topological order.

    One task per StagingQuery, per GroupBy (``chained`` when it reads a JoinSource), per online
    GroupBy's upload and per Join; with ``consistency``, one consistency check per online Join
    (the runner passes it when fetch logging samples, ``serving: {log: {sample: > 0}}``).
    """
    drafts = _drafts(plan, consistency)
    producers = {d.output_table: d.id for d in drafts if d.output_table and d.kind in BACKFILL_KINDS}
    tasks = {d.id: _finish(d, producers) for d in drafts}
    ordered = _chain_fingerprints(_topological(tasks))
    if not names:
        return ordered
    chosen = _selected(tasks, names, plan)
    return [task for task in ordered if task.id in chosen]


__all__ = ["BACKFILL_KINDS", "KINDS", "Sensor", "Task", "build_graph", "staging_tables"]
