"""The web UI's JSON API (`gnomon.ui.api` behind `gnomon.ui.routes`), through a real server.

Every answer is checked against facts known without the API: the sample repo's definitions and the
lineage edges they imply (written out below), the Parquet files and schemas in the warehouse, the
run history and `gnomon status --json`, the online store's and the broker's own records, a
consistency check recomputed, and partitions deleted or added by hand. The repo is the one of
``conftest.py``; tests that change it work on a copy (``ui_repo``).
"""

from __future__ import annotations

import json
import re
import shutil
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

import httpx
import pyarrow.parquet as pq
import pytest
import requests
import schemathesis
from click.testing import CliRunner
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis import GenerationMode

import gnomon
from gnomon.cli import main
from gnomon.monitoring.consistency import check_consistency
from gnomon.offline.stats import read_stats
from gnomon.orchestration.history import History
from gnomon.orchestration.runner import DailyRunner
from gnomon.serving.app import create_app
from gnomon.serving.auth import TokensFile
from gnomon.streaming.worker import consumer_group
from gnomon.testing import find_redis_server, redis_server
from gnomon.timeline import ds_range, shift_ds
from gnomon.ui.api import STREAM_STALE_MS
from online.helpers import free_port, gnomon_command, running_server, subprocess_env

from .conftest import (
    FAST_RUN,
    FETCHED,
    FIRST_DS,
    JOIN,
    JOIN_DAYS,
    LAST_DS,
    METADATA,
    OUTPUT_DAYS,
    PENDING_EVENTS,
    RUN_DS,
    TOPIC,
    extra_event,
    fetched_watches,
    publish,
    table_events,
)

GROUP_BYS = ["item_popularity", "item_ratings", "user_item_views", "user_watch_ratings"]
JOINS = ["user_item_training", "user_profile"]
STAGING_QUERIES = ["item_daily_views"]
OBJECTS = (
    [("group_by", n) for n in GROUP_BYS]
    + [("join", n) for n in JOINS]
    + [("staging_query", n) for n in STAGING_QUERIES]
)
OUTPUTS = {name: f"features.{name}" for _, name in OBJECTS}
BACKFILLED = {name: JOIN_DAYS if name == JOIN else OUTPUT_DAYS for name in OUTPUTS}
SOURCES = [
    "item_info.ratings_mutations",
    "item_info.ratings_snapshots",
    "user_activity.user_views",
    "user_activity.watches",
]

#: the lineage of the sample repo, read off its definitions by hand
EDGES = {
    ("table:user_activity.user_views", "group_by:user_item_views"),
    ("topic:user_views", "group_by:user_item_views"),
    ("group_by:user_item_views", "table:features.user_item_views"),
    ("table:item_info.ratings_snapshots", "group_by:item_ratings"),
    ("table:item_info.ratings_mutations", "group_by:item_ratings"),
    ("topic:ratings_mutations", "group_by:item_ratings"),
    ("group_by:item_ratings", "table:features.item_ratings"),
    ("table:user_activity.watches", "join:user_item_training"),
    ("group_by:user_item_views", "join:user_item_training"),
    ("group_by:item_ratings", "join:user_item_training"),
    ("join:user_item_training", "table:features.user_item_training"),
    ("table:user_activity.user_views", "staging_query:item_daily_views"),
    ("staging_query:item_daily_views", "table:features.item_daily_views"),
    ("table:features.item_daily_views", "group_by:item_popularity"),
    ("group_by:item_popularity", "table:features.item_popularity"),
    ("join:user_item_training", "group_by:user_watch_ratings"),
    ("group_by:user_watch_ratings", "table:features.user_watch_ratings"),
    ("table:user_activity.watches", "join:user_profile"),
    ("group_by:user_watch_ratings", "join:user_profile"),
    ("group_by:item_popularity", "join:user_profile"),
    ("join:user_profile", "table:features.user_profile"),
}
UI_ROUTES = [
    "/v1/catalog",
    "/v1/objects/group_by/user_item_views",
    "/v1/lineage",
    "/v1/partitions",
    "/v1/runs",
    "/v1/freshness",
    "/v1/stats/user_item_views",
    "/v1/consistency",
    f"/v1/consistency/{JOIN}",
]


def get(url: str, path: str, status: int = 200, **params: Any) -> Any:
    response = httpx.get(url + path, params=params, timeout=30)
    assert response.status_code == status, (path, response.text)
    assert response.headers["content-type"].startswith("application/json")
    return response.json()


def error(url: str, path: str, status: int, **params: Any) -> str:
    body = get(url, path, status, **params)
    assert set(body) == {"error"}, body
    return str(body["error"])


def output_schema(repo: Path, table: str) -> list[dict[str, str]]:
    """The columns of the newest file of a table's newest partition, read with pyarrow."""
    folder = gnomon.Project(repo).warehouse.table_path(table)
    newest = sorted(folder.glob("ds=*"))[-1]
    schema = pq.read_schema(sorted(newest.glob("*.parquet"))[-1])
    return [{"name": f.name, "type": str(f.type)} for f in schema]


def partition_rows(repo: Path, table: str) -> dict[str, int]:
    folder = gnomon.Project(repo).warehouse.table_path(table)
    return {
        p.name[3:]: sum(pq.read_metadata(f).num_rows for f in p.glob("*.parquet"))
        for p in folder.glob("ds=*")
    }


@pytest.fixture()
def server_of() -> Iterator[Any]:
    """Start servers over any repo folder (each stopped at the end of the test)."""
    stack: list[Any] = []

    def start(repo: Path) -> str:
        context = running_server(create_app(repo))
        stack.append(context)
        return str(context.__enter__())

    yield start
    for context in reversed(stack):
        context.__exit__(None, None, None)


# ------------------------------------------------------------------ catalog


def test_catalog_lists_every_object_with_its_metadata_and_features(
    ui_template_url: str, ui_repo_template: Path
) -> None:
    objects = get(ui_template_url, "/v1/catalog")["objects"]
    assert [(o["kind"], o["name"]) for o in objects] == OBJECTS
    for entry in objects:
        meta = METADATA.get(entry["name"], {"owner": None, "tags": [], "description": None})
        assert {k: entry[k] for k in ("owner", "tags", "description")} == meta, entry["name"]
        assert entry["output_table"] == OUTPUTS[entry["name"]]
        assert entry["online"] == (entry["name"] in ("item_ratings", "user_item_views", JOIN))
        columns = [c["name"] for c in output_schema(ui_repo_template, entry["output_table"])]
        left = {"group_by": set(), "join": {"user", "item", "ts"}, "staging_query": set()}[entry["kind"]]
        keys = {"user_item_views": {"user", "item"}, "item_ratings": {"item"}, "item_popularity": {"item"}}
        expected = [
            c
            for c in columns
            if c not in left | keys.get(entry["name"], {"user"} if entry["kind"] == "group_by" else set())
        ]
        assert entry["features"] == expected, entry["name"]
    modules = {o["name"]: o["defined_in"] for o in objects}
    assert modules["user_item_views"] == "features.user_activity"
    assert modules["user_profile"] == modules["item_daily_views"] == "features.ui_extras"


@pytest.mark.parametrize(
    ("q", "names"),
    [
        ("growth", ["user_watch_ratings", "user_profile"]),  # owner
        ("GROWTH", ["user_watch_ratings", "user_profile"]),  # any case
        ("popularity", ["item_popularity", "user_profile"]),  # a tag; a description
        ("views_per_rating", [JOIN]),  # a feature
        ("rating_average", ["item_ratings", "user_watch_ratings", JOIN, "user_profile"]),  # feature names
        ("per item and day", ["item_daily_views"]),  # the description
        ("user_item", ["user_item_views", JOIN]),  # names
        ("no such thing", []),
    ],
)
def test_catalog_search(ui_template_url: str, q: str, names: list[str]) -> None:
    found = [o["name"] for o in get(ui_template_url, "/v1/catalog", q=q)["objects"]]
    assert found == [name for _, name in OBJECTS if name in names]


def test_catalog_kind_filter_and_errors(ui_template_url: str) -> None:
    joins = get(ui_template_url, "/v1/catalog", kind="join", q="user")["objects"]
    assert [o["name"] for o in joins] == JOINS
    assert "kind: expected one of group_by, join, staging_query, got 'view'" in error(
        ui_template_url, "/v1/catalog", 400, kind="view"
    )


# ------------------------------------------------------------------ one object


@pytest.mark.parametrize(("kind", "name"), OBJECTS)
def test_object_detail_matches_the_plan_and_the_warehouse(
    ui_template_url: str, ui_repo_template: Path, kind: str, name: str
) -> None:
    body = get(ui_template_url, f"/v1/objects/{kind}/{name}")
    project = gnomon.Project(ui_repo_template)
    node = {**project.plan.group_bys, **project.plan.joins, **project.plan.staging_queries}[name]
    assert body["definition"] == json.loads(json.dumps(asdict(node)))
    assert (body["kind"], body["name"], body["output_table"]) == (kind, name, OUTPUTS[name])
    assert body["columns_from"] == "warehouse"
    assert body["columns"] == output_schema(ui_repo_template, OUTPUTS[name])
    days = sorted(partition_rows(ui_repo_template, OUTPUTS[name]))
    assert days == BACKFILLED[name]
    assert body["partitions"] == {"first": days[0], "last": days[-1], "count": len(days)}
    node_id = f"{kind}:{name}"
    assert body["upstream"] == sorted(a for a, b in EDGES if b == node_id)
    assert body["downstream"] == sorted(b for a, b in EDGES if a == node_id)
    if kind == "staging_query":
        assert body["sql"] == {"query": node.query}
    else:
        assert body["sql"] and all(text.strip() for text in body["sql"].values())


def test_compiled_sql_shows_each_source_query_and_the_aggregates(ui_template_url: str) -> None:
    sql = get(ui_template_url, "/v1/objects/group_by/user_item_views")["sql"]
    assert list(sql) == ["source 1: user_activity.user_views", "aggregation"]
    source = sql["source 1: user_activity.user_views"]
    # the quickstart's Query (SPEC's example): its selects, its where, its time column
    for part in (
        "item_view",
        'AS "view"',
        "user_id IS NOT NULL",
        "FROM user_activity.user_views",
        "CAST((ts) AS BIGINT) AS ts",
    ):
        assert part in source, source
    assert 'COUNT("view")' in sql["aggregation"] and '"view_count_5h"' in sql["aggregation"]
    assert "18000000" in sql["aggregation"]  # the 5-hour window, in ms
    training = get(ui_template_url, f"/v1/objects/join/{JOIN}")["sql"]
    assert list(training) == [
        "left: user_activity.watches",
        "part 1: user_item_views",
        "part 2: item_ratings",
        "derivations",
    ]
    assert "user_item_views_view_count_5h / item_ratings_rating_average_90d" in training["derivations"]
    ratings = get(ui_template_url, "/v1/objects/group_by/item_ratings")["sql"][
        "source 1: item_info.ratings_snapshots"
    ]
    assert "item_info.ratings_mutations" in ratings  # the mutations replayed over the snapshot


def test_columns_come_from_the_plan_when_nothing_is_backfilled(
    ui_repo: Path, ui_repo_template: Path, server_of: Any
) -> None:
    """With every output partition deleted, the columns and their types derived from the plan (no
    job run) are exactly those the backfills wrote — chained objects included."""
    for name in OUTPUTS.values():
        for partition in gnomon.Project(ui_repo).warehouse.table_path(name).glob("ds=*"):
            shutil.rmtree(partition)
    url = server_of(ui_repo)
    for kind, name in OBJECTS:
        body = get(url, f"/v1/objects/{kind}/{name}")
        assert body["columns_from"] == "plan", name
        assert body["columns"] == output_schema(ui_repo_template, OUTPUTS[name]), name
        assert body["partitions"] == {"first": None, "last": None, "count": 0}


def test_unknown_objects_are_404_and_bad_kinds_400(ui_template_url: str) -> None:
    message = error(ui_template_url, "/v1/objects/group_by/user_item_view", 404)
    assert "unknown GroupBy 'user_item_view'" in message and "user_item_views" in message
    assert "unknown Join 'item_ratings'" in error(ui_template_url, "/v1/objects/join/item_ratings", 404)
    assert error(ui_template_url, "/v1/objects/table/x", 400).startswith("kind: expected one of")


# ------------------------------------------------------------------ lineage


def test_lineage_has_exactly_the_edges_of_the_definitions(ui_template_url: str) -> None:
    body = get(ui_template_url, "/v1/lineage")
    edges = {(e["from"], e["to"]) for e in body["edges"]}
    assert edges == EDGES
    ids = {node for edge in EDGES for node in edge}
    assert [n["id"] for n in body["nodes"]] == sorted(ids)
    for node in body["nodes"]:
        kind, _, label = node["id"].partition(":")
        assert (node["kind"], node["label"]) == (kind, label)


def reachable(start: str, forward: bool) -> set[str]:
    found, pending = set(), [start]
    while pending:
        node = pending.pop()
        for a, b in EDGES:
            nxt = b if forward else a
            if (a if forward else b) == node and nxt not in found:
                found.add(nxt)
                pending.append(nxt)
    return found


@pytest.mark.parametrize(
    "focus",
    [
        "group_by:user_watch_ratings",
        "table:user_activity.user_views",
        "join:user_profile",
        "topic:ratings_mutations",
    ],
)
def test_lineage_focus_keeps_what_a_node_reads_and_feeds(ui_template_url: str, focus: str) -> None:
    body = get(ui_template_url, "/v1/lineage", focus=focus)
    keep = {focus} | reachable(focus, True) | reachable(focus, False)
    assert {n["id"] for n in body["nodes"]} == keep
    assert {(e["from"], e["to"]) for e in body["edges"]} == {
        (a, b) for a, b in EDGES if a in keep and b in keep
    }


def test_lineage_focus_of_the_chain_from_a_topic_to_the_chained_group_by(ui_template_url: str) -> None:
    """A topic's events reach the chained GroupBy through the Join that feeds it (issue 11's walk)."""
    body = get(ui_template_url, "/v1/lineage", focus="topic:user_views")
    ids = {n["id"] for n in body["nodes"]}
    assert {
        "group_by:user_item_views",
        f"join:{JOIN}",
        "group_by:user_watch_ratings",
        "join:user_profile",
    } <= ids
    assert "group_by:item_popularity" not in ids  # fed by the table, not by the topic
    assert "unknown lineage node 'group_by:nope'" in error(
        ui_template_url, "/v1/lineage", 404, focus="group_by:nope"
    )


# ------------------------------------------------------------------ partitions


def by_table(body: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {row["table"]: row for row in body["tables"]}


def test_partitions_of_every_table_over_the_default_30_days(ui_template_url: str) -> None:
    body = get(ui_template_url, "/v1/partitions")
    days = ds_range(FIRST_DS, LAST_DS)
    assert (body["start"], body["end"], body["days"]) == (FIRST_DS, LAST_DS, days)
    tables = by_table(body)
    roles = {t: "source" for t in SOURCES} | {t: "output" for t in OUTPUTS.values()}
    roles |= {f"logs.{JOIN}": "log", f"consistency.{JOIN}": "consistency"}
    assert {t: row["role"] for t, row in tables.items()} == roles
    assert [row["table"] for row in body["tables"]] == sorted(
        roles, key=lambda t: (["source", "output", "log", "consistency"].index(roles[t]), t)
    )
    for table in SOURCES:  # the sample data: every day (the snapshots from the day before)
        assert (tables[table]["present"], tables[table]["missing"]) == (days, []), table
    assert tables["item_info.ratings_snapshots"]["first"] == shift_ds(FIRST_DS, -1)
    for name, table in OUTPUTS.items():  # backfilled up to RUN_DS; LAST_DS not run yet
        assert (tables[table]["present"], tables[table]["missing"]) == (BACKFILLED[name], [LAST_DS]), table
    assert tables["features.user_profile"]["object"] == "join:user_profile"
    assert (tables[f"logs.{JOIN}"]["present"], tables[f"logs.{JOIN}"]["missing"]) == ([LAST_DS], [])
    assert tables[f"consistency.{JOIN}"]["present"] == [RUN_DS, LAST_DS]


def test_deleted_partitions_are_the_missing_days(ui_repo: Path, server_of: Any) -> None:
    warehouse = gnomon.Project(ui_repo).warehouse
    gap_source, gap_output = shift_ds(FIRST_DS, 5), OUTPUT_DAYS[2]
    shutil.rmtree(warehouse.table_path("user_activity.watches") / f"ds={gap_source}")
    shutil.rmtree(
        warehouse.table_path("user_activity.watches") / f"ds={FIRST_DS}"
    )  # before the first: no gap
    shutil.rmtree(warehouse.table_path("features.user_profile") / f"ds={gap_output}")
    shutil.rmtree(
        warehouse.table_path("features.user_profile") / f"ds={OUTPUT_DAYS[0]}"
    )  # no start: now first
    shutil.rmtree(
        warehouse.table_path("features.item_daily_views") / f"ds={OUTPUT_DAYS[0]}"
    )  # its start_partition
    url = server_of(ui_repo)
    tables = by_table(get(url, "/v1/partitions"))
    assert tables["user_activity.watches"]["missing"] == [gap_source]
    assert tables["user_activity.watches"]["first"] == shift_ds(FIRST_DS, 1)
    assert tables["features.user_profile"]["missing"] == [gap_output, LAST_DS]
    assert tables["features.item_daily_views"]["missing"] == [OUTPUT_DAYS[0], LAST_DS]
    assert tables["user_activity.user_views"]["missing"] == []


def test_a_backfill_shows_at_once(ui_repo: Path, server_of: Any) -> None:
    """Listings are cached by folder, never past a change: a new partition appears on the next call."""
    url = server_of(ui_repo)
    table = "features.user_item_views"
    before = get(url, "/v1/partitions", table=table)["tables"]
    assert [(r["table"], r["missing"]) for r in before] == [(table, [LAST_DS])]
    assert get(url, "/v1/objects/group_by/user_item_views")["partitions"]["count"] == len(OUTPUT_DAYS)
    gnomon.Project(ui_repo).backfill("user_item_views", LAST_DS, LAST_DS)
    after = get(url, "/v1/partitions", table=table)["tables"][0]
    assert (after["present"][-1], after["missing"]) == (LAST_DS, [])
    assert get(url, "/v1/objects/group_by/user_item_views")["partitions"]["last"] == LAST_DS
    stats = get(url, "/v1/stats/user_item_views", start_ds=LAST_DS)["partitions"]
    assert [p["ds"] for p in stats] == [LAST_DS]


def test_partitions_window_filter_and_errors(ui_template_url: str) -> None:
    body = get(ui_template_url, "/v1/partitions", days=3, end=RUN_DS, table="features.item_ratings")
    assert body["days"] == ds_range(shift_ds(RUN_DS, -2), RUN_DS)
    assert body["tables"] == [
        {
            "table": "features.item_ratings",
            "role": "output",
            "first": OUTPUT_DAYS[0],
            "present": body["days"],
            "missing": [],
            "object": "group_by:item_ratings",
        }
    ]
    assert error(ui_template_url, "/v1/partitions", 400, days=0).startswith("days:")
    assert error(ui_template_url, "/v1/partitions", 400, days="many").startswith("days:")
    assert (
        error(ui_template_url, "/v1/partitions", 400, end="2026-02-30")
        == "end: expected a day as YYYY-MM-DD, got '2026-02-30'"
    )
    assert error(ui_template_url, "/v1/partitions", 400, end="yesterday").startswith("end:")
    assert "unknown table 'features.nope'" in error(
        ui_template_url, "/v1/partitions", 404, table="features.nope"
    )


# ------------------------------------------------------------------ runs


def status_json(repo: Path, *args: str) -> list[dict[str, Any]]:
    result = CliRunner().invoke(main, ["status", "--json", "--repo", str(repo), *args])
    assert result.exit_code == 0, result.output
    return list(json.loads(result.output))


def test_runs_are_the_records_of_gnomon_status(ui_template_url: str, ui_repo_template: Path) -> None:
    runs = get(ui_template_url, "/v1/runs")["runs"]
    assert runs == status_json(ui_repo_template)
    assert {r["ds"] for r in runs} == {RUN_DS} and {r["status"] for r in runs} == {"success"}
    assert {r["task"] for r in runs} == {
        "staging_query/item_daily_views",
        "group_by_backfill/item_popularity",
        "group_by_backfill/item_ratings",
        "group_by_backfill/user_item_views",
        "upload/item_ratings",
        "upload/user_item_views",
        f"join_backfill/{JOIN}",
        "join_backfill/user_profile",
        "chained/user_watch_ratings",
        f"consistency/{JOIN}",
    }


def test_runs_after_gnomon_run(ui_repo: Path, server_of: Any) -> None:
    result = subprocess.run(
        gnomon_command(
            "run", "item_popularity", "--ds", LAST_DS, "--sensor-timeout", "0", "--repo", str(ui_repo)
        ),
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    url = server_of(ui_repo)
    newest = get(url, "/v1/runs", ds=LAST_DS)["runs"]
    assert [r["task"] for r in newest] == [
        "staging_query/item_daily_views",
        "group_by_backfill/item_popularity",
    ]
    assert [r["outputs"] for r in newest] == [
        [f"features.item_daily_views/ds={LAST_DS}"],
        [f"features.item_popularity/ds={LAST_DS}"],
    ]
    assert newest == status_json(ui_repo, "--ds", LAST_DS)
    assert {r["ds"] for r in get(url, "/v1/runs", days=2)["runs"]} == {RUN_DS, LAST_DS}
    assert {r["ds"] for r in get(url, "/v1/runs", days=1)["runs"]} == {LAST_DS}
    assert get(url, "/v1/runs", ds=FIRST_DS)["runs"] == []
    assert error(url, "/v1/runs", 400, ds="01/12/2026").startswith("ds:")


def test_a_new_run_shows_at_once(ui_repo: Path, server_of: Any) -> None:
    """Answers are cached until the history changes: a run recorded after a read shows on the next."""
    url = server_of(ui_repo)
    assert {r["ds"] for r in get(url, "/v1/runs")["runs"]} == {RUN_DS}
    runner = DailyRunner(gnomon.Project(ui_repo), ["item_daily_views"], FAST_RUN)
    try:
        runner.run([LAST_DS])
    finally:
        runner.history.close()
    runs = get(url, "/v1/runs")["runs"]
    assert [(r["ds"], r["task"], r["status"]) for r in runs if r["ds"] == LAST_DS] == [
        (LAST_DS, "staging_query/item_daily_views", "success")
    ]
    assert runs == status_json(ui_repo)


def test_runs_of_a_repo_never_run_are_empty_and_nothing_is_created(ui_repo: Path, server_of: Any) -> None:
    shutil.rmtree(ui_repo / ".gnomon")
    url = server_of(ui_repo)
    assert get(url, "/v1/runs") == {"runs": []}
    assert not (ui_repo / ".gnomon" / "runs.db").exists()


# ------------------------------------------------------------------ freshness


def embedded_log(repo: Path, topic: str) -> list[tuple[int, int]]:
    """(offset, published_at) of every record of a topic, read from the embedded log's file."""
    with sqlite3.connect(repo / "stream.db") as connection:
        return connection.execute(
            'SELECT "offset", published_at FROM log WHERE topic = ? ORDER BY "offset"', (topic,)
        ).fetchall()


def uploaded_keys(repo: Path) -> dict[str, int]:
    """Keys per upload, as `gnomon run` recorded them ("online NAME: N keys")."""
    history = History.for_repo(repo)
    try:
        found = {}
        for attempt in history.latest(RUN_DS):
            for line in attempt.outputs:
                match = re.fullmatch(r"online (\S+): (\d+) keys", line)
                if match:
                    found[match.group(1)] = int(match.group(2))
        return found
    finally:
        history.close()


def test_freshness_after_the_upload_and_the_stream(ui_template_url: str, ui_repo_template: Path) -> None:
    before = int(time.time() * 1000)
    body = get(ui_template_url, "/v1/freshness")
    after = int(time.time() * 1000)
    entries = {g["name"]: g for g in body["group_bys"]}
    assert list(entries) == ["item_ratings", "user_item_views"]  # every online GroupBy
    keys = uploaded_keys(ui_repo_template)
    project = gnomon.Project(ui_repo_template)
    for name, entry in entries.items():
        assert entry["online"] is True
        assert entry["upload"]["ds"] == RUN_DS and entry["upload"]["keys"] == keys[name], entry
        assert before - 3600_000 < entry["upload"]["uploaded_at"] < before
    views = embedded_log(ui_repo_template, TOPIC)
    applied, pending = views[:-PENDING_EVENTS], views[-PENDING_EVENTS:]
    topic = entries["user_item_views"]["stream"]["topics"]
    assert [(t["topic"], t["lag"], t["last_event_ms"]) for t in topic] == [
        (TOPIC, PENDING_EVENTS, applied[-1][1])
    ]
    assert before - pending[0][1] <= topic[0]["freshness_ms"] <= after - pending[0][1]
    assert project.store().offsets(consumer_group(project.plan.group_bys["user_item_views"], TOPIC)) == {
        "0": str(applied[-1][0])
    }
    stale = topic[0]["freshness_ms"] > STREAM_STALE_MS
    assert entries["user_item_views"]["status"] == ("stale" if stale else "fresh")
    mutations = embedded_log(ui_repo_template, "ratings_mutations")
    assert entries["item_ratings"]["stream"]["topics"] == [
        {"topic": "ratings_mutations", "lag": 0, "last_event_ms": mutations[-1][1], "freshness_ms": 0}
    ]
    assert entries["item_ratings"]["status"] == "fresh" and entries["item_ratings"]["reason"] is None


def test_freshness_once_the_stream_catches_up(ui_repo: Path, server_of: Any) -> None:
    gnomon.Project(ui_repo).stream("user_item_views", until_caught_up=True)
    entry = get(server_of(ui_repo), "/v1/freshness")["group_bys"][1]
    last = embedded_log(ui_repo, TOPIC)[-1][1]
    assert entry["stream"]["topics"] == [{"topic": TOPIC, "lag": 0, "last_event_ms": last, "freshness_ms": 0}]
    assert (entry["status"], entry["reason"]) == ("fresh", None)


def test_freshness_of_a_changed_definition_then_its_new_upload(ui_repo: Path, server_of: Any) -> None:
    module = ui_repo / "features" / "user_activity.py"
    module.write_text(
        module.read_text().replace('"user_id IS NOT NULL"', '"user_id IS NOT NULL AND item_id IS NOT NULL"')
    )
    entry = get(server_of(ui_repo), "/v1/freshness")["group_bys"][1]
    assert entry["status"] == "definition_changed" and "changed since its upload" in entry["reason"]
    written = gnomon.Project(ui_repo).upload("user_item_views", RUN_DS)["user_item_views"]
    entry = get(server_of(ui_repo), "/v1/freshness")["group_bys"][1]
    assert entry["upload"]["keys"] == written and entry["upload"]["ds"] == RUN_DS
    # the new definition streams under a new consumer group: every record of the topic waits for it
    topic = entry["stream"]["topics"][0]
    assert (topic["lag"], topic["last_event_ms"]) == (len(embedded_log(ui_repo, TOPIC)), None)
    assert entry["status"] == ("stale" if topic["freshness_ms"] > STREAM_STALE_MS else "fresh")


def test_freshness_without_any_upload(ui_repo: Path, server_of: Any) -> None:
    for file in ui_repo.glob("online.db*"):
        file.unlink()
    entries = get(server_of(ui_repo), "/v1/freshness")["group_bys"]
    assert [(e["name"], e["upload"], e["status"]) for e in entries] == [
        ("item_ratings", None, "never_uploaded"),
        ("user_item_views", None, "never_uploaded"),
    ]
    assert entries[1]["stream"]["topics"][0]["lag"] == len(embedded_log(ui_repo, TOPIC))


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    if find_redis_server() is None:
        pytest.fail("redis-server is not installed (the UI must be tested on Redis)")
    with redis_server(tmp_path_factory.mktemp("redis")) as url:
        yield url


def test_freshness_on_redis(ui_repo: Path, redis_url: str, server_of: Any) -> None:
    config = ui_repo / "gnomon.yaml"
    config.write_text(
        config.read_text()
        .replace("online: sqlite:///online.db", f"online: {redis_url}/0")
        .replace("stream: embedded", f"stream: {redis_url}/1")
    )
    project = gnomon.Project(ui_repo)
    written = project.upload("user_item_views", RUN_DS)["user_item_views"]
    events = table_events(project, "user_activity.user_views", LAST_DS)[:7]
    broker = project.broker()
    ids = broker.publish(TOPIC, [json.dumps(e).encode() for e in events[:5]])
    broker.close()
    project.stream("user_item_views", until_caught_up=True)
    publish(project, events[5:])
    broker = project.broker()
    last_id = broker.end_offsets(TOPIC)["0"]
    broker.close()
    before = int(time.time() * 1000)
    entries = {e["name"]: e for e in get(server_of(ui_repo), "/v1/freshness")["group_bys"]}
    after = int(time.time() * 1000)
    views = entries["user_item_views"]
    assert views["upload"]["ds"] == RUN_DS and views["upload"]["keys"] == written
    topic = views["stream"]["topics"][0]
    applied_ms = int(ids[-1].split(":")[1].split("-")[0])  # a Redis entry id: <ms>-<seq>
    assert (topic["lag"], topic["last_event_ms"]) == (2, applied_ms)
    pending_ms = int(last_id.split("-")[0])
    assert (
        0 < topic["freshness_ms"] <= after - applied_ms
        and topic["freshness_ms"] >= before - pending_ms - 1000
    )
    assert views["status"] == ("stale" if topic["freshness_ms"] > STREAM_STALE_MS else "fresh")
    ratings = entries["item_ratings"]
    assert (ratings["upload"], ratings["status"]) == (None, "never_uploaded")
    assert ratings["stream"]["topics"] == [
        {"topic": "ratings_mutations", "lag": 0, "last_event_ms": None, "freshness_ms": 0}
    ]


# ------------------------------------------------------------------ data quality


def test_stats_of_an_output_table_by_name_or_table(ui_template_url: str, ui_repo_template: Path) -> None:
    body = get(ui_template_url, "/v1/stats/user_item_views")
    assert body == get(ui_template_url, "/v1/stats/features.user_item_views")
    assert body["table"] == "features.user_item_views"
    rows = partition_rows(ui_repo_template, body["table"])
    assert {p["ds"]: p["rows"] for p in body["partitions"]} == rows
    stored = read_stats(gnomon.Project(ui_repo_template).warehouse, body["table"])
    assert body["partitions"] == [json.loads(json.dumps(p.to_json())) for p in stored]
    for partition in body["partitions"]:
        assert [c["name"] for c in partition["columns"]] == ["user", "item", "view_count_5h"]
    window = get(ui_template_url, "/v1/stats/user_item_views", start_ds=OUTPUT_DAYS[1], end_ds=OUTPUT_DAYS[2])
    assert [p["ds"] for p in window["partitions"]] == OUTPUT_DAYS[1:3]
    counts = next(c for c in window["partitions"][1]["columns"] if c["name"] == "view_count_5h")
    assert counts["drift"]["previous_ds"] == OUTPUT_DAYS[1]  # drift against the day before


def test_stats_errors(ui_template_url: str) -> None:
    assert "unknown table or object 'user_item_view'" in error(
        ui_template_url, "/v1/stats/user_item_view", 404
    )
    assert "unknown table or object" in error(ui_template_url, "/v1/stats/features.nope", 404)
    assert error(ui_template_url, "/v1/stats/user_item_views", 400, start_ds="2026-1-1").startswith(
        "start_ds:"
    )
    message = error(ui_template_url, "/v1/stats/user_item_views", 400, start_ds=RUN_DS, end_ds=FIRST_DS)
    assert message == f"end_ds: {FIRST_DS} is before start_ds {RUN_DS}"


# ------------------------------------------------------------------ consistency


def expected_mismatches(project: gnomon.Project) -> list[dict[str, Any]]:
    """The fetched rows whose 5-hour count includes the event only the stream has (SPEC §2's window:
    floor(q - 5h, 5 min) <= ts < q)."""
    extra = extra_event(project)
    hop, window = 300_000, 5 * 3_600_000
    return [
        {"user": w["user_id"], "item": w["item_id"], "ts": w["ts"]}
        for w in fetched_watches(project)
        if (w["user_id"], w["item_id"]) == (extra["user_id"], extra["item_id"])
        and (w["ts"] - window) - (w["ts"] - window) % hop <= extra["ts"] < w["ts"]
    ]


def test_consistency_overview_and_history_match_a_recomputed_check(
    ui_template_url: str, ui_repo_template: Path
) -> None:
    overview = get(ui_template_url, "/v1/consistency")["joins"]
    assert [j["join"] for j in overview] == [JOIN]  # the online Joins
    latest = overview[0]["latest"]
    report = check_consistency(gnomon.Project(ui_repo_template), JOIN, LAST_DS, write=False).to_json()
    assert (latest["ds"], latest["rows_compared"], latest["mismatches"]) == (
        LAST_DS,
        FETCHED,
        report["mismatches"],
    )
    for got, want in zip(latest["features"], report["features"], strict=True):
        assert got == {k: v for k, v in want.items() if k != "rule"}
    figures = {f["feature"]: f for f in latest["features"]}
    mismatching = expected_mismatches(gnomon.Project(ui_repo_template))
    count = figures["user_item_views_view_count_5h"]
    assert count["mismatches"] == len(mismatching) > 0
    assert [{**k["keys"], "ts": k["ts"]} for k in count["mismatching_keys"]] == mismatching
    assert all(k["online"] == k["offline"] + 1 for k in count["mismatching_keys"])
    assert figures["item_ratings_rating_average_90d"]["mismatches"] == 0
    history = get(ui_template_url, f"/v1/consistency/{JOIN}")
    assert [p["ds"] for p in history["partitions"]] == [RUN_DS, LAST_DS]
    assert history["partitions"][-1] == latest
    assert history["partitions"][0]["rows_compared"] == 0  # the run's check found nothing logged
    assert [p["ds"] for p in get(ui_template_url, f"/v1/consistency/{JOIN}", days=1)["partitions"]] == [
        LAST_DS
    ]


def test_consistency_after_a_new_check(ui_repo: Path, server_of: Any) -> None:
    """A check written after the server started shows at once, and the figures are its own."""
    url = server_of(ui_repo)
    get(url, "/v1/consistency")  # read (and cache) before the change
    project = gnomon.Project(ui_repo)
    logged = project.warehouse.table_path(f"logs.{JOIN}") / f"ds={LAST_DS}"
    shutil.copytree(logged, project.warehouse.table_path(f"logs.{JOIN}") / f"ds={RUN_DS}")
    # the same fetches filed under RUN_DS: their times are in LAST_DS, and the check recomputes them
    report = check_consistency(project, JOIN, RUN_DS)
    day = get(url, f"/v1/consistency/{JOIN}")["partitions"][0]
    assert (day["ds"], day["rows_compared"], day["mismatches"]) == (RUN_DS, FETCHED, report.mismatches)


def test_consistency_errors_and_joins_without_a_check(ui_repo: Path, server_of: Any) -> None:
    shutil.rmtree(gnomon.Project(ui_repo).warehouse.table_path(f"consistency.{JOIN}"))
    url = server_of(ui_repo)
    assert get(url, "/v1/consistency") == {"joins": [{"join": JOIN, "latest": None}]}
    assert get(url, "/v1/consistency/user_profile") == {"join": "user_profile", "partitions": []}
    assert "unknown Join 'user_item'" in error(url, "/v1/consistency/user_item", 404)
    assert error(url, f"/v1/consistency/{JOIN}", 400, days=-1).startswith("days:")


# ------------------------------------------------------------------ auth, OpenAPI, the pages


def test_auth_guards_the_json_api_and_leaves_the_pages_open(ui_repo: Path, server_of: Any) -> None:
    config = ui_repo / "gnomon.yaml"
    config.write_text(
        config.read_text().replace(
            "serving: {log: {sample: 1.0}}", "serving: {log: {sample: 1.0}, auth: {tokens_file: tokens.yaml}}"
        )
    )
    tokens = TokensFile(ui_repo / "tokens.yaml")
    push_only, fetch_only = tokens.create("ui-viewer", ["push"]), tokens.create("reader", ["fetch"])
    url = server_of(ui_repo)
    for route in UI_ROUTES:
        refused = httpx.get(url + route)
        assert refused.status_code == 401 and "missing token" in refused.json()["error"], route
        assert httpx.get(url + route, headers={"Authorization": "Bearer wrong"}).status_code == 401
        for token in (push_only, fetch_only):  # any scope will do
            assert httpx.get(url + route, headers={"Authorization": f"Bearer {token}"}).status_code == 200, (
                route
            )
    for page in ("/ui", "/ui/", "/ui/static/app.js", "/ui/static/app.css"):
        assert httpx.get(url + page).status_code == 200, page
    schema = httpx.get(url + "/openapi.json").json()
    for route in ["/v1/catalog", "/v1/objects/{kind}/{name}", "/v1/stats/{table}", "/v1/consistency/{join}"]:
        operation = schema["paths"][route]["get"]
        assert (
            operation["security"] == [{"bearer": []}] and "a token of any scope" in operation["description"]
        )
    assert "security" not in schema["paths"]["/ui"]["get"]
    assert "security" not in schema["paths"]["/ui/static/{file}"]["get"]


def test_openapi_documents_every_route(ui_template_url: str) -> None:
    paths = get(ui_template_url, "/openapi.json")["paths"]
    for route in [
        "/v1/catalog",
        "/v1/objects/{kind}/{name}",
        "/v1/lineage",
        "/v1/partitions",
        "/v1/runs",
        "/v1/freshness",
        "/v1/stats/{table}",
        "/v1/consistency",
        "/v1/consistency/{join}",
        "/ui",
        "/ui/static/{file}",
    ]:
        operation = paths[route]["get"]
        assert operation["summary"] and operation["responses"]["200"]["description"], route
        if route.startswith("/v1/"):
            assert {"400", "404"} <= set(operation["responses"]), route
    parameters = {p["name"]: p for p in paths["/v1/partitions"]["get"]["parameters"]}
    assert set(parameters) == {"days", "end", "table"} and parameters["days"]["schema"]["type"] == "integer"
    assert all(p.get("description") for p in parameters.values())


def test_static_files_types_etags_and_errors(ui_template_url: str) -> None:
    page = httpx.get(f"{ui_template_url}/ui")
    assert page.headers["content-type"] == "text/html; charset=utf-8" and "<html" in page.text.lower()
    for name, kind in [("app.js", "text/javascript; charset=utf-8"), ("app.css", "text/css; charset=utf-8")]:
        response = httpx.get(f"{ui_template_url}/ui/static/{name}")
        assert response.status_code == 200 and response.headers["content-type"] == kind
        assert response.headers["cache-control"] == "no-cache"
        again = httpx.get(
            f"{ui_template_url}/ui/static/{name}", headers={"If-None-Match": response.headers["etag"]}
        )
        assert again.status_code == 304 and again.content == b""
        changed = httpx.get(f"{ui_template_url}/ui/static/{name}", headers={"If-None-Match": '"other"'})
        assert changed.status_code == 200 and changed.content == response.content
    assert httpx.get(f"{ui_template_url}/ui/static/nope.js").status_code == 404
    for sneaky in ["/ui/static/..%2Fapi.py", "/ui/static/%2E%2E/routes.py", "/ui/static/..%2F..%2Fcli.py"]:
        response = httpx.get(ui_template_url + sneaky)
        assert response.status_code == 404 and "def " not in response.text, sneaky
    assert get(ui_template_url, "/v1/catalog", q="x") is not None
    assert httpx.get(f"{ui_template_url}/v1/catalog").headers["cache-control"] == "no-cache"


def test_gnomon_ui_help() -> None:
    result = CliRunner().invoke(main, ["ui", "--help"])
    assert result.exit_code == 0
    for option in ("--host", "--port", "--repo", "--open / --no-open"):
        assert option in result.output
    assert "/ui" in result.output


def test_gnomon_ui_serves_the_page_and_the_api(ui_repo_template: Path) -> None:
    port = free_port()
    process = subprocess.Popen(
        gnomon_command("ui", "--repo", str(ui_repo_template), "--port", str(port), "--no-open"),
        env=subprocess_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            try:
                page = httpx.get(f"{url}/ui")
                break
            except httpx.TransportError:
                assert process.poll() is None and time.monotonic() < deadline, process.communicate()
                time.sleep(0.1)
        assert page.status_code == 200 and "<html" in page.text.lower()
        assert [o["name"] for o in get(url, "/v1/catalog")["objects"]] == [n for _, n in OBJECTS]
        assert httpx.get(f"{url}/health").json()["status"] == "ok"  # the same server as gnomon serve
    finally:
        process.terminate()
        out, err = process.communicate(timeout=30)
    assert f"web UI: http://127.0.0.1:{port}/ui" in out, (out, err)


def test_gnomon_ui_needs_a_repo(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["ui", "--repo", str(tmp_path), "--no-open"])
    assert result.exit_code == 2 and "has no gnomon.yaml" in result.output


def test_odd_requests_never_break_the_server(ui_template_url: str) -> None:
    """Odd but well-formed requests answer 200/400/404, never 500."""
    for path, params in [
        ("/v1/lineage", {"focus": "table:"}),
        ("/v1/stats/..", {}),
        ("/v1/stats/a.b.c", {}),
        ("/v1/partitions", {"table": "logs"}),
        ("/v1/catalog", {"q": "%_*[]"}),
        ("/v1/objects/join/%20", {}),
        ("/v1/consistency/..", {}),
    ]:
        response = httpx.get(ui_template_url + path, params=params)
        assert response.status_code in (200, 400, 404), (path, response.text)
        assert set(response.json()) <= {"error", "objects"}, (path, response.text)


FUZZED = [
    "/v1/catalog",
    "/v1/objects/{kind}/{name}",
    "/v1/lineage",
    "/v1/partitions",
    "/v1/runs",
    "/v1/stats/{table}",
    "/v1/consistency/{join}",
    "/ui/static/{file}",
]
CONSTRAINED = [
    "/v1/partitions",
    "/v1/runs",
    "/v1/stats/{table}",
    "/v1/consistency/{join}",
]  # a request can break the schema


@pytest.mark.parametrize(
    ("path", "mode"),
    [(p, GenerationMode.POSITIVE) for p in FUZZED] + [(p, GenerationMode.NEGATIVE) for p in CONSTRAINED],
    ids=lambda v: v.value if isinstance(v, GenerationMode) else v,
)
def test_schemathesis_get_routes(ui_template_url: str, path: str, mode: GenerationMode) -> None:
    """Requests generated from the OpenAPI schema (and, negative, outside it): never a server error,
    always a documented status, an error always ``{"error"}``."""
    operation = schemathesis.openapi.from_url(f"{ui_template_url}/openapi.json")[path]["GET"]
    statuses: set[int] = set()

    @settings(
        max_examples=40,
        deadline=None,
        suppress_health_check=list(HealthCheck),
        phases=[Phase.explicit, Phase.reuse, Phase.generate],  # no shrinking: each step is a request
    )
    @given(case=operation.as_strategy(generation_mode=mode))
    def run(case: Any) -> None:
        with requests.Session() as session:
            response = case.call(base_url=ui_template_url, session=session)
        case.validate_response(response, checks=[schemathesis.checks.not_a_server_error])
        assert response.status_code in (200, 304, 400, 404), (response.status_code, response.text)
        if response.status_code in (400, 404):
            assert set(response.json()) == {"error"}, response.text
        statuses.add(response.status_code)

    run()
    assert statuses, path
