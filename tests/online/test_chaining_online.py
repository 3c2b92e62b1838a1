"""Online chaining: a GroupBy over a JoinSource, streamed from the parent's left topic with each event
enriched by the parent Join's online features at its time, equals the offline chained backfill."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

from gnomon import Aggregation, EventSource, GroupBy, Join, JoinPart, JoinSource, Operation, Project, Query

from .helpers import own_redis_db

DAY = 86_400_000
HOUR = 3_600_000
START = 1_767_225_600_000  # 2026-01-01
DAYS = 5
UPLOAD_DS = "2026-01-03"
BATCH_END = START + 3 * DAY
USERS = ["u1", "u2", "u3", "u4"]
ITEMS = ["a", "b", "c"]
PURCHASES = pa.schema([("user_id", pa.string()), ("amount", pa.float64()), ("ts", pa.int64())])
VIEWS = pa.schema([("user_id", pa.string()), ("item_id", pa.string()), ("ts", pa.int64())])
PROBES = pa.schema([("item_id", pa.string()), ("ts", pa.int64())])


def definitions() -> dict[str, Any]:
    purchases = EventSource(
        table="shop.purchases",
        topic="purchases",
        query=Query(selects={"user": "user_id", "amount": "amount"}),
    )
    spend = GroupBy(
        name="ch.spend",
        sources=[purchases],
        keys=["user"],
        online=True,
        aggregations=[
            Aggregation("amount", Operation.SUM, windows=["1d"]),
            Aggregation("amount", Operation.COUNT, windows=["5h"]),
        ],
    )
    views = EventSource(
        table="shop.views", topic="views", query=Query(selects={"user": "user_id", "item": "item_id"})
    )
    parent = Join(name="ch.parent", left=views, right_parts=[JoinPart(spend)], online=True)
    interest = GroupBy(
        name="ch.interest",
        keys=["item"],
        online=True,
        sources=[
            JoinSource(
                parent,
                Query(
                    selects={
                        "item": "item",
                        "spend": "ch_spend_amount_sum_1d",
                        "recent": "ch_spend_amount_count_5h",
                    }
                ),
            )
        ],
        aggregations=[
            Aggregation("spend", Operation.AVERAGE, windows=["2d"]),
            Aggregation("spend", Operation.MAX, windows=["5h"]),
            Aggregation("recent", Operation.SUM),
            Aggregation("spend", Operation.COUNT),
        ],
    )
    probe = Join(
        name="ch.probe",
        left=EventSource(table="shop.probes", query=Query(selects={"item": "item_id"})),
        right_parts=[JoinPart(interest)],
        online=True,
    )
    return {"ch.spend": spend, "ch.parent": parent, "ch.interest": interest, "ch.probe": probe}


def events(rng: random.Random) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    purchases = [
        {
            "user_id": rng.choice(USERS),
            "amount": round(rng.uniform(1, 50), 2),
            "ts": START + rng.randrange(DAYS * DAY),
        }
        for _ in range(300)
    ]
    views = [
        {
            "user_id": rng.choice([*USERS, None]),
            "item_id": rng.choice(ITEMS),
            "ts": START + rng.randrange(DAYS * DAY),
        }
        for _ in range(300)
    ]
    views += [{"user_id": p["user_id"], "item_id": "a", "ts": p["ts"]} for p in purchases[:20]]  # ts ties
    return purchases, views


def write(project: Project, table: str, rows: list[dict[str, Any]], schema: pa.Schema, days: range) -> None:
    for day in days:
        ds = f"2026-01-{day + 1:02d}"
        chosen = sorted(
            (r for r in rows if START + day * DAY <= r["ts"] < START + (day + 1) * DAY), key=lambda r: r["ts"]
        )
        project.warehouse.write_partition(table, ds, pa.Table.from_pylist(chosen, schema=schema))


@pytest.fixture(params=["sqlite", "redis"])
def store_url(request: pytest.FixtureRequest) -> str:
    if request.param == "sqlite":
        return "sqlite:///online.db"
    return own_redis_db(request, 14)


def test_chained_group_by_online_equals_offline(tmp_path: Path, store_url: str) -> None:
    rng = random.Random(5)
    purchases, views = events(rng)
    (tmp_path / "gnomon.yaml").write_text(f"online: {{url: '{store_url}', horizon: 3d}}\nstream: embedded\n")
    project = Project(tmp_path, objects=definitions())
    write(project, "shop.purchases", purchases, PURCHASES, range(3))
    write(project, "shop.views", views, VIEWS, range(3))
    write(project, "shop.probes", [], PROBES, range(DAYS))
    project.compile(write=False)
    project.upload("ch.spend", UPLOAD_DS)
    project.upload("ch.interest", UPLOAD_DS)  # backfills the parent Join's partitions it reads first
    assert project.warehouse.partitions("features.ch_parent")[-1] == UPLOAD_DS

    broker = project.broker()
    broker.publish(
        "purchases",
        [json.dumps(p).encode() for p in sorted(purchases, key=lambda p: p["ts"]) if p["ts"] >= BATCH_END],
    )
    broker.publish(
        "views",
        [json.dumps(v).encode() for v in sorted(views, key=lambda v: v["ts"]) if v["ts"] >= BATCH_END],
    )
    broker.close()
    project.stream("ch.spend", until_caught_up=True)  # the parent's state first, then the enrichment
    stats = project.stream("ch.interest", until_caught_up=True)["ch.interest"]
    null_users = sum(1 for v in views if v["ts"] >= BATCH_END and v["user_id"] is None)
    assert stats.dead_letters == null_users  # the parent cannot be fetched without its key
    assert set(stats.dead_letter_reasons) == ({"parent not servable"} if null_users else set())

    views_known = [v for v in views if v["ts"] < BATCH_END or v["user_id"] is not None]
    write(project, "shop.purchases", purchases, PURCHASES, range(DAYS))
    write(project, "shop.views", views_known, VIEWS, range(DAYS))
    queries = [
        BATCH_END,
        BATCH_END + 1,
        *sorted(rng.randrange(BATCH_END, START + DAYS * DAY) for _ in range(30)),
        *[v["ts"] for v in views if v["ts"] >= BATCH_END][:10:2],
    ]
    left = pa.Table.from_pylist([{"item": item, "ts": q} for q in queries for item in ITEMS])
    offline = project.training_data("ch.probe", left).to_pylist()
    fetcher = project.fetcher()
    mismatches = []
    for row in offline:
        [result] = fetcher.fetch_join("ch.probe", [{"item": row["item"]}], at=row["ts"])
        assert result.status == "Success", result
        for column, expected in row.items():
            if column in ("item", "ts"):
                continue
            got = result.features[column]
            if not (
                expected == got
                or (
                    isinstance(expected, float)
                    and isinstance(got, float)
                    and abs(expected - got) <= 1e-9 * max(1.0, abs(expected))
                )
            ):
                mismatches.append((row["item"], row["ts"], column, expected, got))
    fetcher.store.close()
    assert not mismatches, mismatches[:10]
    assert any(row["ch_interest_spend_count"] for row in offline)
