"""Partition sensors: whether the external partitions a task reads have landed (SPEC §7).

A table's history starts at its first partition: a window reaching further back than the data does
not wait for days that will never come. Every wanted partition from the table's first one on is
waited for; a table without any partition waits for the newest wanted one.
"""

from __future__ import annotations

from dataclasses import dataclass

from gnomon.offline.warehouse import Warehouse
from gnomon.orchestration.graph import Sensor, Task

__all__ = ["Missing", "missing_for_task", "missing_partitions"]


@dataclass(frozen=True)
class Missing:
    """Partitions of one table a task still waits for on one day (oldest first)."""

    table: str
    partitions: tuple[str, ...]

    def describe(self) -> str:
        """``table ds=D`` (plus how many more), for the history and `gnomon status`."""
        more = len(self.partitions) - 1
        return f"{self.table} ds={self.partitions[0]}" + (f" (+{more} more)" if more else "")


def missing_partitions(sensor: Sensor, ds: str, have: list[str]) -> list[str]:
    """The partitions ``sensor`` waits for on ``ds`` that are not in ``have`` (sorted ds of the table).

    >>> s = Sensor("data.views", -3, 0)
    >>> missing_partitions(s, "2026-04-10", ["2026-04-08"])     # history starts on 04-08
    ['2026-04-09', '2026-04-10']
    >>> missing_partitions(s, "2026-04-10", [])                 # an empty table: the newest one
    ['2026-04-10']
    >>> missing_partitions(s, "2026-04-10", ["2026-04-11"])     # history starts later: no wait
    []
    """
    wanted = sensor.partitions(ds)
    if not have:
        return wanted[-1:]
    present = set(have)
    return [day for day in wanted if day not in present and day >= have[0]]


def missing_for_task(task: Task, ds: str, warehouse: Warehouse) -> list[Missing]:
    """Every sensor of ``task`` on ``ds`` that still waits, with its missing partitions."""
    found: dict[str, set[str]] = {}
    for sensor in task.sensors:
        missing = missing_partitions(sensor, ds, warehouse.partitions(sensor.table))
        if missing:
            found.setdefault(sensor.table, set()).update(missing)
    return [Missing(table, tuple(sorted(days))) for table, days in found.items()]
