"""Compile-time guards: what the definitions API accepts but an engine or path does not implement.

Each guard raises `UnsupportedError` naming the object, the field and what to do, so that a repo
either compiles into something every path computes exactly, or fails at ``gnomon compile``.
"""

from __future__ import annotations

from gnomon.compile.plan import GroupByPlan, Plan
from gnomon.errors import UnsupportedError

#: offline engines that can run a plan
ENGINES = ("duckdb", "spark")


def check_engine(engine: str) -> None:
    if engine not in ENGINES:
        raise UnsupportedError(
            f"offline engine {engine!r} is not available in this release",
            obj="gnomon.yaml",
            field="offline.engine",
            fix="set `offline: {engine: duckdb}` or `offline: {engine: spark}` in gnomon.yaml",
        )


def check_online_group_by(group_by: GroupByPlan, plan: Plan, file: str | None = None) -> None:
    """What the online path (upload, stream, fetch) of a GroupBy does not implement."""
    if not group_by.online:
        return
    owner = f"GroupBy({group_by.name!r})"
    kinds = {s.kind for s in group_by.sources}
    for source in group_by.sources:
        if source.kind == "join" and group_by.accuracy == "temporal":  # enriched online by the parent's fetch
            parent = plan.joins[source.upstream_join]  # type: ignore[index]
            offline = [p.group_by for p in parent.parts if not plan.group_bys[p.group_by].online]
            if offline:
                raise UnsupportedError(
                    f"online chaining fetches the parent Join {parent.name!r} at each event's time, but its GroupBy "
                    f"{offline[0]!r} is not online",
                    obj=owner,
                    field="online",
                    file=file,
                    fix=f"set online=True on {offline[0]!r} (and upload it), or set online=False here",
                )
    if group_by.accuracy == "temporal" and "entities" in kinds and len(kinds) > 1:
        raise UnsupportedError(
            "an online TEMPORAL GroupBy over both entity and event sources is not implemented",
            obj=owner,
            field="sources",
            file=file,
            fix="split it into one GroupBy per kind of source and join both",
        )


def check_supported(plan: Plan, engine: str, files: dict[str, str] | None = None) -> None:
    """Raise `UnsupportedError` for the first definition no path can compute exactly."""
    check_engine(engine)
    for name, group_by in plan.group_bys.items():
        check_online_group_by(group_by, plan, (files or {}).get(name))
