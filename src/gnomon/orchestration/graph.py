"""The task graph of a compiled plan: what is due for one day, in dependency order (SPEC §7).

The graph is a template, independent of the day: sensors name partitions as day offsets relative to
the run's ``ds``, so the daily runner instantiates it per day and the Airflow export writes it with
Airflow's execution date in place of ``ds``.
"""

from __future__ import annotations

from dataclasses import dataclass

#: task kinds, in the order SPEC §7 runs them
KINDS = ("staging_query", "group_by_backfill", "upload", "join_backfill", "chained", "consistency")


@dataclass(frozen=True)
class Sensor:
    """Partitions ``ds + first .. ds + last`` (day offsets, ``first <= last``) of a table the repo does
    not produce itself; ``first`` None: only ``ds + last`` is waited for (an unbounded window reads
    all history, and a sensor cannot know where history starts)."""

    table: str
    first: int | None
    last: int


@dataclass(frozen=True)
class Task:
    """One unit of a day's work: a CLI command over one definition for one ``ds``."""

    id: str  # "<kind>/<name>", unique in the graph
    kind: str  # one of KINDS
    name: str  # the definition's name
    needs: tuple[str, ...]  # ids of the tasks that must succeed first
    sensors: tuple[Sensor, ...]  # external partitions it reads
    output_table: str | None  # the warehouse table it writes partition ``ds`` of (None: upload)

    def command(self, ds: str) -> list[str]:
        """The `gnomon` CLI arguments that run this task for ``ds`` (without ``--repo``)."""
        raise NotImplementedError  # filled in by the runner's implementation
