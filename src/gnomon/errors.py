"""Gnomon's error hierarchy: one root, a few subclasses per layer, each also a matching builtin."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class GnomonError(Exception):
    """Root of every error Gnomon raises on purpose."""


class DefinitionError(GnomonError, ValueError):
    """A definition (or a whole repo) is invalid: names the object, the field and the fix."""

    def __init__(
        self,
        message: str,
        *,
        obj: str | None = None,
        field: str | None = None,
        fix: str | None = None,
        file: str | None = None,
    ) -> None:
        self.obj, self.field, self.fix, self.file = obj, field, fix, file
        where = ".".join(p for p in (obj, field) if p)
        text = f"{where}: {message}" if where else message
        if file:
            text = f"{file}: {text}"
        if fix:
            text = f"{text} Fix: {fix}"
        super().__init__(text)


class UnsupportedError(DefinitionError, NotImplementedError):
    """A definition the chosen engine or path accepts but does not implement: raised by ``compile``
    (naming the object, the field and what to do), never a silently wrong value."""


class ConfigError(GnomonError, ValueError):
    """`gnomon.yaml` is missing or invalid."""


class UnknownObjectError(GnomonError, KeyError):
    """A name (GroupBy, Join, StagingQuery, table, column) that does not exist."""

    def __init__(self, kind: str, name: str, known: Iterable[str] = ()) -> None:
        self.kind, self.name, self.known = kind, name, sorted(known)
        message = f"unknown {kind} {name!r}"
        close = difflib.get_close_matches(name, self.known, n=3)
        if close:
            message += f"; did you mean {', '.join(map(repr, close))}?"
        elif self.known:
            message += f"; known: {', '.join(self.known[:20])}"
        self.message = message
        super().__init__(message)

    def __str__(self) -> str:  # KeyError would print the repr of the message
        return self.message


class WarehouseError(GnomonError, LookupError):
    """A warehouse table or partition is missing or unreadable."""


class ExecutionError(GnomonError, RuntimeError):
    """An offline job failed while running; nothing partial was written."""


class MissingExtraError(GnomonError, ImportError):
    """An optional dependency is not installed; says which extra to install."""


class AlreadySupervisedError(GnomonError, RuntimeError):
    """Another `gnomon stream --all` already supervises the repo's stream workers (names its pid)."""


class PartitionTimeoutError(GnomonError, TimeoutError):
    """`gnomon run` waited ``--sensor-timeout`` seconds for a partition of a table the repo reads but
    does not produce, and it never landed: names the table, the ds and the task that waited."""

    def __init__(self, table: str, ds: str, task: str, waited_s: float) -> None:
        self.table, self.ds, self.task, self.waited_s = table, ds, task, waited_s
        super().__init__(
            f"table {table!r} has no partition ds={ds}, which {task} reads; waited {waited_s:.0f} s. "
            f"Fix: land {table}/ds={ds} in the warehouse, then run again (finished work is skipped), "
            "or wait longer with --sensor-timeout"
        )


def did_you_mean(name: str, known: Iterable[str]) -> str:
    """A short suggestion sentence for an unknown `name`, or an empty string."""
    close = difflib.get_close_matches(name, list(known), n=3)
    return f" Did you mean {', '.join(map(repr, close))}?" if close else ""
