"""`gnomon run` and `gnomon status` (SPEC §7): order, sensors, retries, idempotence, interruption.

Every test runs the ops repo of test_graph.py (a StagingQuery, GroupBys, an upload, two Joins and a
chained GroupBy) on a few days of small data; the whole graph of a day takes well under a second.
"""

from __future__ import annotations

import json
import shutil
import signal
import sqlite3
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

import gnomon
from gnomon.cli import main
from gnomon.errors import DefinitionError, ExecutionError, PartitionTimeoutError
from gnomon.orchestration.history import History
from gnomon.orchestration.runner import DailyRunner, RunOptions, _repo_lock, project_graph
from online.helpers import gnomon_command, subprocess_env
from operations.test_graph import DAYS, SCHEMAS, build_repo, land

FAST = RunOptions(sensor_timeout_s=0, poll_interval_s=0.05, retries=0, retry_delay_s=0)
DAY1, DAY2, DAY3 = "2026-01-01", "2026-01-02", "2026-01-03"
ORDER = [
    "staging_query/ops.daily_clicks",
    "group_by_backfill/ops.item_clicks",
    "group_by_backfill/ops.prices",
    "upload/ops.item_clicks",
    "join_backfill/ops.visits",
    "join_backfill/ops.sessions",
    "chained/ops.user_clicks",
]


def runner(
    repo: Path, options: RunOptions = FAST, names: list[str] | None = None, **kwargs: Any
) -> DailyRunner:
    return DailyRunner(gnomon.Project(repo), names, options, **kwargs)


def outputs(repo: Path) -> dict[str, list[str]]:
    """Every output table's rows (as sorted JSON lines), per table and partition."""
    warehouse = gnomon.Project(repo).warehouse
    found = {}
    for table in warehouse.tables():
        if table.startswith("features."):
            for ds in warehouse.partitions(table):
                rows = warehouse.read_table(table, ds, ds).to_pylist()
                found[f"{table}/{ds}"] = sorted(json.dumps(r, sort_keys=True, default=str) for r in rows)
    return found


def mtimes(repo: Path) -> dict[str, int]:
    """Each output partition file's modification time (not the hidden statistics beside them)."""
    return {str(p): p.stat().st_mtime_ns for p in (repo / "warehouse" / "features").glob("*/ds=*/*.parquet")}


def latest(repo: Path, ds: str | None = None) -> dict[tuple[str, str], str]:
    """(task, ds) -> the latest recorded status."""
    history = History.for_repo(repo)
    try:
        return {(a.task, a.ds): a.shown_status for a in history.latest(ds, days=10)}
    finally:
        history.close()


@pytest.fixture()
def repo(tmp_path: Path) -> Path:
    return build_repo(tmp_path / "repo")


def test_a_day_runs_every_task_after_its_inputs_and_a_rerun_skips_everything(repo: Path) -> None:
    outcomes = runner(repo).run([DAY1, DAY2])
    assert [(o.ds, o.task) for o in outcomes] == [(d, t) for d in (DAY1, DAY2) for t in ORDER]
    assert {o.status for o in outcomes} == {"success"}
    assert outcomes[0].outputs == [f"features.ops_daily_clicks/ds={DAY1}"]
    assert outcomes[3].outputs == ["online ops.item_clicks: 3 keys"]
    first, before = outputs(repo), mtimes(repo)
    assert f"features.ops_sessions/{DAY2}" in first and f"features.ops_user_clicks/{DAY2}" in first

    again = runner(repo).run([DAY1, DAY2])
    assert {o.status for o in again} == {"skipped"}
    assert all(o.detail.startswith("done:") for o in again)
    assert mtimes(repo) == before and outputs(repo) == first  # no partition rewritten
    assert set(latest(repo).values()) == {"skipped"}


def test_a_changed_definition_recomputes_that_day_and_what_reads_it(repo: Path) -> None:
    runner(repo).run([DAY1, DAY2])
    before = mtimes(repo)
    source = repo / "features" / "ops.py"
    source.write_text(source.read_text().replace("Operation.MAX", "Operation.MIN"))
    outcomes = {o.task: o for o in runner(repo).run([DAY2])}
    recomputed = sorted(task for task, o in outcomes.items() if o.status == "success")
    assert recomputed == [
        "chained/ops.user_clicks",
        "group_by_backfill/ops.prices",
        "join_backfill/ops.sessions",
        "join_backfill/ops.visits",
    ]
    changed = {path for path, mtime in mtimes(repo).items() if before.get(path) != mtime}
    assert changed and all(f"ds={DAY2}" in path for path in changed)
    assert "price_min" in pq.read_schema(next(p for p in changed if "ops_prices" in p)).names


def test_a_sensor_waits_until_the_partition_lands(tmp_path: Path) -> None:
    repo = build_repo(tmp_path / "repo", days=[d for d in DAYS if d != DAY3])
    for table in SCHEMAS:
        if table != "ev.sessions":
            land(repo, table, DAY3)
    seen: list[tuple[str, str, str]] = []
    lander = threading.Timer(1.0, land, (repo, "ev.sessions", DAY3))
    lander.start()
    options = RunOptions(sensor_timeout_s=60, poll_interval_s=0.1, retries=0)
    try:
        outcomes = runner(
            repo, options, report=lambda ds, task, status, detail: seen.append((task, status, detail))
        )
        result = {o.task: o.status for o in outcomes.run([DAY3])}
    finally:
        lander.cancel()
    assert set(result.values()) == {"success"}
    waits = [(task, detail) for task, status, detail in seen if status == "waiting"]
    assert waits == [("join_backfill/ops.sessions", f"waiting for ev.sessions ds={DAY3} (up to 60 s)")]
    # the waiting row became the first attempt, and succeeded
    history = History.for_repo(repo)
    (attempt,) = history.attempts("join_backfill/ops.sessions", DAY3)
    assert (attempt.status, attempt.attempt) == ("success", 1)


def test_a_partition_that_never_lands_fails_the_run_naming_table_and_ds(tmp_path: Path) -> None:
    repo = build_repo(tmp_path / "repo", days=[d for d in DAYS if d != DAY3])
    for table in SCHEMAS:
        if table != "ev.sessions":
            land(repo, table, DAY3)
    options = RunOptions(sensor_timeout_s=0.3, poll_interval_s=0.1, retries=0)
    with pytest.raises(PartitionTimeoutError) as raised:
        runner(repo, options).run([DAY3])
    assert (raised.value.table, raised.value.ds, raised.value.task) == (
        "ev.sessions",
        DAY3,
        "join_backfill/ops.sessions",
    )
    statuses = latest(repo, DAY3)
    assert statuses.pop(("join_backfill/ops.sessions", DAY3)) == "failed"
    assert set(statuses.values()) == {"success"}  # independent work went ahead

    result = CliRunner().invoke(main, ["run", "--ds", DAY3, "--sensor-timeout", "0", "--repo", str(repo)])
    assert result.exit_code == 1
    assert "table 'ev.sessions' has no partition ds=2026-01-03" in result.output
    shown = CliRunner().invoke(main, ["status", "--ds", DAY3, "--repo", str(repo)])
    assert "join_backfill/ops.sessions" in shown.output and "failed:" in shown.output

    land(repo, "ev.sessions", DAY3)  # once it lands, a rerun does only what is left
    rerun = {o.task: o.status for o in runner(repo).run([DAY3])}
    assert rerun.pop("join_backfill/ops.sessions") == "success"
    assert set(rerun.values()) == {"skipped"}


def test_a_failure_is_retried_with_backoff_and_a_definition_error_is_not(
    repo: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = DailyRunner.perform
    calls: dict[str, int] = {}

    def flaky(self: DailyRunner, task: Any, ds: str, force: bool) -> list[str]:
        calls[task.id] = calls.get(task.id, 0) + 1
        if task.id == "join_backfill/ops.visits" and calls[task.id] == 1:
            raise OSError("the warehouse volume is busy")
        if task.id == "group_by_backfill/ops.prices":
            raise DefinitionError("bad", obj="ops.prices", fix="fix it")
        return real(self, task, ds, force)

    monkeypatch.setattr(DailyRunner, "perform", flaky)
    options = RunOptions(sensor_timeout_s=0, retries=2, retry_delay_s=0.01)
    with pytest.raises(
        ExecutionError, match=r"1 task\(s\) failed on ds=2026-01-01: group_by_backfill/ops.prices"
    ):
        runner(repo, options).run([DAY1])
    history = History.for_repo(repo)
    visits = history.attempts("join_backfill/ops.visits", DAY1)
    assert [(a.attempt, a.status) for a in visits] == [(1, "failed"), (2, "success")]
    assert visits[0].detail == "OSError: the warehouse volume is busy"
    assert [a.status for a in history.attempts("group_by_backfill/ops.prices", DAY1)] == ["failed"]
    assert calls["group_by_backfill/ops.prices"] == 1


def test_what_needs_a_failed_task_is_not_run_and_the_next_day_waits(
    repo: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = DailyRunner.perform

    def broken(self: DailyRunner, task: Any, ds: str, force: bool) -> list[str]:
        if task.id == "join_backfill/ops.visits":
            raise ExecutionError("the Join failed")
        return real(self, task, ds, force)

    monkeypatch.setattr(DailyRunner, "perform", broken)
    with pytest.raises(ExecutionError, match=r"\(2 more not run because of them\): join_backfill/ops.visits"):
        runner(repo).run([DAY1, DAY2])
    statuses = latest(repo)
    assert statuses[("join_backfill/ops.sessions", DAY1)] == "failed"
    assert statuses[("chained/ops.user_clicks", DAY1)] == "failed"
    assert not any(ds == DAY2 for _, ds in statuses)  # a failed day stops the run
    history = History.for_repo(repo)
    (unrun,) = history.attempts("chained/ops.user_clicks", DAY1)
    assert unrun.detail == "not run: it needs join_backfill/ops.visits, which failed"


def test_names_run_what_they_need_and_nothing_else(repo: Path) -> None:
    outcomes = runner(repo, names=["ops.item_clicks"]).run([DAY1])
    assert [o.task for o in outcomes] == ORDER[:2] + ORDER[3:4]
    assert not gnomon.Project(repo).warehouse.partitions("features.ops_visits")


def test_concurrent_tasks_stay_within_the_limit_and_compute_the_same(tmp_path: Path) -> None:
    sequential, parallel = build_repo(tmp_path / "a"), build_repo(tmp_path / "b")
    runner(sequential).run([DAY1, DAY2])
    active, peak, lock = [0], [0], threading.Lock()
    parallel_runner = runner(parallel, RunOptions(sensor_timeout_s=0, retries=0, concurrency=2))
    real = parallel_runner.perform

    def counted(task: Any, ds: str, force: bool) -> list[str]:
        with lock:
            active[0] += 1
            peak[0] = max(peak[0], active[0])
        try:
            return real(task, ds, force)
        finally:
            with lock:
                active[0] -= 1

    parallel_runner.perform = counted  # type: ignore[method-assign]
    parallel_runner.run([DAY1, DAY2])
    assert 1 <= peak[0] <= 2
    assert outputs(parallel) == outputs(sequential)


def test_a_second_run_in_the_same_repo_is_refused(repo: Path) -> None:
    with _repo_lock(repo), pytest.raises(ExecutionError, match="another `gnomon run`"):
        runner(repo).run([DAY1])


def test_consistency_checks_are_scheduled_when_fetches_are_logged(tmp_path: Path) -> None:
    plain = build_repo(tmp_path / "plain", days=[])
    logged = build_repo(tmp_path / "logged", days=[], config="serving: {log: {sample: 0.1}}\n")
    assert not [t for t in project_graph(gnomon.Project(plain)) if t.kind == "consistency"]
    checks = [t.id for t in project_graph(gnomon.Project(logged)) if t.kind == "consistency"]
    assert checks == ["consistency/ops.visits"]


def test_status_prints_the_latest_attempt_per_task_and_day(repo: Path) -> None:
    cli = CliRunner()
    assert "no runs recorded yet" in cli.invoke(main, ["status", "--repo", str(repo)]).output
    ran = cli.invoke(main, ["run", "--ds", DAY1, "--sensor-timeout", "0", "--repo", str(repo)])
    assert ran.exit_code == 0, ran.output
    assert f"{DAY1}  join_backfill/ops.visits  success  features.ops_visits/ds={DAY1}" in ran.output
    cli.invoke(main, ["run", "ops.prices", "--ds", DAY1, "--repo", str(repo)])
    shown = cli.invoke(main, ["status", "--repo", str(repo)])
    assert shown.exit_code == 0
    lines = shown.output.splitlines()
    assert lines[0].split() == ["DS", "TASK", "STATUS", "TRY", "STARTED", "(UTC)", "TOOK", "DETAIL"]
    rows = {line.split()[1]: line.split()[2] for line in lines[1:]}
    assert rows == {task: "success" for task in ORDER} | {"group_by_backfill/ops.prices": "skipped"}
    as_json = json.loads(cli.invoke(main, ["status", "--ds", DAY1, "--json", "--repo", str(repo)]).output)
    assert {r["task"]: r["status"] for r in as_json} == rows
    assert cli.invoke(main, ["run", "--ds", DAY1, "--start-ds", DAY1, "--repo", str(repo)]).exit_code == 2


def test_a_run_killed_midway_resumes_to_the_same_outputs_without_duplicates(tmp_path: Path) -> None:
    killed = build_repo(tmp_path / "killed")
    reference = tmp_path / "reference"
    shutil.copytree(killed, reference)
    runner(reference).run([DAY1, DAY2, DAY3])

    args = ["run", "--start-ds", DAY1, "--end-ds", DAY3, "--sensor-timeout", "0", "--repo", str(killed)]
    process = subprocess.Popen(
        gnomon_command(*args), env=subprocess_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    database = killed / ".gnomon" / "runs.db"
    deadline = time.monotonic() + 60
    try:
        while time.monotonic() < deadline and process.poll() is None:
            if database.exists() and _count(database, "success") >= 3 and _count(database, "running") >= 1:
                break
            time.sleep(0.01)
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()
    assert process.returncode == -signal.SIGKILL  # killed mid-way, not finished
    assert 3 <= _count(database, "success") < 3 * len(ORDER)

    resumed = subprocess.run(gnomon_command(*args), env=subprocess_env(), capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    assert outputs(killed) == outputs(reference)
    with sqlite3.connect(database) as db:
        twice = db.execute(
            "SELECT task, ds, count(*) FROM attempts WHERE status = 'success' GROUP BY task, ds HAVING count(*) > 1"
        ).fetchall()
    assert twice == []  # no task's work was done twice
    assert set(latest(killed).values()) <= {"success", "skipped"}


def _count(database: Path, status: str) -> int:
    with sqlite3.connect(database, timeout=5) as db:
        try:
            return int(db.execute("SELECT count(*) FROM attempts WHERE status = ?", (status,)).fetchone()[0])
        except sqlite3.OperationalError:  # the schema is not there yet
            return 0
