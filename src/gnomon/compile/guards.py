"""Compile-time guards: what the definitions API accepts but an engine or path does not implement.

Each guard raises `UnsupportedError` naming the object, the field and what to do, so that a repo
either compiles into something every path computes exactly, or fails at ``gnomon compile``.
"""

from __future__ import annotations

from gnomon.compile.plan import GroupByPlan, Plan
from gnomon.errors import UnsupportedError

#: offline engines that can run a plan
ENGINES = ("duckdb",)


def check_engine(engine: str) -> None:
    if engine not in ENGINES:
        raise UnsupportedError(f"offline engine {engine!r} is not available in this release", obj="gnomon.yaml",
                               field="offline.engine", fix="set `offline: {engine: duckdb}` in gnomon.yaml")


def check_online_group_by(group_by: GroupByPlan, file: str | None = None) -> None:
    """What the online path (upload, stream, fetch) of a GroupBy does not implement."""
    if not group_by.online:
        return
    owner = f"GroupBy({group_by.name!r})"
    kinds = {s.kind for s in group_by.sources}
    if "join" in kinds:
        raise UnsupportedError("online chaining (a JoinSource in an online GroupBy) is not implemented yet",
                               obj=owner, field="online", file=file,
                               fix="set online=False: offline backfills of chained GroupBys work")
    if group_by.accuracy == "temporal" and "entities" in kinds and len(kinds) > 1:
        raise UnsupportedError("an online TEMPORAL GroupBy over both entity and event sources is not implemented",
                               obj=owner, field="sources", file=file,
                               fix="split it into one GroupBy per kind of source and join both")


def check_supported(plan: Plan, engine: str, files: dict[str, str] | None = None) -> None:
    """Raise `UnsupportedError` for the first definition no path can compute exactly."""
    check_engine(engine)
    for name, group_by in plan.group_bys.items():
        check_online_group_by(group_by, (files or {}).get(name))
