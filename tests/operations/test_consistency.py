"""The consistency job (`gnomon consistency`): fetches served by a real `gnomon serve` app and logged
with ``serving: {log: {sample: 1.0}}``, recomputed offline and compared value by value.

The repo (events of four days, a TEMPORAL user GroupBy with exact and sketch operations, lists and
maps, an item GroupBy and a Join with a derivation) is uploaded as of day 2 and streams the rest.
Without a fault the job finds nothing. With one — (a) an online store entry overwritten, (b) an event
that reached the warehouse but never the stream — the expected mismatches are computed without the
job: (a) the values served before and after the overwrite (before it, online == offline, as the
clean run shows), (b) the offline values with and without the event (online never saw it). The job
must name exactly those features, rows and keys.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from gnomon import Project
from gnomon.monitoring.consistency import (
    CONSISTENCY_SCHEMA,
    SAMPLE_KEYS,
    ConsistencyReport,
    Rule,
    check_consistency,
    consistency_table,
    values_agree,
)
from gnomon.monitoring.fetch_log import read_log
from gnomon.online.records import UploadMeta, batch_key, entity_key, meta_key
from gnomon.serving.app import create_app
from online.helpers import (
    BATCH_END,
    DAY,
    HOUR,
    ITEMS,
    UPLOAD_DS,
    USERS,
    as_dict,
    build_repo,
    close,
    make_events,
    publish,
    run_gnomon,
    running_server,
    write_warehouse,
)

JOIN = "ops.user_item"
USER_GROUP_BY = "ops.user_stats"
ITEM_GROUP_BY = "ops.item_stats"
DS = "2026-01-03"  # the day after the upload's: every fetch asks for a time in it
KEYS = [{"user": user, "item": item} for user in [*USERS, "nobody"] for item in ITEMS]
QUERIES = [BATCH_END + 1, *range(BATCH_END + HOUR + 4321, BATCH_END + DAY, 3 * HOUR + 7 * 60_000)]
LEFT_COLUMNS = ("user", "item", "ts")
SKETCH_FEATURES = {
    "ops_user_stats_item_approx_unique_count_2d": "approx_unique_count",
    "ops_user_stats_price_approx_percentile_2d": "approx_percentile",
    "ops_user_stats_item_approx_histogram_k_1d": "approx_histogram_k",
    "ops_user_stats_item_approx_histogram_k_2d": "approx_histogram_k",
}

FEATURES_PY = """
from gnomon import (Accuracy, Aggregation, Derivation, EventSource, GroupBy, Join, JoinPart, Operation,
                    Query)

source = EventSource(
    table="act.events",
    topic="events",
    query=Query(selects={"user": "user_id", "item": "item_id", "price": "price", "qty": "qty"},
                time_column="ts"),
)
user_stats = GroupBy(
    name="ops.user_stats",
    sources=[source],
    keys=["user"],
    aggregations=[
        Aggregation("price", Operation.COUNT, windows=["1h", "1d"]),
        Aggregation("price", Operation.SUM, windows=["1d", "3d"]),
        Aggregation("qty", Operation.AVERAGE, windows=["2d"]),
        Aggregation("price", Operation.MAX, windows=["5h"]),
        Aggregation("item", Operation.LAST),
        Aggregation("item", Operation.LAST_K(2), windows=["1d"]),
        Aggregation("item", Operation.HISTOGRAM, windows=["1d"]),
        Aggregation("qty", Operation.SUM, windows=["1d"], buckets=["item"]),
        Aggregation("item", Operation.APPROX_UNIQUE_COUNT, windows=["2d"]),
        Aggregation("price", Operation.APPROX_PERCENTILE([0.5, 0.9]), windows=["2d"]),
        Aggregation("item", Operation.APPROX_HISTOGRAM_K(3), windows=["1d"]),
        Aggregation("item", Operation.APPROX_HISTOGRAM_K(8), windows=["2d"]),
    ],
    accuracy=Accuracy.TEMPORAL,
    online=True,
)
item_stats = GroupBy(
    name="ops.item_stats",
    sources=[source],
    keys=["item"],
    aggregations=[Aggregation("qty", Operation.SUM, windows=["1d"])],
    accuracy=Accuracy.TEMPORAL,
    online=True,
)
user_item = Join(
    name="ops.user_item",
    left=EventSource(table="act.events", query=Query(selects={"user": "user_id", "item": "item_id"})),
    right_parts=[JoinPart(user_stats), JoinPart(item_stats, prefix="i")],
    derivations=[Derivation("*", "*"),
                 Derivation("avg_price_1d", "ops_user_stats_price_sum_1d / ops_user_stats_price_count_1d")],
    online=True,
)
"""

CONFIG = "project: test\nonline: 'sqlite:///online.db'\nstream: embedded\nserving: {log: {sample: 1.0}}\n"


def seed_repo(repo: Path, dropped: dict[str, Any] | None = None) -> tuple[Project, list[dict[str, Any]]]:
    """Write, upload (as of day 2) and stream the repo; ``dropped`` is in the warehouse, never streamed."""
    events = make_events(500, seed=11)
    if dropped is not None:
        events = sorted([*events, dropped], key=lambda e: e["ts"])
    project = build_repo(repo, [e for e in events if e["ts"] < BATCH_END], features_py=FEATURES_PY)
    (repo / "gnomon.yaml").write_text(CONFIG)
    project = Project(repo)
    project.upload(JOIN, UPLOAD_DS)
    write_warehouse(project, events)
    publish(project, [e for e in events if e["ts"] >= BATCH_END and e is not dropped])
    project.stream(JOIN, until_caught_up=True)
    return project, events


def serve_and_fetch(repo: Path, keys: Sequence[dict[str, Any]] = KEYS) -> list[list[dict[str, Any]]]:
    """Fetch every key at every query time through the HTTP app, which logs each fetch; returns the
    results per query time."""
    app = create_app(repo)
    answers = []
    with running_server(app) as url, httpx.Client(base_url=url, timeout=30) as http:
        for q in QUERIES:
            response = http.post(f"/v1/features/join/{JOIN}", json=list(keys), params={"at": str(q)})
            assert response.status_code == 200, response.text
            answers.append(response.json()["results"])
    app.state.fetch_log.close()  # the test server runs without lifespan: write the log now
    return answers


@dataclass
class Seeded:
    repo: Path
    events: list[dict[str, Any]]


@pytest.fixture(scope="module")
def seeded(tmp_path_factory: pytest.TempPathFactory) -> Seeded:
    """The streamed repo, before any fetch: each test works on its own copy."""
    repo = tmp_path_factory.mktemp("consistency") / "repo"
    _, events = seed_repo(repo)
    return Seeded(repo, events)


def copy_of(seeded: Seeded, tmp_path: Path) -> Path:
    target = tmp_path / "repo"
    shutil.copytree(seeded.repo, target)
    return target


def mismatch_sets(report: ConsistencyReport) -> dict[str, set[str]]:
    """Feature -> the canonical keys JSON of its sampled mismatching keys."""
    return {
        f.feature: {json.dumps(k["keys"], sort_keys=True) for k in f.mismatching_keys}
        for f in report.features
        if f.mismatches
    }


def expected_sets(
    before: list[list[dict[str, Any]]], after: list[list[dict[str, Any]]]
) -> tuple[dict[str, set[str]], dict[str, int]]:
    """Feature -> keys whose values differ between two runs of the same fetches, and how many rows."""
    keys: dict[str, set[str]] = {}
    rows: dict[str, int] = {}
    for results_before, results_after in zip(before, after, strict=True):
        for key, old, new in zip(KEYS, results_before, results_after, strict=True):
            for feature in old:
                if not close(as_dict(old[feature]), as_dict(new[feature])):
                    keys.setdefault(feature, set()).add(json.dumps(key, sort_keys=True))
                    rows[feature] = rows.get(feature, 0) + 1
    return keys, rows


def offline_answers(project: Project) -> list[list[dict[str, Any]]]:
    """`training_data` at every (key, query time), shaped like `serve_and_fetch`'s features."""
    left = pa.Table.from_pylist([{**key, "ts": q} for q in QUERIES for key in KEYS])
    rows = project.training_data(JOIN, left).to_pylist()
    features = [{k: v for k, v in row.items() if k not in LEFT_COLUMNS} for row in rows]
    return [features[i * len(KEYS) : (i + 1) * len(KEYS)] for i in range(len(QUERIES))]


# ------------------------------------------------------------------ no fault


def test_served_fetches_match_offline(seeded: Seeded, tmp_path: Path) -> None:
    repo = copy_of(seeded, tmp_path)
    answers = serve_and_fetch(repo)
    assert all(r["status"] == "Success" for results in answers for r in results)
    logged = read_log(repo / "warehouse", JOIN, DS)
    assert logged.num_rows == len(KEYS) * len(QUERIES)

    report = check_consistency(Project(repo), JOIN, DS)

    assert report.rows_compared == report.rows_logged == len(KEYS) * len(QUERIES)
    assert report.statuses == {"Success": report.rows_logged}
    assert report.definition_changed == 0
    assert {f.feature for f in report.features} == set(answers[0][0]["features"])
    assert report.mismatches == 0, [f.to_json() for f in report.features if f.mismatches]
    features = {f.feature: f for f in report.features}
    # the sketch features are compared by their own rules; the histogram is a map, LAST_K a list
    assert {f.feature: f.rule for f in report.features if f.rule != "exact"} == SKETCH_FEATURES
    price_count = features["ops_user_stats_price_count_1d"]
    assert price_count.rows_compared == report.rows_compared
    assert price_count.smape == 0 and price_count.max_abs_diff == 0
    # "nobody" has no events: a fifth of the rows are null on both sides
    assert price_count.online_null_rate == price_count.offline_null_rate >= 0.2
    assert features["ops_user_stats_item_last"].smape is None  # not numeric

    table = Project(repo).warehouse.read_table(consistency_table(JOIN))
    assert table.column_names == [*CONSISTENCY_SCHEMA.names[1:], "ds"]
    stored = pq.read_table(
        next((repo / "warehouse/consistency/ops_user_item" / f"ds={DS}").glob("*.parquet"))
    )
    assert stored.schema == CONSISTENCY_SCHEMA.remove(0)  # ds is the partition
    assert table.num_rows == len(report.features) and set(table["mismatches"].to_pylist()) == {0}
    assert set(table["mismatching_keys"].to_pylist()) == {"[]"}


# ------------------------------------------------------------------ faults


def test_overwritten_store_entry_is_reported(seeded: Seeded, tmp_path: Path) -> None:
    """Item "a"'s batch record of the item GroupBy is replaced by item "b"'s."""
    repo = copy_of(seeded, tmp_path)
    project = Project(repo)
    before = [[r.to_json() for r in project.fetcher().fetch_join(JOIN, KEYS, at=q)] for q in QUERIES]
    store = project.store()
    try:
        [raw] = store.get([meta_key(ITEM_GROUP_BY)])
        batch_end = UploadMeta.decode(raw).batch_end
        [record_b] = store.get([batch_key(ITEM_GROUP_BY, batch_end, entity_key(["b"]))])
        store.put([(batch_key(ITEM_GROUP_BY, batch_end, entity_key(["a"])), record_b)])
    finally:
        store.close()

    after = serve_and_fetch(repo)
    expected_keys, expected_rows = expected_sets(
        [[r["features"] for r in results] for results in before],
        [[r["features"] for r in results] for results in after],
    )
    assert set(expected_keys) == {"i_ops_item_stats_qty_sum_1d"}  # the fault is visible, and only there
    assert all(json.loads(k)["item"] == "a" for k in expected_keys["i_ops_item_stats_qty_sum_1d"])

    report = check_consistency(project, JOIN, DS)

    assert mismatch_sets(report) == expected_keys
    assert {f.feature: f.mismatches for f in report.features if f.mismatches} == expected_rows
    [feature] = [f for f in report.features if f.mismatches]
    assert feature.max_abs_diff is not None and feature.max_abs_diff > 0
    assert feature.smape is not None and feature.smape > 0
    sample = feature.mismatching_keys[0]
    assert sample["keys"]["item"] == "a" and sample["ts"] in QUERIES and sample["online"] != sample["offline"]


def test_dropped_stream_event_is_reported(tmp_path: Path) -> None:
    """An event of user u2 on item "c" reaches the warehouse but never the stream."""
    dropped = {"user_id": "u2", "item_id": "c", "price": 61.5, "qty": 4, "ts": BATCH_END + 4 * HOUR + 999}
    project, events = seed_repo(tmp_path / "repo", dropped)
    served = serve_and_fetch(tmp_path / "repo")

    with_event = offline_answers(project)  # what the job recomputes: the warehouse has the event
    write_warehouse(project, [e for e in events if e is not dropped])
    without_event = offline_answers(project)  # what the stream saw
    write_warehouse(project, events)
    assert expected_sets([[r["features"] for r in results] for results in served], without_event)[0] == {}
    expected_keys, expected_rows = expected_sets(without_event, with_event)
    # the event is in u2's windows (user features) and item c's (item feature), after its time only
    users = {json.loads(k)["user"] for f, keys in expected_keys.items() if f.startswith("ops_") for k in keys}
    assert users == {"u2"}
    assert {json.loads(k)["item"] for k in expected_keys["i_ops_item_stats_qty_sum_1d"]} == {"c"}
    assert {
        "ops_user_stats_price_count_1d",
        "avg_price_1d",
        "ops_user_stats_item_approx_histogram_k_2d",
    } <= set(expected_keys)  # APPROX_HISTOGRAM_K(8) over 5 items is exact: the missing event shows
    assert all(len(keys) <= SAMPLE_KEYS for keys in expected_keys.values())
    # one event moves a sketch answer by less than its error bound: counts by at most 1 (CPC: 1 is
    # always allowed; the frequent-items map with k=3 keys allows a quarter of its total)
    for feature in (
        "ops_user_stats_item_approx_unique_count_2d",
        "ops_user_stats_item_approx_histogram_k_1d",
    ):
        for old_results, new_results in zip(without_event, with_event, strict=True):
            for old, new in zip(old_results, new_results, strict=True):
                a, b = as_dict(old[feature]), as_dict(new[feature])
                if isinstance(a, dict) and isinstance(b, dict):
                    assert all(abs(a[k] - b[k]) <= 1 for k in a.keys() & b.keys()), (a, b)
                else:
                    assert a == b or abs(a - b) <= 1, (a, b)

    report = check_consistency(project, JOIN, DS)

    tolerated = set(SKETCH_FEATURES) - {"ops_user_stats_item_approx_histogram_k_2d"}
    assert mismatch_sets(report) == {f: keys for f, keys in expected_keys.items() if f not in tolerated}
    assert {f.feature: f.mismatches for f in report.features if f.mismatches} == {
        f: rows for f, rows in expected_rows.items() if f not in tolerated
    }
    for feature in report.features:
        for sample in feature.mismatching_keys:
            assert sample["ts"] > dropped["ts"]


def test_definition_change_is_counted_not_compared(seeded: Seeded, tmp_path: Path) -> None:
    repo = copy_of(seeded, tmp_path)
    serve_and_fetch(repo)
    defs = repo / "features" / "defs.py"
    defs.write_text(defs.read_text().replace('windows=["1h", "1d"]', 'windows=["1h", "1d", "2d"]'))

    report = check_consistency(Project(repo), JOIN, DS)

    assert report.definition_changed == report.rows_logged == len(KEYS) * len(QUERIES)
    assert report.rows_compared == 0 and report.mismatches == 0
    assert "ops_user_stats_price_count_2d" in {f.feature for f in report.features}
    assert all(f.rows_compared == 0 and f.mismatch_rate is None for f in report.features)
    assert "skipped (definition changed)" in report.summary()


def test_day_without_logs_checks_nothing(seeded: Seeded, tmp_path: Path) -> None:
    repo = copy_of(seeded, tmp_path)
    report = check_consistency(Project(repo), JOIN, "2026-01-04")
    assert report.rows_logged == report.rows_compared == 0 and report.statuses == {}
    assert report.features and all(f.rows_compared == 0 for f in report.features)
    written = Project(repo).warehouse.read_table(consistency_table(JOIN), "2026-01-04", "2026-01-04")
    assert written.num_rows == len(report.features)
    assert written["mismatch_rate"].null_count == written.num_rows


def test_failed_fetches_are_counted_by_status(seeded: Seeded, tmp_path: Path) -> None:
    """A fetch before the batch end has no exact answer online: logged with its status, not compared."""
    repo = copy_of(seeded, tmp_path)
    app = create_app(repo)
    with running_server(app) as url:
        response = httpx.post(
            f"{url}/v1/features/join/{JOIN}", json=KEYS[:3], params={"at": str(BATCH_END - 1)}
        )
        assert response.status_code == 200
        statuses = {r["status"] for r in response.json()["results"]}
    app.state.fetch_log.close()
    assert statuses and "Success" not in statuses
    report = check_consistency(Project(repo), JOIN, "2026-01-02")
    assert report.rows_logged == 3 and report.rows_compared == 0
    assert report.statuses == {status: 3 for status in statuses}


# ------------------------------------------------------------------ the command


def test_cli_json_table_and_exit_codes(seeded: Seeded, tmp_path: Path) -> None:
    repo = copy_of(seeded, tmp_path)
    serve_and_fetch(repo, KEYS[:10])
    done = run_gnomon("consistency", JOIN, "--ds", DS, "--json", "--repo", str(repo))
    assert done.returncode == 0, done.stderr
    body = json.loads(done.stdout)
    assert body["rows_compared"] == 10 * len(QUERIES) and body["mismatches"] == 0
    assert body["table"] == consistency_table(JOIN)
    assert {f["feature"] for f in body["features"]} >= {"avg_price_1d", "i_ops_item_stats_qty_sum_1d"}

    # break one streamed value: the table shows it; --fail-on-mismatch turns it into exit status 2
    store = Project(repo).store()
    try:
        [raw] = store.get([meta_key(ITEM_GROUP_BY)])
        batch_end = UploadMeta.decode(raw).batch_end
        store.delete([batch_key(ITEM_GROUP_BY, batch_end, entity_key(["a"]))])
    finally:
        store.close()
    serve_and_fetch(repo, KEYS[:10])
    shown = run_gnomon("consistency", JOIN, "--ds", DS, "--repo", str(repo))
    assert shown.returncode == 0, shown.stderr
    assert "i_ops_item_stats_qty_sum_1d" in shown.stdout and "mismatching keys of" in shown.stdout
    assert shown.stdout.splitlines()[3].split()[:3] == ["feature", "compared", "mismatches"]
    failing = run_gnomon("consistency", JOIN, "--ds", DS, "--fail-on-mismatch", "--repo", str(repo))
    assert failing.returncode == 2, failing.stderr
    unknown = run_gnomon("consistency", "ops.nope", "--ds", DS, "--repo", str(repo))
    assert unknown.returncode == 1 and "ops.user_item" in unknown.stderr


# ------------------------------------------------------------------ the rules, value by value


@pytest.mark.parametrize(
    ("online", "offline", "rule", "agree"),
    [
        (2912.28, 2912.2799999999993, Rule(), True),  # an exact sum vs a SQL sum in another order
        (2912.28, 2912.29, Rule(), False),
        (1, True, Rule(), False),
        ({"a": 1, "b": 2}, {"b": 2, "a": 1}, Rule(), True),
        ({"a": 1}, {"a": 1, "b": 0}, Rule(), False),
        ([0.1 + 0.2, None], [0.3, None], Rule(), True),
        (None, 0, Rule(), False),
        (100, 110, Rule("approx_unique_count", (("lg_k", 8),)), True),  # within 2 x 3 sigma (22%)
        (100, 130, Rule("approx_unique_count", (("lg_k", 8),)), False),
        (3, 4, Rule("approx_unique_count", (("lg_k", 12),)), True),  # at least 1 apart
        ([5.0, 9.0], [5.5, 9.0], Rule("approx_percentile", (("k", 128), ("percentiles", (0.5, 0.9)))), True),
        ([9.5, 9.6], [5.0, 9.0], Rule("approx_percentile", (("k", 128), ("percentiles", (0.5, 0.9)))), False),
        (
            [5.0, None],
            [5.0, 9.0],
            Rule("approx_percentile", (("k", 128), ("percentiles", (0.5, 0.9)))),
            False,
        ),
        ({"x": 3, "y": 1}, {"x": 3, "y": 2}, Rule("approx_histogram_k", (("k", 3),)), False),  # < k: exact
        (
            {"x": 40, "y": 30, "z": 9},
            {"x": 38, "y": 31, "w": 10},
            Rule("approx_histogram_k", (("k", 3),)),
            True,
        ),
        (
            {"x": 40, "y": 30, "z": 9},
            {"x": 10, "y": 31, "z": 9},
            Rule("approx_histogram_k", (("k", 3),)),
            False,
        ),
    ],
)
def test_values_agree(online: Any, offline: Any, rule: Rule, agree: bool) -> None:
    assert values_agree(online, offline, rule) is agree


# ------------------------------------------------------------------ a Join whose left is an entity source

ENTITY_LEFT_PY = """
from features.item_ratings import item_ratings, ratings
from gnomon import Join, JoinPart

rated_items = Join(name="rated_items", left=ratings, right_parts=[JoinPart(item_ratings)], online=True)
"""


def test_entity_left_join_is_recomputed_at_the_time_asked_for(tmp_path: Path) -> None:
    """Offline, an entity left row asks at ds + 1 day; a fetch asks at its own time, which the check
    uses. Fetched at the batch end and again an hour into the day, after that hour's rating changes
    were streamed."""
    from gnomon.scaffold import create_example_repo

    repo = create_example_repo(tmp_path / "quickstart")
    (repo / "features" / "rated_items.py").write_text(ENTITY_LEFT_PY)
    with (repo / "gnomon.yaml").open("a") as config:
        config.write("\nserving: {log: {sample: 1.0}}\n")
    project = Project(repo)
    project.upload("rated_items", "2026-10-29")
    batch_end = 1793318400000  # 2026-10-30 00:00 UTC
    mutations = project.warehouse.read_table("item_info.ratings_mutations", "2026-10-30", "2026-10-30")
    first_hour = [
        {k: v for k, v in row.items() if k != "ds"}
        for row in mutations.to_pylist()
        if row["mutation_ts"] < batch_end + HOUR
    ]
    assert first_hour  # the hour changes some ratings: a check at ds + 1 day would differ
    publish(project, first_hour, topic="ratings_mutations")
    project.stream("item_ratings", until_caught_up=True)
    items = sorted({row["item_id"] for row in first_hour})[:5] + ["i001", "i002"]
    app = create_app(repo)
    served = []
    with running_server(app) as url:
        for q in (batch_end, batch_end + HOUR):
            response = httpx.post(
                f"{url}/v1/features/join/rated_items",
                json=[{"item": i} for i in items],
                params={"at": str(q)},
            )
            assert response.status_code == 200
            served.append(response.json()["results"])
    app.state.fetch_log.close()
    assert {r["status"] for results in served for r in results} == {"Success"}
    assert [r["features"] for r in served[0]] != [r["features"] for r in served[1]]  # the hour's changes show

    report = check_consistency(Project(repo), "rated_items", "2026-10-30")

    assert report.rows_compared == 2 * len(items)
    assert report.mismatches == 0, [f.to_json() for f in report.features if f.mismatches]
