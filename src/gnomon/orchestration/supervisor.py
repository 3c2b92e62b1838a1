"""`gnomon stream --all`: one supervised worker process per online streamed GroupBy (SPEC §7).

Each worker is a child process (``python -m gnomon.orchestration.supervisor GROUP_BY --repo R``,
which runs `Project.stream` of that one GroupBy), so a crash, a hang or a SIGKILL of one leaves the
others running. The supervisor restarts a worker that exits, after an exponential backoff; reports
every worker's state, lag and restarts (``GET /health``, ``GET /metrics`` and the file
``<repo>/.gnomon/streams.json``); and on SIGTERM or SIGINT stops the workers (SIGTERM, a grace
period, then SIGKILL) and returns.

A restarted worker resumes after the broker's committed offset, which never runs ahead of the store
(the stream worker commits a batch only after the store write that holds its rows and offsets), and
applying an event twice changes nothing, so a kill at any moment neither loses nor doubles an event.
The lag is read the same way for every broker: the topic's end against the offsets the store
recorded for the worker's consumer groups.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import gnomon
from gnomon.errors import AlreadySupervisedError, DefinitionError, GnomonError
from gnomon.metrics import Counter, StreamMetrics, serve_metrics
from gnomon.project import Project
from gnomon.streaming.worker import consumer_group, streamed_topics

log = logging.getLogger("gnomon.supervisor")

RUNNING, BACKOFF, STOPPED = "running", "backoff", "stopped"
STATE_FILE = Path(".gnomon") / "streams.json"  # what `gnomon status` and the UI read
LOCK_FILE = Path(".gnomon") / "streams.lock"  # one supervisor per repo
CHILD_DIR = Path(".gnomon") / "streams"  # each worker's own status file (pid, metrics port, error)
STABLE_AFTER_S = 60.0  # a run this long resets the backoff to its initial delay
TICK_S = 0.2  # how often exits and due restarts are looked at
REFRESH_S = 1.0  # how often lags are read and the state file written
SCRAPE_TIMEOUT_S = 1.0


def backoff_delay(failures: int, initial_s: float, maximum_s: float) -> float:
    """Seconds to wait before restarting a worker that exited ``failures`` times in a row without a
    stable run: ``initial_s``, doubling each time, at most ``maximum_s``.

    >>> [backoff_delay(n, 1.0, 60.0) for n in (1, 2, 3, 6, 7, 30)]
    [1.0, 2.0, 4.0, 32.0, 60.0, 60.0]
    """
    return float(min(initial_s * 2.0 ** min(failures - 1, 64), maximum_s))


def lag_records(end_offsets: Mapping[str, str], committed: Mapping[str, str]) -> int | None:
    """Records of a topic a consumer group has not applied yet: per partition, the topic's last
    offset minus the group's recorded one (the last offset + 1 before its first write). None when the
    broker's offsets are not record numbers (Redis stream ids).

    >>> lag_records({"0": "9"}, {"0": "4"})
    5
    >>> lag_records({"0": "9", "1": "2"}, {"0": "9"})
    3
    >>> lag_records({}, {})
    0
    >>> lag_records({"0": "1700000000000-3"}, {"0": "1700000000000-1"}) is None
    True
    """
    total = 0
    for partition, last in end_offsets.items():
        done = committed.get(partition, "-1")
        if not last.isdigit() or not done.lstrip("-").isdigit():
            return None
        total += max(int(last) - int(done), 0)
    return total


def streamed_group_bys(project: Project) -> dict[str, dict[str, str]]:
    """Every online GroupBy with a topic, with each of its topics' consumer group (what a worker of
    `gnomon stream NAME` uses, so both resume from the same offsets)."""
    found = {}
    for name, group_by in sorted(project.plan.group_bys.items()):
        topics = streamed_topics(group_by)
        if group_by.online and topics:
            found[name] = {topic: consumer_group(group_by, topic) for topic in topics}
    if not found:
        raise DefinitionError(
            "no online GroupBy streams a topic, so `gnomon stream --all` has nothing to run",
            obj=str(project.root),
            fix="give a GroupBy online=True and a source with topic= (events) or mutation_topic= (entities)",
        )
    return found


@dataclass
class Worker:
    """One supervised GroupBy: its process, and what ``/health`` reports about it."""

    group_by: str
    groups: dict[str, str]  # topic -> consumer group
    status_file: Path  # written by the worker process: pid, metrics port, the error it died of
    state: str = STOPPED
    process: subprocess.Popen[bytes] | None = None
    restarts: int = 0
    failures: int = 0  # exits in a row, each after a run shorter than the stable time
    last_exit_code: int | None = None
    last_error: str | None = None
    started: float = 0.0  # time.monotonic() of the last start
    started_at_ms: int | None = None
    restart_at: float = 0.0  # time.monotonic() of the next start, in backoff
    lag: int | None = None
    metrics_port: int | None = None

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None and self.state == RUNNING else None

    def health(self, now: float) -> dict[str, Any]:
        """The worker's entry of ``/health`` and ``streams.json``."""
        return {
            "group_by": self.group_by,
            "topics": sorted(self.groups),
            "state": self.state,
            "pid": self.pid,
            "restarts": self.restarts,
            "last_exit_code": self.last_exit_code,
            "last_error": self.last_error,
            "lag_records": self.lag,
            "uptime_s": round(now - self.started, 3) if self.state == RUNNING else None,
            "started_at_ms": self.started_at_ms,
            "next_restart_in_s": round(max(self.restart_at - now, 0.0), 3) if self.state == BACKOFF else None,
        }


class Supervisor:
    """Runs one worker process per online streamed GroupBy of a repo and keeps them running.

    ``run(stop)`` starts them, restarts an exited one after `backoff_delay` (reset once a run lasted
    ``stable_after_s``), and when ``stop`` is set sends each SIGTERM, waits ``grace_period_s``, then
    SIGKILLs what is left. `health` and `render_metrics` may be called from other threads."""

    def __init__(
        self,
        repo: str | Path,
        *,
        backoff_initial_s: float = 1.0,
        backoff_max_s: float = 60.0,
        grace_period_s: float = 10.0,
        stable_after_s: float = STABLE_AFTER_S,
    ) -> None:
        self.project = Project(repo)
        self.root = self.project.root
        self.backoff_initial_s, self.backoff_max_s = backoff_initial_s, max(backoff_max_s, backoff_initial_s)
        self.grace_period_s, self.stable_after_s = grace_period_s, stable_after_s
        self.workers = [
            Worker(name, groups, self.root / CHILD_DIR / f"{name}.json")
            for name, groups in streamed_group_bys(self.project).items()
        ]
        self.restarts = Counter(
            "gnomon_stream_worker_restarts_total",
            "Restarts of a GroupBy's stream worker process.",
            "group_by",
        )
        for worker in self.workers:
            self.restarts.inc(worker.group_by, 0)
        self.state = STOPPED
        self.started_at_ms = _now_ms()
        self.lag_read_at_ms: int | None = None  # when the lags were last read (the broker's end then)
        self._lock = threading.Lock()  # guards the workers' fields between the loop and HTTP threads
        self._sources: tuple[Any, Any] | None = None  # (store, broker) the lags are read from

    # ------------------------------------------------------------------ the loop

    def run_until_signalled(self) -> None:
        """`run` until SIGTERM or SIGINT (the main thread only: that is where Python runs handlers)."""
        stop = threading.Event()
        previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGTERM, signal.SIGINT)}
        try:
            self.run(stop)
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def run(self, stop: threading.Event) -> None:
        """Start every worker and supervise them until ``stop`` is set, then stop them all."""
        with _exclusive(self.root / LOCK_FILE, self.root / STATE_FILE):
            try:
                with self._lock:
                    self.state = RUNNING
                    for worker in self.workers:
                        self._start(worker)
                self._refresh()
                refreshed = time.monotonic()
                while not stop.wait(TICK_S):
                    changed = self._tick()
                    if changed or time.monotonic() - refreshed >= REFRESH_S:
                        self._refresh()
                        refreshed = time.monotonic()
            finally:
                self._stop_all()
                self._write_state()
                self._close_sources()

    def _tick(self) -> bool:
        """Notice exited workers and start those whose backoff is over; True if anything changed."""
        now, changed = time.monotonic(), False
        with self._lock:
            for worker in self.workers:
                if (
                    worker.state == RUNNING
                    and worker.process is not None
                    and worker.process.poll() is not None
                ):
                    self._exited(worker, now)
                    changed = True
                elif worker.state == BACKOFF and now >= worker.restart_at:
                    worker.restarts += 1
                    self.restarts.inc(worker.group_by)
                    self._start(worker)
                    changed = True
        return changed

    def _start(self, worker: Worker) -> None:
        """Start a worker's process (a failure to start counts as an exit: retried with backoff)."""
        worker.status_file.unlink(missing_ok=True)
        worker.metrics_port = None
        worker.started, worker.started_at_ms = time.monotonic(), _now_ms()
        try:
            worker.process = subprocess.Popen(self._command(worker.group_by), env=_child_env())
        except OSError as error:
            worker.process = None
            worker.last_error = f"could not start the worker process: {error}"
            self._back_off(worker, time.monotonic())
            return
        worker.state = RUNNING
        log.info("%s: worker started (pid %d)", worker.group_by, worker.process.pid)

    def _command(self, group_by: str) -> list[str]:
        command = [sys.executable, "-m", __name__, group_by, "--repo", str(self.root)]
        command += ["--status-file", str(self.root / CHILD_DIR / f"{group_by}.json")]
        return [*command, "--verbose"] if logging.getLogger().isEnabledFor(logging.INFO) else command

    def _exited(self, worker: Worker, now: float) -> None:
        """Record why a worker's process ended and schedule its restart."""
        assert worker.process is not None
        code = worker.process.returncode
        worker.last_exit_code = code
        status = _read_json(worker.status_file)
        if status.get("pid") == worker.process.pid and status.get("error"):
            worker.last_error = str(status["error"])
        else:
            worker.last_error = _describe_exit(code)
        self._back_off(worker, now)
        log.warning(
            "%s: worker (pid %d) stopped: %s; restarting in %.1f s",
            worker.group_by,
            worker.process.pid,
            worker.last_error,
            worker.restart_at - now,
        )

    def _back_off(self, worker: Worker, now: float) -> None:
        """Into backoff: the delay doubles with each exit in a row, and starts over after a stable run."""
        worker.failures = 1 if now - worker.started >= self.stable_after_s else worker.failures + 1
        worker.state = BACKOFF
        worker.restart_at = now + backoff_delay(worker.failures, self.backoff_initial_s, self.backoff_max_s)

    def _stop_all(self) -> None:
        """SIGTERM to every worker, ``grace_period_s`` to finish its micro-batch, then SIGKILL."""
        with self._lock:
            self.state = STOPPED
            live = [w for w in self.workers if w.process is not None and w.process.poll() is None]
            for worker in self.workers:
                worker.state = STOPPED
            for worker in live:
                assert worker.process is not None
                worker.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + self.grace_period_s
        for worker in live:
            assert worker.process is not None
            try:
                worker.process.wait(timeout=max(deadline - time.monotonic(), 0.0))
            except subprocess.TimeoutExpired:
                log.warning(
                    "%s: worker (pid %d) ignored SIGTERM; killed", worker.group_by, worker.process.pid
                )
                worker.process.kill()
                worker.process.wait()
            with self._lock:
                worker.last_exit_code = worker.process.returncode

    # ------------------------------------------------------------------ lag, state file

    def _refresh(self) -> None:
        """Read each worker's lag and metrics port (outside the lock: I/O), then write the state file."""
        read_at_ms = _now_ms()
        lags = {worker.group_by: self._lag(worker) for worker in self.workers}
        with self._lock:
            running = [(w, w.process.pid) for w in self.workers if w.state == RUNNING and w.process]
        statuses = {w.group_by: _read_json(w.status_file) for w, _ in running}
        with self._lock:
            self.lag_read_at_ms = read_at_ms
            for worker in self.workers:
                worker.lag = lags[worker.group_by]
            for worker, pid in running:
                status = statuses[worker.group_by]
                if (
                    worker.pid == pid
                    and status.get("pid") == pid
                    and isinstance(status.get("metrics_port"), int)
                ):
                    worker.metrics_port = status["metrics_port"]
        self._write_state()

    def _lag(self, worker: Worker) -> int | None:
        """Records of the worker's topics not applied yet (the topics' ends against the offsets its
        consumer groups recorded in the store); None when unknown."""
        try:
            if self._sources is None:
                self._sources = (self.project.store(), self.project.broker())
            store, broker = self._sources
            total = 0
            for topic, group in worker.groups.items():
                lag = lag_records(broker.end_offsets(topic), store.offsets(group))
                if lag is None:
                    return None
                total += lag
            return total
        except Exception as error:  # noqa: BLE001 — a store or broker that is down: lag unknown, go on
            log.warning("%s: cannot read the lag (%s: %s)", worker.group_by, type(error).__name__, error)
            self._close_sources()
            return None

    def _close_sources(self) -> None:
        sources, self._sources = self._sources, None
        for source in sources or ():
            with contextlib.suppress(Exception):
                source.close()

    def _write_state(self) -> None:
        """``<repo>/.gnomon/streams.json``, replaced atomically (a reader sees the old or the new)."""
        path = self.root / STATE_FILE
        try:
            _write_json(path, self.health())
        except OSError as error:
            log.warning("cannot write %s: %s", path, error)

    # ------------------------------------------------------------------ reports

    def health(self) -> dict[str, Any]:
        """What ``GET /health`` answers: the supervisor and each worker (state, pid, restarts, last
        exit code and error, lag in records, uptime)."""
        now = time.monotonic()
        with self._lock:
            workers = [worker.health(now) for worker in self.workers]
            state, lag_read_at_ms = self.state, self.lag_read_at_ms
        healthy = state == RUNNING and all(w["state"] == RUNNING for w in workers)
        return {
            "status": "ok" if healthy else ("degraded" if state == RUNNING else STOPPED),
            "pid": os.getpid(),
            "repo": str(self.root),
            "started_at_ms": self.started_at_ms,
            "updated_at_ms": _now_ms(),
            "lag_read_at_ms": lag_read_at_ms,
            "workers": workers,
        }

    def render_metrics(self) -> str:
        """What ``GET /metrics`` answers: the supervisor's gauges and counters, then the metrics each
        running worker serves (freshness, records, rows, dead letters), merged by metric name."""
        now = time.monotonic()
        with self._lock:
            up = {w.group_by: int(w.state == RUNNING) for w in self.workers}
            lag = {w.group_by: w.lag for w in self.workers if w.lag is not None}
            uptime = {w.group_by: round(now - w.started, 3) for w in self.workers if w.state == RUNNING}
            ports = [w.metrics_port for w in self.workers if w.state == RUNNING and w.metrics_port]
        lines = [
            *_gauge("gnomon_stream_worker_up", "1 while a GroupBy's stream worker process runs, else 0.", up),
            *self.restarts.render(),
            *_gauge("gnomon_stream_lag_records", "Records of a GroupBy's topics not applied yet.", lag),
            *_gauge(
                "gnomon_stream_worker_uptime_seconds", "Seconds since the worker process started.", uptime
            ),
            *merge_families(_scrape(port) for port in ports),
        ]
        return "\n".join(lines) + "\n"


def _gauge(name: str, help_text: str, values: Mapping[str, float]) -> list[str]:
    lines = [f"# HELP {name} {help_text}", f"# TYPE {name} gauge"]
    return lines + [f'{name}{{group_by="{key}"}} {value}' for key, value in sorted(values.items())]


def merge_families(texts: Iterable[str]) -> list[str]:
    """Prometheus texts of several processes as one: each metric's HELP and TYPE once, followed by
    the samples of every text (the processes label them apart, here by ``group_by``).

    >>> a = "# HELP x_total X.\\n# TYPE x_total counter\\nx_total{g=\\"a\\"} 1\\n"
    >>> merge_families([a, a.replace('"a"', '"b"')])
    ['# HELP x_total X.', '# TYPE x_total counter', 'x_total{g="a"} 1', 'x_total{g="b"} 1']
    """
    headers: dict[str, dict[str, str]] = {}  # metric -> {"HELP": line, "TYPE": line}
    samples: dict[str, list[str]] = {}
    for text in texts:
        name: str | None = None
        for line in text.splitlines():
            if line.startswith(("# HELP ", "# TYPE ")):
                name = line.split(" ", 3)[2]
                headers.setdefault(name, {}).setdefault(line[2:6], line)
                samples.setdefault(name, [])
            elif line.strip() and name is not None:
                samples[name].append(line)
    lines = []
    for name, found in headers.items():
        lines += [found[kind] for kind in ("HELP", "TYPE") if kind in found] + samples[name]
    return lines


def _scrape(port: int) -> str:
    """A worker's ``/metrics`` text ('' when it does not answer: it may be stopping)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=SCRAPE_TIMEOUT_S) as answer:
            return str(answer.read().decode())
    except OSError:
        return ""


def serve_supervisor(supervisor: Supervisor, host: str, port: int) -> ThreadingHTTPServer:
    """Serve ``GET /health`` (JSON) and ``GET /metrics`` (Prometheus text) of a supervisor from a
    daemon thread; ``shutdown()`` stops it. Raises OSError when the port is taken."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 — the http.server hook name
            path = self.path.split("?")[0]
            if path == "/health":
                self._answer(json.dumps(supervisor.health()).encode(), "application/json")
            elif path == "/metrics":
                self._answer(supervisor.render_metrics().encode(), "text/plain; version=0.0.4")
            else:
                self.send_error(404, "only /health and /metrics are served here")

        def _answer(self, body: bytes, content_type: str) -> None:
            self.send_response(200)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 — quiet, as the worker's is
            return

    server = ThreadingHTTPServer((host, port), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="gnomon-supervisor-http", daemon=True).start()
    return server


# ---------------------------------------------------------------------- files


@contextlib.contextmanager
def _exclusive(lock_path: Path, state_path: Path) -> Iterator[None]:
    """Hold the repo's supervisor lock (an OS file lock: released even when the process is killed)."""
    import fcntl

    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "a+b") as handle:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pid = _read_json(state_path).get("pid", "?")
            raise AlreadySupervisedError(
                f"another `gnomon stream --all` (pid {pid}) already supervises the workers of "
                f"{lock_path.parent.parent}; stop it first (kill -TERM {pid}) or use it (its /health)"
            ) from None
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def _read_json(path: Path) -> dict[str, Any]:
    """A small JSON object file ({} when missing or unreadable: it may be being replaced)."""
    try:
        found = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return found if isinstance(found, dict) else {}


def _write_json(path: Path, data: Mapping[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temporary.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(temporary, path)  # readers see the old file or the new one, never half


def _describe_exit(code: int) -> str:
    """A process's exit in words (a negative code is the signal that ended it).

    >>> _describe_exit(-9), _describe_exit(1)
    ('killed by SIGKILL', 'exited with code 1')
    """
    if code >= 0:
        return f"exited with code {code}"
    try:
        return f"killed by {signal.Signals(-code).name}"
    except ValueError:
        return f"killed by signal {-code}"


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def _child_env() -> dict[str, str]:
    """The environment of a worker process: ours, with this gnomon importable whatever the cwd."""
    env = dict(os.environ)
    source = str(Path(gnomon.__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (source, env.get("PYTHONPATH")) if p)
    return env


# ---------------------------------------------------------------------- the worker process


def run_worker(argv: Sequence[str] | None = None) -> int:
    """The worker process: `Project.stream` of one GroupBy until SIGTERM or SIGINT (or until its
    supervisor is gone), with its metrics on a free loopback port written to ``--status-file``.
    Returns the exit code: 0 when stopped, 1 when the worker failed (the error goes to the file)."""
    parser = argparse.ArgumentParser(prog="python -m gnomon.orchestration.supervisor")
    parser.add_argument("group_by")
    parser.add_argument("--repo", required=True)
    parser.add_argument("--status-file", required=True, type=Path)
    parser.add_argument("--verbose", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING, format="%(asctime)s %(name)s %(message)s"
    )
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    parent = os.getppid()
    metrics = StreamMetrics()
    server = serve_metrics(metrics.render, "127.0.0.1", 0)
    status: dict[str, Any] = {"pid": os.getpid(), "metrics_port": server.server_address[1]}
    _write_json(args.status_file, status)
    try:
        Project(args.repo).stream(
            args.group_by, metrics=metrics, stop=lambda: stop.is_set() or os.getppid() != parent
        )
    except Exception as error:  # noqa: BLE001 — reported to the supervisor, which restarts us
        _write_json(args.status_file, {**status, "error": f"{type(error).__name__}: {error}"})
        if not isinstance(error, GnomonError):
            log.exception("%s: the stream worker failed", args.group_by)
        else:
            log.error("%s: %s", args.group_by, error)
        return 1
    finally:
        server.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(run_worker())
