"""Mutation events on an entity source's ``mutation_topic`` → mutation-table rows (SPEC §4).

A mutation table holds one row per row-image: the entity row's columns, the mutation time
(``mutation_ts``, epoch milliseconds) and the reversal flag (``is_before``: true for an old image that
is taken back, false for a new image). An insert is one ``is_before=false`` row, a delete one
``is_before=true`` row, an update two rows (the old image first). The column names are the Query's
``mutation_time_column`` and ``reversal_column``.

A mutation topic carries JSON events in either of two formats, both turned into those rows by
:func:`mutation_rows`:

1. The mutation table's own row format, one JSON object per row::

       {"user": "u1", "balance": 7, "mutation_ts": 1700000000000, "is_before": false}

   The mutation time must be an integer (an integral float such as ``5.0`` is taken as ``5``; a
   boolean is not a number here) and the reversal flag a JSON ``true``/``false`` (not ``0``/``1``).

2. A Debezium change event, as the connector publishes it, with or without the
   ``{"schema": ..., "payload": {...}}`` wrapper of Kafka Connect's JSON converter::

       {"before": {"user": "u1", "balance": 7}, "after": {"user": "u1", "balance": 9},
        "op": "u", "ts_ms": 1700000000000, "source": {...}}

   The envelope's ``ts_ms`` (when the connector processed the change) is the mutation time of
   every resulting row. ``c`` (create) and ``r`` (snapshot read) give the ``after`` row; ``u``
   (update) gives the ``before`` row reversed, then the ``after`` row; ``d`` (delete) gives the
   ``before`` row reversed. Updates and deletes need full before-images: on Postgres set
   ``REPLICA IDENTITY FULL`` on the source table, on MySQL ``binlog_row_image=FULL``. ``t``
   (truncate) and ``m`` (logical message) events are not row mutations and are rejected.

An object holding both the mutation time and the reversal column is read as a row — a Debezium
envelope never has those at its top level, so a table may have columns named ``op``, ``before``
or ``after``. Otherwise an object with ``op``, ``before`` or ``after`` (at its top level or in a
``payload`` object) is read as a Debezium event.

Anything else raises :class:`MutationFormatError`, whose message is the dead-letter reason: one
line, beginning with a short kind and a colon (the worker counts dead letters by that kind), then
the field at fault and the fix.

:func:`debezium_rows_table` does the Debezium conversion for a whole micro-batch at once, column-wise
(the change events read by Arrow's JSON reader), and declines any batch holding an event that
:func:`mutation_rows` would refuse, for the event-by-event path to name the reason.
"""

from __future__ import annotations

import math
from itertools import repeat
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

__all__ = ["MutationFormatError", "debezium_rows_table", "is_debezium", "mutation_rows"]

_INT64_MIN = -(2**63)
_INT64_MAX = 2**63 - 1

_ROW_OPS = {"c": "create", "r": "snapshot read", "u": "update", "d": "delete"}
_BEFORE_OPS = ("u", "d")  # the ops that take the before image back
_AFTER_OPS = ("c", "r", "u")  # the ops that add the after image
_NON_ROW_OPS = {"t": "truncate", "m": "logical message"}
_DEBEZIUM_FIELDS = "(before, after, op, ts_ms)"


class MutationFormatError(ValueError):
    """A mutation event that cannot be turned into mutation-table rows.

    The message is the dead-letter reason: ``"<kind>: <what is wrong, the field, the fix>"`` on one
    line, the kind (the text before the first colon) naming the class of fault.
    """


def _show(value: object, limit: int = 60) -> str:
    """A short one-line rendering of an offending value, with its JSON-ish type."""
    text = repr(value)
    if len(text) > limit:
        text = text[: limit - 3] + "..."
    kind = "null" if value is None else type(value).__name__
    return f"{text} ({kind})"


def _epoch_ms(value: object, name: str, kind: str) -> int:
    """``value`` as integer epoch milliseconds, or a reason naming field ``name``."""
    if isinstance(value, int) and not isinstance(value, bool):
        number = value
    elif isinstance(value, float) and math.isfinite(value) and value.is_integer():
        number = int(value)
    else:
        raise MutationFormatError(
            f"bad mutation time: {kind} {name!r} must be epoch milliseconds as a JSON integer, "
            f"got {_show(value)}; send the time as an integer number of milliseconds since 1970-01-01 UTC"
        )
    if not _INT64_MIN <= number <= _INT64_MAX:
        raise MutationFormatError(
            f"bad mutation time: {kind} {name!r} = {number} is outside the 64-bit integer range; "
            "send epoch milliseconds"
        )
    return number


def _check_names(row: dict[Any, Any], where: str) -> None:
    """Every column name of ``row`` must be a string (checked in C; the loop only finds the culprit)."""
    if all(map(isinstance, row, repeat(str))):
        return
    for name in row:
        if not isinstance(name, str):
            raise MutationFormatError(
                f"bad mutation row: the {where} has a column name {_show(name)} that is not a string; "
                "column names must be strings"
            )


def _check_columns(row: dict[Any, Any], where: str, mutation_time_column: str, reversal_column: str) -> None:
    """A Debezium row image must have string column names and none of the two reserved ones."""
    _check_names(row, where)
    for reserved, role in ((mutation_time_column, "mutation time"), (reversal_column, "reversal flag")):
        if reserved in row:
            raise MutationFormatError(
                f"reserved column: the {where} has a column {reserved!r}, which the mutation table reserves "
                f"for the {role}; rename that column in the source table, or give the Query another "
                "mutation_time_column/reversal_column name"
            )


def _debezium_envelope(event: dict[Any, Any]) -> dict[Any, Any] | None:
    """The change-event envelope of ``event`` (unwrapping ``payload``), or None if it is not Debezium."""
    if "op" in event or "before" in event or "after" in event:
        return event
    payload = event.get("payload")
    if isinstance(payload, dict) and ("op" in payload or "before" in payload or "after" in payload):
        return payload
    return None


def is_debezium(
    event: dict[str, Any], mutation_time_column: str = "mutation_ts", reversal_column: str = "is_before"
) -> bool:
    """Whether :func:`mutation_rows` reads ``event`` as a Debezium change event (maybe a malformed one).

    >>> is_debezium({"schema": {}, "payload": {"op": "c", "after": {"id": 1}, "ts_ms": 5}})
    True
    >>> is_debezium({"id": 1, "op": "x", "mutation_ts": 5, "is_before": False})
    False
    """
    if mutation_time_column in event and reversal_column in event:
        return False
    return _debezium_envelope(event) is not None


def mutation_rows(
    event: object, mutation_time_column: str = "mutation_ts", reversal_column: str = "is_before"
) -> list[dict[str, Any]]:
    """The mutation-table rows of one parsed JSON mutation event (see the module docstring).

    Each row is a new dict: the row's columns, then ``mutation_time_column`` (int epoch ms) and
    ``reversal_column`` (bool). Raises :class:`MutationFormatError` with the dead-letter reason.

    >>> mutation_rows({"before": {"id": 1, "balance": 7}, "after": {"id": 1, "balance": 9},
    ...                "op": "u", "ts_ms": 1700000000000})  # doctest: +NORMALIZE_WHITESPACE
    [{'id': 1, 'balance': 7, 'mutation_ts': 1700000000000, 'is_before': True},
     {'id': 1, 'balance': 9, 'mutation_ts': 1700000000000, 'is_before': False}]
    """
    if mutation_time_column == reversal_column:
        raise ValueError(
            f"the mutation time and reversal columns must differ, both are {mutation_time_column!r}"
        )
    if not isinstance(event, dict):
        hint = (
            " (a Kafka tombstone carries no change: configure the Debezium connector with "
            "tombstones.on.delete=false)"
            if event is None
            else ""
        )
        raise MutationFormatError(
            f"bad mutation event: a mutation event must be a JSON object, got {_show(event)}{hint}"
        )
    if mutation_time_column in event and reversal_column in event:
        return [_row_format(event, mutation_time_column, reversal_column)]
    envelope = _debezium_envelope(event)
    if envelope is not None:
        return _debezium_rows(envelope, mutation_time_column, reversal_column)
    expected = (
        f"a mutation row needs {mutation_time_column!r} and {reversal_column!r} beside its columns, "
        f"or send a Debezium change event {_DEBEZIUM_FIELDS}"
    )
    if mutation_time_column in event:
        raise MutationFormatError(f"missing reversal flag: {reversal_column!r} is missing; {expected}")
    if reversal_column in event:
        raise MutationFormatError(f"missing mutation time: {mutation_time_column!r} is missing; {expected}")
    raise MutationFormatError(
        f"unknown mutation format: the event has neither {mutation_time_column!r} and {reversal_column!r} "
        f"nor 'op'; {expected}"
    )


def _row_format(event: dict[Any, Any], mutation_time_column: str, reversal_column: str) -> dict[str, Any]:
    _check_names(event, "row")
    row: dict[str, Any] = dict(event)
    row[mutation_time_column] = _epoch_ms(event[mutation_time_column], mutation_time_column, "the row's")
    flag = event[reversal_column]
    if not isinstance(flag, bool):
        raise MutationFormatError(
            f"bad reversal flag: the row's {reversal_column!r} must be JSON true or false, "
            f"got {_show(flag)}; send true for an old row image (taken back) and false for a new one"
        )
    return row


def _debezium_rows(
    envelope: dict[Any, Any], mutation_time_column: str, reversal_column: str
) -> list[dict[str, Any]]:
    if "op" not in envelope:
        raise MutationFormatError(
            "bad Debezium event: a Debezium event without 'op' cannot be applied; send the connector's "
            f"change events unmodified {_DEBEZIUM_FIELDS}, op one of 'c', 'u', 'd', 'r'"
        )
    op = envelope["op"]
    if isinstance(op, str) and op in _NON_ROW_OPS:
        raise MutationFormatError(
            f"unsupported Debezium op: op {op!r} ({_NON_ROW_OPS[op]}) cannot be applied as row mutations; "
            "keep such events off the mutation topic (e.g. the connector's skipped.operations=t) and "
            "reload the entity through its snapshot table"
        )
    if not isinstance(op, str) or op not in _ROW_OPS:
        raise MutationFormatError(
            f"bad Debezium event: 'op' must be one of 'c', 'u', 'd', 'r', got {_show(op)}; "
            "send the connector's change events unmodified"
        )
    if "ts_ms" not in envelope:
        raise MutationFormatError(
            "missing mutation time: the Debezium event has no 'ts_ms'; send the connector's change "
            "events unmodified (the envelope's ts_ms is the mutation time)"
        )
    ts = _epoch_ms(envelope["ts_ms"], "ts_ms", "the Debezium event's")
    images: dict[str, dict[str, Any] | None] = {}
    for name in ("before", "after"):
        image = envelope.get(name)
        if image is not None and not isinstance(image, dict):
            raise MutationFormatError(
                f"bad Debezium event: {name!r} must be a JSON object or null, got {_show(image)}; "
                "send the connector's change events unmodified"
            )
        if image is not None:
            _check_columns(image, f"{name!r} row", mutation_time_column, reversal_column)
        images[name] = image
    before, after = images["before"], images["after"]
    if op in _BEFORE_OPS and before is None:
        raise MutationFormatError(
            f"missing before image: a Debezium {_ROW_OPS[op]} (op {op!r}) without a 'before' row cannot "
            "take the old row back; the source table must publish full before-images "
            "(Postgres: ALTER TABLE ... REPLICA IDENTITY FULL; MySQL: binlog_row_image=FULL)"
        )
    if op in _AFTER_OPS and after is None:
        raise MutationFormatError(
            f"bad Debezium event: a Debezium {_ROW_OPS[op]} (op {op!r}) needs an 'after' row, got none; "
            "send the connector's change events unmodified"
        )
    rows: list[dict[str, Any]] = []
    if op in _BEFORE_OPS:
        assert before is not None
        rows.append({**before, mutation_time_column: ts, reversal_column: True})
    if op in _AFTER_OPS:
        assert after is not None
        rows.append({**after, mutation_time_column: ts, reversal_column: False})
    return rows


def debezium_rows_table(
    envelopes: pa.Table, mutation_time_column: str = "mutation_ts", reversal_column: str = "is_before"
) -> tuple[pa.Table, pa.Array, pa.Array] | None:
    """`mutation_rows` of a batch of Debezium change events, column-wise.

    ``envelopes``: one row per event, its columns ``before`` and ``after`` (structs of the row's
    columns), ``op`` (string) and ``ts_ms`` (int64), as Arrow's JSON reader gives them from the
    events' envelopes. Returns the mutation rows (the image's columns, then ``mutation_time_column``
    and ``reversal_column``), in the order `mutation_rows` gives them event after event; each row's
    event (its position in ``envelopes``); and each row's event-id suffix (``":0"``, ``":1"`` for
    the two rows of an update, ``""`` for the one row of another op). None when an event is not
    one `mutation_rows` converts (no op, a non-row op, no time, a missing image): the caller then
    converts event by event, which gives the reason.

    What the reader has checked already (or the caller must): a value of the wrong type, and
    image columns named as the two mutation columns.

    >>> images = pa.struct([("id", pa.int64())])
    >>> envelopes = pa.table({"before": pa.array([None, {"id": 1}], images),
    ...     "after": pa.array([{"id": 1}, {"id": 2}], images), "op": ["c", "u"], "ts_ms": [5, 6]})
    >>> rows, events, suffixes = debezium_rows_table(envelopes)
    >>> rows.to_pylist()  # doctest: +NORMALIZE_WHITESPACE
    [{'id': 1, 'mutation_ts': 5, 'is_before': False}, {'id': 1, 'mutation_ts': 6, 'is_before': True},
     {'id': 2, 'mutation_ts': 6, 'is_before': False}]
    >>> events.to_pylist(), suffixes.to_pylist()
    ([0, 1, 1], ['', ':0', ':1'])
    """
    op, ts_ms = envelopes.column("op"), envelopes.column("ts_ms")
    before = envelopes.column("before").combine_chunks()
    after = envelopes.column("after").combine_chunks()
    if op.null_count or ts_ms.null_count:
        return None
    takes_back, adds = pc.is_in(op, pa.array(_BEFORE_OPS)), pc.is_in(op, pa.array(_AFTER_OPS))
    if not pc.all(pc.or_(takes_back, adds)).as_py():  # truncate, message or unknown ops
        return None
    if (
        pc.any(pc.and_(takes_back, pc.is_null(before))).as_py()
        or pc.any(pc.and_(adds, pc.is_null(after))).as_py()
    ):
        return None
    n = envelopes.num_rows
    back, add = _flags(takes_back), _flags(adds)
    # row r of the images [before..., after...] is of event r % n; event by event, its before row first
    positions = np.stack([np.arange(n), np.arange(n, 2 * n)], axis=1)[np.stack([back, add], axis=1)]
    events = pa.array(positions % n)
    reversed_ = pa.array(positions < n)
    images = pa.concat_arrays([before, after]).take(pa.array(positions))
    names = [images.type.field(i).name for i in range(images.type.num_fields)]
    rows = pa.Table.from_arrays(
        [*images.flatten(), ts_ms.take(events), reversed_],
        names=[*names, mutation_time_column, reversal_column],
    )
    pairs = pa.array((back & add)[positions % n])  # the rows of an update
    suffixes = pc.if_else(pairs, pc.if_else(reversed_, ":0", ":1"), "")
    return rows, events, suffixes


def _flags(mask: pa.ChunkedArray | pa.Array) -> np.ndarray[Any, np.dtype[np.bool_]]:
    return np.asarray(mask.to_numpy(zero_copy_only=False), dtype=bool)
