"""Streamed rows folded into hop tiles (`gnomon.online.fold`): the values stay those of offline, a
replay of a folded event changes nothing, late events after a fold still count, a fetch in the middle
of a folded tile says so, and the state of a key stays bounded however many events it streamed."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

from gnomon.compile.features import stream_id
from gnomon.online.fold import FoldState, fold_key
from gnomon.online.records import entity_key, rows_key
from gnomon.streaming.worker import StreamWorker

from .helpers import (
    BATCH_END,
    DAY,
    END,
    GROUP_BY,
    HOUR,
    TOPIC,
    UPLOAD_DS,
    build_repo,
    make_events,
    own_redis_db,
    write_warehouse,
)


@pytest.fixture(params=["sqlite", "redis"])
def store_url(request: pytest.FixtureRequest) -> str:
    if request.param == "sqlite":
        return "sqlite:///online.db"
    return own_redis_db(request, 12)


def publish(project: Any, events: list[dict[str, Any]]) -> None:
    broker = project.broker()
    broker.publish(TOPIC, [json.dumps(e).encode() for e in events])
    broker.close()


def run_worker(project: Any, group: str | None = None) -> Any:
    """A worker that folds after every row, without a fold delay (the data is months old: every
    tile has closed)."""
    store, broker = project.store(), project.broker()
    worker = StreamWorker(
        project.plan.group_bys[GROUP_BY],
        store,
        broker,
        group=group,
        schema=project.source_schema(GROUP_BY),
        fold_every=1,
        fold_delay_ms=0,
    )
    try:
        return worker.run(until_caught_up=True)
    finally:
        worker.close()
        store.close()
        broker.close()


def held(project: Any) -> tuple[int, int]:
    """(streamed rows, fold tiles) the store holds for the GroupBy, over every key."""
    group_by = project.plan.group_bys[GROUP_BY]
    sid = stream_id(group_by)
    store = project.store()
    try:
        rows = sum(len(found) for _, found in store.scan_rows(rows_key(sid, b"")))
        tiles = 0
        for user in ("u1", "u2", "u3", "u4"):
            [raw] = store.get([fold_key(sid, entity_key([user]))])
            tiles += 0 if raw is None else len(FoldState.decode(raw).tiles)
        return rows, tiles
    finally:
        store.close()


def assert_parity(project: Any, queries: list[int]) -> None:
    left = pa.Table.from_pylist([{"user": u, "ts": q} for q in queries for u in ("u1", "u2", "u3", "nobody")])
    expected = project.training_data("feat.user_join", left).to_pylist()
    fetcher = project.fetcher()
    try:
        for row in expected:
            [result] = fetcher.fetch_group_by(GROUP_BY, [{"user": row["user"]}], at=row["ts"])
            assert result.status == "Success", (row["ts"], result)
            for column, value in result.features.items():
                want = row["feat_user_stats_" + column]
                ok = want == pytest.approx(value) if isinstance(value, float) else want == value
                assert ok, (row["user"], row["ts"], column, want, value)
    finally:
        fetcher.store.close()


JOIN_PY = """
user_join = Join(name="feat.user_join", left=EventSource(table="act.events", query=Query(selects={"user": "user_id"})),
                 right_parts=[JoinPart(user_stats)])
"""


def test_folded_state_equals_offline_and_stays_bounded(tmp_path: Path, store_url: str) -> None:
    from .helpers import FEATURES_PY

    events = make_events(600)
    before = [e for e in events if e["ts"] < BATCH_END]
    project = build_repo(
        tmp_path / "repo", before, online=store_url, horizon="5d", features_py=FEATURES_PY + JOIN_PY
    )
    project.compile(write=False)
    project.upload(GROUP_BY, UPLOAD_DS)
    streamed = [e for e in events if e["ts"] >= BATCH_END]
    late = [{**e, "ts": e["ts"] - DAY} for e in streamed[::7] if e["ts"] - DAY >= BATCH_END - DAY]
    publish(project, streamed + late)
    run_worker(project)
    rows, tiles = held(project)
    assert rows == 0 and tiles > 0  # every streamed row is in a tile

    write_warehouse(project, events + late)  # offline sees everything
    queries = [BATCH_END, BATCH_END + DAY, END, END + 1, END + 5 * HOUR + 3, END + 2 * DAY - 7]
    assert_parity(project, queries)

    # a replay of folded events (another consumer group from the start) changes nothing
    run_worker(project, group="replay")
    assert held(project)[0] == 0
    assert_parity(project, queries)

    # late events after the fold, into folded tiles: stored as rows, counted, folded later
    more = [
        {"user_id": "u1", "item_id": "a", "price": 5.0, "qty": 2, "ts": BATCH_END + 3 * HOUR + i}
        for i in range(5)
    ]
    publish(project, more)
    write_warehouse(project, events + late + more)
    run_worker(project)
    assert_parity(project, queries)
    assert held(project)[0] == 0

    # a fetch inside a folded tile cannot be exact: it says so
    fetcher = project.fetcher()
    [result] = fetcher.fetch_group_by(GROUP_BY, [{"user": "u1"}], at=BATCH_END + HOUR + 1)
    fetcher.store.close()
    assert result.status == "FoldedPast", result


def test_state_per_key_is_bounded_by_tiles(tmp_path: Path) -> None:
    from .helpers import FEATURES_PY

    project = build_repo(
        tmp_path / "repo", make_events(50, end=BATCH_END), horizon="40d", features_py=FEATURES_PY + JOIN_PY
    )
    project.compile(write=False)
    project.upload(GROUP_BY, UPLOAD_DS)
    sizes = []
    for chunk in range(4):  # the same key streams on and on over the same hours: tiles, not events
        publish(
            project,
            [
                {"user_id": "u1", "item_id": "a", "price": 1.0, "qty": 1, "ts": BATCH_END + chunk + i * 997}
                for i in range(400)
            ],
        )
        run_worker(project)
        sizes.append(held(project))
    assert all(rows == 0 for rows, _ in sizes)
    assert len({tiles for _, tiles in sizes}) == 1, sizes  # 1,600 events, the tiles of the first 400
