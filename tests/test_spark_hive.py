"""The Spark engine with a Hive catalog (Spark's embedded Derby metastore): warehouse tables become
Hive-style external Parquet tables partitioned by ds, a StagingQuery reads them by name through the
catalog, and every partition a backfill writes is registered. Runs in a subprocess, because a
SparkSession's catalog is fixed when the process's session is created."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pyarrow as pa

import gnomon

DAY = 86_400_000
JAN1 = 1767225600000  # 2026-01-01 00:00 UTC

SCRIPT = textwrap.dedent(
    """
    import json, sys
    import gnomon
    from gnomon import Aggregation, EventSource, GroupBy, Operation, Query, StagingQuery
    from gnomon.offline.engines.spark import spark_session

    clicks = EventSource(table="events.clicks", query=Query(selects={"user": "user_id"}, time_column="ts"))
    objects = {
        "daily": StagingQuery(
            name="daily",
            query="SELECT user_id, count(*) AS clicks, ds FROM events.clicks "
            "WHERE ds BETWEEN '{{ start_date }}' AND '{{ end_date }}' GROUP BY user_id, ds",
            start_partition="2026-01-01",
        ),
        "user_clicks": GroupBy(
            name="user_clicks", sources=[clicks], keys=["user"],
            aggregations=[Aggregation("user", Operation.COUNT, windows=["2d"])],
        ),
    }
    project = gnomon.Project(sys.argv[1], objects)
    project.backfill("daily", "2026-01-01", "2026-01-03")
    project.backfill("user_clicks", "2026-01-02", "2026-01-03")
    spark = spark_session(project.config.offline)
    print("@@" + json.dumps({
        "catalog": spark.conf.get("spark.sql.catalogImplementation"),
        "databases": sorted(r[0] for r in spark.sql("SHOW DATABASES").collect()),
        "partitions": [r[0] for r in spark.sql("SHOW PARTITIONS features.user_clicks").collect()],
        "daily": [list(r) for r in spark.sql(
            "SELECT ds, user_id, clicks FROM features.daily ORDER BY ds, user_id").collect()],
        "clicks_partitions": [r[0] for r in spark.sql("SHOW PARTITIONS events.clicks").collect()],
    }))
    """
)


def test_hive_catalog_tables_partitions_and_staging_query(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    meta = tmp_path / "metastore"
    (repo / "gnomon.yaml").write_text(
        "project: hive\noffline:\n  engine: spark\n  master: 'local[1]'\n  conf:\n"
        "    spark.sql.catalogImplementation: hive\n"
        f"    spark.sql.warehouse.dir: '{tmp_path / 'spark-warehouse'}'\n"
        f"    spark.hadoop.javax.jdo.option.ConnectionURL: 'jdbc:derby:;databaseName={meta};create=true'\n"
        f"    spark.driver.extraJavaOptions: '-Dderby.system.home={tmp_path}'\n"
        "    spark.sql.shuffle.partitions: 2\n"
    )
    warehouse = gnomon.Project(str(repo)).warehouse
    for day in range(3):
        warehouse.write_partition(
            "events.clicks",
            f"2026-01-0{day + 1}",
            pa.table({"user_id": ["a", "b", "a"][: day + 1], "ts": [JAN1 + day * DAY + 5] * (day + 1)}),
        )
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(repo)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=dict(os.environ, PYSPARK_PYTHON=sys.executable),
        timeout=600,
    )
    lines = [line for line in result.stdout.splitlines() if line.startswith("@@")]
    assert result.returncode == 0 and lines, result.stderr[-3000:]
    out = json.loads(lines[-1][2:])
    assert out["catalog"] == "hive"
    assert {"events", "features"} <= set(out["databases"])
    assert out["partitions"] == ["ds=2026-01-02", "ds=2026-01-03"]
    assert out["clicks_partitions"] == ["ds=2026-01-01", "ds=2026-01-02", "ds=2026-01-03"]
    assert out["daily"] == [
        ["2026-01-01", "a", 1],
        ["2026-01-02", "a", 1],
        ["2026-01-02", "b", 1],
        ["2026-01-03", "a", 2],
        ["2026-01-03", "b", 1],
    ]
