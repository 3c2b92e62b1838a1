"""`gnomon stream --all` (SPEC §7): one worker process per online streamed GroupBy, restarted with
backoff when it dies, reported on /health, /metrics and .gnomon/streams.json, stopped by SIGTERM.

The quickstart repo (`gnomon init`) on the embedded broker: `user_item_views` streams `user_views`,
`item_ratings` streams `ratings_mutations`.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
from click.testing import CliRunner

from gnomon import Client, Project
from gnomon.cli import main
from gnomon.errors import AlreadySupervisedError
from gnomon.orchestration.supervisor import STATE_FILE, Supervisor
from gnomon.scaffold import LAST_DS, create_example_repo
from gnomon.timeline import ds_to_ms
from online.helpers import free_port, gnomon_command, run_gnomon, subprocess_env

T = TypeVar("T")
BATCH_END = ds_to_ms(LAST_DS) + 86_400_000  # the upload of LAST_DS holds the state as of here
Q = BATCH_END + 2 * 3_600_000  # every pushed event is before q and inside the 5-hour window
USERS = ["sup_a", "sup_b", "sup_c"]


def wait_for(read: Callable[[], T], done: Callable[[T], bool], what: str, timeout_s: float = 20) -> T:
    """``read()`` until ``done`` holds (fails naming ``what`` and the last value after ``timeout_s``)."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            value = read()
            if done(value):
                return value
        except httpx.TransportError as error:
            value = error  # type: ignore[assignment]
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: still {value!r} after {timeout_s} s")
        time.sleep(0.1)


def by_name(health: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {worker["group_by"]: worker for worker in health["workers"]}


def views(first: int, count: int) -> list[dict[str, Any]]:
    """``count`` item views of the USERS on item sup_i, numbered from ``first`` (one ms apart)."""
    return [
        {"user_id": USERS[n % 3], "item_id": "sup_i", "activity_type": "item_view", "ts": BATCH_END + n}
        for n in range(first, first + count)
    ]


def rating(rating_id: int, stars: int) -> dict[str, Any]:
    """A new rating of item sup_item (an insert: one after-image row) after the batch end."""
    at = BATCH_END + 60_000 * rating_id
    return {
        "rating_id": rating_id,
        "user_id": f"rater{rating_id}",
        "item_id": "sup_item",
        "rating": stars,
        "ts": at,
        "mutation_ts": at,
        "is_before": False,
    }


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """The quickstart repo with both online GroupBys uploaded as of LAST_DS."""
    repo = create_example_repo(tmp_path / "repo")
    Project(repo).upload("user_item_training", LAST_DS)
    return repo


def test_a_killed_worker_is_restarted_and_no_event_is_lost_or_applied_twice(
    repo: Path, tmp_path: Path
) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = (tmp_path / "supervisor.log").open("w")
    command = [
        "stream",
        "--all",
        "--metrics-port",
        str(port),
        "--backoff-initial",
        "0.5",
        "--repo",
        str(repo),
    ]
    supervisor = subprocess.Popen(gnomon_command(*command), env=subprocess_env(), stdout=log, stderr=log)
    client = Client(repo)
    try:

        def health() -> dict[str, Any]:
            assert supervisor.poll() is None, (tmp_path / "supervisor.log").read_text()
            return httpx.get(f"{url}/health", timeout=2).json()  # type: ignore[no-any-return]

        started = by_name(
            wait_for(health, lambda h: all(w["state"] == "running" for w in h["workers"]), "workers running")
        )
        assert set(started) == {"user_item_views", "item_ratings"}

        def counts() -> list[int | None]:
            keys = [{"user": user, "item": "sup_i"} for user in USERS]
            return [
                r["features"]["view_count_5h"] for r in client.fetch_group_by("user_item_views", keys, at=Q)
            ]

        # before the kill
        client.push("user_views", views(0, 300))
        client.push("ratings_mutations", [rating(1, 4)])
        wait_for(counts, lambda found: found == [100, 100, 100], "the first 300 views applied")

        # during: a publisher runs while the worker of user_item_views is SIGKILLed mid-stream
        pushed = threading.Event()

        def publish() -> None:
            with Client(repo) as publisher:
                for batch in range(30):
                    publisher.push("user_views", views(300 + 40 * batch, 40))
                    time.sleep(0.02)
            pushed.set()

        publisher = threading.Thread(target=publish)
        publisher.start()
        time.sleep(0.2)
        killed = started["user_item_views"]["pid"]
        os.kill(killed, signal.SIGKILL)
        back = by_name(
            wait_for(
                health,
                lambda h: (
                    by_name(h)["user_item_views"]["restarts"] == 1
                    and by_name(h)["user_item_views"]["state"] == "running"
                ),
                "user_item_views restarted",
            )
        )
        publisher.join()
        assert pushed.is_set()
        assert back["user_item_views"]["pid"] not in (None, killed)
        assert back["user_item_views"]["last_exit_code"] == -signal.SIGKILL
        assert back["user_item_views"]["last_error"] == "killed by SIGKILL"
        assert back["item_ratings"]["pid"] == started["item_ratings"]["pid"]  # the other one never noticed
        assert back["item_ratings"]["restarts"] == 0

        # after
        client.push("user_views", views(1500, 150))
        client.push("ratings_mutations", [rating(2, 2)])
        pushed_at_ms = time.time_ns() // 1_000_000
        caught_up = wait_for(
            health,
            lambda h: h["lag_read_at_ms"] > pushed_at_ms and all(w["lag_records"] == 0 for w in h["workers"]),
            "every worker caught up with the last push",
        )
        assert counts() == [550, 550, 550]  # 1650 views over 3 users: none lost, none counted twice
        average = client.fetch_group_by("item_ratings", [{"item": "sup_item"}], at=Q)
        assert average[0]["features"]["rating_average_90d"] == 3.0

        metrics = dict(
            line.rsplit(" ", 1)
            for line in httpx.get(f"{url}/metrics").text.splitlines()
            if not line.startswith("#")
        )
        assert metrics['gnomon_stream_worker_up{group_by="user_item_views"}'] == "1"
        assert metrics['gnomon_stream_worker_restarts_total{group_by="user_item_views"}'] == "1"
        assert metrics['gnomon_stream_worker_restarts_total{group_by="item_ratings"}'] == "0"
        assert metrics['gnomon_stream_lag_records{group_by="user_item_views"}'] == "0"
        assert 'gnomon_stream_records_total{group_by="item_ratings"}' in metrics  # the workers' own, merged
        assert httpx.get(f"{url}/other").status_code == 404

        state = json.loads((repo / STATE_FILE).read_text())
        assert state["pid"] == supervisor.pid and by_name(state)["user_item_views"]["restarts"] == 1

        second = run_gnomon("stream", "--all", "--repo", str(repo))
        assert second.returncode == 1 and f"(pid {supervisor.pid}) already supervises" in second.stderr

        supervisor.send_signal(signal.SIGTERM)
        assert supervisor.wait(timeout=20) == 0
    finally:
        client.close()
        if supervisor.poll() is None:
            supervisor.kill()
            supervisor.wait()
        log.close()
    for pid in (killed, *(w["pid"] for w in caught_up["workers"])):
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    stopped = json.loads((repo / STATE_FILE).read_text())
    assert stopped["status"] == "stopped"
    assert {w["state"] for w in stopped["workers"]} == {"stopped"}
    assert {w["last_exit_code"] for w in stopped["workers"]} == {0}  # both finished on SIGTERM


def test_a_worker_that_keeps_failing_backs_off_and_leaves_the_others_running(tmp_path: Path) -> None:
    repo = create_example_repo(tmp_path / "repo")
    for partition in (repo / "warehouse" / "item_info" / "ratings_snapshots").iterdir():
        for file in partition.iterdir():
            file.unlink()
        partition.rmdir()  # item_ratings cannot read its mutation rows without a snapshot schema
    supervisor = Supervisor(repo, backoff_initial_s=0.1, backoff_max_s=0.4)
    stop = threading.Event()
    runner = threading.Thread(target=supervisor.run, args=(stop,))
    runner.start()
    try:
        health = wait_for(
            supervisor.health, lambda h: by_name(h)["item_ratings"]["restarts"] >= 2, "item_ratings retried"
        )
        failing, healthy = by_name(health)["item_ratings"], by_name(health)["user_item_views"]
        assert "snapshot table 'item_info.ratings_snapshots' has no partition yet" in failing["last_error"]
        assert healthy["state"] == "running" and healthy["restarts"] == 0
        assert health["status"] in ("ok", "degraded")
        with pytest.raises(AlreadySupervisedError, match="already supervises"):
            Supervisor(repo).run(threading.Event())
    finally:
        stop.set()
        runner.join(timeout=20)
    assert not runner.is_alive()
    assert supervisor.health()["status"] == "stopped"
    assert all(w.process is None or w.process.poll() is not None for w in supervisor.workers)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["stream"], "missing NAME, or --all"),
        (["stream", "user_item_views", "--all"], "not both"),
        (["stream", "--all", "--until-caught-up"], "--until-caught-up: not with --all"),
        (["stream", "--all", "--group", "g"], "--group: not with --all"),
        (["stream", "user_item_views", "--backoff-max", "5"], "only with --all"),
    ],
)
def test_stream_all_refuses_what_does_not_apply(args: list[str], message: str, tmp_path: Path) -> None:
    result = CliRunner().invoke(main, [*args, "--repo", str(tmp_path)])
    assert result.exit_code == 2 and message in result.output
