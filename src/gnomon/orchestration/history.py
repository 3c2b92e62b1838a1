"""The run history of `gnomon run`: every attempt of every task, in SQLite at ``<repo>/.gnomon/runs.db``.

One row per attempt of a task on a day: its status (``waiting`` for a partition, ``running``,
``success``, ``failed``, ``skipped``), start and end times, the attempt number, the definition
fingerprint it ran with, the error text or what it waits for, and the partitions it wrote. Rows are
committed as they change, so a run killed at any point leaves an exact record: a row still
``running`` or ``waiting`` whose process is gone shows as interrupted, and the next run does the task
again. `gnomon status` prints the latest attempt per task and day.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

__all__ = ["HISTORY_FILE", "STATUSES", "Attempt", "History", "RunRecord", "format_status"]

HISTORY_FILE = Path(".gnomon") / "runs.db"
STATUSES = ("waiting", "running", "success", "failed", "skipped")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    run_id TEXT PRIMARY KEY,
    started_at REAL NOT NULL,
    ended_at REAL,
    pid INTEGER NOT NULL,
    command TEXT NOT NULL,
    status TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS attempts (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    run_id TEXT NOT NULL,
    task TEXT NOT NULL,
    ds TEXT NOT NULL,
    status TEXT NOT NULL,
    attempt INTEGER NOT NULL,
    fingerprint TEXT,
    started_at REAL NOT NULL,
    ended_at REAL,
    pid INTEGER NOT NULL,
    detail TEXT NOT NULL DEFAULT '',
    outputs TEXT NOT NULL DEFAULT '[]'
);
CREATE INDEX IF NOT EXISTS attempts_by_task_ds ON attempts (task, ds, id);
"""


def _alive(pid: int) -> bool:
    """Whether process ``pid`` still exists (a run killed mid-way leaves rows that say otherwise)."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, owned by someone else
        return True
    return True


@dataclass(frozen=True)
class Attempt:
    """One attempt of a task on a day, as recorded."""

    id: int
    run_id: str
    task: str
    ds: str
    status: str
    attempt: int
    fingerprint: str | None
    started_at: float
    ended_at: float | None
    pid: int
    detail: str
    outputs: list[str]

    @property
    def interrupted(self) -> bool:
        """Recorded as waiting or running by a process that no longer exists."""
        return self.status in ("waiting", "running") and not _alive(self.pid)

    @property
    def shown_status(self) -> str:
        """The status as `gnomon status` prints it (``interrupted`` for a dead process's row)."""
        return "interrupted" if self.interrupted else self.status

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "status": self.shown_status}


def _attempt(row: Sequence[Any]) -> Attempt:
    """An ``attempts`` row (its columns in table order) as an `Attempt`."""
    row_id, run_id, task, ds, status, attempt, fingerprint, started_at, ended_at, pid, detail, outputs = row
    return Attempt(
        row_id,
        run_id,
        task,
        ds,
        status,
        attempt,
        fingerprint,
        started_at,
        ended_at,
        pid,
        detail,
        json.loads(outputs),
    )


@dataclass(frozen=True)
class RunRecord:
    """One `gnomon run` invocation."""

    run_id: str
    started_at: float
    ended_at: float | None
    pid: int
    command: str
    status: str


class History:
    """The SQLite run history of one repo; safe to share between the runner's threads."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, timeout=30, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.executescript(_SCHEMA)

    @classmethod
    def for_repo(cls, root: str | Path) -> History:
        """The history at ``<root>/.gnomon/runs.db`` (created on first use)."""
        return cls(Path(root) / HISTORY_FILE)

    def close(self) -> None:
        self._db.close()

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One committed write at a time (threads share the connection)."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def _read(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        with self._lock:
            return self._db.execute(sql, params).fetchall()

    # -------------------------------------------------------------- runs

    def start_run(self, command: str) -> str:
        """Record a new run; returns its id."""
        run_id = uuid.uuid4().hex[:12]
        with self._write() as db:
            db.execute(
                "INSERT INTO runs VALUES (?, ?, NULL, ?, ?, 'running')",
                (run_id, time.time(), os.getpid(), command),
            )
        return run_id

    def finish_run(self, run_id: str, status: str) -> None:
        with self._write() as db:
            db.execute(
                "UPDATE runs SET ended_at = ?, status = ? WHERE run_id = ?", (time.time(), status, run_id)
            )

    def runs(self, limit: int = 10) -> list[RunRecord]:
        """The most recent runs, newest first."""
        rows = self._read("SELECT * FROM runs ORDER BY started_at DESC LIMIT ?", (limit,))
        return [RunRecord(*row) for row in rows]

    # -------------------------------------------------------------- attempts

    def begin(
        self,
        run_id: str,
        task: str,
        ds: str,
        status: str,
        attempt: int,
        fingerprint: str | None,
        detail: str = "",
    ) -> int:
        """Record a new attempt row; returns its id."""
        with self._write() as db:
            cursor = db.execute(
                "INSERT INTO attempts (run_id, task, ds, status, attempt, fingerprint, started_at, pid, detail) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (run_id, task, ds, status, attempt, fingerprint, time.time(), os.getpid(), detail),
            )
            return int(cursor.lastrowid or 0)

    def update(self, row: int, status: str, detail: str | None = None, restart: bool = False) -> None:
        """Change a row's status (and detail); ``restart`` resets its start time (waiting → running)."""
        sets: list[str] = ["status = ?"]
        params: list[Any] = [status]
        if detail is not None:
            sets.append("detail = ?")
            params.append(detail)
        if restart:
            sets.append("started_at = ?")
            params.append(time.time())
        with self._write() as db:
            db.execute(f"UPDATE attempts SET {', '.join(sets)} WHERE id = ?", (*params, row))

    def finish(self, row: int, status: str, detail: str = "", outputs: Sequence[str] = ()) -> None:
        """A row's final status, end time, detail and outputs."""
        with self._write() as db:
            db.execute(
                "UPDATE attempts SET status = ?, ended_at = ?, detail = ?, outputs = ? WHERE id = ?",
                (status, time.time(), detail, json.dumps(list(outputs)), row),
            )

    def record(
        self, run_id: str, task: str, ds: str, status: str, fingerprint: str | None, detail: str
    ) -> None:
        """A finished row in one go (a skip, or a task not run because what it needs failed)."""
        row = self.begin(run_id, task, ds, status, 0, fingerprint, detail)
        self.finish(row, status, detail)

    def done_fingerprint(self, task: str, ds: str) -> str | None:
        """The definition fingerprint of the latest success (or skip of done work) of ``task`` on
        ``ds``; None when there is none."""
        rows = self._read(
            "SELECT fingerprint FROM attempts WHERE task = ? AND ds = ? AND status IN ('success', 'skipped') "
            "AND fingerprint IS NOT NULL ORDER BY id DESC LIMIT 1",
            (task, ds),
        )
        return rows[0][0] if rows else None

    def latest(self, ds: str | None = None, days: int = 3) -> list[Attempt]:
        """The latest attempt per task and day: of ``ds``, or of the ``days`` most recent days."""
        if ds is not None:
            wanted = [ds]
        else:
            wanted = [
                r[0] for r in self._read("SELECT DISTINCT ds FROM attempts ORDER BY ds DESC LIMIT ?", (days,))
            ]
        if not wanted:
            return []
        marks = ", ".join("?" * len(wanted))
        rows = self._read(
            f"SELECT * FROM attempts WHERE id IN (SELECT MAX(id) FROM attempts WHERE ds IN ({marks}) "
            "GROUP BY task, ds) ORDER BY ds, id",
            wanted,
        )
        return [_attempt(row) for row in rows]

    def attempts(self, task: str, ds: str) -> list[Attempt]:
        """Every recorded attempt of ``task`` on ``ds``, oldest first."""
        rows = self._read("SELECT * FROM attempts WHERE task = ? AND ds = ? ORDER BY id", (task, ds))
        return [_attempt(row) for row in rows]


# ------------------------------------------------------------------ `gnomon status`


def _clock(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    return dt.datetime.fromtimestamp(seconds, dt.UTC).strftime("%Y-%m-%d %H:%M:%S")


def _took(attempt: Attempt) -> str:
    end = attempt.ended_at if attempt.ended_at is not None else (None if attempt.interrupted else time.time())
    return "-" if end is None else f"{end - attempt.started_at:.1f}s"


def _detail(attempt: Attempt) -> str:
    """What a row says in one line: the error, what it waits for, the skip reason, or what it wrote."""
    if attempt.interrupted:
        return f"process {attempt.pid} ended before the task did; the next run does it again"
    if attempt.status == "success" and attempt.outputs:
        return ", ".join(attempt.outputs)
    return attempt.detail.splitlines()[0] if attempt.detail else ""


def format_status(attempts: Sequence[Attempt], width: int = 100) -> str:
    """The history as a table, then each failure's full error text."""
    if not attempts:
        return "no runs recorded yet; start one with `gnomon run --ds YYYY-MM-DD`"
    header = ("DS", "TASK", "STATUS", "TRY", "STARTED (UTC)", "TOOK", "DETAIL")
    rows = [
        (a.ds, a.task, a.shown_status, str(a.attempt or "-"), _clock(a.started_at), _took(a), _detail(a))
        for a in attempts
    ]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header) - 1)]
    lines = []
    for row in [header, *rows]:
        cells = [cell.ljust(w) for cell, w in zip(row, widths, strict=False)]
        detail = row[-1] if len(row[-1]) <= width else row[-1][: width - 1] + "…"
        lines.append("  ".join([*cells, detail]).rstrip())
    failures = [a for a in attempts if a.status == "failed"]
    if failures:
        lines.append("")
        lines.append("failed:")
        lines += [
            f"  {a.ds} {a.task}" + (f" (attempt {a.attempt})" if a.attempt else "") + f": {a.detail}"
            for a in failures
        ]
    return "\n".join(lines)
