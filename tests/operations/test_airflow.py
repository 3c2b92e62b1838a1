"""`gnomon airflow export` (SPEC §7), loaded and run by real Apache Airflow.

Airflow lives in a venv of its own (``.venv-airflow``, made by scripts/test.sh, or
``$GNOMON_AIRFLOW_PYTHON``), which has no Gnomon: that the DAG files parse and run there shows they
import nothing from it. One AIRFLOW_HOME (SQLite metadata database) serves the whole module.

The ops repo is test_graph's (a StagingQuery, Joins, a chained GroupBy, consistency checks) plus
``extra.py``: a StagingQuery over the first one's output (an edge inside a DAG), a GroupBy no Join
uses, and a second Join over ``ops.prices`` (a GroupBy two Joins share).
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from tests.operations.test_graph import build_repo

import gnomon
from gnomon.cli import main
from gnomon.orchestration.airflow import MARKER, ExportOptions, export_dags, plan_dags
from gnomon.orchestration.runner import project_graph
from gnomon.orchestration.sensors import missing_partitions
from gnomon.scaffold import LAST_DS, create_example_repo

ROOT = Path(__file__).resolve().parents[2]
GNOMON_BIN = str(Path(sys.executable).parent / "gnomon")

EXTRA_SHARED = """
from gnomon import Aggregation, EventSource, GroupBy, Join, JoinPart, Operation, Query, StagingQuery
from features.ops import prices

top_items = StagingQuery(
    name="ops.top_items",
    query="SELECT item, sum(clicks) AS clicks, max(ts) AS ts, ds FROM features.ops_daily_clicks "
          "WHERE ds BETWEEN '{{ start_date }}' AND '{{ end_date }}' GROUP BY item, ds",
    start_partition="2026-01-01")
priced_visits = Join(
    name="ops.priced_visits",
    left=EventSource(table="ev.visits", query=Query(selects={"user": "user", "item": "item"})),
    right_parts=[JoinPart(prices)])
"""
STANDALONE = """
click_counts = GroupBy(
    name="ops.click_counts",
    sources=[EventSource(table="ev.clicks", query=Query(selects={"item": "item"}))],
    keys=["item"], aggregations=[Aggregation("item", Operation.COUNT, windows=["1d"])], online=True)
"""
EXTRA = EXTRA_SHARED + STANDALONE

# dag id -> task id -> its upstream task ids: every task of the graph in exactly one DAG; a need
# across DAGs is a sensor on the needed output partition (wait_for.features.*)
EXPECTED = {
    "ops.staging_queries": {
        "wait_for.ev.clicks": [],
        "staging_query.ops.daily_clicks": ["wait_for.ev.clicks"],
        "staging_query.ops.top_items": ["staging_query.ops.daily_clicks"],
    },
    "ops.join.ops.priced_visits": {  # owns ops.prices: the first Join by name that uses it
        "wait_for.dim.prices.ds": [],
        "wait_for.dim.prices.ds-1": [],
        "wait_for.ev.visits": [],
        "group_by_backfill.ops.prices": ["wait_for.dim.prices.ds"],
        "join_backfill.ops.priced_visits": ["wait_for.dim.prices.ds-1", "wait_for.ev.visits"],
    },
    "ops.join.ops.sessions": {
        "wait_for.features.ops_visits": [],
        "wait_for.ev.sessions": [],
        "chained.ops.user_clicks": ["wait_for.features.ops_visits"],
        "join_backfill.ops.sessions": ["wait_for.ev.sessions", "wait_for.features.ops_visits"],
    },
    "ops.join.ops.visits": {
        "wait_for.features.ops_daily_clicks": [],
        "wait_for.ev.visits": [],
        "wait_for.dim.prices": [],
        "group_by_backfill.ops.item_clicks": ["wait_for.features.ops_daily_clicks"],
        "upload.ops.item_clicks": ["wait_for.features.ops_daily_clicks"],
        "join_backfill.ops.visits": [
            "wait_for.dim.prices",
            "wait_for.ev.visits",
            "wait_for.features.ops_daily_clicks",
        ],
    },
    "ops.group_bys": {
        "wait_for.ev.clicks": [],
        "group_by_backfill.ops.click_counts": ["wait_for.ev.clicks"],
        "upload.ops.click_counts": ["wait_for.ev.clicks"],
    },
    "ops.consistency": {
        "wait_for.features.ops_visits": [],
        "consistency.ops.visits": ["wait_for.features.ops_visits"],
    },
}

# days around the ops repo's data (2025-12-30 .. 2026-01-03) on which every sensor is evaluated
SENSOR_DAYS = ["2025-12-29", "2025-12-30", "2025-12-31", "2026-01-01", "2026-01-03", "2026-01-04"]

# Runs inside the Airflow venv: the DagBag of a folder, each DAG's tasks, and each sensor's answer
# (its own python_callable with its op_kwargs) on each of the given days.
HARNESS = """
import json, sys

try:
    from airflow.dag_processing.dagbag import DagBag
except ImportError:  # Airflow 2
    from airflow.models.dagbag import DagBag

request = json.loads(open(sys.argv[1]).read())
bag = DagBag(dag_folder=request["folder"])
found = {"import_errors": {str(k): str(v) for k, v in bag.import_errors.items()}, "dags": {}}
for dag_id, dag in bag.dags.items():
    tasks = {}
    for task in dag.tasks:
        tasks[task.task_id] = {
            "type": type(task).__name__,
            "upstream": sorted(task.upstream_task_ids),
            "bash_command": getattr(task, "bash_command", None),
            "landed": {
                ds: bool(task.python_callable(**task.op_kwargs, ds=ds)) for ds in request["days"]
            } if type(task).__name__ == "PythonSensor" else None,
        }
    found["dags"][dag_id] = {
        "catchup": dag.catchup,
        "start_date": dag.start_date.date().isoformat(),
        "timetable": type(dag.timetable).__name__,
        "tasks": tasks,
    }
open(sys.argv[2], "w").write(json.dumps(found))
"""


def _airflow_python() -> str:
    """The Airflow venv's interpreter; the tests skip (locally) only when that venv is missing."""
    configured = os.environ.get("GNOMON_AIRFLOW_PYTHON")
    if configured:
        return configured
    local = ROOT / ".venv-airflow" / "bin" / "python"
    if local.exists():
        return str(local)
    reason = (
        "Apache Airflow is not installed: scripts/test.sh makes .venv-airflow (or set GNOMON_AIRFLOW_PYTHON)"
    )
    if os.environ.get("CI"):
        pytest.fail(reason)
    pytest.skip(reason)


class Airflow:
    """Runs Airflow commands and the harness in the Airflow venv with one private AIRFLOW_HOME."""

    def __init__(self, python: str, home: Path) -> None:
        self.python, self.home = python, home
        self.migrated = False

    def env(self, dags_folder: Path) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "PYTHON", "VIRTUAL_ENV"))}
        env.update(
            AIRFLOW_HOME=str(self.home),
            AIRFLOW__CORE__DAGS_FOLDER=str(dags_folder),
            AIRFLOW__CORE__LOAD_EXAMPLES="False",
        )
        return env

    def run(
        self, args: list[str], dags_folder: Path, timeout: float = 300
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            args, env=self.env(dags_folder), capture_output=True, text=True, timeout=timeout, check=False
        )

    def command(self, *args: str, dags_folder: Path) -> subprocess.CompletedProcess[str]:
        """``airflow ARGS`` (the venv's own entry point), migrating the database first, once."""
        airflow = str(Path(self.python).parent / "airflow")
        if not self.migrated:
            done = self.run([airflow, "db", "migrate"], dags_folder)
            assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
            self.migrated = True
        return self.run([airflow, *args], dags_folder)

    def load(self, folder: Path, days: list[str]) -> dict[str, Any]:
        """The harness's view of the DAG files in ``folder``."""
        script, request, answer = (
            self.home / "harness.py",
            self.home / "request.json",
            self.home / "dagbag.json",
        )
        script.write_text(HARNESS)
        request.write_text(json.dumps({"folder": str(folder), "days": days}))
        done = self.run([self.python, str(script), str(request), str(answer)], folder)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        result: dict[str, Any] = json.loads(answer.read_text())
        return result


@pytest.fixture(scope="module")
def airflow(tmp_path_factory: pytest.TempPathFactory) -> Airflow:
    return Airflow(_airflow_python(), tmp_path_factory.mktemp("airflow_home"))


def _ops_repo(root: Path) -> Path:
    repo = build_repo(root, config="serving: {log: {sample: 0.5}}\n")
    (repo / "features" / "extra.py").write_text(EXTRA)
    return repo


def _imports(path: Path) -> set[str]:
    """The top-level modules a file imports."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module.split(".")[0])
    return names


def test_every_task_of_the_graph_is_in_exactly_one_dag(tmp_path: Path) -> None:
    project = gnomon.Project(_ops_repo(tmp_path / "repo"))
    tasks = project_graph(project)
    parts = {name: [p.group_by for p in join.parts] for name, join in project.plan.joins.items()}
    dags = plan_dags(tasks, parts, "ops")
    placed = [item.task.id for dag in dags for item in dag.tasks]
    assert sorted(placed) == sorted(task.id for task in tasks)
    assert [dag.dag_id for dag in dags] == [
        "ops.staging_queries",
        "ops.join.ops.priced_visits",
        "ops.join.ops.sessions",
        "ops.join.ops.visits",
        "ops.group_bys",
        "ops.consistency",
    ]


def test_airflow_loads_the_dags_with_the_expected_tasks_and_sensors(tmp_path: Path, airflow: Airflow) -> None:
    repo = _ops_repo(tmp_path / "repo")
    out = tmp_path / "dags"
    options = ExportOptions(GNOMON_BIN, sensor_timeout_s=60, poke_interval_s=5, retries=0)
    written = export_dags(gnomon.Project(repo), out, options)
    assert all("gnomon" not in _imports(path) for path in written)

    found = airflow.load(out, SENSOR_DAYS)

    assert found["import_errors"] == {}
    assert {
        dag_id: {t: v["upstream"] for t, v in dag["tasks"].items()} for dag_id, dag in found["dags"].items()
    } == {dag_id: {t: sorted(up) for t, up in tasks.items()} for dag_id, tasks in EXPECTED.items()}
    for dag in found["dags"].values():
        assert (dag["catchup"], dag["timetable"]) == (False, "CronDataIntervalTimetable")
        for task_id, task in dag["tasks"].items():
            assert task["type"] == ("PythonSensor" if task_id.startswith("wait_for.") else "BashOperator")
    # start_date: the StagingQueries' start_partition; elsewhere the first partition of the inputs
    assert found["dags"]["ops.staging_queries"]["start_date"] == "2026-01-01"
    assert found["dags"]["ops.join.ops.visits"]["start_date"] == "2025-12-30"
    commands = {t: v["bash_command"] for t, v in found["dags"]["ops.join.ops.visits"]["tasks"].items()}
    assert commands["join_backfill.ops.visits"] == (
        f"{GNOMON_BIN} backfill ops.visits --start-ds {{{{ ds }}}} --end-ds {{{{ ds }}}} --repo {repo.resolve()}"
    )
    assert (
        commands["upload.ops.item_clicks"]
        == f"{GNOMON_BIN} upload ops.item_clicks --ds {{{{ ds }}}} --repo {repo.resolve()}"
    )
    consistency = found["dags"]["ops.consistency"]["tasks"]["consistency.ops.visits"]["bash_command"]
    assert consistency == f"{GNOMON_BIN} consistency ops.visits --ds {{{{ ds }}}} --repo {repo.resolve()}"


def test_the_sensors_in_the_files_wait_as_gnomon_run_does(tmp_path: Path, airflow: Airflow) -> None:
    """Each sensor's inline function, run by Airflow, answers as `gnomon run`'s rule on every day."""
    project = gnomon.Project(_ops_repo(tmp_path / "repo"))
    out = tmp_path / "dags"
    export_dags(project, out, ExportOptions(GNOMON_BIN))
    found = airflow.load(out, SENSOR_DAYS)

    parts = {name: [p.group_by for p in join.parts] for name, join in project.plan.joins.items()}
    for dag in plan_dags(project_graph(project), parts, "ops"):
        for item in dag.sensors:
            have = project.warehouse.partitions(item.sensor.table)
            expected = {
                ds: bool(item.due_from and ds < item.due_from)
                or not missing_partitions(item.sensor, ds, have)
                for ds in SENSOR_DAYS
            }
            assert found["dags"][dag.dag_id]["tasks"][item.task_id]["landed"] == expected, item
    landed = {
        (dag_id, task_id): task["landed"]
        for dag_id, dag in found["dags"].items()
        for task_id, task in dag["tasks"].items()
        if task["landed"] is not None
    }
    visits = landed[("ops.join.ops.visits", "wait_for.ev.visits")]
    assert [visits[d] for d in ("2025-12-29", "2026-01-03", "2026-01-04")] == [True, True, False]
    # dim.prices of ds-1: on the first day, ds-1 is before the table's history: nothing to wait for
    assert landed[("ops.join.ops.visits", "wait_for.dim.prices")]["2025-12-30"] is True
    # the StagingQuery's output starts on 2026-01-01 (start_partition): no wait before; none written yet
    clicks = landed[("ops.join.ops.visits", "wait_for.features.ops_daily_clicks")]
    assert (clicks["2025-12-31"], clicks["2026-01-01"]) == (True, False)
    # a table without any partition: the Join's output in the sessions' DAG waits every day
    assert set(landed[("ops.join.ops.sessions", "wait_for.features.ops_visits")].values()) == {False}


def test_a_reexport_replaces_its_own_files_and_removes_those_of_gone_dags(tmp_path: Path) -> None:
    repo = _ops_repo(tmp_path / "repo")
    out = tmp_path / "dags"
    out.mkdir()
    (out / "mine.py").write_text("# a DAG of someone else\n")
    (out / "other_repo.py").write_text(f"{MARKER}/some/other/repo\n")
    first = export_dags(gnomon.Project(repo), out, ExportOptions(GNOMON_BIN))
    assert out / "ops_group_bys.py" in first

    (repo / "features" / "extra.py").write_text(EXTRA_SHARED)  # the GroupBy no Join uses is gone
    second = export_dags(gnomon.Project(repo), out, ExportOptions(GNOMON_BIN))

    assert out / "ops_group_bys.py" not in second
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["mine.py", "other_repo.py", *(p.name for p in second)]
    )


def test_dags_test_of_a_join_dag_computes_its_partition_for_the_execution_date(
    tmp_path: Path, airflow: Airflow
) -> None:
    repo = create_example_repo(tmp_path / "quickstart")
    out = tmp_path / "dags"
    result = CliRunner().invoke(
        main,
        ["airflow", "export", str(out), "--repo", str(repo), "--gnomon-bin", GNOMON_BIN, "--retries", "0"],
    )
    assert result.exit_code == 0, result.output
    assert f"wrote {out / 'quickstart_join_user_item_training.py'}" in result.output
    output = repo / "warehouse" / "features" / "user_item_training" / f"ds={LAST_DS}"
    assert not output.exists()

    done = airflow.command("dags", "test", "quickstart.join.user_item_training", LAST_DS, dags_folder=out)

    assert done.returncode == 0, done.stdout[-5000:] + done.stderr[-5000:]
    # the execution date, not the wall clock, is the day computed: the Join's and its GroupBys' partitions
    assert sorted(p.name for p in output.parent.iterdir() if not p.name.startswith(".")) == [f"ds={LAST_DS}"]
    assert any(output.glob("*.parquet"))
    for group_by in ("user_item_views", "item_ratings"):
        assert (repo / "warehouse" / "features" / group_by / f"ds={LAST_DS}").is_dir()
    table = gnomon.Project(repo).warehouse.read_table("features.user_item_training", LAST_DS, LAST_DS)
    assert table.num_rows > 0
