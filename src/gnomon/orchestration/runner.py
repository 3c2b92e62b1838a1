"""`gnomon run`: everything due for a day, in dependency order, once its inputs exist (SPEC §7).

Per day, the runner walks the task graph (`graph.build_graph`). A task runs once every task it needs
succeeded (or was skipped as already done) and its sensors' partitions have landed; while it waits,
independent tasks go ahead. Work is idempotent: a backfill whose partition exists and whose
definition is unchanged, or an upload (consistency check) whose latest success on that day ran the
same definition, is skipped; a changed definition recomputes that day's partition with ``force``.
A failed task is retried with exponential backoff; a partition still missing after the sensor
timeout fails the task with `PartitionTimeoutError`. Every attempt lands in the `History` as it
happens, so a run killed at any point and started again does the unfinished work and nothing twice:
each backfill partition is renamed into place whole (`Project._write_all`).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from gnomon.errors import (
    ConfigError,
    DefinitionError,
    ExecutionError,
    GnomonError,
    PartitionTimeoutError,
    UnknownObjectError,
)
from gnomon.orchestration.graph import BACKFILL_KINDS, Task, build_graph
from gnomon.orchestration.history import History
from gnomon.orchestration.sensors import Missing, missing_for_task
from gnomon.project import Project

__all__ = ["DailyRunner", "Decision", "RunOptions", "TaskOutcome", "logging_sampled", "project_graph"]

log = logging.getLogger("gnomon.run")

#: errors a retry cannot fix: the definition or configuration is wrong
_PERMANENT = (DefinitionError, ConfigError, UnknownObjectError)

#: report(ds, task id, status, detail): the CLI prints each line as it happens
Reporter = Callable[[str, str, str, str], None]


@dataclass(frozen=True)
class RunOptions:
    """How `gnomon run` waits, retries and parallelises."""

    sensor_timeout_s: float = 3600.0  # how long a task waits for a missing partition (0: check once)
    poll_interval_s: float = 30.0  # how often missing partitions are looked for again
    retries: int = 2  # further attempts after a failure
    retry_delay_s: float = 10.0  # the first retry's delay; doubles at each further one
    concurrency: int = 1  # tasks run at once (in threads)

    def __post_init__(self) -> None:
        if self.concurrency < 1 or self.retries < 0 or self.sensor_timeout_s < 0 or self.poll_interval_s <= 0:
            raise ConfigError(
                f"run options out of range: {self}; need concurrency >= 1, retries >= 0, "
                "sensor timeout >= 0 and a poll interval > 0"
            )


@dataclass(frozen=True)
class Decision:
    """What the runner does with a task on a day: run it (with ``force`` when its definition changed)
    or skip it, and why; ``done``: skipped because the work is done (its fingerprint is recorded)."""

    run: bool
    force: bool = False
    reason: str = ""
    done: bool = False


@dataclass
class TaskOutcome:
    """How a task ended on one day."""

    task: str
    ds: str
    status: str  # success | skipped | failed
    detail: str = ""
    outputs: list[str] = field(default_factory=list)
    error: BaseException | None = None


def logging_sampled(project: Project) -> bool:
    """Whether `gnomon serve` logs a sample of Join fetches (``serving: {log: {sample: > 0}}``), the
    condition for scheduling consistency checks."""
    sample = project.config.serving.log.get("sample", 0)
    return isinstance(sample, int | float) and sample > 0


def project_graph(project: Project, names: Sequence[str] | None = None) -> list[Task]:
    """The task graph of a repo (or of ``names`` and what they need), consistency checks included
    when fetches are logged."""
    return build_graph(project.plan, names or None, consistency=logging_sampled(project))


def _error_text(error: BaseException) -> str:
    return str(error) if isinstance(error, GnomonError) else f"{type(error).__name__}: {error}"


@contextmanager
def _repo_lock(root: Path) -> Any:
    """One `gnomon run` per repo at a time (two would do the same work twice). The lock is the
    operating system's, so a killed run releases it."""
    import fcntl

    path = root / ".gnomon" / "run.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    handle: IO[str] = path.open("a+")
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "?"
            raise ExecutionError(
                f"another `gnomon run` (pid {holder}) is running in {root}; wait for it to finish "
                "(`gnomon status` shows its progress) or stop it, then run again"
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(str(os.getpid()))
        handle.flush()
        yield
    finally:
        handle.close()


class DailyRunner:
    """Runs a repo's task graph day by day, recording every attempt in the repo's history."""

    def __init__(
        self,
        project: Project,
        names: Sequence[str] | None = None,
        options: RunOptions | None = None,
        history: History | None = None,
        report: Reporter | None = None,
    ) -> None:
        self.project = project
        self.options = options or RunOptions()
        self.tasks = project_graph(project, names)
        self.history = history or History.for_repo(project.root)
        self.report: Reporter = report or (lambda ds, task, status, detail: None)

    def run(self, days: Sequence[str], command: str = "gnomon run") -> list[TaskOutcome]:
        """Run every day in order; stop after a day with a failure and raise its error."""
        with _repo_lock(self.project.root):
            run_id = self.history.start_run(command)
            outcomes: list[TaskOutcome] = []
            try:
                for ds in days:
                    day = _Day(self, run_id, ds).run()
                    outcomes += day
                    _raise_failures(ds, day)
            except BaseException:
                self.history.finish_run(run_id, "failed")
                raise
            self.history.finish_run(run_id, "success")
            return outcomes

    # -------------------------------------------------------------- one task's work

    def decide(self, task: Task, ds: str) -> Decision:
        """Whether (and how) ``task`` runs on ``ds``: what is done and unchanged is skipped."""
        if not task.due(ds):
            return Decision(False, reason=f"not due: starts on {task.start_ds}")
        done = self.history.done_fingerprint(task.id, ds)
        if task.kind in BACKFILL_KINDS and task.output_table:
            if ds not in self.project.warehouse.partitions(task.output_table):
                return Decision(True)
            if done is None:
                return Decision(False, reason=f"partition {task.output_table}/ds={ds} exists", done=True)
            if done == task.fingerprint:
                reason = f"done: {task.output_table}/ds={ds} exists, definition unchanged"
                return Decision(False, reason=reason, done=True)
            return Decision(True, force=True, reason="the definition changed: recomputing the partition")
        if done == task.fingerprint:
            return Decision(False, reason="done: succeeded earlier with this definition", done=True)
        return Decision(True, reason="" if done is None else "the definition changed: running again")

    def perform(self, task: Task, ds: str, force: bool) -> list[str]:
        """Do ``task``'s work for ``ds`` in this process; returns what it wrote."""
        if task.kind in BACKFILL_KINDS:
            written = self.project.backfill(task.name, ds, ds, force=force, deps=True)
            return [f"{task.output_table}/ds={day}" for day in written]
        if task.kind == "upload":
            return [
                f"online {name}: {keys} keys" for name, keys in self.project.upload(task.name, ds).items()
            ]
        if task.kind == "consistency":
            from gnomon.monitoring.consistency import check_consistency

            result = check_consistency(self.project, task.name, ds)
            return [_summary(result)]
        raise ExecutionError(f"task {task.id!r}: unknown kind {task.kind!r}")

    def attempt(self, task: Task, ds: str, run_id: str, row: int | None, force: bool) -> TaskOutcome:
        """Run ``task`` with retries; ``row`` is its waiting row, reused by the first attempt."""
        retries = self.options.retries
        for number in range(1, retries + 2):
            if row is None:
                row = self.history.begin(run_id, task.id, ds, "running", number, task.fingerprint)
            else:
                self.history.update(row, "running", "", restart=True)
            try:
                outputs = self.perform(task, ds, force)
            except Exception as error:  # noqa: BLE001 — recorded, retried, then reported by the run
                text = _error_text(error)
                self.history.finish(row, "failed", text)
                if not isinstance(error, GnomonError):
                    log.warning("%s on %s failed", task.id, ds, exc_info=True)
                if isinstance(error, _PERMANENT) or number > retries:
                    return TaskOutcome(task.id, ds, "failed", text, error=error)
                delay = self.options.retry_delay_s * 2 ** (number - 1)
                self.report(ds, task.id, "retrying", f"attempt {number} failed; again in {delay:g} s: {text}")
                time.sleep(delay)
                row = None
                continue
            self.history.finish(row, "success", outputs=outputs)
            return TaskOutcome(task.id, ds, "success", outputs=outputs)
        raise AssertionError("unreachable: the last attempt returns")


def _summary(result: Any) -> str:
    """One line about a consistency check's result, whatever its shape."""
    if hasattr(result, "summary") and callable(result.summary):
        return str(result.summary())
    return "checked" if result is None else str(result)[:200]


def _raise_failures(ds: str, outcomes: Sequence[TaskOutcome]) -> None:
    """A day's failures as one error: a sensor timeout as itself (it names the table and ds), else
    the tasks that failed (not those left unrun because of them)."""
    failed = [o for o in outcomes if o.status == "failed"]
    if not failed:
        return
    for outcome in failed:
        if isinstance(outcome.error, PartitionTimeoutError):
            raise outcome.error
    causes = [o for o in failed if o.error is not None] or failed
    listed = "; ".join(f"{o.task}: {o.detail}" for o in causes[:5])
    unrun = len(failed) - len(causes)
    raise ExecutionError(
        f"{len(causes)} task(s) failed on ds={ds}"
        + (f" ({unrun} more not run because of them)" if unrun else "")
        + f": {listed}. Fix the cause and run again: finished work is skipped "
        f"(`gnomon status --ds {ds}` shows every task)"
    )


@dataclass
class _Waiting:
    """A task waiting for partitions: its history row, since when, and what it last waited for."""

    row: int
    since: float
    detail: str


class _Day:
    """The scheduler of one day: ready tasks run (up to the concurrency) or wait for partitions."""

    def __init__(self, runner: DailyRunner, run_id: str, ds: str) -> None:
        self.runner, self.run_id, self.ds = runner, run_id, ds
        self.history, self.options = runner.history, runner.options
        self.pending: dict[str, Task] = {t.id: t for t in runner.tasks}  # topological order
        self.status: dict[str, str] = {}
        self.outcomes: list[TaskOutcome] = []
        self.running: dict[Future[TaskOutcome], Task] = {}
        self.waiting: dict[str, _Waiting] = {}

    def run(self) -> list[TaskOutcome]:
        with ThreadPoolExecutor(self.options.concurrency, thread_name_prefix="gnomon-run") as pool:
            while self.pending or self.running:
                self._schedule(pool)
                self._pause()
        return self.outcomes

    def _settle(self, outcome: TaskOutcome) -> None:
        self.status[outcome.task] = outcome.status
        self.outcomes.append(outcome)
        self.runner.report(
            self.ds, outcome.task, outcome.status, ", ".join(outcome.outputs) or outcome.detail
        )

    def _schedule(self, pool: ThreadPoolExecutor) -> None:
        """Skip, start or keep waiting every pending task whose needs are settled."""
        for task in list(self.pending.values()):
            failed = [n for n in task.needs if self.status.get(n) == "failed"]
            if failed:
                self._not_run(task, failed)
            elif all(self.status.get(n) in ("success", "skipped") for n in task.needs):
                self._consider(task, pool)

    def _close(self, task: Task, status: str, detail: str, fingerprint: str | None = None) -> None:
        """Settle a task that does not run: finish its waiting row, or record a row."""
        state = self.waiting.pop(task.id, None)
        if state is not None:
            self.history.finish(state.row, status, detail)
        else:
            self.history.record(self.run_id, task.id, self.ds, status, fingerprint, detail)
        del self.pending[task.id]
        self._settle(TaskOutcome(task.id, self.ds, status, detail))

    def _not_run(self, task: Task, failed: list[str]) -> None:
        self._close(task, "failed", f"not run: it needs {', '.join(failed)}, which failed")

    def _consider(self, task: Task, pool: ThreadPoolExecutor) -> None:
        decision = self.runner.decide(task, self.ds)
        if not decision.run:
            self._close(task, "skipped", decision.reason, task.fingerprint if decision.done else None)
            return
        if len(self.running) >= self.options.concurrency:
            return
        missing = missing_for_task(task, self.ds, self.runner.project.warehouse)
        if missing:
            self._wait(task, missing)
            return
        row = self.waiting.pop(task.id).row if task.id in self.waiting else None
        del self.pending[task.id]
        future = pool.submit(self.runner.attempt, task, self.ds, self.run_id, row, decision.force)
        self.running[future] = task

    def _wait(self, task: Task, missing: list[Missing]) -> None:
        """Record (or refresh) a task's wait; past the sensor timeout, fail it naming the partition."""
        detail = "waiting for " + ", ".join(m.describe() for m in missing)
        now = time.monotonic()
        state = self.waiting.get(task.id)
        if state is None:
            row = self.history.begin(self.run_id, task.id, self.ds, "waiting", 1, task.fingerprint, detail)
            state = self.waiting[task.id] = _Waiting(row, now, detail)
            self.runner.report(
                self.ds, task.id, "waiting", f"{detail} (up to {self.options.sensor_timeout_s:g} s)"
            )
        elif detail != state.detail:
            self.history.update(state.row, "waiting", detail)
            state.detail = detail
        if now - state.since >= self.options.sensor_timeout_s:
            error = PartitionTimeoutError(
                missing[0].table, missing[0].partitions[0], task.id, now - state.since
            )
            self.history.finish(state.row, "failed", str(error))
            del self.waiting[task.id], self.pending[task.id]
            self._settle(TaskOutcome(task.id, self.ds, "failed", str(error), error=error))

    def _pause(self) -> None:
        """Collect finished tasks; when none finished, sleep until one does or the next poll."""
        if not self.pending and not self.running:
            return
        ready = [f for f in self.running if f.done()]
        if not ready:
            timeout = self._next_check()
            if self.running:
                ready = list(wait(self.running, timeout=timeout, return_when=FIRST_COMPLETED).done)
            elif self.waiting:
                time.sleep(timeout)
            else:  # every pending task needs a settled one: `_schedule` has a bug
                raise ExecutionError(
                    f"the runner is stuck on ds={self.ds} with {sorted(self.pending)} pending"
                )
        for future in ready:
            self.running.pop(future)
            self._settle(future.result())

    def _next_check(self) -> float:
        """Seconds until a waiting task should look again (its poll, or its timeout if sooner)."""
        if not self.waiting:
            return self.options.poll_interval_s
        now = time.monotonic()
        until_timeout = min(s.since + self.options.sensor_timeout_s - now for s in self.waiting.values())
        return max(0.0, min(self.options.poll_interval_s, until_timeout))
