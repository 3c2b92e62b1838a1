"""`gnomon stream --engine spark`: the worker's micro-batch step in Spark Structured Streaming's
``foreachBatch`` (`gnomon.streaming.spark`), on a real ``local[2]`` Spark.

- the file source gives the very values the embedded worker gives for the same events (and offline's);
- exactly once: a batch applied again (the same batch id and DataFrame, or Spark's replay after a crash
  between the store write and the checkpoint commit) changes nothing; a new checkpoint on a group
  that holds another query's batches is refused;
- the ``rate`` source: the events that landed are exactly the ones the fetch counts;
- Kafka without Spark's Kafka source, and Spark without pyspark, fail naming what to install.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from click.testing import CliRunner

from gnomon.cli import main
from gnomon.compile.features import stream_id
from gnomon.config import OfflineConfig
from gnomon.errors import ConfigError, MissingExtraError
from gnomon.online.records import StreamRow, rows_key
from gnomon.streaming import spark as spark_stream
from gnomon.streaming.brokers.base import Record
from gnomon.streaming.worker import PreparedBatch, RecordApplier, consumer_group, write_batch

from .conftest import in_ci
from .helpers import (
    BATCH_END,
    DAY,
    END,
    GROUP_BY,
    HOUR,
    ITEMS,
    JOIN,
    UPLOAD_DS,
    USERS,
    assert_online_equals_offline,
    build_repo,
    make_events,
    own_redis_db,
    publish,
    write_warehouse,
)

pytestmark = pytest.mark.filterwarnings("ignore:PySpark does not yet fully support pandas:FutureWarning")

QUERIES = [BATCH_END, BATCH_END + 7 * HOUR + 5, BATCH_END + DAY, END, END + 5 * HOUR + 3]
KEYS = [{"user": user, "item": item} for user in USERS for item in ITEMS[:3]]


@pytest.fixture(scope="module")
def spark() -> Iterator[Any]:
    """One local[2] session for the module (left running: later modules' getOrCreate reuse it)."""
    missing = [
        what
        for what, found in (
            ("pyspark (pip install 'gnomon[spark]')", importlib.util.find_spec("pyspark") is not None),
            ("Java", shutil.which("java") is not None or bool(os.environ.get("JAVA_HOME"))),
        )
        if not found
    ]
    if missing:
        if in_ci():
            pytest.fail(f"{' and '.join(missing)} missing, and CI is set: the Spark tests must run")
        pytest.skip(f"{' and '.join(missing)} missing")
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    conf = {"spark.sql.shuffle.partitions": "2", "spark.default.parallelism": "2"}
    session = spark_stream.spark_session(OfflineConfig(options={"conf": conf}))
    session.sparkContext.setLogLevel("ERROR")
    yield session


@pytest.fixture(autouse=True)
def quick_uploads(monkeypatch: pytest.MonkeyPatch) -> None:
    """No grace period after an upload's meta: nothing fetches while these tests upload."""
    monkeypatch.setattr("gnomon.online.upload._META_GRACE_S", 0.0)


@pytest.fixture(params=["sqlite", "redis"])
def store_urls(request: pytest.FixtureRequest) -> tuple[str, str]:
    """Online stores for a repo streamed by Spark and one streamed by the embedded worker."""
    if request.param == "sqlite":
        return "sqlite:///online.db", "sqlite:///online.db"
    return own_redis_db(request, 9), own_redis_db(request, 10)


def streamed_events() -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[dict[str, Any]]]:
    """(warehouse events before the batch end, events to stream, late ones among them)."""
    events = make_events(300)
    before = [e for e in events if e["ts"] < BATCH_END]
    after = [e for e in events if e["ts"] >= BATCH_END]
    late = [{**e, "ts": e["ts"] - DAY} for e in after[::9]]  # some before the batch end
    return before, after + late, late


def write_files(directory: Path, events: list[dict[str, Any]], files: int) -> None:
    """JSON-lines files, in order (part-0 first), as a producer would land them."""
    directory.mkdir(parents=True, exist_ok=True)
    size = -(-len(events) // files)
    for index in range(files):
        chunk = events[index * size : (index + 1) * size]
        (directory / f"part-{index}.json").write_text("".join(json.dumps(e) + "\n" for e in chunk) + "\n")


def uploaded(repo: Path, before: list[dict[str, Any]], online: str) -> Any:
    project = build_repo(repo, before, online=online, horizon="5d")
    project.compile(write=False)
    project.upload(JOIN, UPLOAD_DS)
    return project


def fetched(project: Any) -> list[list[dict[str, Any]]]:
    store = project.store()
    try:
        fetcher = project.fetcher(store)
        answers = []
        for q in QUERIES:
            results = fetcher.fetch_join(JOIN, KEYS, at=q)
            assert all(r.status == "Success" for r in results), [r.error for r in results]
            answers.append([r.features for r in results])
        return answers
    finally:
        store.close()


def stored_rows(project: Any, group_by: str = GROUP_BY) -> list[tuple[bytes, StreamRow]]:
    store = project.store()
    try:
        prefix = rows_key(stream_id(project.plan.group_bys[group_by]), b"")
        return [
            (event_id, StreamRow.decode(row)) for _, rows in store.scan_rows(prefix) for event_id, row in rows
        ]
    finally:
        store.close()


def test_file_source_equals_embedded_worker(tmp_path: Path, spark: Any, store_urls: tuple[str, str]) -> None:
    before, streamed, late = streamed_events()
    on_spark = uploaded(tmp_path / "spark", before, store_urls[0])
    embedded = uploaded(tmp_path / "embedded", before, store_urls[1])
    write_files(tmp_path / "events", streamed, files=3)  # written after the upload: they arrive after it
    publish(embedded, streamed)
    embedded.stream(JOIN, until_caught_up=True)

    result = CliRunner().invoke(
        main,
        [
            "stream",
            JOIN,
            "--engine",
            "spark",
            "--source-dir",
            str(tmp_path / "events"),
            "--checkpoint",
            str(tmp_path / "checkpoints"),
            "--available-now",
            "--repo",
            str(tmp_path / "spark"),
        ],
        catch_exceptions=False,
    )
    assert result.exit_code == 0, result.output
    assert f"{GROUP_BY}: {len(streamed)} record(s), {len(streamed)} row(s) applied" in result.output
    assert fetched(on_spark) == fetched(embedded)  # identical, value for value

    rows = stored_rows(on_spark)
    assert len(rows) == len(streamed)
    assert {event_id.decode().rsplit("-", 1)[0].rsplit(":", 1)[-1] for event_id, _ in rows} == {
        "0"
    }  # batch 0
    write_warehouse(on_spark, [*before, *streamed])  # offline sees every event, the late ones too
    assert_online_equals_offline(on_spark, KEYS, QUERIES)
    assert late


def static_batch(spark: Any, directory: Path) -> Any:
    """What the file source gives a batch, as a static DataFrame."""
    return (
        spark.read.format("text")
        .load(str(directory))
        .where("trim(value) != ''")
        .selectExpr(
            "value",
            "unix_millis(_metadata.file_modification_time) AS published_at_ms",
            "_metadata.file_path AS file",
            "_metadata.file_block_start AS file_block_start",
        )
    )


def sink_of(project: Any, store: Any) -> spark_stream.SparkSink:
    plan = project.plan.group_bys[GROUP_BY]
    applier = RecordApplier(plan, store, schema=project.source_schema(GROUP_BY), topic="events")
    sink = spark_stream.SparkSink(applier, consumer_group(plan, "events"))
    sink.query_id = "3f1c0a52-9d7e-4b8a-a111-0123456789ab"  # outside a streaming query, nothing says
    return sink


def test_a_batch_applied_twice_changes_nothing(tmp_path: Path, spark: Any) -> None:
    before, streamed, _ = streamed_events()
    project = uploaded(tmp_path / "repo", before, "sqlite:///online.db")
    write_files(tmp_path / "events", streamed, files=2)
    frame = static_batch(spark, tmp_path / "events")
    store = project.store()
    try:
        sink = sink_of(project, store)
        sink(frame, 0)  # the sink's write, then a crash before Spark commits the batch ...
        once, rows = fetched(project), len(stored_rows(project))
        sink(frame, 0)  # ... so Spark runs it again under the same id
        assert sink.skipped == 1
        assert fetched(project) == once and len(stored_rows(project)) == rows == len(streamed)
        assert store.offsets(sink.group) == {"spark:3f1c0a529d7e": "0"}
        # the fence is in the store write itself: a write that missed the check is skipped too
        records = [Record("events", "x", "1", b"{}", 0)]
        fenced = PreparedBatch([], sink.group, {"spark:3f1c0a529d7e": "0"}, fenced=True)
        assert not write_batch(sink.applier, fenced, records)
    finally:
        store.close()


def test_a_replay_after_a_crash_between_write_and_commit(
    tmp_path: Path, spark: Any, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    before, streamed, _ = streamed_events()
    project = uploaded(tmp_path / "repo", before, "sqlite:///online.db")
    write_files(tmp_path / "events", streamed, files=3)
    options = {
        "source_dir": tmp_path / "events",
        "checkpoint": tmp_path / "checkpoints",
        "spark": spark,
        "max_per_trigger": 2,  # batches 0 (two files) and 1 (one)
    }
    write = spark_stream.write_batch

    def crash_after_write(*args: Any, **kwargs: Any) -> bool:
        written = write(*args, **kwargs)
        if args[1].offsets and list(args[1].offsets.values()) == ["1"]:
            raise RuntimeError("killed between the store write and the checkpoint commit")
        return written

    with monkeypatch.context() as patched, pytest.raises(RuntimeError, match="killed between"):
        patched.setattr(spark_stream, "write_batch", crash_after_write)
        project.stream(JOIN, until_caught_up=True, engine="spark", **options)
    assert len(stored_rows(project)) == len(streamed)  # batch 1 written, not committed in the checkpoint

    with caplog.at_level(logging.INFO, logger="gnomon.stream.spark"):
        project.stream(JOIN, until_caught_up=True, engine="spark", **options)  # Spark replays batch 1
    assert "batch 1 was applied before" in caplog.text
    assert len(stored_rows(project)) == len(streamed)  # nothing doubled
    store = project.store()
    assert set(store.offsets(consumer_group(project.plan.group_bys[GROUP_BY], "events")).values()) == {"1"}
    store.close()
    write_warehouse(project, [*before, *streamed])
    assert_online_equals_offline(project, KEYS, QUERIES)

    # a new checkpoint is a new query: it would read the files again under new ids
    with pytest.raises(ConfigError, match="another Spark query"):
        project.stream(
            JOIN, until_caught_up=True, engine="spark", **{**options, "checkpoint": tmp_path / "new"}
        )


def test_rate_source_smoke(tmp_path: Path, spark: Any) -> None:
    project = uploaded(tmp_path / "repo", [], "sqlite:///online.db")  # nothing uploaded: all streamed
    group = consumer_group(project.plan.group_bys[GROUP_BY], "events")
    minute = 60_000

    def rate_events(session: Any, topic: str) -> Any:
        return (
            session.readStream.format("rate")
            .option("rowsPerSecond", 400)
            .load()
            .selectExpr(
                "to_json(named_struct('user_id', concat('u', CAST(value % 4 + 1 AS STRING)), 'item_id', 'a',"
                f" 'price', CAST(value AS DOUBLE), 'qty', 1, 'ts', {BATCH_END} + value * {minute})) AS value",
                "unix_millis(timestamp) AS published_at_ms",
            )
        )

    store = project.store()

    def three_batches() -> bool:
        return int(store.offsets(group).get(next(iter(store.offsets(group)), ""), "-1")) >= 2

    try:
        project.stream(
            GROUP_BY,
            engine="spark",
            source=rate_events,
            spark=spark,
            checkpoint=tmp_path / "checkpoints",
            trigger_interval_s=0.3,
            stop=three_batches,
        )
    finally:
        store.close()
    values = sorted((row.ts - BATCH_END) // minute for _, row in stored_rows(project))
    assert len(values) > 0 and values == list(range(len(values)))  # every value once, none skipped
    q = BATCH_END + len(values) * minute
    fetcher = project.fetcher()
    try:
        for n, user in enumerate(USERS):
            mine = [v for v in values if v % 4 == n]
            [result] = fetcher.fetch_group_by(GROUP_BY, [{"user": user}], at=q)
            assert result.status == "Success", result.error
            assert result.features["qty_count"] == len(mine)
            assert result.features["price_sum_3d"] == float(sum(mine))
            assert result.features["item_last"] == "a"
    finally:
        fetcher.store.close()


def test_kafka_without_spark_sql_kafka_names_the_package(tmp_path: Path, spark: Any) -> None:
    project = build_repo(tmp_path / "repo", [])
    (tmp_path / "repo" / "gnomon.yaml").write_text("project: test\nstream: kafka://127.0.0.1:9\n")
    project = type(project)(tmp_path / "repo")
    with pytest.raises(ConfigError, match=r"spark-sql-kafka.*org\.apache\.spark:spark-sql-kafka-0-10_2\.13"):
        project.stream(GROUP_BY, engine="spark", spark=spark, checkpoint=tmp_path / "checkpoints")


def test_without_a_source_or_pyspark(tmp_path: Path, spark: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    project = build_repo(tmp_path / "repo", [])
    with pytest.raises(ConfigError, match="--source-dir"):
        project.stream(GROUP_BY, engine="spark", spark=spark)
    with pytest.raises(ConfigError, match="does not exist"):
        project.stream(GROUP_BY, engine="spark", spark=spark, source_dir=tmp_path / "nowhere")
    result = CliRunner().invoke(main, ["stream", GROUP_BY, "--source-dir", "x", "--repo", str(project.root)])
    assert result.exit_code == 2 and "only with --engine spark" in result.output
    monkeypatch.setitem(sys.modules, "pyspark", None)
    with pytest.raises(MissingExtraError, match=r"pip install 'gnomon\[spark\]'"):
        spark_stream.spark_session(OfflineConfig())


def test_records_of_a_batch_follow_files_then_lines() -> None:
    table = pa.table(
        {
            "value": ['{"n": 3}', '{"n": 1}', '{"n": 2}'],
            "published_at_ms": [5, 7, 7],
            "file": ["file:/b.json", "file:/a.json", "file:/a.json"],
            "file_block_start": [0, 0, 0],
        }
    )
    records = spark_stream._records(table, "events", "spark:q", 4, now_ms=9)
    assert [(r.payload, r.event_id, r.published_at_ms) for r in records] == [
        (b'{"n": 1}', "spark:q:4-0", 7),
        (b'{"n": 2}', "spark:q:4-1", 7),
        (b'{"n": 3}', "spark:q:4-2", 5),
    ]
    kafka = pa.table({"value": [b"{}"], "partition": ["0"], "offset": ["17"]})
    [record] = spark_stream._records(kafka, "events", "spark:q", 4, now_ms=9)
    assert (record.event_id, record.published_at_ms) == ("0:17", 9)
