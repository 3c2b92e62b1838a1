#!/usr/bin/env python
"""Soak: `gnomon serve` under 2x its sustained rate for ``--minutes`` (10) while a worker streams.

The repo, warehouse and setup are those of ``bench/online.py`` (``bench/_online_repo.py``): a Join of
two TEMPORAL GroupBys (eight windowed features) over ``--keys`` users and items, yesterday uploaded,
then ``--stream-per-key`` events per key since today 00:00 streamed, so that every fetch merges
streamed rows. Then, for ``--minutes``:

- ``gnomon serve`` runs in its own process (exactly as ``bench/online.py`` starts it);
- ``gnomon stream bench.user_item`` runs in its own process, fed by this process with
  ``--stream-rate`` events per second (``ts`` = now) through the repo's broker;
- an open-loop load generator in another process (``bench/online.py``'s: request i is due at
  start + i / rate, latency measured from that scheduled time, so a stall is charged to every request
  it delays) sends one-key Join fetches at ``--rate`` requests/s (default 3,000: twice the 1,500
  requests/s that ``bench/online.py`` measured as sustainable for Redis, docs/online.md) without a
  pause between minutes, and reports every minute the requests completed in it.

Every minute: p50/p99/max latency from the scheduled time and from the actual send, the rate
achieved, errors (a non-200 answer, a body without a "Success" status, a broken connection; at the
end, requests never answered), the requests waiting in the generator, the RSS of the server and of
the worker, and the worker's lag (records published and not yet applied).

    python bench/soak.py                      # 10 minutes at 3,000 requests/s, 100,000 keys, Redis
    python bench/soak.py --minutes 2 --rate 1500 --store sqlite

Run from the repo root with the venv active. A benchmark, not a test: it reports.
"""

from __future__ import annotations

import argparse
import collections
import json
import select
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _online_repo as bench  # noqa: E402

import online as online_bench  # noqa: E402 — its load generator, server start/stop and repo setup

SUSTAINED_RPS = {"redis": 1500, "sqlite": 2000}  # bench/online.py's ramp (docs/online.md, 2-core machine)
OUT_DIR = bench.DATA_DIR / "soak"


# ================================================================== the load generator (a child)


def _bucket() -> dict[str, Any]:
    return {"latency": [], "service": [], "errors": 0, "samples": []}


def child_loadgen(args: argparse.Namespace) -> None:
    """`online.child_loadgen` run without a break for ``duration`` seconds, printing one JSON line per
    ``interval`` seconds with what completed in it (then one for the drain after the last request
    was due)."""
    bodies = [line for line in Path(args.bodies).read_bytes().split(b"\n") if line]
    head = (
        f"POST {args.path} HTTP/1.1\r\nHost: 127.0.0.1:{args.port}\r\nContent-Type: application/json\r\n"
    ).encode()
    requests = [head + b"Content-Length: %d\r\n\r\n" % len(body) + body for body in bodies]
    idle = collections.deque(online_bench._connect(args.port) for _ in range(args.conns))
    busy: dict[Any, list[Any]] = {}
    waiting: collections.deque[int] = collections.deque()
    total = int(args.rate * args.duration)
    interval_ns = int(1e9 / args.rate)
    bucket_ns = int(args.interval * 1e9)
    clock = time.perf_counter_ns
    start = clock() + 20_000_000
    hard_stop = start + int(args.duration * 1e9) + int(args.drain * 1e9)
    expect = args.expect.encode()
    bucket, bucket_index = _bucket(), 0
    next_index = done = 0
    cpu_at = time.process_time()

    def emit(label: Any, elapsed_s: float) -> None:
        nonlocal bucket, cpu_at
        cpu = time.process_time()
        line = {
            "minute": label,
            "completed": len(bucket["latency"]),
            "errors": bucket["errors"],
            "error_samples": bucket["samples"][:3],
            "achieved_rps": len(bucket["latency"]) / max(elapsed_s, 1e-9),
            "scheduled": next_index,
            "done": done,
            "backlog": len(waiting) + len(busy),
            "latency": bench.summary_ms(bucket["latency"]),
            "service": bench.summary_ms(bucket["service"]),
            "client_cpu_s": cpu - cpu_at,
        }
        print(json.dumps(line), flush=True)
        bucket, cpu_at = _bucket(), cpu

    def failed(reason: str) -> None:
        nonlocal done
        bucket["errors"] += 1
        done += 1
        if len(bucket["samples"]) < 3:
            bucket["samples"].append(reason)

    while done < total:
        now = clock()
        if now > hard_stop:
            break
        boundary = start + (bucket_index + 1) * bucket_ns
        if now >= boundary and boundary <= start + int(args.duration * 1e9):
            emit(bucket_index + 1, args.interval)
            bucket_index += 1
            continue
        while next_index < total and start + next_index * interval_ns <= now:
            waiting.append(next_index)
            next_index += 1
        while waiting and idle:
            index = waiting.popleft()
            sock = idle.popleft()
            sent = clock()
            try:
                sock.sendall(requests[index % len(requests)])
            except OSError as error:
                failed(f"send: {error}")
                sock.close()
                idle.append(online_bench._connect(args.port))
                continue
            busy[sock] = [start + index * interval_ns, sent, bytearray()]
        due = start + next_index * interval_ns if next_index < total else clock() + 50_000_000
        timeout = max(0.0, (min(due, boundary) - clock()) / 1e9)
        readable, _, _ = select.select(list(busy), [], [], timeout)
        for sock in readable:
            state = busy[sock]
            try:
                data = sock.recv(262144)
            except BlockingIOError:
                continue
            except OSError as error:
                data = b""
                bucket["samples"].append(f"recv: {error}")
            if not data:
                del busy[sock]
                sock.close()
                idle.append(online_bench._connect(args.port))
                failed("the server closed the connection")
                continue
            state[2] += data
            answer = online_bench._response(state[2])
            if answer is None:
                continue
            finished = clock()
            status, body = answer
            bucket["latency"].append(finished - state[0])
            bucket["service"].append(finished - state[1])
            done += 1
            if status != 200 or expect not in body:
                bucket["errors"] += 1
                if len(bucket["samples"]) < 3:
                    bucket["samples"].append(f"HTTP {status}: {body[:200]!r}")
            del busy[sock]
            idle.append(sock)
    drained_s = max(1e-9, (clock() - start) / 1e9 - bucket_index * args.interval)
    unfinished = total - done
    bucket["errors"] += unfinished
    if unfinished:
        bucket["samples"].append(f"{unfinished} request(s) never answered")
    emit("drain" if bucket_index * args.interval >= args.duration else bucket_index + 1, drained_s)
    for sock in [*idle, *busy]:
        sock.close()


# ================================================================== the parent


def rss_mb(pid: int) -> float | None:
    """Resident set size of a process in MiB (None once it has exited)."""
    try:
        with open(f"/proc/{pid}/status") as handle:
            for line in handle:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


class EventFeed(threading.Thread):
    """Publishes ``rate`` events per second (``ts`` = now) to the repo's broker, in 10 batches a second."""

    def __init__(self, project: Any, keys: int, rate: int, seed: int) -> None:
        super().__init__(daemon=True)
        self.project, self.keys, self.rate, self.seed = project, keys, rate, seed
        self.stopping = threading.Event()
        self.published = 0
        self.error: BaseException | None = None

    def run(self) -> None:
        broker = self.project.broker()
        per_batch = max(1, self.rate // 10)
        next_at = time.monotonic()
        batch = 0
        try:
            while not self.stopping.is_set():
                now_ms = int(time.time() * 1000)
                payloads = bench.stream_payloads(
                    per_batch, self.keys, now_ms - 1000, now_ms, self.seed + batch
                )
                broker.publish(bench.TOPIC, payloads)
                self.published += len(payloads)
                batch += 1
                next_at += 0.1
                self.stopping.wait(max(0.0, next_at - time.monotonic()))
        except BaseException as error:  # noqa: BLE001 — reported with the figures
            self.error = error
        finally:
            broker.close()


def worker_lag(project: Any, groups: list[str]) -> int | None:
    """Records published and not yet applied, summed over the worker's consumer groups."""
    stream_url = project.config.stream
    if stream_url.startswith(("redis://", "rediss://")):
        import redis

        client = redis.Redis.from_url(stream_url)
        try:
            found = {g["name"].decode(): g for g in client.xinfo_groups(f"gnomon:topic:{bench.TOPIC}")}
        finally:
            client.close()
        return sum(int(found[g].get("lag") or 0) + int(found[g]["pending"]) for g in groups if g in found)
    broker = project.broker()
    try:
        end = broker.end_offsets(bench.TOPIC).get("0")
        committed = [broker.committed(bench.TOPIC, g) for g in groups]
    finally:
        broker.close()
    if end is None:
        return 0
    return sum(int(end) - (c if c is not None else -1) for c in committed)


def fmt_minute(row: dict[str, Any]) -> str:
    latency, service = row["latency"], row["service"]
    lat = (
        f"p50 {latency['p50']:8.2f}  p99 {latency['p99']:8.2f}  max {latency['max']:8.2f}"
        if latency.get("n")
        else "no completions"
    )
    svc = f"p50 {service['p50']:6.2f}  p99 {service['p99']:7.2f}" if service.get("n") else ""
    rss = f"server {row['server_rss_mb']:6.0f} MiB  worker {row['worker_rss_mb']:6.0f} MiB"
    return (
        f"  minute {row['minute']!s:>5}: {row['achieved_rps']:6.0f} rps  latency (ms, from scheduled) {lat} | "
        f"from send {svc} | errors {row['errors']:>6} | waiting {row['backlog']:>7} | RSS {rss} | "
        f"worker lag {row['worker_lag']} records"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--rate", type=float, default=None, help="fetches per second (default 2x sustained)")
    parser.add_argument("--store", choices=["redis", "sqlite"], default="redis")
    parser.add_argument("--keys", type=int, default=100_000, help="users and items")
    parser.add_argument(
        "--stream-per-key", type=int, default=2, help="events per key streamed before the soak"
    )
    parser.add_argument("--stream-rate", type=int, default=500, help="events per second fed to the worker")
    parser.add_argument("--conns", type=int, default=32, help="keep-alive connections of the load generator")
    parser.add_argument("--seed", type=int, default=7)
    # the child
    parser.add_argument("--child", choices=["loadgen"], help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--bodies", help=argparse.SUPPRESS)
    parser.add_argument("--duration", type=float, help=argparse.SUPPRESS)
    parser.add_argument("--interval", type=float, default=60.0, help=argparse.SUPPRESS)
    parser.add_argument("--drain", type=float, default=10.0, help=argparse.SUPPRESS)
    parser.add_argument("--path", default=online_bench.JOIN_PATH, help=argparse.SUPPRESS)
    parser.add_argument("--expect", default=online_bench.SUCCESS.decode(), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child == "loadgen":
        child_loadgen(args)
        return
    rate = args.rate or 2 * SUSTAINED_RPS[args.store]
    bench.WAIT_FOR_OFFLINE = False  # a soak shares the machine as it is; the load average is printed
    bench.SETTLE_S = 0.0
    ds = bench.upload_day()
    print(
        f"soak: gnomon serve ({args.store} store) at {rate:,.0f} fetches/s for {args.minutes:g} minute(s) while "
        f"a worker streams {args.stream_rate} events/s; {args.keys:,} keys; {bench.loadavg()}",
        flush=True,
    )
    warehouse, info = bench.ensure_warehouse(args.keys, args.seed, ds)
    print(f"  warehouse: {info['events']:,} events, {info['first_ds']} .. {info['last_ds']}", flush=True)
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    bodies = OUT_DIR / "bodies.jsonl"
    bodies.write_bytes(
        b"\n".join(
            json.dumps([k], separators=(",", ":")).encode()
            for k in online_bench.random_keys(args.keys, 20000, args.seed + 100)
        )
    )
    rows: list[dict[str, Any]] = []
    with bench.redis_server(OUT_DIR / "redis") as redis_base:
        online = f"{redis_base}/0" if args.store == "redis" else "sqlite:///online.db"
        stream = f"{redis_base}/1" if args.store == "redis" else "embedded"
        repo = bench.make_repo(OUT_DIR / f"repo_{args.store}", warehouse, online, stream)
        online_bench.phase_setup(args.store, repo, ds, args.keys, args.seed, args.stream_per_key)
        from gnomon import Project
        from gnomon.streaming.worker import consumer_group

        project = Project(repo)
        groups = [
            consumer_group(project.plan.group_bys[g], bench.TOPIC)
            for g in (bench.USER_GROUP_BY, bench.ITEM_GROUP_BY)
        ]
        server, port = online_bench.start_server("gnomon", repo)
        worker_log = OUT_DIR / "worker.log"
        with worker_log.open("wb") as log:
            worker = subprocess.Popen(
                [
                    sys.executable,
                    "-c",
                    "from gnomon.cli import main; main()",
                    "stream",
                    bench.JOIN,
                    "--repo",
                    str(repo),
                ],
                env=bench.child_env(),
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        feed = EventFeed(project, args.keys, args.stream_rate, args.seed + 1000)
        loadgen = None
        try:
            online_bench.run_loadgen(port, bodies, 300, 3, online_bench.SUCCESS.decode())  # warm-up
            feed.start()
            started = time.monotonic()
            server_cpu = online_bench.process_cpu_s(server.pid)
            loadgen = subprocess.Popen(
                [
                    sys.executable,
                    __file__,
                    "--child",
                    "loadgen",
                    "--port",
                    str(port),
                    "--bodies",
                    str(bodies),
                    "--rate",
                    str(rate),
                    "--duration",
                    str(args.minutes * 60),
                    "--conns",
                    str(args.conns),
                ],
                env=bench.child_env(),
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            print(
                f"  soaking from {time.strftime('%H:%M:%S')}; server pid {server.pid}, worker pid {worker.pid}; "
                f"{bench.loadavg()}",
                flush=True,
            )
            assert loadgen.stdout is not None
            for line in loadgen.stdout:
                row = json.loads(line)
                row["server_rss_mb"] = rss_mb(server.pid) or 0.0
                row["worker_rss_mb"] = rss_mb(worker.pid) or 0.0
                row["worker_lag"] = worker_lag(project, groups)
                row["published_events"] = feed.published
                row["loadavg"] = bench.loadavg()
                row["worker_alive"] = worker.poll() is None
                row["server_alive"] = server.poll() is None
                rows.append(row)
                print(fmt_minute(row), flush=True)
                if row["error_samples"]:
                    print(f"      error samples: {row['error_samples']}", flush=True)
                if not row["worker_alive"] or not row["server_alive"]:
                    print(
                        f"      !! worker alive {row['worker_alive']}, server alive {row['server_alive']}",
                        flush=True,
                    )
            loadgen.wait(timeout=120)
            if loadgen.returncode != 0:
                raise RuntimeError(f"the load generator failed: {loadgen.stderr.read()[-3000:]}")  # type: ignore[union-attr]
            elapsed = time.monotonic() - started
            server_cpu = online_bench.process_cpu_s(server.pid) - server_cpu
        finally:
            feed.stopping.set()
            feed.join(timeout=10)
            if loadgen is not None and loadgen.poll() is None:
                loadgen.kill()
                loadgen.wait()
            worker_exit = worker.poll()
            if worker_exit is None:
                worker.terminate()
                try:
                    worker.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    worker.kill()
                    worker.wait()
            online_bench.stop_server(server)
    summary = {
        "store": args.store,
        "rate": rate,
        "minutes": args.minutes,
        "keys": args.keys,
        "stream_rate": args.stream_rate,
        "events_published": feed.published,
        "feed_error": repr(feed.error) if feed.error else None,
        "worker_exited_during_soak": worker_exit,
        "completed": sum(r["completed"] for r in rows),
        "errors": sum(r["errors"] for r in rows),
        "server_cpu_busy": server_cpu / elapsed,
        "rss_server_mb": [round(r["server_rss_mb"], 1) for r in rows],
        "rss_worker_mb": [round(r["worker_rss_mb"], 1) for r in rows],
        "loadavg": bench.loadavg(),
    }
    out = OUT_DIR / f"results-{args.store}-{args.minutes:g}min.json"
    out.write_text(json.dumps({"summary": summary, "minutes": rows}, indent=1))
    print("\n================ summary ================")
    print(
        f"{args.store}: {rate:,.0f} fetches/s scheduled for {args.minutes:g} min; {summary['completed']:,} completed, "
        f"{summary['errors']:,} errors; server busy {summary['server_cpu_busy']:.0%} of a core; "
        f"{feed.published:,} events fed to the worker"
        + (f" (feed failed: {summary['feed_error']})" if summary["feed_error"] else "")
        + (f"; the worker EXITED with {worker_exit} during the soak" if worker_exit is not None else "")
    )
    print(f"RSS server (MiB, per minute): {summary['rss_server_mb']}")
    print(f"RSS worker (MiB, per minute): {summary['rss_worker_mb']}")
    print(
        f"{bench.loadavg()}; results in {out.relative_to(bench.REPO_DIR)}; worker log {worker_log.relative_to(bench.REPO_DIR)}"
    )


if __name__ == "__main__":
    main()
