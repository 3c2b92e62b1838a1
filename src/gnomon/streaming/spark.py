"""Spark Structured Streaming (`gnomon stream NAME --engine spark`): the worker's micro-batch step in
``foreachBatch``.

One streaming query per (GroupBy, topic), all in one SparkSession. Spark reads the source and plans
the micro-batches; each batch is collected on the driver as Arrow and handed to the very step the
embedded worker runs (`RecordApplier.prepare`, then `write_batch`: the Query evaluated by DuckDB,
rows encoded, one atomic store write, folding, metrics), so an event gives the same stored rows
whichever engine read it.

Exactly once. Spark writes a batch's offsets to the checkpoint before running it and its commit
after, and replays the batch under the same id after a crash in between. The batch id is recorded
as the offset of a pseudo-partition ``spark:<query id>`` (the first 12 hex digits of the query's
id, which its checkpoint keeps) under the query's consumer group, in the same atomic store write as the batch's rows, and that
write is fenced (`OnlineStore.add_rows`): a batch whose id is not beyond the recorded one writes
nothing. Rows are stored under the events' own ids where the source has them (Kafka's
``partition:offset``, the same ids as the embedded Kafka worker), else under
``spark:<query id>:<batch id>-<n>``, numbered in file and line order. A new checkpoint is a new
query: for a source without ids of its own (files, rate), a query whose group already holds another
Spark query's batches is refused, since it would read the same files again under new ids.

Sources: a directory of JSON-lines files (one event per line, as `gnomon push` takes them; Spark's
file source, each new file read once), Kafka when Spark's Kafka source (``spark-sql-kafka``) is on
the cluster, or any streaming DataFrame shaped as `SparkSink` describes (the tests use ``rate``).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from types import ModuleType
from typing import Any

import pyarrow as pa

from gnomon.errors import ConfigError, ExecutionError
from gnomon.extras import require
from gnomon.metrics import StreamMetrics
from gnomon.offline.engines.spark import spark_session
from gnomon.offsets import offset_order
from gnomon.online.fold import Folder
from gnomon.streaming.brokers.base import Record
from gnomon.streaming.worker import RecordApplier, WorkerStats, consumer_group, folder_for, write_batch

log = logging.getLogger("gnomon.stream.spark")

CHECKPOINTS = "spark-checkpoints"  # the default checkpoint root, in the repo
QUERY_ID = "sql.streaming.queryId"  # the local property Spark sets on a query's thread
MAX_FILES_PER_TRIGGER = 1000  # a batch is collected on the driver: bound it
MAX_OFFSETS_PER_TRIGGER = 100_000
_ORDER = ("file", "file_block_start")

Source = Callable[[Any, str], Any]  # (SparkSession, topic) -> a streaming DataFrame


def import_pyspark() -> ModuleType:
    """The ``pyspark`` package, or a `MissingExtraError` naming ``pip install 'gnomon[spark]'``."""
    return require("pyspark", "spark", "Spark Structured Streaming (gnomon stream --engine spark)")


def file_source(spark: Any, directory: str, max_files_per_trigger: int | None = None) -> Any:
    """The JSON-lines files of ``directory`` as a `SparkSink` source: one event per non-blank line,
    published when its file was last modified, numbered in file and line order."""
    frame = (
        spark.readStream.format("text")
        .option("maxFilesPerTrigger", max_files_per_trigger or MAX_FILES_PER_TRIGGER)
        .load(directory)
    )
    return frame.where("trim(value) != ''").selectExpr(
        "value",
        "unix_millis(_metadata.file_modification_time) AS published_at_ms",
        "_metadata.file_path AS file",
        "_metadata.file_block_start AS file_block_start",
    )


def kafka_source(spark: Any, url: str, topic: str, max_offsets_per_trigger: int | None = None) -> Any:
    """A Kafka topic (``stream: kafka://…`` of gnomon.yaml; its options become the reader's
    ``kafka.*`` options) as a `SparkSink` source, with Kafka's partitions, offsets and timestamps;
    a new query reads from the earliest offsets."""
    from gnomon.streaming.brokers.kafka import kafka_config

    reader = (
        spark.readStream.format("kafka")
        .option("subscribe", topic)
        .option("startingOffsets", "earliest")
        .option("maxOffsetsPerTrigger", max_offsets_per_trigger or MAX_OFFSETS_PER_TRIGGER)
    )
    for name, value in kafka_config(url).items():
        reader = reader.option(f"kafka.{name}", value)
    try:
        frame = reader.load()
    except Exception as error:
        text = str(error)
        if "KAFKA_DATA_SOURCE_NOT_ENABLED" not in text and "Failed to find data source: kafka" not in text:
            raise
        version = str(spark.version)
        scala = "2.13" if int(version.split(".")[0]) >= 4 else "2.12"
        raise ConfigError(
            f"reading Kafka topic {topic!r} with Spark needs Spark's Kafka source, the "
            f"spark-sql-kafka package, which this Spark ({version}) does not have: put it on the "
            f"cluster, e.g. `offline: {{engine: spark, conf: {{spark.jars.packages: "
            f"org.apache.spark:spark-sql-kafka-0-10_{scala}:{version}}}}}` in gnomon.yaml or "
            f"spark-submit --packages org.apache.spark:spark-sql-kafka-0-10_{scala}:{version}"
        ) from None
    return frame.selectExpr(
        "value",
        "CAST(partition AS STRING) AS partition",
        "CAST(offset AS STRING) AS offset",
        "unix_millis(timestamp) AS published_at_ms",
    )


def fence_partition(query_id: str) -> str:
    """The pseudo-partition whose offset is a query's last applied batch id.

    >>> fence_partition("7fc27379-b0b9-45e7-88ef-74b891915ee5")
    'spark:7fc27379b0b9'
    """
    return "spark:" + query_id.replace("-", "")[:12]


class SparkSink:
    """The ``foreachBatch`` function of one query: a batch (``batch_id``) of the source's rows into
    the online store, exactly once.

    The source's frame has ``value`` (an event's JSON, string or binary), and may have
    ``partition`` and ``offset`` (strings: the event's own id, ``partition:offset``),
    ``published_at_ms`` (when the source accepted it; default: now) and ``file`` and
    ``file_block_start`` (events are numbered in that order, then in the order read)."""

    def __init__(
        self,
        applier: RecordApplier,
        group: str,
        folder: Folder | None = None,
        metrics: StreamMetrics | None = None,
    ) -> None:
        self.applier = applier
        self.group = group
        self.folder = folder
        self.metrics = metrics
        self.query_id: str | None = None  # when the batch's thread does not say (set once started)
        self.skipped = 0  # replayed batches, applied before
        self.error: BaseException | None = None
        self._checked = False
        self._lock = threading.Lock()

    @property
    def stats(self) -> WorkerStats:
        return self.applier.stats

    def __call__(self, frame: Any, batch_id: int) -> None:
        try:
            query_id = self._query_id(frame)
            self.apply(_collect(frame), int(batch_id), query_id)
        except BaseException as error:
            self.error = error  # Spark reports it wrapped; the caller raises this one
            raise

    def apply(self, table: pa.Table, batch_id: int, query_id: str) -> bool:
        """Apply one batch; False when it was applied before (a replay), which changes nothing."""
        with self._lock:  # a query runs its batches one after another; be safe anyway
            fence = fence_partition(query_id)
            committed = self.applier.store.offsets(self.group)
            if not self._checked:
                self._check_owner(committed, fence, minted="offset" not in table.column_names)
                self._checked = True
            if fence in committed and offset_order(committed[fence]) >= offset_order(str(batch_id)):
                return self._skip(batch_id)
            records = _records(table, self.applier.topic, fence, batch_id, int(self.applier.clock() * 1000))
            batch = replace(
                self.applier.prepare(records),
                consumer_group=self.group,
                offsets={fence: str(batch_id)},
                fenced=True,
            )
            if not write_batch(self.applier, batch, records, self.folder, self.metrics):
                return self._skip(batch_id)  # applied meanwhile: the fence kept it out
            return True

    def _skip(self, batch_id: int) -> bool:
        self.skipped += 1
        log.info("%s: batch %d was applied before (a replay after a restart); skipped", self.group, batch_id)
        return False

    def _check_owner(self, committed: dict[str, str], fence: str, minted: bool) -> None:
        others = sorted(p for p in committed if p.startswith("spark:") and p != fence)
        if minted and others and fence not in committed:
            old = others[0].removeprefix("spark:")
            raise ConfigError(
                f"consumer group {self.group!r} already holds the batches of another Spark query "
                f"(id {old}…, up to batch {committed[others[0]]}): this checkpoint starts a new "
                "query, which would read the same files again under new event ids and count their "
                f"events twice. Restart with that query's checkpoint (its metadata file holds the id "
                f"{old}…); --group NEW starts over anyway, counting what the old query applied again"
            )

    def _query_id(self, frame: Any) -> str:
        found: str | None = None
        try:
            found = frame.sparkSession.sparkContext.getLocalProperty(QUERY_ID)
        except Exception:  # noqa: BLE001 — e.g. Spark Connect: no SparkContext on the client
            found = None
        found = found or self.query_id
        if not found:
            raise ExecutionError(f"{self.group}: Spark did not say which streaming query runs this batch")
        return found


def _collect(frame: Any) -> pa.Table:
    """A batch's rows on the driver, as Arrow."""
    if hasattr(frame, "toArrow"):  # pyspark >= 4
        return frame.toArrow()
    batches = frame._collect_as_arrow()
    return pa.Table.from_batches(batches) if batches else pa.table({"value": pa.array([], pa.string())})


def _records(table: pa.Table, topic: str, fence: str, batch_id: int, now_ms: int) -> list[Record]:
    """The batch's events as the records the worker's step reads."""
    names = table.column_names
    if all(name in names for name in _ORDER):  # files, then lines: what `gnomon push` would publish
        table = table.sort_by([(name, "ascending") for name in _ORDER])  # stable: lines keep their order
    count = table.num_rows
    payloads = [v if isinstance(v, bytes) else (v or "").encode() for v in table["value"].to_pylist()]
    partitions = table["partition"].to_pylist() if "partition" in names else [fence] * count
    offsets = table["offset"].to_pylist() if "offset" in names else [f"{batch_id}-{n}" for n in range(count)]
    published = table["published_at_ms"].to_pylist() if "published_at_ms" in names else [now_ms] * count
    return [
        Record(topic, str(partition), str(offset), payload, now_ms if at is None else int(at))
        for partition, offset, payload, at in zip(partitions, offsets, payloads, published, strict=True)
    ]


@dataclass
class _Query:
    group_by: str
    sink: SparkSink
    handle: Any = None


def stream_with_spark(
    project: Any,  # a gnomon.Project (an upper layer, so not imported here)
    jobs: Sequence[tuple[str, str]],
    until_caught_up: bool = False,
    *,
    source_dir: str | Path | None = None,
    checkpoint: str | Path | None = None,
    group: str | None = None,
    source: Source | None = None,
    spark: Any = None,
    trigger_interval_s: float = 1.0,
    max_per_trigger: int | None = None,
    metrics: StreamMetrics | None = None,
    stop: Callable[[], bool] | None = None,
    poll_s: float = 0.2,
) -> list[tuple[str, WorkerStats]]:
    """Run one streaming query per (GroupBy, topic) of ``jobs`` until stopped (``stop()`` true, or
    Ctrl-C), or, with ``until_caught_up``, until what is available now is applied (Spark's
    availableNow trigger). Returns each query's counters.

    The source: ``source(spark, topic)`` if given; else ``source_dir`` (JSON-lines files: the
    directory itself when the jobs read one topic, ``<source_dir>/<topic>`` for each of several);
    else ``stream: kafka://…`` of gnomon.yaml. Each query is named after its consumer group
    (``group``, default the embedded worker's) and checkpoints to ``<checkpoint>/<name>``
    (default ``<repo>/spark-checkpoints``)."""
    session = spark if spark is not None else spark_session(project.config.offline)
    topics = sorted({topic for _, topic in jobs})
    source = source or _source(project, session, topics, source_dir, max_per_trigger)
    root = str(checkpoint) if checkpoint is not None else str(project.root / CHECKPOINTS)
    store = project.store()
    queries: list[_Query] = []
    try:
        for group_by, topic in jobs:
            plan = project.plan.group_bys[group_by]
            applier = RecordApplier(
                plan,
                store,
                schema=project.source_schema(group_by, topic),
                topic=topic,
                plan=project.plan,
                left_schema=project._left_schema(group_by, topic),
            )
            config = project.config
            name = _query_name(group, len(jobs), group_by, topic) or consumer_group(plan, topic)
            folder = folder_for(plan, store, config.online_fold_every, config.online_fold_delay_ms)
            sink = SparkSink(applier, name, folder, metrics)
            writer = (
                source(session, topic)
                .writeStream.foreachBatch(sink)
                .queryName(name)
                .option("checkpointLocation", f"{root.rstrip('/')}/{name}")
            )
            if until_caught_up:
                writer = writer.trigger(availableNow=True)
            elif trigger_interval_s > 0:
                writer = writer.trigger(processingTime=f"{trigger_interval_s} seconds")
            query = _Query(group_by, sink)
            queries.append(query)
            query.handle = writer.start()
            sink.query_id = str(query.handle.id)
        _wait(queries, stop, poll_s)
    finally:
        for query in queries:
            if query.handle is not None and query.handle.isActive:
                query.handle.stop()
        store.close()
    return [(query.group_by, query.sink.stats) for query in queries]


def _query_name(group: str | None, jobs: int, group_by: str, topic: str) -> str | None:
    """``group`` for one query; with several, ``group`` and the GroupBy (and topic): names of
    active queries must differ."""
    if group is None or jobs == 1:
        return group
    return f"{group}.{group_by}.{topic}"


def _source(
    project: Any,  # a gnomon.Project (an upper layer, so not imported here)
    spark: Any,
    topics: Sequence[str],
    source_dir: str | Path | None,
    max_per_trigger: int | None,
) -> Source:
    if source_dir is not None:
        base = str(source_dir).rstrip("/")
        directories = {t: base if len(topics) == 1 else f"{base}/{t}" for t in topics}
        local = [d for d in directories.values() if "://" not in d]
        missing = [d for d in local if not Path(d).is_dir()]
        if missing:
            raise ConfigError(
                f"--source-dir: {', '.join(missing)} does not exist"
                + ("" if len(topics) == 1 else f" (one folder per topic: {', '.join(topics)})")
            )
        return lambda session, topic: file_source(session, directories[topic], max_per_trigger)
    url = project.config.stream
    if url.startswith("kafka://"):
        return lambda session, topic: kafka_source(session, url, topic, max_per_trigger)
    raise ConfigError(
        f"the Spark engine reads a folder of JSON-lines files (--source-dir DIR) or Kafka "
        f"(stream: kafka://… in gnomon.yaml); stream {url!r} has no Spark source: pass --source-dir "
        "or use the embedded engine"
    )


def _wait(queries: Sequence[_Query], stop: Callable[[], bool] | None, poll_s: float) -> None:
    """Until every query has ended (or ``stop()``). A failed query raises what its sink raised (a
    Gnomon error stays one), else Spark's error as an `ExecutionError`."""
    try:
        while any(query.handle.isActive for query in queries):
            if stop is not None and stop():
                return
            for query in queries:
                query.handle.awaitTermination(poll_s / len(queries))  # raises once the query failed
        for query in queries:
            query.handle.awaitTermination()
    except Exception as error:
        raised = next((query.sink.error for query in queries if query.sink.error is not None), None)
        if raised is not None:
            raise raised from None
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ExecutionError(f"a Spark streaming query failed: {first}") from error
