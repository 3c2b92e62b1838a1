#!/usr/bin/env python
"""SIGKILL at scale: `gnomon stream` killed at random points, restarted, and nothing lost or doubled.

The feature repo (``bench/.data/faults/<broker>/repo``): events ``{"user_id", "eid", "qty", "ts"}``
and a Join of two online TEMPORAL GroupBys, ``fault.event_counts`` keyed by the event's own id
(COUNT: 1 when the event was applied once, 0 when it was lost, 2 when it was counted twice) and
``fault.user_totals`` keyed by user (COUNT and SUM of ``qty``, unbounded and over 1 day, compared
with the values computed here). Two days are uploaded; the streamed events fall in the two days
after, and every fetch asks at the end of those (fixed) days.

Each run streams ``--events`` new events (published in small batches over ``--publish-seconds``,
while the worker runs), kills the worker 1 to ``--max-kills`` times with SIGKILL, each time as soon
as it has stored the event at a random position among those not applied yet, restarts it after each
kill, and lets the last worker run until every event of the run is applied (Redis Streams: what a
killed consumer held is claimed by the next one after 5 s idle). It then counts the run's lost and
double-counted events and checks every user's totals. Expected: 0 lost, 0 doubled.

    python bench/faults.py                       # 50 runs of 2,000 events, embedded log and Redis Streams
    python bench/faults.py --runs 5 --brokers redis

Run from the repo root with the venv active; ``src/`` is put on the path automatically. Redis is a
private redis-server on a loopback port. A benchmark, not a test: it reports.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _online_repo as bench  # noqa: E402

DAY_MS = bench.DAY_MS
START = 1767225600000  # 2026-01-01 00:00 UTC
DAY_NAMES = ["2026-01-01", "2026-01-02", "2026-01-03", "2026-01-04"]
UPLOAD_DS = "2026-01-02"
BATCH_END = START + 2 * DAY_MS
Q = START + 4 * DAY_MS  # fetches ask at the end of the streamed days
TOPIC = "events"
JOIN = "fault.totals"
USER_TOTALS = "fault.user_totals"
EVENT_COUNTS = "fault.event_counts"
USERS = [f"u{i}" for i in range(50)]
OUT_DIR = bench.DATA_DIR / "faults"

FEATURES_PY = """
from gnomon import Accuracy, Aggregation, EventSource, GroupBy, Join, JoinPart, Operation, Query

source = EventSource(
    table="act.events",
    topic="events",
    query=Query(selects={"user": "user_id", "eid": "eid", "qty": "qty"}, time_column="ts"),
)
user_totals = GroupBy(
    name="fault.user_totals",
    sources=[source],
    keys=["user"],
    aggregations=[
        Aggregation("qty", Operation.COUNT),
        Aggregation("qty", Operation.SUM),
        Aggregation("qty", Operation.COUNT, windows=["1d"]),
        Aggregation("qty", Operation.SUM, windows=["1d"]),
    ],
    accuracy=Accuracy.TEMPORAL,
    online=True,
)
event_counts = GroupBy(
    name="fault.event_counts",
    sources=[source],
    keys=["eid"],
    aggregations=[Aggregation("qty", Operation.COUNT)],
    accuracy=Accuracy.TEMPORAL,
    online=True,
)
totals = Join(
    name="fault.totals",
    left=EventSource(table="act.events", query=Query(selects={"user": "user_id", "eid": "eid"})),
    right_parts=[JoinPart(user_totals), JoinPart(event_counts)],
    online=True,
)
"""


# ================================================================== the repo and its exact values


def make_events(count: int, rng: random.Random, start: int, end: int, prefix: str) -> list[dict[str, Any]]:
    events = [
        {
            "user_id": rng.choice(USERS),
            "eid": f"{prefix}{index}",
            "qty": rng.randrange(1, 10),
            "ts": rng.randrange(start, end),
        }
        for index in range(count)
    ]
    events.sort(key=lambda e: e["ts"])
    return events


def build_repo(path: Path, online: str, stream: str, batch: Sequence[dict[str, Any]]) -> Any:
    """A fresh repo folder whose first two days (``batch``) are in the warehouse and uploaded."""
    import pyarrow as pa

    from gnomon import Project

    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    (path / "gnomon.yaml").write_text(
        f"project: faults\nonline: {{url: '{online}', horizon: 3d}}\nstream: '{stream}'\n"
    )
    (path / "features").mkdir()
    (path / "features" / "__init__.py").write_text("")
    (path / "features" / "defs.py").write_text(textwrap.dedent(FEATURES_PY))
    project = Project(path)
    schema = pa.schema(
        [("user_id", pa.string()), ("eid", pa.string()), ("qty", pa.int64()), ("ts", pa.int64())]
    )
    for index, ds in enumerate(DAY_NAMES):
        rows = [e for e in batch if (e["ts"] - START) // DAY_MS == index]
        project.warehouse.write_partition("act.events", ds, pa.Table.from_pylist(rows, schema=schema))
    project.upload(JOIN, UPLOAD_DS)
    return project


def expected_user_totals(events: Sequence[dict[str, Any]]) -> dict[str, dict[str, int]]:
    totals = {u: {"qty_count": 0, "qty_sum": 0, "qty_count_1d": 0, "qty_sum_1d": 0} for u in USERS}
    for event in events:
        user = totals[event["user_id"]]
        user["qty_count"] += 1
        user["qty_sum"] += event["qty"]
        if event["ts"] >= Q - DAY_MS:
            user["qty_count_1d"] += 1
            user["qty_sum_1d"] += event["qty"]
    return totals


def tally(
    fetcher: Any, run_events: Sequence[dict[str, Any]], all_events: Sequence[dict[str, Any]]
) -> dict[str, Any]:
    """The run's lost and double-counted events, and the users whose totals are not exact."""
    lost = doubled = failed = 0
    for start in range(0, len(run_events), 1000):
        chunk = run_events[start : start + 1000]
        for result in fetcher.fetch_group_by(EVENT_COUNTS, [{"eid": e["eid"]} for e in chunk], at=Q):
            if result.status != "Success":
                failed += 1
                continue
            count = result.features.get("qty_count") or 0
            lost += count == 0
            doubled += max(0, count - 1)
    expected = expected_user_totals(all_events)
    wrong = []
    for user, result in zip(
        USERS, fetcher.fetch_group_by(USER_TOTALS, [{"user": u} for u in USERS], at=Q), strict=True
    ):
        got = {name: result.features.get(name) or 0 for name in expected[user]}
        if result.status != "Success" or got != expected[user]:
            wrong.append(user)
    return {"lost": lost, "doubled": doubled, "failed": failed, "wrong_users": wrong}


# ================================================================== the worker and the publisher


class Worker:
    """`gnomon stream fault.totals` in its own process, its output in a file."""

    def __init__(self, repo: Path, log: Path) -> None:
        self.log = log
        with log.open("wb") as out:
            self.process = subprocess.Popen(
                [
                    sys.executable,
                    "-c",
                    "from gnomon.cli import main; main()",
                    "stream",
                    JOIN,
                    "--repo",
                    str(repo),
                ],
                env=bench.child_env(),
                stdout=out,
                stderr=subprocess.STDOUT,
            )

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(timeout=30)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.kill()

    def check(self, what: str) -> None:
        if self.process.poll() is not None:
            raise RuntimeError(
                f"the worker exited with {self.process.returncode} while {what}: "
                f"{self.log.read_text(errors='replace')[-3000:]}"
            )


class Publisher(threading.Thread):
    """Publishes payloads in batches of ``chunk`` spread over ``seconds``; ``offsets`` fills as it goes."""

    def __init__(self, project: Any, payloads: Sequence[bytes], seconds: float, chunk: int = 20) -> None:
        super().__init__(daemon=True)
        self.project, self.payloads, self.chunk = project, payloads, chunk
        self.pause = seconds / max(1, len(payloads) / chunk)
        self.offsets: list[str] = []
        self.error: BaseException | None = None

    def run(self) -> None:
        broker = self.project.broker()
        try:
            for start in range(0, len(self.payloads), self.chunk):
                ids = broker.publish(TOPIC, list(self.payloads[start : start + self.chunk]))
                self.offsets.extend(event_id.split(":", 1)[1] for event_id in ids)
                time.sleep(self.pause)
        except BaseException as error:  # noqa: BLE001 — reported by the caller
            self.error = error
        finally:
            broker.close()


def wait_for(
    condition: Callable[[], bool], timeout: float, what: str, worker: Worker | None, every: float
) -> float:
    started = time.monotonic()
    while not condition():
        if worker is not None:
            worker.check(f"waiting for {what}")
        if time.monotonic() - started > timeout:
            raise RuntimeError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(every)
    return time.monotonic() - started


# ================================================================== one run


def one_run(
    index: int,
    project: Any,
    store: Any,
    groups: list[str],
    all_events: list[dict[str, Any]],
    args: argparse.Namespace,
    rng: random.Random,
    logs: Path,
) -> dict[str, Any]:
    from gnomon.offsets import offset_order

    started = time.monotonic()
    run_events = make_events(args.events, rng, BATCH_END, Q, f"r{index}-")
    all_events.extend(run_events)
    publisher = Publisher(project, [json.dumps(e).encode() for e in run_events], args.publish_seconds)

    def stored_position(pick: Callable[..., Any] = min) -> int:
        """How many of the run's events the slowest (``max``: the fastest) group has stored."""
        offsets = publisher.offsets
        stored = [store.offsets(group).get("0") for group in groups]
        if any(s is None for s in stored):
            return 0
        mark = offset_order(pick(stored, key=offset_order))
        position = 0
        while position < len(offsets) and offset_order(offsets[position]) <= mark:
            position += 1
        return position

    def reached(target: int) -> bool:
        offsets = publisher.offsets
        if len(offsets) <= target:
            return False
        return any(
            (s := store.offsets(g).get("0")) is not None and offset_order(s) >= offset_order(offsets[target])
            for g in groups
        )

    kills = []
    worker = Worker(project.root, logs / f"run{index}-0.log")
    publisher.start()
    try:
        for kill in range(rng.randint(1, args.max_kills)):
            done = stored_position(max)  # a target no group has reached yet
            if done >= args.events - 1:
                break
            target = rng.randrange(done, args.events)
            waited = wait_for(lambda t=target: reached(t), 120, f"event {target} to be stored", worker, 0.002)
            worker.kill()
            publisher_done = len(publisher.offsets)
            position = stored_position()
            kills.append(
                {
                    "target": target,
                    "after_s": round(waited, 2),
                    "stored": position,
                    "published": publisher_done,
                    "unfinished": position < args.events,
                }
            )
            worker = Worker(project.root, logs / f"run{index}-{kill + 1}.log")
        publisher.join(timeout=120)
        if publisher.error is not None:
            raise RuntimeError(f"publishing failed: {publisher.error!r}")
        fetcher = project.fetcher(store)

        def settled() -> bool:
            found = tally(fetcher, run_events, all_events)
            return found["doubled"] > 0 or (
                found["lost"] == 0 and not found["wrong_users"] and not found["failed"]
            )

        catch_up_s = wait_for(settled, args.timeout, "every event of the run to be applied", worker, 0.25)
    finally:
        worker.stop()
    result = tally(project.fetcher(store), run_events, all_events)
    result.update(
        {
            "run": index,
            "kills": len(kills),
            "unfinished_kills": sum(k["unfinished"] for k in kills),
            "kill_points": kills,
            "catch_up_s": round(catch_up_s, 2),
            "seconds": round(time.monotonic() - started, 2),
        }
    )
    return result


def run_broker(broker: str, args: argparse.Namespace, redis_base: str | None) -> dict[str, Any]:
    from gnomon.streaming.worker import consumer_group

    rng = random.Random(f"{args.seed}-{broker}")
    root = OUT_DIR / broker
    logs = root / "logs"
    if broker == "embedded":
        online, stream = "sqlite:///online.db", "embedded"
    else:
        assert redis_base is not None
        online, stream = f"{redis_base}/0", f"{redis_base}/1"
        import redis

        for db in (0, 1):
            client = redis.Redis.from_url(f"{redis_base}/{db}")
            client.flushdb()
            client.close()
    batch = make_events(500, rng, START, BATCH_END, "b")
    project = build_repo(root / "repo", online, stream, batch)
    shutil.rmtree(logs, ignore_errors=True)
    logs.mkdir(parents=True)
    groups = [consumer_group(project.plan.group_bys[g], TOPIC) for g in (USER_TOTALS, EVENT_COUNTS)]
    all_events = list(batch)
    results = []
    started = time.monotonic()
    store = project.store()
    try:
        for index in range(1, args.runs + 1):
            result = one_run(index, project, store, groups, all_events, args, rng, logs)
            results.append(result)
            print(
                f"  [{broker}] run {index:>2}/{args.runs}: {result['kills']} kill(s) "
                f"({result['unfinished_kills']} with events left to apply) -> lost {result['lost']}, "
                f"doubled {result['doubled']}, failed fetches {result['failed']}, users wrong "
                f"{len(result['wrong_users'])}; last worker caught up in {result['catch_up_s']:.1f} s; "
                f"run {result['seconds']:.1f} s",
                flush=True,
            )
    finally:
        store.close()
    total_s = time.monotonic() - started
    summary = {
        "broker": broker,
        "runs": len(results),
        "events": args.events * len(results),
        "kills": sum(r["kills"] for r in results),
        "unfinished_kills": sum(r["unfinished_kills"] for r in results),
        "lost": sum(r["lost"] for r in results),
        "doubled": sum(r["doubled"] for r in results),
        "failed": sum(r["failed"] for r in results),
        "runs_with_wrong_users": sum(bool(r["wrong_users"]) for r in results),
        "seconds": round(total_s, 1),
        "mean_run_s": round(total_s / max(1, len(results)), 2),
        "mean_catch_up_s": round(sum(r["catch_up_s"] for r in results) / max(1, len(results)), 2),
    }
    return {"summary": summary, "runs": results}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--events", type=int, default=2000, help="events streamed per run")
    parser.add_argument("--max-kills", type=int, default=3, help="SIGKILLs per run: 1 to this many")
    parser.add_argument(
        "--publish-seconds", type=float, default=2.0, help="a run's events are published over this"
    )
    parser.add_argument("--brokers", default="embedded,redis")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds for the last worker to catch up")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    brokers = [b.strip() for b in args.brokers.split(",") if b.strip()]
    print(
        f"faults benchmark: {args.runs} runs x {args.events} events per broker ({', '.join(brokers)}), "
        f"1-{args.max_kills} SIGKILLs per run; {bench.loadavg()}",
        flush=True,
    )
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    out: dict[str, Any] = {}
    with ExitStack() as stack:
        redis_base = (
            stack.enter_context(bench.redis_server(OUT_DIR / "redis")) if "redis" in brokers else None
        )
        for broker in brokers:
            out[broker] = run_broker(broker, args, redis_base)
    (OUT_DIR / "results.json").write_text(json.dumps(out, indent=1))
    print("\n================ summary ================")
    for broker, result in out.items():
        s = result["summary"]
        print(
            f"{broker:<9} {s['runs']} runs, {s['events']:,} events, {s['kills']} SIGKILLs "
            f"({s['unfinished_kills']} with events left to apply): lost {s['lost']}, doubled {s['doubled']} "
            f"(expected 0 / 0), failed fetches {s['failed']}, runs with a wrong user total "
            f"{s['runs_with_wrong_users']}; {s['seconds']:.0f} s ({s['mean_run_s']:.1f} s per run, last "
            f"worker caught up in {s['mean_catch_up_s']:.1f} s on average)"
        )
    print(f"{bench.loadavg()}; results in {(OUT_DIR / 'results.json').relative_to(bench.REPO_DIR)}")
    failed = any(r["summary"]["lost"] or r["summary"]["doubled"] for r in out.values())
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
