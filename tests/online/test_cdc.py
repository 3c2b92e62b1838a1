"""Mutation-topic events (SPEC §4): the row format and Debezium change events → mutation-table rows."""

from __future__ import annotations

import json
import math
from typing import Any

import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gnomon.streaming.cdc import MutationFormatError, debezium_rows_table, is_debezium, mutation_rows

TS = 1_700_000_000_000
OLD = {"user": "u1", "balance": 7}
NEW = {"user": "u1", "balance": 9}


def debezium(op: str, before: Any = None, after: Any = None, ts_ms: Any = TS, **extra: Any) -> dict[str, Any]:
    return {
        "before": before,
        "after": after,
        "op": op,
        "ts_ms": ts_ms,
        "source": {"connector": "postgresql", "ts_ms": TS - 50, "table": "accounts"},
        **extra,
    }


def wrapped(envelope: dict[str, Any]) -> dict[str, Any]:
    return {"schema": {"type": "struct", "name": "accounts.Envelope", "fields": []}, "payload": envelope}


def reason(event: object, **columns: str) -> str:
    with pytest.raises(MutationFormatError) as caught:
        mutation_rows(event, **columns)
    message = str(caught.value)
    assert "\n" not in message and "\r" not in message
    kind, _, rest = message.partition(":")
    assert rest and 0 < len(kind) <= 30 and kind == kind.strip()
    return message


EXPECTED = {
    "c": [{**NEW, "mutation_ts": TS, "is_before": False}],
    "r": [{**NEW, "mutation_ts": TS, "is_before": False}],
    "u": [{**OLD, "mutation_ts": TS, "is_before": True}, {**NEW, "mutation_ts": TS, "is_before": False}],
    "d": [{**OLD, "mutation_ts": TS, "is_before": True}],
}
IMAGES = {"c": (None, NEW), "r": (None, NEW), "u": (OLD, NEW), "d": (OLD, None)}


# --- Debezium ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("wrap", [False, True], ids=["unwrapped", "wrapped"])
@pytest.mark.parametrize("op", ["c", "r", "u", "d"])
def test_debezium_ops(op: str, wrap: bool) -> None:
    before, after = IMAGES[op]
    event = debezium(op, before, after)
    if wrap:
        event = wrapped(event)
    assert is_debezium(event)
    rows = mutation_rows(event)
    assert rows == EXPECTED[op]
    assert all(type(row["mutation_ts"]) is int and type(row["is_before"]) is bool for row in rows)
    # the images are copied, not changed
    assert OLD == {"user": "u1", "balance": 7} and NEW == {"user": "u1", "balance": 9}


def test_debezium_update_puts_the_before_row_first_and_keeps_column_order() -> None:
    rows = mutation_rows(debezium("u", {"b": 1, "a": 2}, {"b": 3, "a": 4}))
    assert [list(row) for row in rows] == [["b", "a", "mutation_ts", "is_before"]] * 2
    assert [row["is_before"] for row in rows] == [True, False]


def test_debezium_uses_the_envelope_ts_ms_not_the_source_one() -> None:
    event = debezium("c", None, NEW, ts_ms=TS + 1)
    assert mutation_rows(event)[0]["mutation_ts"] == TS + 1
    assert mutation_rows(debezium("c", None, NEW, ts_ms=float(TS)))[0]["mutation_ts"] == TS


def test_debezium_from_json_text_with_the_delete_keeping_an_after_null() -> None:
    text = json.dumps(wrapped(debezium("d", OLD, None)))
    assert mutation_rows(json.loads(text)) == EXPECTED["d"]


def test_debezium_create_ignores_a_present_before_of_null() -> None:
    event = {"op": "c", "after": NEW, "ts_ms": TS}  # no 'before' key at all
    assert mutation_rows(event) == EXPECTED["c"]


def test_debezium_custom_columns() -> None:
    rows = mutation_rows(
        wrapped(debezium("u", OLD, NEW)), mutation_time_column="changed_at", reversal_column="reverted"
    )
    assert rows == [{**OLD, "changed_at": TS, "reverted": True}, {**NEW, "changed_at": TS, "reverted": False}]


# --- the row format ---------------------------------------------------------------------------------------


def test_row_format() -> None:
    event = {**NEW, "mutation_ts": TS, "is_before": False}
    rows = mutation_rows(event)
    assert rows == [event] and rows[0] is not event
    assert not is_debezium(event)


def test_row_format_normalizes_an_integral_float_time() -> None:
    (row,) = mutation_rows({"user": "u1", "mutation_ts": 5.0, "is_before": True})
    assert row == {"user": "u1", "mutation_ts": 5, "is_before": True}
    assert type(row["mutation_ts"]) is int


def test_row_format_custom_columns() -> None:
    event = {**OLD, "changed_at": TS, "reverted": True}
    assert mutation_rows(event, mutation_time_column="changed_at", reversal_column="reverted") == [event]
    # under the default names, the same object is neither format
    assert "'mutation_ts'" in reason(event)


def test_row_format_wins_over_debezium_looking_columns() -> None:
    """A table may have columns named op/before/after: the two reserved columns make it a row."""
    event = {"op": "u", "before": None, "after": "x", "mutation_ts": TS, "is_before": False}
    assert not is_debezium(event)
    assert mutation_rows(event) == [event]


# --- rejections -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("event", [None, [], "x", 3, 2.5, True])
def test_non_objects(event: object) -> None:
    message = reason(event)
    assert message.startswith("bad mutation event:") and "JSON object" in message
    if event is None:
        assert "tombstone" in message


def test_row_time_type_rejections() -> None:
    for bad in (True, False, "1700000000000", None, 5.5, math.nan, math.inf, [1], 2**64):
        message = reason({"user": "u1", "mutation_ts": bad, "is_before": False})
        assert message.startswith("bad mutation time:") and "'mutation_ts'" in message


def test_row_reversal_rejections() -> None:
    for bad in (0, 1, "true", None, 1.0, [True]):
        message = reason({"user": "u1", "mutation_ts": TS, "is_before": bad})
        assert message.startswith("bad reversal flag:") and "'is_before'" in message
        assert "true or false" in message


def test_row_missing_one_column() -> None:
    message = reason({"user": "u1", "is_before": False})
    assert message.startswith("missing mutation time:") and "'mutation_ts'" in message
    assert "Debezium" in message
    message = reason({"user": "u1", "mutation_ts": TS})
    assert message.startswith("missing reversal flag:") and "'is_before'" in message and "Debezium" in message
    message = reason(
        {"user": "u1", "changed_at": TS}, mutation_time_column="changed_at", reversal_column="rev"
    )
    assert message.startswith("missing reversal flag:") and "'rev'" in message


@pytest.mark.parametrize(
    "event", [{}, {"user": "u1"}, {"schema": {}, "payload": {"user": "u1"}}, {"payload": "x"}]
)
def test_neither_format(event: dict[str, Any]) -> None:
    message = reason(event)
    assert message.startswith("unknown mutation format:")
    assert "'mutation_ts'" in message and "'is_before'" in message and "Debezium" in message
    assert "before, after, op, ts_ms" in message


@pytest.mark.parametrize("wrap", [False, True], ids=["unwrapped", "wrapped"])
def test_debezium_without_op(wrap: bool) -> None:
    event: dict[str, Any] = {"before": None, "after": NEW, "ts_ms": TS}
    if wrap:
        event = wrapped(event)
    assert is_debezium(event)
    message = reason(event)
    assert message.startswith("bad Debezium event: a Debezium event without 'op'")


@pytest.mark.parametrize("op", ["t", "m"])
def test_debezium_truncate_and_message_ops(op: str) -> None:
    event = {"op": op, "ts_ms": TS, "before": None, "after": None}
    for e in (event, wrapped(event)):
        message = reason(e)
        assert message.startswith("unsupported Debezium op:") and f"'{op}'" in message
        assert "cannot be applied as row mutations" in message


@pytest.mark.parametrize("op", ["x", "U", "", None, 1, ["c"]])
def test_debezium_unknown_op(op: Any) -> None:
    message = reason(debezium(op, OLD, NEW))
    assert message.startswith("bad Debezium event:") and "'op'" in message


@pytest.mark.parametrize("op", ["u", "d"])
def test_debezium_before_null(op: str) -> None:
    for before in (None, "absent"):
        event = debezium(op, None, NEW)
        if before == "absent":
            del event["before"]
        message = reason(wrapped(event))
        assert message.startswith("missing before image:") and "'before'" in message
        assert "REPLICA IDENTITY FULL" in message


@pytest.mark.parametrize("op", ["c", "r", "u"])
def test_debezium_after_missing(op: str) -> None:
    event = debezium(op, OLD, None)
    message = reason(event)
    assert message.startswith("bad Debezium event:") and "'after'" in message
    del event["after"]
    assert "'after'" in reason(event)


def test_debezium_ts_ms_rejections() -> None:
    event = debezium("c", None, NEW)
    del event["ts_ms"]
    message = reason(event)
    assert message.startswith("missing mutation time:") and "'ts_ms'" in message
    for bad in (None, "1700000000000", True, 1.5, math.nan, {"ms": 1}, -(2**63) - 1):
        message = reason(wrapped(debezium("c", None, NEW, ts_ms=bad)))
        assert message.startswith("bad mutation time:") and "'ts_ms'" in message


@pytest.mark.parametrize("field", ["before", "after"])
@pytest.mark.parametrize("bad", [[1, 2], "row", 3, True])
def test_debezium_images_must_be_objects(field: str, bad: Any) -> None:
    images = {"before": OLD, "after": NEW, field: bad}
    message = reason(debezium("u", images["before"], images["after"]))
    assert message.startswith("bad Debezium event:") and f"'{field}'" in message and "object" in message


@pytest.mark.parametrize("field", ["before", "after"])
@pytest.mark.parametrize("column", ["mutation_ts", "is_before"])
def test_debezium_rows_with_reserved_columns(field: str, column: str) -> None:
    images = {"before": dict(OLD), "after": dict(NEW)}
    images[field][column] = 1
    message = reason(debezium("u", images["before"], images["after"]))
    assert message.startswith("reserved column:") and f"'{column}'" in message and f"'{field}'" in message
    # with other mutation column names, the same column is an ordinary one
    rows = mutation_rows(
        debezium("u", images["before"], images["after"]), mutation_time_column="mt", reversal_column="rev"
    )
    assert rows[0 if field == "before" else 1][column] == 1


def test_non_string_column_names() -> None:
    """Only a caller building events in Python can do this; JSON object keys are always strings."""
    message = reason({1: "x", "mutation_ts": TS, "is_before": False})
    assert message.startswith("bad mutation row:") and "not a string" in message
    message = reason(debezium("c", None, {1: "x"}))
    assert message.startswith("bad mutation row:") and "'after'" in message


def test_the_two_columns_must_differ() -> None:
    with pytest.raises(ValueError, match="must differ"):
        mutation_rows({"x": 1}, mutation_time_column="m", reversal_column="m")


def test_long_values_are_shortened_in_the_reason() -> None:
    message = reason({"user": "u1", "mutation_ts": "x" * 10_000 + "\n", "is_before": False})
    assert len(message) < 400


# --- property: any JSON-like value is either rows or a MutationFormatError ---------------------------------

json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=8),
)
json_keys = st.one_of(
    st.sampled_from(
        ["op", "before", "after", "ts_ms", "payload", "schema", "mutation_ts", "is_before", "source", "user"]
    ),
    st.text(max_size=6),
)
json_values = st.recursive(
    json_scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=4), st.dictionaries(json_keys, children, max_size=5)
    ),
    max_leaves=20,
)


def valid_events() -> st.SearchStrategy[dict[str, Any]]:
    row = st.dictionaries(
        st.sampled_from(["user", "balance", "op", "before", "mutation_ts", "is_before"]),
        json_scalars,
        max_size=4,
    )
    times = st.one_of(st.integers(-(2**63), 2**63 - 1), st.integers(0, 2**40).map(float))
    as_rows = st.builds(lambda r, t, b: {**r, "mutation_ts": t, "is_before": b}, row, times, st.booleans())
    plain_row = st.dictionaries(st.sampled_from(["user", "balance", "name"]), json_scalars, max_size=3)
    envelopes = st.builds(
        debezium,
        st.sampled_from(["c", "r", "u", "u", "d", "d", "c", "t", "m"]),
        st.one_of(plain_row, st.none()),
        st.one_of(plain_row, st.none()),
        times,
    )
    return st.one_of(as_rows, envelopes, envelopes.map(wrapped))


@st.composite
def mutated_events(draw: st.DrawFn) -> object:
    event = draw(valid_events())
    target = event["payload"] if "payload" in event and draw(st.booleans()) else event
    for key in draw(st.lists(st.sampled_from(sorted(target)), max_size=3, unique=True)):
        if draw(st.booleans()):
            del target[key]
        else:
            target[key] = draw(json_values)
    return event


CASES = {"count": 0}


def check_rows(rows: list[dict[str, Any]], time_column: str = "mutation_ts", flag: str = "is_before") -> None:
    assert isinstance(rows, list) and 1 <= len(rows) <= 2
    for row in rows:
        assert isinstance(row, dict)
        assert type(row[time_column]) is int and -(2**63) <= row[time_column] < 2**63
        assert type(row[flag]) is bool
    if len(rows) == 2:
        assert [row[flag] for row in rows] == [True, False]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(json_values, valid_events(), mutated_events()))
def test_any_value_is_rows_or_a_format_error(event: object) -> None:
    CASES["count"] += 1
    snapshot = json.dumps(event, sort_keys=True, default=repr)
    try:
        rows = mutation_rows(event)
    except MutationFormatError as error:
        message = str(error)
        assert "\n" not in message and "\r" not in message
        kind, colon, _ = message.partition(":")
        assert colon and 0 < len(kind) <= 30
    else:
        check_rows(rows)
    assert json.dumps(event, sort_keys=True, default=repr) == snapshot  # the event is not changed


@settings(max_examples=100, deadline=None)
@given(valid_events())
def test_valid_events_with_a_row_op_give_rows(event: dict[str, Any]) -> None:
    """Generated well-formed events convert unless they hit a documented rejection."""
    CASES["count"] += 1
    envelope = event.get("payload", event)
    try:
        rows = mutation_rows(event)
    except MutationFormatError as error:
        kind = str(error).split(":")[0]
        op = envelope.get("op")
        assert op in ("t", "m", "u", "d", "c", "r")
        expected = (
            {"unsupported Debezium op"}
            if op in ("t", "m")
            else {"missing before image", "bad Debezium event"}
        )
        assert kind in expected
    else:
        check_rows(rows)
        if "op" in envelope and "mutation_ts" not in envelope:
            assert all(row["mutation_ts"] == int(envelope["ts_ms"]) for row in rows)


IMAGE = pa.struct([("user", pa.string()), ("balance", pa.int64())])
ENVELOPE = pa.schema([("before", IMAGE), ("after", IMAGE), ("op", pa.string()), ("ts_ms", pa.int64())])


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.builds(
            debezium,
            st.sampled_from(["c", "r", "u", "d", "t", "m"]),
            st.one_of(
                st.none(), st.fixed_dictionaries({"user": st.text(max_size=3), "balance": st.integers(0, 9)})
            ),
            st.one_of(st.none(), st.fixed_dictionaries({"user": st.none(), "balance": st.integers(0, 9)})),
            st.integers(0, 2**40),
        ),
        min_size=1,
        max_size=12,
    )
)
def test_a_batch_converts_column_wise_as_event_by_event(events: list[dict[str, Any]]) -> None:
    """`debezium_rows_table` gives `mutation_rows`' rows, event ids and order, or declines a batch
    where `mutation_rows` refuses an event."""
    CASES["count"] += 1
    envelopes = pa.Table.from_pylist(events, schema=ENVELOPE)
    expected: list[tuple[int, str, dict[str, Any]]] = []
    for index, event in enumerate(events):
        try:
            rows = mutation_rows(event)
        except MutationFormatError:
            assert debezium_rows_table(envelopes) is None
            return
        suffixes = [""] if len(rows) == 1 else [":0", ":1"]
        expected += [(index, suffix, row) for suffix, row in zip(suffixes, rows, strict=True)]
    converted = debezium_rows_table(envelopes)
    assert converted is not None
    rows_table, positions, suffixes = converted
    assert (
        list(zip(positions.to_pylist(), suffixes.to_pylist(), rows_table.to_pylist(), strict=True))
        == expected
    )


def test_report_hypothesis_cases() -> None:
    """Runs after the property tests (file order): shows how many Hypothesis cases ran (with -s or -rA)."""
    print(f"hypothesis cases run: {CASES['count']}")
