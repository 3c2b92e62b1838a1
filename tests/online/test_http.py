"""The HTTP service (SPEC §5) against a real uvicorn server on a loopback port.

One repo per module: warehouse partitions, an upload of day UPLOAD_DS, the events after the batch end
published and streamed. Every answer is checked three ways: over HTTP (httpx and ``gnomon.Client(url)``),
in-process (``gnomon.Client(repo)``) and offline (``Project.training_data`` at the same ``at``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

import gnomon
from gnomon import Project
from gnomon.errors import GnomonError
from gnomon.serving.app import create_app

from .helpers import (
    BATCH_END,
    DAY,
    END,
    GROUP_BY,
    HOUR,
    JOIN,
    TOPIC,
    UPLOAD_DS,
    build_repo,
    close,
    ds_of,
    feature_columns,
    make_events,
    mismatches,
    offline_rows,
    publish,
    running_server,
)

KEYS = [
    {"user": "u1", "item": "a"},
    {"user": "u3", "item": "c"},
    {"user": "nobody", "item": "zz"},
    {"user": "u2", "item": "e"},
]
QUERIES = [BATCH_END, BATCH_END + 1, BATCH_END + 5 * HOUR + 17 * 60_000, BATCH_END + DAY + 1234, END - 1]


@dataclass
class Served:
    repo: Path
    project: Project
    url: str
    http: httpx.Client


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    repo = tmp_path_factory.mktemp("http") / "repo"
    events = make_events(500)
    project = build_repo(repo, events)
    project.upload(JOIN, UPLOAD_DS)
    publish(project, [e for e in events if e["ts"] >= BATCH_END])
    project.stream(JOIN, until_caught_up=True)
    with running_server(create_app(repo)) as url, httpx.Client(base_url=url, timeout=30) as http:
        yield Served(repo, project, url, http)


def post_keys(served: Served, kind: str, name: str, keys: Any, at: int | None = None) -> httpx.Response:
    params = {"at": str(at)} if at is not None else {}
    return served.http.post(f"/v1/features/{kind}/{name}", json=keys, params=params)


# ------------------------------------------------------------------ fetching


def test_fetch_join_equals_in_process_and_offline(served: Served) -> None:
    offline = offline_rows(served.project, KEYS, QUERIES)
    remote = gnomon.Client(served.url)
    with gnomon.Client(served.repo) as local:
        for query_index, q in enumerate(QUERIES):
            response = post_keys(served, "join", JOIN, KEYS, at=q)
            assert response.status_code == 200, response.text
            assert response.headers["content-type"].startswith("application/json")
            results = response.json()["results"]
            assert len(results) == len(KEYS)
            in_process = json.loads(json.dumps(local.fetch_join(JOIN, KEYS, at=q)))
            assert remote.fetch_join(JOIN, KEYS, at=q) == results
            for index, (key, result) in enumerate(zip(KEYS, results, strict=True)):
                assert result["status"] == "Success", result
                assert result["entityKeys"] == key  # in request order
                assert "error" not in result
                assert result == in_process[index]
                expected = feature_columns(offline[query_index * len(KEYS) + index])
                assert not mismatches(expected, result["features"]), (
                    key,
                    q,
                    mismatches(expected, result["features"]),
                )
    # a key with data has non-null values; a key without data has every feature null
    some = post_keys(served, "join", JOIN, KEYS, at=END - 1).json()["results"]
    assert some[0]["features"]["feat_user_stats_qty_count"] > 0
    assert all(v is None for k, v in some[2]["features"].items() if k != "avg_price_1d")


def test_fetch_group_by_equals_in_process_and_offline(served: Served) -> None:
    keys = [{"user": u} for u in ("u4", "u1", "nobody", "u2")]
    offline = offline_rows(served.project, [{**k, "item": "a"} for k in keys], QUERIES)
    prefix = GROUP_BY.replace(".", "_") + "_"
    with gnomon.Client(served.repo) as local:
        for query_index, q in enumerate(QUERIES):
            response = post_keys(served, "groupby", GROUP_BY, keys, at=q)
            assert response.status_code == 200, response.text
            results = response.json()["results"]
            assert [r["entityKeys"] for r in results] == keys
            assert results == json.loads(json.dumps(local.fetch_group_by(GROUP_BY, keys, at=q)))
            assert gnomon.Client(served.url).fetch_group_by(GROUP_BY, keys, at=q) == results
            for index, result in enumerate(results):
                assert result["status"] == "Success", result
                row = offline[query_index * len(keys) + index]
                expected = {
                    c[len(prefix) :]: v for c, v in feature_columns(row).items() if c.startswith(prefix)
                }
                assert not mismatches(expected, result["features"]), (keys[index], q)


def test_single_key_object_and_empty_array(served: Served) -> None:
    [one] = gnomon.Client(served.url).fetch_join(JOIN, {"user": "u1", "item": "a"}, at=BATCH_END + HOUR)
    assert one["status"] == "Success" and one["entityKeys"] == {"user": "u1", "item": "a"}
    response = post_keys(served, "join", JOIN, [], at=BATCH_END)
    assert response.status_code == 200 and response.json() == {"results": []}


def test_null_key_value_is_a_failed_result_not_a_failed_request(served: Served) -> None:
    keys = [{"user": "u1", "item": "a"}, {"user": None, "item": "a"}, {"user": "u2", "item": "b"}]
    response = post_keys(served, "join", JOIN, keys, at=BATCH_END + HOUR)
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert [r["entityKeys"] for r in results] == keys
    assert results[0]["status"] == "Success" and results[2]["status"] == "Success"
    assert results[1]["status"] != "Success"
    assert "user" in results[1]["error"]
    assert results[1]["features"] == {}
    group_by = post_keys(served, "groupby", GROUP_BY, [{"user": None}], at=BATCH_END + HOUR).json()["results"]
    assert group_by[0]["status"] != "Success" and group_by[0]["error"]


def test_before_batch_end_and_past_the_horizon_are_explicit_failures(served: Served) -> None:
    for at in (BATCH_END - 1, BATCH_END + 3 * DAY):  # default horizon: 2 days after the batch end
        response = post_keys(served, "join", JOIN, [{"user": "u1", "item": "a"}], at=at)
        assert response.status_code == 200
        [result] = response.json()["results"]
        assert result["status"] != "Success" and result["error"], result
        assert result["features"] == {}


def test_concurrent_clients_agree(served: Served) -> None:
    client = gnomon.Client(served.url)  # one keep-alive connection per thread
    expected = {q: client.fetch_join(JOIN, KEYS, at=q) for q in QUERIES}
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda q: (q, client.fetch_join(JOIN, KEYS, at=q)), QUERIES * 8))
    for q, answer in answers:
        assert answer == expected[q]


# ------------------------------------------------------------------ bad requests


@pytest.mark.parametrize(
    ("path", "body", "params", "status", "needles"),
    [
        (f"/v1/features/join/{JOIN}", b"{not json", {}, 400, ["body"]),
        (f"/v1/features/join/{JOIN}", b"", {}, 400, ["body"]),
        (f"/v1/features/join/{JOIN}", b'{"user": "u1", "item": "a"}', {}, 400, ["body", "array"]),
        (f"/v1/features/join/{JOIN}", b'[{"user": "u1", "item": "a"}, 5]', {}, 400, ["body[1]"]),
        (f"/v1/features/join/{JOIN}", b'[["u1", "a"]]', {}, 400, ["body[0]"]),
        (f"/v1/features/join/{JOIN}", b'[{"item": "a"}]', {}, 400, ["body[0].user"]),
        (
            f"/v1/features/join/{JOIN}",
            b'[{"user": "u1", "item": "a"}, {"user": "u2"}]',
            {},
            400,
            ["body[1].item"],
        ),
        (f"/v1/features/groupby/{GROUP_BY}", b'[{"usr": "u1"}]', {}, 400, ["body[0].user"]),
        (f"/v1/features/join/{JOIN}", b'[{"user": "u1", "item": "a"}]', {"at": "yesterday"}, 400, ["at"]),
        (f"/v1/features/join/{JOIN}", b'[{"user": "u1", "item": "a"}]', {"at": "1.5"}, 400, ["at"]),
        (f"/v1/features/groupby/{GROUP_BY}", b'[{"user": "u1"}]', {"at": ""}, 400, ["at"]),
        (
            "/v1/features/join/feat.user_itme",
            b'[{"user": "u1"}]',
            {},
            404,
            ["did you mean", "'feat.user_item'"],
        ),
        (
            "/v1/features/groupby/feat.user_stat",
            b'[{"user": "u1"}]',
            {},
            404,
            ["did you mean", "'feat.user_stats'"],
        ),
        ("/v1/features/groupby/feat.user_item", b'[{"user": "u1"}]', {}, 404, ["GroupBy"]),
        ("/v1/events/evnets", b'[{"user_id": "u1", "ts": 1}]', {}, 404, ["did you mean", "'events'"]),
        ("/v1/events/no_such_topic", b'[{"user_id": "u1", "ts": 1}]', {}, 404, ["no_such_topic"]),
        (f"/v1/events/{TOPIC}", b'{"user_id": "u1", "ts": 1}', {}, 400, ["body", "array"]),
        (f"/v1/events/{TOPIC}", b"[1, 2]", {}, 400, ["body[0]"]),
        (f"/v1/events/{TOPIC}", b"nope", {"sync": "true"}, 400, ["body"]),
    ],
)
def test_bad_requests(
    served: Served, path: str, body: bytes, params: dict[str, str], status: int, needles: list[str]
) -> None:
    response = served.http.post(
        path, content=body, params=params, headers={"Content-Type": "application/json"}
    )
    assert response.status_code == status, response.text
    error = response.json()["error"]
    for needle in needles:
        assert needle in error, (needle, error)


def test_an_oversized_fetch_body_is_refused(served: Served) -> None:
    from gnomon.serving.app import MAX_FETCH_BODY

    body = b"[" + b",".join([b'{"user": "u1", "item": "a"}'] * (MAX_FETCH_BODY // 25)) + b"]"
    response = served.http.post(
        f"/v1/features/join/{JOIN}", content=body, headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 413
    assert "fetch fewer keys" in response.json()["error"]
    assert (
        post_keys(served, "join", JOIN, [{"user": "u1", "item": "a"}]).status_code == 200
    )  # the server goes on


def test_http_client_raises_on_4xx(served: Served) -> None:
    client = gnomon.Client(served.url)
    with pytest.raises(GnomonError, match=r"404.*did you mean"):
        client.fetch_join("feat.user_itme", [{"user": "u1", "item": "a"}])
    with pytest.raises(GnomonError, match=r"400.*body\[0\]\.item"):
        client.fetch_join(JOIN, [{"user": "u1"}], at=BATCH_END)
    # the connection is still usable after an error
    assert client.fetch_group_by(GROUP_BY, [{"user": "u1"}], at=BATCH_END)[0]["status"] == "Success"


def test_bad_events_do_not_poison_the_topic(served: Served) -> None:
    """A POST of events with missing/garbled fields is accepted (dead-lettered by the worker), and the
    server keeps answering."""
    bad = [
        {"user_id": None, "item_id": "zz", "price": 1.0, "qty": 1, "ts": BATCH_END + 10},
        {"user_id": "ghost", "item_id": "zz", "price": 1.0, "qty": 1},
    ]
    response = served.http.post(f"/v1/events/{TOPIC}", json=bad, params={"sync": "true"})
    assert response.status_code < 500, response.text
    assert served.http.get("/health").status_code == 200
    [result] = post_keys(served, "groupby", GROUP_BY, [{"user": "ghost"}], at=BATCH_END + HOUR).json()[
        "results"
    ]
    assert result["status"] == "Success" and result["features"]["qty_count"] is None


# ------------------------------------------------------------------ events


def fresh_events(user: str, count: int, first_ts: int) -> list[dict[str, Any]]:
    return [
        {"user_id": user, "item_id": "zz", "price": float(i + 1), "qty": 2, "ts": first_ts + i * 1000}
        for i in range(count)
    ]


def test_sync_push_is_read_after_write_and_measured(served: Served) -> None:
    q = BATCH_END + 2 * HOUR
    before = post_keys(served, "groupby", GROUP_BY, [{"user": "fresh"}], at=q).json()["results"][0]
    assert before["status"] == "Success" and before["features"]["price_count_1h"] is None
    events = fresh_events("fresh", 5, BATCH_END + HOUR + 1000)
    response = served.http.post(f"/v1/events/{TOPIC}", json=events, params={"sync": "true"})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["servable"] is True and len(body["eventIds"]) == 5 and len(set(body["eventIds"])) == 5
    [after] = post_keys(served, "groupby", GROUP_BY, [{"user": "fresh"}], at=q).json()["results"]
    assert after["status"] == "Success"
    assert after["features"]["price_count_1h"] == 5
    assert after["features"]["price_sum_1d"] == 15.0
    assert after["features"]["item_last"] == "zz"
    # the same through the SDK: push(sync=True) then fetch at once
    client = gnomon.Client(served.url)
    ids = client.push(TOPIC, fresh_events("fresh_sdk", 3, BATCH_END + HOUR), sync=True)
    assert len(ids) == 3
    [sdk] = client.fetch_join(JOIN, [{"user": "fresh_sdk", "item": "zz"}], at=q)
    assert sdk["features"]["feat_user_stats_price_count_1h"] == 3
    assert sdk["features"]["i_feat_item_stats_qty_sum_1d"] >= 6
    # a later worker re-applies the same event ids: nothing changes
    served.project.stream(JOIN, until_caught_up=True)
    [again] = post_keys(served, "groupby", GROUP_BY, [{"user": "fresh"}], at=q).json()["results"]
    assert again == after

    metrics = served.http.get("/metrics")
    assert metrics.status_code == 200
    assert metrics.headers["content-type"].startswith("text/plain")
    text = metrics.text
    assert "gnomon_request_seconds_bucket" in text
    assert 'route="/v1/features/groupby"' in text
    freshness = [line for line in text.splitlines() if line.startswith("gnomon_event_to_servable_seconds")]
    assert any(
        line.startswith("gnomon_event_to_servable_seconds_bucket") and 'topic="events"' in line
        for line in freshness
    ), text
    count = next(line for line in freshness if line.startswith("gnomon_event_to_servable_seconds_count"))
    assert float(count.rsplit(" ", 1)[1]) >= 2


def test_push_without_sync_is_published_and_served_after_streaming(served: Served) -> None:
    q = BATCH_END + 3 * HOUR
    events = fresh_events("later", 4, BATCH_END + 2 * HOUR)
    response = served.http.post(f"/v1/events/{TOPIC}", json=events)
    assert response.status_code == 200, response.text
    assert response.json()["servable"] is False and len(response.json()["eventIds"]) == 4
    broker = served.project.broker()
    try:
        assert broker.end_offsets(TOPIC)  # published durably
    finally:
        broker.close()
    [not_yet] = post_keys(served, "groupby", GROUP_BY, [{"user": "later"}], at=q).json()["results"]
    assert not_yet["features"]["price_count_1h"] is None  # no worker ran yet
    served.project.stream(GROUP_BY, until_caught_up=True)
    [served_now] = post_keys(served, "groupby", GROUP_BY, [{"user": "later"}], at=q).json()["results"]
    assert served_now["status"] == "Success"
    assert served_now["features"]["price_count_1h"] == 4
    assert served_now["features"]["price_sum_1d"] == 10.0


# ------------------------------------------------------------------ health, docs


def test_health(served: Served) -> None:
    response = served.http.get("/health")
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "ok"
    assert JOIN in body["joins"] and GROUP_BY in body["groupBys"]


def test_openapi_lists_the_routes(served: Served) -> None:
    response = served.http.get("/openapi.json")
    assert response.status_code == 200
    paths = response.json()["paths"]
    for path, method in [
        ("/v1/features/join/{name}", "post"),
        ("/v1/features/groupby/{name}", "post"),
        ("/v1/events/{topic}", "post"),
        ("/health", "get"),
        ("/metrics", "get"),
    ]:
        assert method in paths.get(path, {}), (path, sorted(paths))
    assert served.http.get("/docs").status_code == 200


# ------------------------------------------------------------------ Feast's Chronon online store

FEAST_FEATURES_PY = """
from gnomon import Aggregation, EventSource, GroupBy, Join, JoinPart, Operation, Query

source = EventSource(table="act.events", topic="events",
                     query=Query(selects={"user": "user_id", "item": "item_id", "price": "price", "qty": "qty"}))
user_totals = GroupBy(name="gf.user_totals", sources=[source], keys=["user"], online=True,
                      aggregations=[Aggregation("price", Operation.COUNT), Aggregation("price", Operation.SUM),
                                    Aggregation("item", Operation.LAST), Aggregation("qty", Operation.MAX)])
user_vector = Join(name="gf.user_vector",
                   left=EventSource(table="act.events", query=Query(selects={"user": "user_id"})),
                   right_parts=[JoinPart(user_totals)], online=True)
"""


# Feast runs in its own interpreter (scripts/test.sh makes .venv-feast), so its pins never meet ours.
FEAST_CLIENT = '''
import json, sys, textwrap
from pathlib import Path
from feast import Entity, FeatureStore, FeatureView, Field
from feast.infra.offline_stores.contrib.chronon_offline_store.chronon_source import ChrononSource
from feast.types import Float64, Int64, String
from feast.value_type import ValueType

args = json.loads(sys.argv[1])
feast_repo = Path(args["feast_repo"])
(feast_repo / "feature_store.yaml").write_text(textwrap.dedent(f"""\\
    project: gnomon_feast
    registry: {feast_repo / 'registry.db'}
    provider: local
    online_store:
      type: chronon
      path: {args["url"]}
    entity_key_serialization_version: 3
    """))
user = Entity(name="user", join_keys=["user"], value_type=ValueType.STRING)
source = ChrononSource(name="gf_user_vector", materialization_path=args["events"], chronon_join="gf.user_vector",
                       timestamp_field="ts")
view = FeatureView(name="user_vector", entities=[user], source=source, online=True, schema=[
    Field(name="user", dtype=String),
    Field(name="gf_user_totals_price_count", dtype=Int64),
    Field(name="gf_user_totals_price_sum", dtype=Float64),
    Field(name="gf_user_totals_item_last", dtype=String),
    Field(name="gf_user_totals_qty_max", dtype=Int64),
])
store = FeatureStore(repo_path=str(feast_repo))
store.apply([user, view])
features = [f"user_vector:{f.name}" for f in view.schema if f.name != "user"]
print(json.dumps(store.get_online_features(features=features,
                                           entity_rows=[{"user": u} for u in args["users"]]).to_dict()))
'''


def _feast_python() -> str | None:
    """An interpreter with Feast >= 0.67: $GNOMON_FEAST_PYTHON, else this one if it has Feast."""
    configured = os.environ.get("GNOMON_FEAST_PYTHON")
    if configured:
        return configured
    try:
        import feast.infra.online_stores.chronon_online_store.chronon  # noqa: F401
    except ImportError:
        return None
    return sys.executable


def test_feast_chronon_online_store_reads_from_the_server(tmp_path: Path) -> None:
    """Feast's ``chronon`` online store (feast >= 0.67) calls POST /v1/features/join/{name} without ``at``:
    with unbounded features over events that all precede the batch end, "now" gives fixed values."""
    python = _feast_python()
    if python is None:
        pytest.skip(
            "Feast is not installed: set GNOMON_FEAST_PYTHON to a Python with feast>=0.67 "
            "(scripts/test.sh makes .venv-feast)"
        )
    now = int(time.time() * 1000)
    today = now - now % DAY
    days = [ds_of(today - d * DAY) for d in (3, 2, 1)]
    events = make_events(150, seed=3, start=today - 3 * DAY, end=today)
    repo = tmp_path / "repo"
    project = build_repo(repo, events, features_py=FEAST_FEATURES_PY, days=days)
    project.upload("gf.user_vector", days[-1])  # batch end = today 00:00, so now is within the horizon

    feast_repo = tmp_path / "feast"
    feast_repo.mkdir()
    users = ["u1", "u2", "nobody", "u4"]
    with running_server(create_app(repo)) as url:
        arguments = {
            "url": url,
            "feast_repo": str(feast_repo),
            "users": users,
            "events": str(repo / "warehouse" / "act" / "events"),
        }
        feast = subprocess.run(
            [python, "-c", FEAST_CLIENT, json.dumps(arguments)], capture_output=True, text=True, timeout=300
        )
        assert feast.returncode == 0, feast.stderr[-3000:]
        got = json.loads(feast.stdout.strip().splitlines()[-1])
        direct = httpx.post(
            f"{url}/v1/features/join/gf.user_vector", json=[{"user": u} for u in users]
        ).json()

    offline = offline_rows(project, [{"user": u} for u in users], [now], join="gf.user_vector")
    assert got["user"] == users
    for index, row in enumerate(offline):
        assert direct["results"][index]["status"] == "Success"
        for column in (
            "gf_user_totals_price_count",
            "gf_user_totals_price_sum",
            "gf_user_totals_item_last",
            "gf_user_totals_qty_max",
        ):
            assert close(row[column], got[column][index]), (
                users[index],
                column,
                row[column],
                got[column][index],
            )
            assert close(row[column], direct["results"][index]["features"][column])
    assert got["gf_user_totals_price_count"][0] > 0
    assert got["gf_user_totals_price_count"][2] is None
