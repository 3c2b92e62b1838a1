"""Faults (SPEC §5, §6): the stream worker SIGKILLed at random points and restarted, Redis restarted in
the middle of a stream and of fetches, and a backfill SIGKILLed in the middle of its commit.

The yardstick is exact arithmetic on the events the test made: every event has a key of its own in
``fault.event_counts``, so its COUNT there is 1 (0: the event was lost; 2: it was counted twice), and
``fault.user_totals`` holds COUNT and SUM per user, unbounded and over 1 day, which must equal the
values computed here from the events.

Redis is a private redis-server of this module with an append-only file (fsync on every write), so
that its data survives being killed and restarted on the same port. (``gnomon.testing.redis_server``
runs without persistence.)
"""

from __future__ import annotations

import contextlib
import json
import random
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from gnomon import Project
from gnomon.errors import GnomonError
from gnomon.offsets import offset_order
from gnomon.streaming.worker import consumer_group
from gnomon.testing import find_redis_server, free_port, stop_process

from .helpers import gnomon_command, running_server, subprocess_env

DAY = 86_400_000
START = 1767225600000  # 2026-01-01 00:00 UTC
DAYS = 4
DAY_NAMES = ["2026-01-01", "2026-01-02", "2026-01-03", "2026-01-04"]
UPLOAD_DS = "2026-01-02"
BATCH_END = START + 2 * DAY
Q = START + DAYS * DAY  # every fetch asks at the end of the streamed days: its 1d window is the last day
TOPIC = "events"
USER_TOTALS = "fault.user_totals"
EVENT_COUNTS = "fault.event_counts"
JOIN = "fault.totals"
USERS = [f"u{i}" for i in range(20)]

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

SCHEMA = pa.schema([("user_id", pa.string()), ("eid", pa.string()), ("qty", pa.int64()), ("ts", pa.int64())])


# ------------------------------------------------------------------ the repo and its exact values


def make_events(count: int, seed: int, start: int, end: int, prefix: str) -> list[dict[str, Any]]:
    """Events with unique ids ``<prefix><n>`` and ``ts`` in ``[start, end)``, sorted by ts."""
    rng = random.Random(seed)
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


def day_of(ts: int) -> str:
    return DAY_NAMES[(ts - START) // DAY]


def build_repo(repo: Path, warehouse_events: Sequence[dict[str, Any]], online: str, stream: str) -> Project:
    """gnomon.yaml, features/defs.py and one ``act.events`` partition per day (empty or not)."""
    repo.mkdir(parents=True, exist_ok=True)
    (repo / "gnomon.yaml").write_text(
        f"project: faults\nonline: {{url: '{online}', horizon: 3d}}\nstream: '{stream}'\n"
    )
    (repo / "features").mkdir(exist_ok=True)
    (repo / "features" / "__init__.py").write_text("")
    (repo / "features" / "defs.py").write_text(textwrap.dedent(FEATURES_PY))
    project = Project(repo)
    by_day: dict[str, list[dict[str, Any]]] = {ds: [] for ds in DAY_NAMES}
    for event in warehouse_events:
        by_day[day_of(event["ts"])].append(event)
    for ds, rows in by_day.items():
        project.warehouse.write_partition("act.events", ds, pa.Table.from_pylist(rows, schema=SCHEMA))
    return project


def uploaded_repo(repo: Path, online: str, stream: str, streamed: int, seed: int) -> Stream:
    """A repo whose first two days are in the warehouse and uploaded, and ``streamed`` events of the
    last two days to publish."""
    batch = make_events(300, seed, START, BATCH_END, "b")
    project = build_repo(repo, batch, online, stream)
    project.upload(JOIN, UPLOAD_DS)
    return Stream(project, batch, make_events(streamed, seed + 1, BATCH_END, Q, "s"))


def expected_user_totals(events: Sequence[dict[str, Any]], q: int) -> dict[str, dict[str, int]]:
    totals = {u: {"qty_count": 0, "qty_sum": 0, "qty_count_1d": 0, "qty_sum_1d": 0} for u in USERS}
    for event in events:
        if event["ts"] >= q:
            continue
        user = totals[event["user_id"]]
        user["qty_count"] += 1
        user["qty_sum"] += event["qty"]
        if event["ts"] >= q - DAY:
            user["qty_count_1d"] += 1
            user["qty_sum_1d"] += event["qty"]
    return totals


@dataclass
class Tally:
    """How the online values compare with the exact ones."""

    lost: int = 0
    doubled: int = 0
    wrong_users: list[tuple[str, dict[str, int], dict[str, Any]]] = field(default_factory=list)
    statuses: Counter[str] = field(default_factory=Counter)

    @property
    def exact(self) -> bool:
        return (
            not self.lost and not self.doubled and not self.wrong_users and set(self.statuses) == {"Success"}
        )


@dataclass
class Stream:
    project: Project
    batch: list[dict[str, Any]]
    streamed: list[dict[str, Any]]

    @property
    def groups(self) -> list[str]:
        plan = self.project.plan
        return [consumer_group(plan.group_bys[name], TOPIC) for name in (USER_TOTALS, EVENT_COUNTS)]

    def settled(self, store: Any) -> bool:
        """Every value is exact, or an event was counted twice (no later event can undo that)."""
        tally = self.tally(store)
        return tally.exact or tally.doubled > 0

    def tally(self, store: Any) -> Tally:
        """Each streamed event's count (lost / doubled), and every user's totals, fetched at Q."""
        fetcher = self.project.fetcher(store)
        tally = Tally()
        per_event = fetcher.fetch_group_by(EVENT_COUNTS, [{"eid": e["eid"]} for e in self.streamed], at=Q)
        for result in per_event:
            tally.statuses[result.status] += 1
            count = result.features.get("qty_count") or 0
            tally.lost += count == 0
            tally.doubled += max(0, count - 1)
        expected = expected_user_totals([*self.batch, *self.streamed], Q)
        per_user = fetcher.fetch_group_by(USER_TOTALS, [{"user": u} for u in USERS], at=Q)
        for user, result in zip(USERS, per_user, strict=True):
            tally.statuses[result.status] += 1
            got = {name: result.features.get(name) or 0 for name in expected[user]}
            if got != expected[user]:
                tally.wrong_users.append((user, expected[user], result.features))
        return tally


def publish(project: Project, payloads: Sequence[bytes], chunk: int = 1000) -> list[str]:
    """Publish in chunks; returns the offsets (broker order) of the published records."""
    broker = project.broker()
    try:
        ids: list[str] = []
        for start in range(0, len(payloads), chunk):
            ids += broker.publish(TOPIC, list(payloads[start : start + chunk]))
    finally:
        broker.close()
    return [event_id.split(":", 1)[1] for event_id in ids]


def reached(store: Any, groups: Sequence[str], offset: str) -> bool:
    """Every group's stored offset is at ``offset`` or beyond."""
    for group in groups:
        stored = store.offsets(group).get("0")
        if stored is None or offset_order(stored) < offset_order(offset):
            return False
    return True


def wait_until(
    condition: Callable[[], bool],
    timeout: float,
    what: str,
    worker: Worker | None = None,
    every: float = 0.005,
) -> float:
    """Seconds until ``condition`` held (checked ``every`` seconds); fails after ``timeout`` or when
    ``worker`` exits first, with the worker's output."""
    started = time.monotonic()
    while not condition():
        if worker is not None and worker.poll() is not None:
            raise AssertionError(
                f"the worker exited with {worker.poll()} while waiting for {what}: {worker.output()[-3000:]}"
            )
        if time.monotonic() - started > timeout:
            output = f"; the worker's output: {worker.output()[-3000:]}" if worker is not None else ""
            raise AssertionError(f"timed out after {timeout} s waiting for {what}{output}")
        time.sleep(every)
    return time.monotonic() - started


# ------------------------------------------------------------------ worker processes


@dataclass
class Worker:
    """`gnomon stream fault.totals` in a subprocess, its output in files (a pipe could fill up)."""

    process: subprocess.Popen[bytes]
    log: Path

    @classmethod
    def start(cls, repo: Path, log: Path, *extra: str) -> Worker:
        with log.open("wb") as out:
            process = subprocess.Popen(
                gnomon_command("stream", JOIN, "--repo", str(repo), *extra),
                env=subprocess_env(),
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        return cls(process, log)

    def poll(self) -> int | None:
        return self.process.poll()

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(timeout=20)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.kill()

    def output(self) -> str:
        return self.log.read_text(errors="replace")


def publish_paced(
    project: Project, payloads: Sequence[bytes], chunk: int = 25
) -> tuple[threading.Thread, list[str]]:
    """Publish ``payloads`` in small chunks from a thread, so the worker consumes them as they come;
    the list fills with their offsets as they are published."""
    offsets: list[str] = []

    def run() -> None:
        broker = project.broker()
        try:
            for start in range(0, len(payloads), chunk):
                ids = broker.publish(TOPIC, list(payloads[start : start + chunk]))
                offsets.extend(event_id.split(":", 1)[1] for event_id in ids)
                time.sleep(0.002)
        except Exception:  # noqa: BLE001 — the broker went away (a test kills Redis): stop publishing
            pass
        finally:
            with contextlib.suppress(Exception):
                broker.close()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, offsets


def segments(count: int, kills: int, rng: random.Random) -> list[tuple[int, int]]:
    """``2 * kills + 1`` consecutive index ranges: (probe, burst) per kill, then the rest."""
    bounds = [0]
    for _ in range(kills):
        bounds.append(bounds[-1] + rng.randrange(20, 80))  # a probe: the restarted worker is up
        bounds.append(bounds[-1] + rng.randrange(400, 700))  # a burst, killed somewhere inside
    assert bounds[-1] < count
    return [*zip(bounds, bounds[1:], strict=False), (bounds[-1], count)]


def kill_in_burst(
    stream: Stream, store: Any, worker: Worker, probe: Sequence[bytes], burst: Sequence[bytes], target: int
) -> dict[str, Any]:
    """Publish ``probe`` and wait until the (re)started worker has applied it; then publish ``burst``
    little by little and SIGKILL the worker as soon as it has stored burst event ``target``."""
    project = stream.project
    probe_offsets = publish(project, probe)
    wait_until(lambda: reached(store, stream.groups, probe_offsets[-1]), 60, "the probe", worker)
    publisher, offsets = publish_paced(project, burst)
    wait_until(lambda: len(offsets) > target, 30, "the burst to be published")
    wait_until(
        lambda: any(reached(store, [g], offsets[target]) for g in stream.groups),
        30,
        "the worker to reach the kill point",
        worker,
    )
    worker.kill()
    assert worker.process.returncode == -signal.SIGKILL, worker.output()
    stored = [store.offsets(g).get("0") for g in stream.groups]
    published = len(offsets)
    publisher.join(timeout=30)
    return {
        "target": target,
        "published": published,
        "unfinished": any(s is None or offset_order(s) < offset_order(offsets[-1]) for s in stored),
    }


def sigkill_and_restart(stream: Stream, tmp: Path, kills: int, seed: int) -> dict[str, Any]:
    """Stream every event through `gnomon stream`, SIGKILLed ``kills`` times at random points inside
    bursts of events (each restart first applies a small probe), then once more without a kill until
    every event is applied; returns the kills, the final `Tally` and how long the last run took."""
    rng = random.Random(seed)
    project = stream.project
    payloads = [json.dumps(event).encode() for event in stream.streamed]
    parts = segments(len(payloads), kills, rng)
    store = project.store()
    kill_points: list[dict[str, Any]] = []
    try:
        for cycle in range(kills):
            (probe_start, probe_end), (burst_start, burst_end) = parts[2 * cycle], parts[2 * cycle + 1]
            target = rng.randrange(50, burst_end - burst_start - 100)
            worker = Worker.start(project.root, tmp / f"worker-{cycle}.log")
            try:
                kill_points.append(
                    kill_in_burst(
                        stream,
                        store,
                        worker,
                        payloads[probe_start:probe_end],
                        payloads[burst_start:burst_end],
                        target,
                    )
                )
            finally:
                worker.kill()
        start, end = parts[-1]
        publish(project, payloads[start:end])
        worker = Worker.start(project.root, tmp / "worker-final.log")
        try:
            # Redis Streams: what a killed consumer left pending is claimed after CLAIM_IDLE_MS (5 s)
            elapsed = wait_until(
                lambda: stream.settled(store), 40, "every event to be applied", worker, every=0.25
            )
        finally:
            worker.stop()
        tally = stream.tally(store)
    finally:
        store.close()
    return {"kills": kill_points, "tally": tally, "final_s": elapsed}


# ------------------------------------------------------------------ a Redis that survives restarts


class AofRedis:
    """A private redis-server with an append-only file (fsync on every write) in ``directory``:
    killed and started again on the same port, it comes back with its data."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}"

    def start(self, timeout_s: float = 10) -> None:
        import redis

        command = [find_redis_server() or "redis-server", "--port", str(self.port), "--bind", "127.0.0.1"]
        command += [
            "--save",
            "",
            "--appendonly",
            "yes",
            "--appendfsync",
            "always",
            "--dir",
            str(self.directory),
        ]
        self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        client = redis.Redis(host="127.0.0.1", port=self.port, socket_connect_timeout=0.2)
        deadline = time.monotonic() + timeout_s
        try:
            while True:
                try:
                    client.ping()  # answers LOADING (an error) until the append-only file is read
                    return
                except (redis.ConnectionError, redis.ResponseError):
                    if self.process.poll() is not None or time.monotonic() > deadline:
                        raise RuntimeError(f"redis-server on port {self.port} did not start") from None
                    time.sleep(0.02)
        finally:
            client.close()

    def kill(self) -> None:
        """SIGKILL: a crash, not a shutdown."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None


@pytest.fixture(scope="module")
def aof_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AofRedis]:
    if find_redis_server() is None:
        pytest.skip("redis-server is not installed")
    pytest.importorskip("redis")
    server = AofRedis(tmp_path_factory.mktemp("aof-redis"))
    server.start()
    try:
        yield server
    finally:
        if server.process is not None:
            stop_process(server.process)


@pytest.fixture
def fresh_redis(aof_redis: AofRedis) -> AofRedis:
    """The module's Redis, running, with databases 0 and 1 empty (`served` keeps 2 and 3)."""
    import redis

    if not aof_redis.running:
        aof_redis.start()
    for db in (0, 1):
        client = redis.Redis.from_url(f"{aof_redis.url}/{db}")
        client.flushdb()
        client.close()
    return aof_redis


@pytest.fixture(params=["embedded", "redis"])
def urls(request: pytest.FixtureRequest) -> tuple[str, str]:
    """(online store, stream broker): SQLite + the embedded log, or Redis + Redis Streams."""
    if request.param == "embedded":
        return "sqlite:///online.db", "embedded"
    url = request.getfixturevalue("fresh_redis").url
    return f"{url}/0", f"{url}/1"


# ------------------------------------------------------------------ (1) SIGKILL mid-stream


def test_sigkilled_worker_restarted_loses_and_doubles_nothing(tmp_path: Path, urls: tuple[str, str]) -> None:
    online, broker = urls
    stream = uploaded_repo(tmp_path / "repo", online, broker, streamed=2500, seed=11)
    outcome = sigkill_and_restart(stream, tmp_path, kills=3, seed=5)
    tally = outcome["tally"]
    print(f"kills: {outcome['kills']}; last run applied everything in {outcome['final_s']:.1f} s")
    assert any(kill["unfinished"] for kill in outcome["kills"]), outcome["kills"]
    assert (tally.lost, tally.doubled) == (0, 0), outcome
    assert tally.exact, tally.wrong_users[:3] or tally.statuses


def test_until_caught_up_after_a_sigkill_applies_what_the_killed_worker_held(
    tmp_path: Path, fresh_redis: AofRedis
) -> None:
    """Redis Streams: records a killed worker had polled stay pending under its consumer name. A
    restarted ``--until-caught-up`` run must not stop at the end of the topic while they are not
    applied (the embedded log redelivers them to the next consumer; see the test above)."""
    import redis

    stream = uploaded_repo(
        tmp_path / "repo", f"{fresh_redis.url}/0", f"{fresh_redis.url}/1", streamed=6000, seed=3
    )
    project = stream.project
    publish(project, [json.dumps(event).encode() for event in stream.streamed], chunk=5000)
    worker = Worker.start(project.root, tmp_path / "worker.log")
    store = project.store()
    try:
        wait_until(lambda: any(store.offsets(g) for g in stream.groups), 60, "some progress", worker)
        worker.kill()
        client = redis.Redis.from_url(f"{fresh_redis.url}/1")
        groups = {g["name"].decode(): g for g in client.xinfo_groups(f"gnomon:topic:{TOPIC}")}
        client.close()
        # polled by the killed worker and not applied (and, usually, records it never polled)
        held = {g: (groups[g]["pending"], groups[g]["lag"]) for g in stream.groups}
        assert any(pending for pending, _ in held.values()), f"not set up: {held}"
        project.stream(JOIN, until_caught_up=True)  # at once: within CLAIM_IDLE_MS of the kill
        tally = stream.tally(store)
    finally:
        worker.kill()
        store.close()
    assert (tally.lost, tally.doubled) == (0, 0), f"(pending, not yet delivered) at the kill: {held}"


# ------------------------------------------------------------------ (2) Redis restarted mid-stream


def in_stream(url: str) -> set[str]:
    """The ids of the events the Redis stream holds (a publish cut short by a Redis crash may or
    may not have been applied: only the stream knows)."""
    import redis

    client = redis.Redis.from_url(url)
    try:
        entries = client.xrange(f"gnomon:topic:{TOPIC}")
    finally:
        client.close()
    return {json.loads(fields[b"p"])["eid"] for _, fields in entries}


def test_redis_restart_mid_stream(tmp_path: Path, fresh_redis: AofRedis) -> None:
    """Redis is SIGKILLed while the worker consumes a burst, and started again 1 s later. Today the
    worker exits (non-zero, naming the connection error, within about half a second: no hang) and a
    restarted worker resumes; a worker that rode out the outage would pass too. Either way every
    event ends up applied exactly once."""
    stream = uploaded_repo(
        tmp_path / "repo", f"{fresh_redis.url}/0", f"{fresh_redis.url}/1", streamed=1500, seed=7
    )
    project = stream.project
    payloads = [json.dumps(event).encode() for event in stream.streamed]
    worker = Worker.start(project.root, tmp_path / "worker.log")
    store = project.store()
    try:
        probe = publish(project, payloads[:100])
        wait_until(lambda: reached(store, stream.groups, probe[-1]), 60, "the probe", worker)
        publisher, offsets = publish_paced(project, payloads[100:1200])
        wait_until(lambda: len(offsets) > 300, 30, "part of the burst")
        killed_at = time.monotonic()
        fresh_redis.kill()
        publisher.join(timeout=30)  # its publishes fail from the kill on
        while worker.poll() is None and time.monotonic() - killed_at < 1.0:
            time.sleep(0.01)
        fresh_redis.start()
        while worker.poll() is None and time.monotonic() - killed_at < 4.0:
            time.sleep(0.01)
        if worker.poll() is not None:  # it gave up: it must say why; a new worker resumes
            exited_after = time.monotonic() - killed_at
            assert worker.poll() != 0
            assert "ConnectionError" in worker.output() or "Connection refused" in worker.output()
            assert exited_after < 4.0
            worker = Worker.start(project.root, tmp_path / "worker-2.log")
        there = in_stream(f"{fresh_redis.url}/1")
        assert len(there) >= 100 + len(offsets)  # what was acknowledged survived the crash (AOF)
        publish(project, [p for p, e in zip(payloads, stream.streamed, strict=True) if e["eid"] not in there])
        wait_until(lambda: stream.settled(store), 40, "every event to be applied", worker, every=0.25)
        tally = stream.tally(store)
    finally:
        worker.stop()
        store.close()
    assert tally.exact, (tally.lost, tally.doubled, tally.wrong_users[:3], tally.statuses)


def test_stream_worker_reports_an_unreachable_redis_in_one_line(tmp_path: Path) -> None:
    """`gnomon stream` exits 1 with one ``error: …`` line when the store is down, like every other
    failure the CLI knows (`_Group` turns a GnomonError into that line)."""
    down = f"redis://127.0.0.1:{free_port()}"  # nothing listens there
    build_repo(tmp_path / "repo", make_events(50, 1, START, BATCH_END, "b"), f"{down}/0", f"{down}/1")
    done = subprocess.run(
        gnomon_command("stream", JOIN, "--repo", str(tmp_path / "repo"), "--until-caught-up"),
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1, done.stderr[-2000:]
    assert "Traceback" not in done.stderr, done.stderr[-2000:]
    assert done.stderr.strip().startswith("error:"), done.stderr[-2000:]


# ------------------------------------------------------------------ (3) Redis restarted mid-fetch


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, aof_redis: AofRedis) -> Stream:
    """A Redis repo (databases 2 and 3) uploaded and streamed; its values are exact."""
    if not aof_redis.running:
        aof_redis.start()
    repo = tmp_path_factory.mktemp("served") / "repo"
    stream = uploaded_repo(repo, f"{aof_redis.url}/2", f"{aof_redis.url}/3", streamed=300, seed=9)
    publish(stream.project, [json.dumps(event).encode() for event in stream.streamed])
    stream.project.stream(JOIN, until_caught_up=True)
    return stream


KEYS = [{"user": u, "eid": "s1"} for u in USERS[:5]]


def expected_join_values(stream: Stream) -> list[dict[str, Any]]:
    totals = expected_user_totals([*stream.batch, *stream.streamed], Q)
    return [
        {
            **{f"fault_user_totals_{k}": v for k, v in totals[key["user"]].items()},
            "fault_event_counts_qty_count": 1,
        }
        for key in KEYS
    ]


def bounded(call: Callable[[], Any], timeout_s: float = 10) -> tuple[str, Any, float]:
    """("ok", value, seconds) or ("raised", exception, seconds); fails when ``call`` takes longer
    than ``timeout_s`` (a hang)."""
    pool = ThreadPoolExecutor(1)
    started = time.perf_counter()
    future = pool.submit(call)
    finished, _ = wait([future], timeout=timeout_s)
    seconds = time.perf_counter() - started
    pool.shutdown(wait=False)
    if not finished:
        pytest.fail(f"the call did not return within {timeout_s} s while Redis was down")
    error = future.exception()
    return ("raised", error, seconds) if error is not None else ("ok", future.result(), seconds)


def http_fetch(base: str) -> tuple[int, bytes]:
    request = urllib.request.Request(
        f"{base}/v1/features/join/{JOIN}?at={Q}", data=json.dumps(KEYS).encode(), method="POST"
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def test_redis_restart_mid_fetch_fails_fast_never_wrong_and_recovers(
    served: Stream, aof_redis: AofRedis
) -> None:
    from gnomon.serving.app import create_app

    project = served.project
    expected = expected_join_values(served)
    store = project.store()
    fetcher = project.fetcher(store)

    def values(results: Sequence[Any]) -> list[dict[str, Any] | None]:
        return [
            {k: v for k, v in r.features.items() if k in expected[0]} if r.status == "Success" else None
            for r in results
        ]

    try:
        assert values(fetcher.fetch_join(JOIN, KEYS, at=Q)) == expected
        with running_server(create_app(project.root)) as base:
            status, body = http_fetch(base)
            assert status == 200 and b'"Success"' in body
            aof_redis.kill()
            outcomes: list[tuple[str, str, float]] = []
            for attempt in range(6):
                if attempt == 3:
                    time.sleep(0.6)  # past the fetcher's cached upload metadata (meta_ttl_s 0.5)
                kind, value, seconds = bounded(lambda: fetcher.fetch_join(JOIN, KEYS, at=Q))
                if kind == "ok":  # a result: failed keys, or exact values
                    assert all(v is None or v == e for v, e in zip(values(value), expected, strict=True))
                    assert any(v is None for v in values(value)), "Redis is down, yet every key succeeded"
                outcomes.append(("in-process", kind if kind == "raised" else "statuses", seconds))
                kind, value, seconds = bounded(lambda: http_fetch(base))
                assert kind == "ok", value
                status, body = value
                assert status != 200 or b'"Success"' not in body, body[:300]
                outcomes.append(("http", str(status), seconds))
            slowest = max(seconds for _, _, seconds in outcomes)
            assert slowest < 1.0, outcomes
            aof_redis.start()
            started = time.monotonic()
            wait_until(
                lambda: bounded(lambda: values(fetcher.fetch_join(JOIN, KEYS, at=Q)))[1] == expected,
                10,
                "fetches to succeed again",
            )
            recovered_s = time.monotonic() - started
            status, body = http_fetch(base)
            assert status == 200 and b'"Success"' in body
            got = json.loads(body)["results"]
            assert [{k: v for k, v in r["features"].items() if k in expected[0]} for r in got] == expected
    finally:
        store.close()
        if not aof_redis.running:
            aof_redis.start()
    print(f"Redis down: {outcomes}; fetches exact again {recovered_s:.3f} s after the restart")
    assert recovered_s < 5


def test_a_store_outage_is_a_gnomon_error_or_a_failed_status(served: Stream, aof_redis: AofRedis) -> None:
    """SPEC §5: a key that cannot be answered gets a non-"Success" status and an error message. In
    process that may also be a raised GnomonError; a bare client-library exception is neither."""
    store = served.project.store()
    fetcher = served.project.fetcher(store)
    try:
        fetcher.fetch_join(JOIN, KEYS, at=Q)
        aof_redis.kill()
        time.sleep(0.6)  # past the cached upload metadata
        try:
            results = fetcher.fetch_join(JOIN, KEYS, at=Q)
        except GnomonError:
            return
        except Exception as error:  # noqa: BLE001
            pytest.fail(f"a store outage raised {type(error).__module__}.{type(error).__name__}: {error}")
        assert all(r.status != "Success" and r.error for r in results)
    finally:
        store.close()
        aof_redis.start()


def test_http_answers_a_store_outage_with_a_json_error(served: Stream, aof_redis: AofRedis) -> None:
    """SPEC §5: a failed key gets a non-"Success" status and an ``error`` message; a server that
    cannot answer at all should at least say why in JSON (e.g. 503 ``{"error": ...}``), not a bare
    500 "Internal Server Error"."""
    from gnomon.serving.app import create_app

    with running_server(create_app(served.project.root)) as base:
        assert http_fetch(base)[0] == 200
        aof_redis.kill()
        try:
            status, body = http_fetch(base)
        finally:
            aof_redis.start()
    payload = json.loads(body)  # not JSON today: b"Internal Server Error"
    if status == 200:
        assert all(r["status"] != "Success" and r.get("error") for r in payload["results"])
    else:
        assert 500 <= status < 600 and payload.get("error"), (status, payload)


def test_a_stalled_redis_costs_a_fetch_one_timeout_at_most(served: Stream, aof_redis: AofRedis) -> None:
    """Redis stopped (SIGSTOP: connections are accepted, nothing answers): a fetch gives up after the
    store's socket timeout (0.5 s here), not twice that."""
    from gnomon.online.stores.redis import RedisStore

    store = RedisStore(f"{aof_redis.url}/2?socket_timeout=0.5")
    fetcher = served.project.fetcher(store)
    assert aof_redis.process is not None
    try:
        fetcher.fetch_join(JOIN, KEYS, at=Q)  # the upload metadata is cached for the next 0.5 s
        aof_redis.process.send_signal(signal.SIGSTOP)
        kind, error, seconds = bounded(lambda: fetcher.fetch_join(JOIN, KEYS, at=Q))
    finally:
        aof_redis.process.send_signal(signal.SIGCONT)
        store.close()
    if kind == "ok":  # every key answers a failed status, saying why
        assert all(r.status == "StoreUnavailable" and r.error for r in error), error
    assert seconds < 0.75, f"a fetch waited {seconds:.2f} s for a stalled Redis (socket timeout 0.5 s)"


# ------------------------------------------------------------------ (4) backfill SIGKILLed mid-commit

KILL_ON_RENAME = """
import os, signal, sys
import gnomon.offline.warehouse as warehouse

target, calls = int(sys.argv[1]), [0]


class KillingOs:
    # os for the warehouse module: SIGKILL this process just before its `target`-th os.replace
    def __getattr__(self, name):
        return getattr(os, name)

    def replace(self, source, destination):
        calls[0] += 1
        if calls[0] == target:
            os.kill(os.getpid(), signal.SIGKILL)
        os.replace(source, destination)


warehouse.os = KillingOs()
sys.argv = ["gnomon", *sys.argv[2:]]
from gnomon.cli import main

main()
"""


def backfill_args(repo: Path, *extra: str) -> list[str]:
    return [
        "backfill",
        JOIN,
        "--start-ds",
        DAY_NAMES[0],
        "--end-ds",
        DAY_NAMES[-1],
        "--repo",
        str(repo),
        *extra,
    ]


def backfill_killed_on_rename(repo: Path, rename: int, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", KILL_ON_RENAME, str(rename), *backfill_args(repo, *extra)],
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )


def backfill_killed_when(repo: Path, output: Path, seen: Callable[[Path], bool]) -> int | None:
    """`gnomon backfill` SIGKILLed as soon as ``seen(output folder)``; its return code."""
    process = subprocess.Popen(
        gnomon_command(*backfill_args(repo)),
        env=subprocess_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 60
        while process.poll() is None and time.monotonic() < deadline:
            if output.is_dir() and seen(output):
                process.kill()
                break
            time.sleep(0.0005)
        return process.wait(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def partition_states(output: Path, reference: dict[str, pa.Table]) -> dict[str, str]:
    """Each ds of the output folder: "whole" (readable, the reference's rows exactly) or what is
    wrong with it; hidden leftovers (staging, trash folders) are listed under their own names."""
    states: dict[str, str] = {}
    if not output.is_dir():
        return states
    for folder in sorted(output.iterdir()):
        if folder.name.startswith("."):
            states[folder.name.split("-")[0]] = "leftover"
            continue
        ds = folder.name.removeprefix("ds=")
        try:
            table = pq.read_table(folder)
        except Exception as error:  # noqa: BLE001
            states[ds] = f"unreadable: {error}"
            continue
        table = table.drop_columns([c for c in table.column_names if c == "ds"])
        want = reference[ds]
        if table.num_rows != want.num_rows:
            states[ds] = f"partial: {table.num_rows} of {want.num_rows} rows"
        elif (
            table.sort_by([("eid", "ascending")]).to_pylist()
            != want.sort_by([("eid", "ascending")]).to_pylist()
        ):
            states[ds] = "different rows"
        else:
            states[ds] = "whole"
    return states


def test_backfill_killed_mid_commit_leaves_whole_or_absent_partitions(tmp_path: Path) -> None:
    events = make_events(2000, 17, START, Q, "e")
    project = build_repo(tmp_path / "repo", events, "sqlite:///online.db", "embedded")
    shutil.copytree(project.root, tmp_path / "reference")
    reference_project = Project(tmp_path / "reference")
    reference_project.backfill(JOIN, DAY_NAMES[0], DAY_NAMES[-1])
    reference = {ds: reference_project.read_table(JOIN, ds, ds).drop_columns(["ds"]) for ds in DAY_NAMES}
    rows_per_day = Counter(day_of(e["ts"]) for e in events)
    assert {ds: t.num_rows for ds, t in reference.items()} == dict(rows_per_day)
    output = project.warehouse.table_path(project.output_table(JOIN))
    observed: dict[str, dict[str, str]] = {}

    def check(label: str, present: set[str] | None = None) -> None:
        states = partition_states(output, reference)
        observed[label] = states
        partitions = {ds: s for ds, s in states.items() if s != "leftover"}
        assert all(s == "whole" for s in partitions.values()), (label, states)
        assert set(project.warehouse.partitions(project.output_table(JOIN))) == set(partitions)
        if present is not None:
            assert set(partitions) == present, (label, states)

    # while writing the staged partitions
    assert (
        backfill_killed_when(project.root, output, lambda o: any(o.glob(".staging-*/ds=*/part-0.parquet")))
        == -signal.SIGKILL
    )
    check("a staged partition written", set())
    # mid-commit: between the second and the third partition's rename into place
    done = backfill_killed_on_rename(project.root, 3)
    assert done.returncode == -signal.SIGKILL, done.stderr[-2000:]
    check("killed before the 3rd rename", set(DAY_NAMES[:2]))
    # a rerun fills exactly the missing partitions
    done = subprocess.run(
        gnomon_command(*backfill_args(project.root)),
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert (
        f"wrote 2 partition(s) of {project.output_table(JOIN)} ({DAY_NAMES[2]} .. {DAY_NAMES[3]})"
        in done.stdout
    )
    check("rerun", set(DAY_NAMES))
    # --force over whole partitions, killed between moving the old ds 2 aside and the new one in
    done = backfill_killed_on_rename(project.root, 4, "--force")
    assert done.returncode == -signal.SIGKILL, done.stderr[-2000:]
    check("--force killed between the two renames of ds 2", {DAY_NAMES[0], DAY_NAMES[2], DAY_NAMES[3]})
    assert any(output.glob(".trash-*")), "the old ds 2 should sit in a trash folder"
    done = subprocess.run(
        gnomon_command(*backfill_args(project.root)),
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    check("rerun after --force", set(DAY_NAMES))
    print("\n".join(f"{label}: {states}" for label, states in observed.items()))
