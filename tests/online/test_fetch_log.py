"""The fetch log (``serving: {log: ...}``), feature null counters and consistency gauges on /metrics,
against a real server: uvicorn in a thread, or ``gnomon serve`` in a subprocess for crash and shutdown.

One repo for the module (warehouse partitions and an upload of day UPLOAD_DS); each test writes its
own ``serving.log`` setting into gnomon.yaml before it creates its server, and starts with no logs.
"""

from __future__ import annotations

import json
import logging
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pyarrow as pa
import pytest
from click.testing import CliRunner

from gnomon import Project
from gnomon.cli import main as cli_main
from gnomon.errors import ConfigError
from gnomon.metrics import ConsistencyGauges
from gnomon.monitoring.fetch_log import (
    LOG_SCHEMA,
    canonical_keys,
    is_sampled,
    join_fingerprint,
    key_fraction,
    log_table,
    read_log,
)
from gnomon.serving.app import create_app

from .helpers import (
    BATCH_END,
    DAY,
    GROUP_BY,
    HOUR,
    ITEMS,
    JOIN,
    UPLOAD_DS,
    USERS,
    build_repo,
    ds_of,
    free_port,
    gnomon_command,
    make_events,
    running_server,
    src_path,
    subprocess_env,
    write_config,
)

KEYS = [{"user": user, "item": item} for user in [*USERS, "nobody", "x1", "x2"] for item in ITEMS]
DAY_ONE = BATCH_END + HOUR  # two days inside the upload's horizon
DAY_TWO = BATCH_END + DAY + 3 * HOUR
KEY_FIELDS = ["item", "user"]


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("fetch_log") / "repo"
    project = build_repo(path, make_events(300))
    project.upload(JOIN, UPLOAD_DS)
    return path


def configure(repo: Path, log: str | None) -> Path:
    """gnomon.yaml with ``serving: {log: <log>}`` (None: no serving section); no logs left over."""
    write_config(repo)
    if log is not None:
        with (repo / "gnomon.yaml").open("a") as config:
            config.write(f"serving: {{log: {log}}}\n")
    shutil.rmtree(repo / "warehouse" / "logs", ignore_errors=True)
    return repo / "warehouse"


@pytest.fixture
def served(repo: Path, request: pytest.FixtureRequest) -> Iterator[tuple[Any, httpx.Client]]:
    """An app for the ``serving.log`` setting given as the parameter, served by uvicorn in a thread;
    its fetch log is closed afterwards."""
    configure(repo, request.param)
    app = create_app(repo)
    try:
        with running_server(app) as url, httpx.Client(base_url=url, timeout=30) as http:
            yield app, http
    finally:
        if app.state.fetch_log is not None:
            app.state.fetch_log.close()


def fetch(http: httpx.Client, keys: list[dict[str, Any]], at: int | None = None, kind: str = "join") -> Any:
    name = JOIN if kind == "join" else GROUP_BY
    params = {"at": str(at)} if at is not None else {}
    response = http.post(f"/v1/features/{kind}/{name}", json=keys, params=params)
    assert response.status_code == 200, response.text
    return response.json()["results"]


def metric_lines(http: httpx.Client) -> dict[str, float]:
    text = http.get("/metrics").text
    return {k: float(v) for k, v in (line.rsplit(" ", 1) for line in text.splitlines() if line[:1] != "#")}


# ------------------------------------------------------------------ sampling


def test_the_sample_is_by_key_hash_and_the_same_in_another_process() -> None:
    canon = [canonical_keys(key, KEY_FIELDS) for key in KEYS]
    here = [key_fraction(c) for c in canon]
    script = textwrap.dedent(
        f"""
        import json, sys
        sys.path.insert(0, {src_path()!r})
        from gnomon.monitoring.fetch_log import key_fraction
        print(json.dumps([key_fraction(c.encode()) for c in json.load(sys.stdin)]))
        """
    )
    other = subprocess.run(
        [sys.executable, "-c", script],
        input=json.dumps([c.decode() for c in canon]),
        capture_output=True,
        text=True,
        check=True,
        env={"PYTHONHASHSEED": "123", "PATH": "/usr/bin:/bin"},
    )
    assert json.loads(other.stdout) == here
    assert all(0 <= f < 1 for f in here) and len(set(here)) == len(here)
    assert (
        canonical_keys({"user": "u1", "item": "a", "extra": 3}, ["user", "item"])
        == b'{"item":"a","user":"u1"}'
    )
    assert [is_sampled(c, 0.0) for c in canon] == [False] * len(canon)
    assert [is_sampled(c, 1.0) for c in canon] == [True] * len(canon)


@pytest.mark.parametrize("served", ["{sample: 0.5, flush_interval: 600}"], indirect=True)
def test_a_sampled_key_is_always_logged_and_another_never(
    served: tuple[Any, httpx.Client], repo: Path
) -> None:
    app, http = served
    for at in (DAY_ONE, DAY_ONE + 60_000, DAY_TWO):
        fetch(http, KEYS, at)
    assert app.state.fetch_log.flush() > 0
    logged = read_log(repo / "warehouse", JOIN, ds_of(DAY_ONE)).to_pylist()
    logged += read_log(repo / "warehouse", JOIN, ds_of(DAY_TWO)).to_pylist()
    times: dict[str, int] = {}
    for row in logged:
        times[row["keys"]] = times.get(row["keys"], 0) + 1
    expected = {c.decode() for c in (canonical_keys(k, KEY_FIELDS) for k in KEYS) if is_sampled(c, 0.5)}
    assert set(times) == expected and 0 < len(expected) < len(KEYS)
    assert set(times.values()) == {3}  # every fetch of a sampled key, none of the others


# ------------------------------------------------------------------ what a row holds


@pytest.mark.parametrize("served", ["{sample: 1.0, flush_interval: 600}"], indirect=True)
def test_sample_one_logs_every_join_fetch_partitioned_by_the_day_asked_for(
    served: tuple[Any, httpx.Client], repo: Path
) -> None:
    app, http = served
    keys = [{**KEYS[0], "extra": "not a key"}, KEYS[7], {"user": None, "item": "a"}]
    before = int(time.time() * 1000)
    answers = {DAY_ONE: fetch(http, keys, DAY_ONE), DAY_TWO: fetch(http, keys[:2], DAY_TWO)}
    now_answers = fetch(http, keys[:1])  # no `at`: the server's now, past the upload's horizon
    fetch(http, keys, DAY_ONE, kind="groupby")  # GroupBy fetches are not logged
    after = int(time.time() * 1000)
    assert app.state.fetch_log.flush() == 6
    warehouse = repo / "warehouse"
    fingerprint = join_fingerprint(Project(repo).plan, JOIN)
    for at, results in answers.items():
        table = read_log(warehouse, JOIN, ds_of(at))
        assert table.schema == LOG_SCHEMA
        rows = table.to_pylist()
        assert [json.loads(r["keys"]) for r in rows] == [
            {"item": k["item"], "user": k["user"]} for k in keys[: len(results)]
        ]
        assert [r["keys"] for r in rows][0] == '{"item":"a","user":"u1"}'  # sorted, compact
        assert [r["status"] for r in rows] == [r["status"] for r in results]
        assert [json.loads(r["features"]) for r in rows] == [r["features"] for r in results]
        assert all(r["ts"] == at and before <= r["fetched_at"] <= after for r in rows)
        assert {r["join_fingerprint"] for r in rows} == {fingerprint}
    assert [r["status"] for r in answers[DAY_ONE]] == ["Success", "Success", "MissingKey"]
    today = read_log(warehouse, JOIN, ds_of(after)).to_pylist()
    if not today:  # the request ran just before midnight (UTC)
        today = read_log(warehouse, JOIN, ds_of(before)).to_pylist()
    assert len(today) == 1 and before <= today[0]["ts"] <= after
    assert today[0]["status"] == now_answers[0]["status"] == "StaleUpload"
    table_folder = warehouse / "logs" / JOIN.replace(".", "_")
    assert log_table(JOIN) == f"logs.{JOIN.replace('.', '_')}"
    assert sorted(p.name for p in (warehouse / "logs").iterdir()) == [".journal", table_folder.name]
    assert not list(table_folder.rglob("*.tmp"))
    lines = metric_lines(http)
    assert lines[f'gnomon_fetch_log_records_total{{join="{JOIN}"}}'] == 6


@pytest.mark.parametrize("log", [None, "{sample: 0}", "{}"])
def test_sample_zero_logs_nothing(repo: Path, log: str | None) -> None:
    warehouse = configure(repo, log)
    app = create_app(repo)
    assert app.state.fetch_log is None
    with running_server(app) as url, httpx.Client(base_url=url, timeout=30) as http:
        fetch(http, KEYS[:5], DAY_ONE)
    assert read_log(warehouse, JOIN, ds_of(DAY_ONE)).num_rows == 0
    assert not (warehouse / "logs" / JOIN.replace(".", "_")).exists()


# ------------------------------------------------------------------ crash and shutdown


def start_server(repo: Path) -> tuple[subprocess.Popen[str], str]:
    port = free_port()
    server = subprocess.Popen(
        gnomon_command("serve", "--port", str(port), "--repo", str(repo)),
        env=subprocess_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                return server, url
        except httpx.TransportError:
            pass
        if server.poll() is not None or time.monotonic() > deadline:
            server.kill()
            raise AssertionError(f"gnomon serve did not start: {server.communicate(timeout=10)}")
        time.sleep(0.05)


def wait_for_written(http: httpx.Client, count: int) -> None:
    """Until the server says it wrote ``count`` keys (the journal is updated before the metric)."""
    deadline = time.monotonic() + 30
    while metric_lines(http).get(f'gnomon_fetch_log_records_total{{join="{JOIN}"}}', 0) < count:
        assert time.monotonic() < deadline, "the writer thread did not flush a full batch"
        time.sleep(0.05)


def test_a_crash_loses_only_the_unflushed_batch_and_the_next_start_says_how_many(
    repo: Path, caplog: pytest.LogCaptureFixture
) -> None:
    warehouse = configure(repo, "{sample: 1.0, flush_interval: 600, batch_rows: 5}")
    server, url = start_server(repo)
    try:
        with httpx.Client(base_url=url, timeout=30) as http:
            fetch(http, KEYS[:5], DAY_ONE)  # a full batch: the writer flushes it at once
            wait_for_written(http, 5)
            fetch(http, KEYS[5:7], DAY_ONE)
            fetch(http, KEYS[7:8], DAY_TWO)
    finally:
        server.send_signal(signal.SIGKILL)
        server.communicate(timeout=10)
    assert read_log(warehouse, JOIN, ds_of(DAY_ONE)).num_rows == 5
    assert len(list((warehouse / "logs" / ".journal").glob("*.journal"))) == 1
    with caplog.at_level(logging.WARNING, logger="gnomon.monitoring.fetch_log"):
        app = create_app(repo)
    try:
        assert f"fetch log: 3 records of join {JOIN} were lost in a crash" in caplog.messages
        assert f'gnomon_fetch_log_lost_total{{join="{JOIN}"}} 3' in app.state.metrics.render()
    finally:
        app.state.fetch_log.close()
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="gnomon.monitoring.fetch_log"):
        again = create_app(repo)  # reported once, not at every start
    again.state.fetch_log.close()
    assert not [m for m in caplog.messages if "lost in a crash" in m]
    assert not list((warehouse / "logs" / ".journal").glob("*.journal"))


def test_a_clean_shutdown_writes_everything(repo: Path) -> None:
    warehouse = configure(repo, "{sample: 1.0, flush_interval: 600}")
    server, url = start_server(repo)
    try:
        with httpx.Client(base_url=url, timeout=30) as http:
            results = fetch(http, KEYS[:3], DAY_TWO)
        assert read_log(warehouse, JOIN, ds_of(DAY_TWO)).num_rows == 0  # nothing flushed yet
    finally:
        server.send_signal(signal.SIGTERM)
        _, stderr = server.communicate(timeout=30)
    # uvicorn shuts down gracefully (lifespan shutdown included), then re-raises the signal it caught
    assert server.returncode in (0, -signal.SIGTERM), stderr
    rows = read_log(warehouse, JOIN, ds_of(DAY_TWO)).to_pylist()
    assert [json.loads(r["features"]) for r in rows] == [r["features"] for r in results]
    assert not list((warehouse / "logs" / ".journal").iterdir())


@pytest.mark.parametrize("served", ["{sample: 1.0, flush_interval: 600}"], indirect=True)
def test_a_failed_write_is_counted_and_retried(served: tuple[Any, httpx.Client], repo: Path) -> None:
    app, http = served
    blocker = repo / "warehouse" / "logs" / JOIN.replace(".", "_")
    blocker.write_text("a file where the table's folder goes")  # its partition cannot be created
    results = fetch(http, KEYS[:4], DAY_ONE)
    assert app.state.fetch_log.flush() == 0
    lines = metric_lines(http)
    assert lines[f'gnomon_fetch_log_write_errors_total{{join="{JOIN}"}}'] == 1
    blocker.unlink()
    assert app.state.fetch_log.flush() == 4
    rows = read_log(repo / "warehouse", JOIN, ds_of(DAY_ONE)).to_pylist()
    assert [json.loads(r["features"]) for r in rows] == [r["features"] for r in results]


def test_a_warehouse_the_log_cannot_write_to_is_a_clear_error(repo: Path) -> None:
    warehouse = configure(repo, "{sample: 0.1}")
    (warehouse / "logs").write_text("not a folder")
    try:
        with pytest.raises(ConfigError, match="serving.log: the fetch log cannot write under"):
            create_app(repo)
    finally:
        (warehouse / "logs").unlink()


# ------------------------------------------------------------------ configuration


@pytest.mark.parametrize(
    ("log", "named"),
    [
        ("{sample: 1.5}", "serving.log.sample must be a number from 0 to 1"),
        ("{sample: yes}", "serving.log.sample must be a number from 0 to 1"),
        ("{sampel: 0.1}", "unknown setting serving.log.sampel. Did you mean 'sample'?"),
        ("{flush_interval: 2}", "serving.log.sample is missing"),
        (
            "{sample: 0.1, flush_interval: 0}",
            "serving.log.flush_interval must be a number of seconds above 0",
        ),
        ("{sample: 0.1, batch_rows: 2.5}", "serving.log.batch_rows must be a positive integer"),
    ],
)
def test_a_bad_log_setting_is_a_clear_error(repo: Path, log: str, named: str) -> None:
    configure(repo, log)
    with pytest.raises(ConfigError, match="gnomon.yaml") as error:
        create_app(repo)
    assert named in str(error.value)
    result = CliRunner().invoke(cli_main, ["serve", "--port", str(free_port()), "--repo", str(repo)])
    assert result.exit_code == 1 and named in result.output, result.output


# ------------------------------------------------------------------ null rates


def test_null_counters_count_the_served_values_and_nulls(repo: Path) -> None:
    configure(repo, None)
    with running_server(create_app(repo)) as url, httpx.Client(base_url=url, timeout=30) as http:
        served = fetch(http, KEYS, DAY_ONE) + fetch(http, KEYS[:9] + [{"user": None, "item": "a"}], DAY_TWO)
        by_group_by = fetch(http, [{"user": "u1"}, {"user": "nobody"}], DAY_ONE, kind="groupby")
        lines = metric_lines(http)
    assert [r["status"] for r in served].count("MissingKey") == 1  # a failed key serves no values
    for kind, name, results in (("join", JOIN, served), ("groupby", GROUP_BY, by_group_by)):
        successes = [r["features"] for r in results if r["status"] == "Success"]
        for feature in successes[0]:
            labels = f'{kind}="{name}",feature="{feature}"'
            assert lines[f"gnomon_feature_values_total{{{labels}}}"] == len(successes)
            nulls = sum(features[feature] is None for features in successes)
            assert lines[f"gnomon_feature_nulls_total{{{labels}}}"] == nulls, feature
    labels = f'join="{JOIN}",feature="feat_user_stats_item_last"'
    assert lines[f"gnomon_feature_nulls_total{{{labels}}}"] == 3 * len(ITEMS)  # nobody, x1, x2 on day one
    labels = f'groupby="{GROUP_BY}",feature="item_last"'
    assert lines[f"gnomon_feature_nulls_total{{{labels}}}"] == 1


# ------------------------------------------------------------------ consistency gauges


def consistency_rows(features: dict[str, tuple[float, float | None]], ds: str) -> pa.Table:
    return pa.Table.from_pylist(
        [
            {
                "ds": ds,
                "feature": feature,
                "rows_compared": 100,
                "mismatches": int(rate * 100),
                "mismatch_rate": rate,
                "online_null_rate": 0.1,
                "offline_null_rate": 0.1,
                "smape": smape,
                "max_abs_diff": 0.5,
                "mismatching_keys": json.dumps([{"user": "u1", "item": "a"}]),
            }
            for feature, (rate, smape) in features.items()
        ]
    )


def test_consistency_gauges_show_the_latest_partition(repo: Path) -> None:
    configure(repo, None)
    project = Project(repo)
    table = f"consistency.{JOIN.replace('.', '_')}"
    project.warehouse.write_partition(table, "2026-01-03", consistency_rows({"f1": (0.5, 0.4)}, "2026-01-03"))
    project.warehouse.write_partition(
        table, "2026-01-04", consistency_rows({"f1": (0.02, 0.01), "f2": (0.0, None)}, "2026-01-04")
    )
    try:
        with running_server(create_app(repo)) as url, httpx.Client(base_url=url, timeout=30) as http:
            lines = metric_lines(http)
    finally:
        shutil.rmtree(project.warehouse.table_path(table))
    assert lines[f'gnomon_consistency_mismatch_rate{{join="{JOIN}",feature="f1"}}'] == 0.02
    assert lines[f'gnomon_consistency_smape{{join="{JOIN}",feature="f1"}}'] == 0.01
    assert lines[f'gnomon_consistency_mismatch_rate{{join="{JOIN}",feature="f2"}}'] == 0.0
    assert f'gnomon_consistency_smape{{join="{JOIN}",feature="f2"}}' not in lines  # no figure, no gauge
    assert lines[f'gnomon_consistency_day{{join="{JOIN}"}}'] == (BATCH_END + DAY) / 1000


def test_consistency_gauges_are_read_at_most_once_a_minute(tmp_path: Path) -> None:
    from gnomon.offline.warehouse import Warehouse

    warehouse = Warehouse(tmp_path)
    now = [1000.0]
    gauges = ConsistencyGauges({"j": warehouse.table_path("consistency.j")}, clock=lambda: now[0])
    assert not [line for line in gauges.render() if not line.startswith("#")]  # no table yet
    warehouse.write_partition(
        "consistency.j", "2026-01-03", consistency_rows({"f": (0.25, 0.5)}, "2026-01-03")
    )
    now[0] += 59
    assert not [line for line in gauges.render() if not line.startswith("#")]  # cached
    now[0] += 1
    assert 'gnomon_consistency_mismatch_rate{join="j",feature="f"} 0.25' in gauges.render()
    warehouse.write_partition(
        "consistency.j", "2026-01-04", consistency_rows({"f": (0.75, 0.5)}, "2026-01-04")
    )
    now[0] += 30
    assert 'gnomon_consistency_mismatch_rate{join="j",feature="f"} 0.25' in gauges.render()
    now[0] += 30
    assert 'gnomon_consistency_mismatch_rate{join="j",feature="f"} 0.75' in gauges.render()
