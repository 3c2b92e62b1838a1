"""Shared helpers of the online HTTP / worker / CLI tests: a small feature repo on disk.

The repo is a real folder (``gnomon.yaml`` + a ``features/`` package + warehouse partitions), so that
``gnomon.Project(repo)``, ``create_app(repo)``, the CLI and worker subprocesses all load the very same
definitions by themselves.
"""

from __future__ import annotations

import json
import math
import os
import random
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pyarrow as pa

import gnomon
from gnomon import Project

DAY = 86_400_000
HOUR = 3_600_000
START = 1767225600000  # 2026-01-01 00:00 UTC
DAYS = 4
UPLOAD_DS = "2026-01-02"  # batch end = 2026-01-03 00:00
BATCH_END = START + 2 * DAY
END = START + DAYS * DAY

GROUP_BY = "feat.user_stats"
ITEM_GROUP_BY = "feat.item_stats"
JOIN = "feat.user_item"
TOPIC = "events"
USERS = ["u1", "u2", "u3", "u4"]
ITEMS = list("abcde")

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
    name="feat.user_stats",
    sources=[source],
    keys=["user"],
    aggregations=[
        Aggregation("price", Operation.COUNT, windows=["1h", "1d"]),
        Aggregation("price", Operation.SUM, windows=["1d", "3d"]),
        Aggregation("qty", Operation.SUM, windows=["5h"]),
        Aggregation("qty", Operation.AVERAGE, windows=["2d"]),
        Aggregation("price", Operation.MAX, windows=["5h"]),
        Aggregation("item", Operation.LAST),
        Aggregation("item", Operation.LAST_K(2), windows=["1d"]),
        Aggregation("qty", Operation.COUNT),
    ],
    accuracy=Accuracy.TEMPORAL,
    online=True,
)
item_stats = GroupBy(
    name="feat.item_stats",
    sources=[source],
    keys=["item"],
    aggregations=[Aggregation("qty", Operation.SUM, windows=["1d"])],
    accuracy=Accuracy.TEMPORAL,
    online=True,
)
user_item = Join(
    name="feat.user_item",
    left=EventSource(table="act.events", query=Query(selects={"user": "user_id", "item": "item_id"})),
    right_parts=[JoinPart(user_stats), JoinPart(item_stats, prefix="i")],
    derivations=[Derivation("*", "*"),
                 Derivation("avg_price_1d", "feat_user_stats_price_sum_1d / feat_user_stats_price_count_1d")],
    online=True,
)
"""

SCHEMA = pa.schema(
    [
        ("user_id", pa.string()),
        ("item_id", pa.string()),
        ("price", pa.float64()),
        ("qty", pa.int64()),
        ("ts", pa.int64()),
    ]
)


def ds_of(ts: int) -> str:
    return time.strftime("%Y-%m-%d", time.gmtime(ts // 1000))


def make_events(count: int, seed: int = 7, start: int = START, end: int = END) -> list[dict[str, Any]]:
    """Deterministic events spread over ``[start, end)``, sorted by ts."""
    rng = random.Random(seed)
    events = []
    for index in range(count):
        ts = rng.randrange(start, end)
        if index % 13 == 0:
            ts -= ts % HOUR  # on an hour: tails land on hop boundaries
        events.append(
            {
                "user_id": rng.choice(USERS),
                "item_id": rng.choice(ITEMS),
                "price": None if index % 19 == 0 else round(rng.uniform(1, 100), 2),
                "qty": rng.randrange(0, 6),
                "ts": ts,
            }
        )
    events.sort(key=lambda e: e["ts"])
    return events


def write_config(repo: Path, online: str = "sqlite:///online.db", horizon: str | None = None) -> None:
    online_setting = f"{{url: '{online}', horizon: {horizon}}}" if horizon else f"'{online}'"
    (repo / "gnomon.yaml").write_text(f"project: test\nonline: {online_setting}\nstream: embedded\n")


def build_repo(
    repo: Path,
    events: Sequence[dict[str, Any]],
    online: str = "sqlite:///online.db",
    horizon: str | None = None,
    features_py: str = FEATURES_PY,
    days: Iterable[str] | None = None,
) -> Project:
    """Write gnomon.yaml, features/defs.py and the warehouse partitions of ``events``."""
    repo.mkdir(parents=True, exist_ok=True)
    write_config(repo, online, horizon)
    (repo / "features").mkdir(exist_ok=True)
    (repo / "features" / "__init__.py").write_text("")
    (repo / "features" / "defs.py").write_text(textwrap.dedent(features_py))
    project = Project(repo)
    write_warehouse(project, events, days)
    return project


def write_warehouse(
    project: Project, events: Sequence[dict[str, Any]], days: Iterable[str] | None = None
) -> None:
    """(Re)write one partition per day of ``events`` (every day in ``days`` gets one, empty or not)."""
    by_day: dict[str, list[dict[str, Any]]] = {}
    for event in events:
        by_day.setdefault(ds_of(event["ts"]), []).append(event)
    all_days = sorted(set(days or [ds_of(START + d * DAY) for d in range(DAYS)]) | set(by_day))
    for ds in all_days:
        rows = sorted(by_day.get(ds, []), key=lambda e: e["ts"])
        project.warehouse.write_partition("act.events", ds, pa.Table.from_pylist(rows, schema=SCHEMA))


def publish(project: Project, events: Sequence[Any], batch: int = 100, topic: str = TOPIC) -> list[str]:
    """Publish events (dicts are JSON-encoded; bytes go as they are) in batches; returns event ids."""
    broker = project.broker()
    ids: list[str] = []
    try:
        payloads = [e if isinstance(e, bytes) else json.dumps(e).encode() for e in events]
        for start in range(0, len(payloads), batch):
            ids += broker.publish(topic, payloads[start : start + batch])
    finally:
        broker.close()
    return ids


def offline_rows(
    project: Project, keys: Sequence[dict[str, Any]], queries: Sequence[int], join: str = JOIN
) -> list[dict[str, Any]]:
    """``Project.training_data`` for every (key, q): one row each, keys varying fastest."""
    left = pa.Table.from_pylist([{**key, "ts": q} for q in queries for key in keys])
    return project.training_data(join, left).to_pylist()  # type: ignore[no-any-return]


def feature_columns(row: dict[str, Any], keys: Iterable[str] = ("user", "item", "ts")) -> dict[str, Any]:
    return {k: as_dict(v) for k, v in row.items() if k not in set(keys)}


def as_dict(value: Any) -> Any:
    if isinstance(value, list) and value and all(isinstance(v, tuple) and len(v) == 2 for v in value):
        return dict(value)
    return value


def close(expected: Any, got: Any) -> bool:
    """Equal, floats within 1e-9 (summation order may differ)."""
    if isinstance(expected, float) and isinstance(got, (int, float)) and not isinstance(got, bool):
        return math.isclose(expected, float(got), rel_tol=1e-9, abs_tol=1e-9)
    if isinstance(expected, list) and isinstance(got, list):
        return len(expected) == len(got) and all(close(a, b) for a, b in zip(expected, got, strict=True))
    if isinstance(expected, dict) and isinstance(got, dict):
        return expected.keys() == got.keys() and all(close(expected[k], got[k]) for k in expected)
    return bool(expected == got)


def mismatches(expected: dict[str, Any], got: dict[str, Any]) -> list[tuple[str, Any, Any]]:
    """Columns whose values differ (a column missing on either side counts)."""
    out = []
    for column in sorted(set(expected) | set(got)):
        if column not in expected or column not in got or not close(expected[column], got[column]):
            out.append((column, expected.get(column, "<missing>"), got.get(column, "<missing>")))
    return out


def assert_online_equals_offline(
    project: Project, keys: Sequence[dict[str, Any]], queries: Sequence[int], join: str = JOIN
) -> None:
    """In-process fetcher at each q == training data at q, for every key."""
    expected = offline_rows(project, keys, queries, join)
    store = project.store()
    try:
        fetcher = project.fetcher(store)
        problems = []
        position = 0
        for q in queries:
            results = fetcher.fetch_join(join, keys, at=q)
            for key, result in zip(keys, results, strict=True):
                row = expected[position]
                position += 1
                assert result.status == "Success", (key, q, result.error)
                diff = mismatches(feature_columns(row), result.features)
                if diff:
                    problems.append((key, q, diff[:4]))
        assert not problems, problems[:5]
    finally:
        store.close()


# ------------------------------------------------------------------ processes


def src_path() -> str:
    return str(Path(gnomon.__file__).resolve().parent.parent)


def subprocess_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = src_path() + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env["PYTHONUNBUFFERED"] = "1"
    return env


def gnomon_command(*args: str) -> list[str]:
    return [sys.executable, "-c", "from gnomon.cli import main; main()", *args]


def run_gnomon(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        gnomon_command(*args), env=subprocess_env(), capture_output=True, text=True, timeout=timeout
    )


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextmanager
def running_server(app: Any) -> Iterator[str]:
    """Serve ``app`` with uvicorn on a free loopback port in a thread; yields the base URL."""
    import uvicorn

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the uvicorn server did not start")
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()


def own_redis_db(request: Any, db: int) -> str:
    """The URL of Redis database ``db`` of the session's server, emptied: a test file's own database,
    so that state it leaves (fold marks, rows) never meets another file's repos of the same names."""
    import redis

    url = f"{request.getfixturevalue('redis_url').rsplit('/', 1)[0]}/{db}"
    client = redis.Redis.from_url(url)
    client.flushdb()
    client.close()
    return url
