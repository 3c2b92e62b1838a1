"""The next upload supersedes what it covers: streamed rows no fetch reads any more are deleted, and
the values stay those of offline."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pytest

from gnomon.compile.features import stream_id
from gnomon.online.records import rows_key

from .helpers import (
    BATCH_END,
    DAY,
    END,
    GROUP_BY,
    JOIN,
    UPLOAD_DS,
    build_repo,
    make_events,
    own_redis_db,
    publish,
    write_warehouse,
)


@pytest.fixture(params=["sqlite", "redis"])
def store_url(request: pytest.FixtureRequest) -> str:
    if request.param == "sqlite":
        return "sqlite:///online.db"
    return own_redis_db(request, 13)


def stored_rows(project: object) -> int:
    store = project.store()  # type: ignore[attr-defined]
    try:
        prefix = rows_key(stream_id(project.plan.group_bys[GROUP_BY]), b"")  # type: ignore[attr-defined]
        return sum(len(rows) for _, rows in store.scan_rows(prefix))
    finally:
        store.close()


def test_a_new_upload_prunes_the_rows_it_covers(tmp_path: Path, store_url: str) -> None:
    events = make_events(400)
    project = build_repo(
        tmp_path / "repo", [e for e in events if e["ts"] < BATCH_END], online=store_url, horizon="3d"
    )
    project.compile()
    project.upload(JOIN, UPLOAD_DS)
    streamed = [e for e in events if e["ts"] >= BATCH_END]
    publish(project, streamed)
    project.stream(JOIN, until_caught_up=True)
    assert stored_rows(project) == len(streamed)

    write_warehouse(project, events)  # the warehouse lands day 3: upload it
    next_ds = "2026-01-03"
    project.upload(JOIN, next_ds)
    second_end = BATCH_END + DAY
    remaining = [e for e in streamed if e["ts"] >= second_end]
    assert 0 < stored_rows(project) == len(remaining)  # only what the new upload does not hold

    queries = [second_end, second_end + 1, (second_end + END) // 2, END - 1]
    left = pa.Table.from_pylist(
        [{"user": u, "item": i, "ts": q} for q in queries for u in ("u1", "u3") for i in "ab"]
    )
    offline = project.training_data(JOIN, left).to_pylist()
    fetcher = project.fetcher()
    for row in offline:
        [result] = fetcher.fetch_join(JOIN, [{"user": row["user"], "item": row["item"]}], at=row["ts"])
        assert result.status == "Success", result
        for column, value in result.features.items():
            expected = row[column]
            assert expected == pytest.approx(value) if isinstance(value, float) else expected == value, column
    fetcher.store.close()
