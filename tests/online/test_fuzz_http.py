"""Property tests of the HTTP API (SPEC §5, §6): Schemathesis generates requests from the server's own
OpenAPI schema, and Hypothesis generates fetch bodies and event batches the schema cannot describe.

One small online repo (an upload, a Join and two GroupBys online, their topic streamed) served by
uvicorn on a loopback port. Whatever is sent: never a 5xx; every answer is strict JSON; a 4xx says
``{"error": ...}`` naming the field (``body``, ``body[i]``, ``body[i].<key field>``, ``at``) or the
unknown name (404); a 200 has one result per key in order, and equals the in-process fetcher.

The schema documents each request body as "a JSON array of objects" (with ``at`` / ``sync`` and the
error answers): the key fields a name needs and the names themselves are not in it, so Schemathesis
alone mostly reaches the 404 and 400 paths and empty arrays. Its runs are therefore repeated with the path
parameter pinned to each known name, and the explicit Hypothesis tests below send key objects with
the right fields (values of every JSON type, nesting, huge numbers, NaN, unicode), ``at`` and
``sync=true``.
"""

from __future__ import annotations

import json
import logging
import math
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import httpx
import orjson
import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode

import gnomon
from gnomon import Project
from gnomon.serving.app import create_app

from .helpers import (
    BATCH_END,
    DAY,
    GROUP_BY,
    HOUR,
    ITEM_GROUP_BY,
    ITEMS,
    JOIN,
    TOPIC,
    UPLOAD_DS,
    USERS,
    build_repo,
    close,
    make_events,
    publish,
    running_server,
)

KNOWN = {"join": [JOIN], "groupby": [GROUP_BY, ITEM_GROUP_BY], "events": [TOPIC]}
KEY_FIELDS = {JOIN: ["item", "user"], GROUP_BY: ["user"], ITEM_GROUP_BY: ["item"]}
OPERATIONS = [  # (path, kind, path parameter)
    ("/v1/features/join/{name}", "join", "name"),
    ("/v1/features/groupby/{name}", "groupby", "name"),
    ("/v1/events/{topic}", "events", "topic"),
]
STARLETTE_404 = "starlette"  # a path no route matches: Starlette's own {"detail": "Not Found"}
CASES: Counter[str] = Counter()
# no shrinking: it would replay dozens of HTTP requests per step; the failing example is printed as drawn
PHASES = [Phase.explicit, Phase.reuse, Phase.generate]
FUZZ = settings(max_examples=50, deadline=None, suppress_health_check=list(HealthCheck), phases=PHASES)


class ServerErrors(logging.Filter):
    """Keeps the exceptions the server did not handle (for assertion messages) rather than let uvicorn
    format their tracebacks in its thread: CPython 3.11 formats a traceback with ``ast.parse``, whose
    AST state is shared across threads, and a concurrent parse by pytest (formatting a failure) then
    fails with "SystemError: AST constructor recursion depth mismatch" (an INTERNALERROR)."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[str] = []

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and record.exc_info[1] is not None:
            self.seen.append(f"{record.getMessage()}: {record.exc_info[1]!r}")
            return False
        return True


SERVER_ERRORS = ServerErrors()


@dataclass
class Served:
    repo: Path
    project: Project
    url: str
    http: httpx.Client
    schema: Any
    local: Any  # gnomon.Client(repo): the in-process fetcher
    session: requests.Session  # Schemathesis' requests, on one keep-alive connection


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    repo = tmp_path_factory.mktemp("fuzz_http") / "repo"
    events = make_events(300)
    project = build_repo(repo, events)
    project.upload(JOIN, UPLOAD_DS)
    publish(project, [e for e in events if e["ts"] >= BATCH_END])
    project.stream(JOIN, until_caught_up=True)
    server_log = logging.getLogger("uvicorn.error")
    server_log.addFilter(SERVER_ERRORS)
    with (
        running_server(create_app(repo)) as url,
        httpx.Client(base_url=url, timeout=30) as http,
        gnomon.Client(repo) as local,
        requests.Session() as session,
    ):
        schema = schemathesis.openapi.from_url(f"{url}/openapi.json")
        yield Served(repo, project, url, http, schema, local, session)
    server_log.removeFilter(SERVER_ERRORS)


@pytest.fixture(scope="module", autouse=True)
def report_cases(request: pytest.FixtureRequest) -> Iterator[None]:
    yield
    line = "fuzz_http cases: " + ", ".join(f"{name} {count}" for name, count in sorted(CASES.items()))
    line += f"; total {sum(v for k, v in CASES.items() if not k.startswith('('))}"
    plugins = request.config.pluginmanager
    reporter, capture = plugins.get_plugin("terminalreporter"), plugins.get_plugin("capturemanager")
    if reporter is not None and capture is not None:
        with capture.global_and_fixture_disabled():
            reporter.write_line(line)


# ------------------------------------------------------------------ the oracle


def body_verdict(raw: bytes, fields: list[str]) -> tuple[int, str] | None:
    """(400, what the error must name) for a body that is not an array of key objects with
    ``fields``; None for one that is."""
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        return 400, "body"
    if not isinstance(data, list):
        return 400, "body"
    for index, item in enumerate(data):
        if not isinstance(item, dict):
            return 400, f"body[{index}]"
    for index, item in enumerate(data):
        for name in fields:  # the fields in sorted order: the first one missing is named
            if name not in item:
                return 400, f"body[{index}].{name}"
    return None


def at_is_valid(at: str | None) -> bool:
    if at is None:
        return True
    try:
        int(at)
    except ValueError:
        return False
    return True


def outcomes(kind: str, name: str, raw: bytes, at: str | None = None) -> set[tuple[int, str | None]]:
    """Every acceptable (status, needle in the error) of a request; needle None for a 200."""
    if name in ("", ".", "..") or "/" in name:
        return {(404, STARLETTE_404)}  # pinned by test_a_name_no_route_matches_gets_an_error_naming_it
    if kind == "events":
        verdict = body_verdict(raw, [])
        if verdict is not None:
            return {verdict}  # the body is read before the topic
        return {(404, repr(name))} if name not in KNOWN["events"] else {(200, None)}
    if name not in KNOWN[kind]:
        return {(404, repr(name))}
    verdict = body_verdict(raw, KEY_FIELDS[name])
    if verdict is not None:
        return {verdict}
    return {(200, None)} if at_is_valid(at) else {(400, "at")}


def check(
    kind: str,
    name: str,
    raw: bytes,
    response: Any,
    at: str | None = None,
    strict_json: bool = True,
) -> Any:
    """The response is one of `outcomes`; returns its JSON."""
    assert response.status_code < 500, (
        kind,
        name,
        raw[:200],
        response.content[:500],
        SERVER_ERRORS.seen[-1:],
    )
    content_type = response.headers["content-type"]  # Schemathesis: a list of values
    content_type = content_type[0] if isinstance(content_type, list) else content_type
    assert content_type.startswith("application/json"), response.headers
    body = orjson.loads(response.content) if strict_json else json.loads(response.content)
    expected = outcomes(kind, name, raw, at)
    if response.status_code == 200:
        assert (200, None) in expected, (kind, name, raw[:200], at, body)
        return body
    assert isinstance(body, dict), body
    if (404, STARLETTE_404) in expected:  # no route matches: the service's error names the routes
        assert response.status_code == 404 and "no route" in body.get("error", ""), body
        CASES["(no-route 404s: name with '/', empty, '.' or '..')"] += 1
        return body
    error = body.get("error")
    assert isinstance(error, str) and error, body
    assert any(status == response.status_code and needle in error for status, needle in expected), (
        kind,
        name,
        raw[:200],
        at,
        response.status_code,
        error,
        expected,
    )
    return body


# ------------------------------------------------------------------ Schemathesis, from the schema


def test_the_schema_describes_every_route(served: Served) -> None:
    labels = {result.ok().label for result in served.schema.get_all_operations()}
    assert labels >= {
        "POST /v1/features/join/{name}",
        "POST /v1/features/groupby/{name}",
        "POST /v1/events/{topic}",
        "GET /health",
        "GET /metrics",
    }
    for path, _, _ in OPERATIONS:
        body = served.schema.raw_schema["paths"][path]["post"]["requestBody"]
        assert body["required"] is True
        schema = body["content"]["application/json"]["schema"]  # so far no more than this: see the docstring
        assert schema["type"] == "array" and schema["items"]["type"] == "object", schema


@pytest.mark.parametrize("pinned", [False, True], ids=["any-name", "known-name"])
@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE], ids=lambda m: m.value)
@pytest.mark.parametrize(("path", "kind", "parameter"), OPERATIONS, ids=[kind for _, kind, _ in OPERATIONS])
def test_schemathesis(
    served: Served, path: str, kind: str, parameter: str, mode: GenerationMode, pinned: bool
) -> None:
    """Requests generated from the OpenAPI schema (bodies that match it, and with ``negative``, bodies
    that do not), against any name, then against each known name."""
    operation = served.schema[path]["POST"]
    if pinned:
        strategy = st.sampled_from(KNOWN[kind]).flatmap(
            lambda name: operation.as_strategy(generation_mode=mode, path_parameters={parameter: name})
        )
    else:
        strategy = operation.as_strategy(generation_mode=mode)
    label = f"schemathesis {kind} {mode.value} {'known-name' if pinned else 'any-name'}"
    statuses: Counter[int] = Counter()

    @FUZZ
    @given(case=strategy)
    def run(case: Any) -> None:
        response = case.call(base_url=served.url, session=served.session)
        case.validate_response(response, checks=[schemathesis.checks.not_a_server_error])
        name = unquote(case.path_parameters[parameter])
        raw = response.request.body or b""
        at = (case.query or {}).get("at")
        check(
            kind,
            name,
            raw if isinstance(raw, bytes) else raw.encode(),
            response,
            None if at is None else str(at),
        )
        CASES[label] += 1
        statuses[response.status_code] += 1

    run()
    assert CASES[label] >= 10, CASES[label]
    if pinned and mode is GenerationMode.NEGATIVE:
        # bodies outside the schema are refused; a query parameter outside it may be read leniently
        # (sync=maybe is false), so a few 200s are fine
        assert statuses[400] > 0 and set(statuses) <= {200, 400}, statuses
    if not pinned and not (kind == "events" and mode is GenerationMode.NEGATIVE):  # there: a 400 first
        assert statuses[404] > 0, statuses


@pytest.mark.parametrize("path", ["/health", "/metrics"])
def test_schemathesis_get_routes(served: Served, path: str) -> None:
    operation = served.schema[path]["GET"]

    @settings(max_examples=5, deadline=None, suppress_health_check=list(HealthCheck), phases=PHASES)
    @given(case=operation.as_strategy())
    def run(case: Any) -> None:
        response = case.call(base_url=served.url, session=served.session)
        case.validate_response(response, checks=[schemathesis.checks.not_a_server_error])
        assert response.status_code == 200
        if path == "/health":
            assert response.json()["status"] == "ok"
        CASES[f"schemathesis GET {path}"] += 1

    run()


# ------------------------------------------------------------------ Hypothesis: fetch bodies

huge = st.one_of(st.integers(2**63, 2**80), st.integers(-(2**80), -(2**63) - 1))
# beyond int64 even when read as a float (-2**63 - 1 reads as -2**63: pinned in test_fuzz_worker.py)
beyond_int64 = st.one_of(st.integers(2**63, 2**80), st.integers(-(2**80), -(2**64)))
text = st.text(st.characters(exclude_categories=("Cs",)), max_size=8)
scalar = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**63), 2**63 - 1),
    huge,
    st.floats(),  # NaN and ±Infinity too: the server reads JSON's NaN/Infinity extensions
    text,
    st.sampled_from([*USERS, *ITEMS, "nobody", ""]),
)
value = st.recursive(
    scalar,
    lambda children: st.one_of(st.lists(children, max_size=3), st.dictionaries(text, children, max_size=3)),
    max_leaves=6,
)
string_key = st.one_of(st.sampled_from([*USERS, *ITEMS, "nobody"]), text)
in_range = st.integers(BATCH_END - DAY, BATCH_END + 3 * DAY).map(str)
ats = st.one_of(
    st.none(),
    in_range,
    in_range,
    st.sampled_from([str(BATCH_END), str(BATCH_END + 2 * DAY - 1), "-1", str(2**70), "0"]),
    text,
)


@st.composite
def key_object(draw: st.DrawFn, fields: list[str]) -> dict[str, Any]:
    key: dict[str, Any] = {}
    for name in fields:
        choice = draw(st.integers(0, 19))
        if choice == 0:
            continue  # missing: a 400 naming it
        key[name] = draw(string_key) if choice < 12 else draw(value)
    if draw(st.booleans()):
        key.update(draw(st.dictionaries(text.filter(lambda k: k not in fields), value, max_size=2)))
    return key


@st.composite
def fetch_body(draw: st.DrawFn, fields: list[str]) -> tuple[bytes, Any]:
    """(raw body, what it holds) — mostly arrays of key objects, also anything else."""
    shape = draw(
        st.sampled_from(["keys"] * 6 + ["empty", "mixed", "not an array", "garbage", "invalid utf-8"])
    )
    if shape == "keys":
        data: Any = draw(st.lists(key_object(fields), min_size=1, max_size=5))
    elif shape == "empty":
        data = []
    elif shape == "mixed":
        data = draw(st.lists(st.one_of(key_object(fields), value), min_size=1, max_size=4))
    elif shape == "not an array":
        data = draw(st.one_of(key_object(fields), scalar, st.dictionaries(text, value, max_size=3)))
    elif shape == "garbage":
        raw = draw(st.binary(max_size=20))
        return raw, None
    else:
        return b'[{"user": "\xff\xfe", "item": "a"}]', None
    raw = json.dumps(data, ensure_ascii=draw(st.booleans()), indent=draw(st.sampled_from([None, 1]))).encode()
    return raw, data


def plain(value: Any) -> bool:
    """A value the server echoes exactly: JSON without NaN/Infinity or integers beyond 64 bits."""
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, int) and not isinstance(value, bool):
        return -(2**63) <= value < 2**64
    if isinstance(value, list):
        return all(plain(v) for v in value)
    if isinstance(value, dict):
        return all(plain(v) for v in value.values())
    return True


def nonfinite_and_huge(data: Any) -> bool:
    """Whether the body holds both a NaN/Infinity and an integer beyond 64 bits (pinned by
    test_a_fetch_answer_is_strict_json_for_any_body: then the answer is not strict JSON)."""
    found = set()

    def walk(value: Any) -> None:
        if isinstance(value, float) and not math.isfinite(value):
            found.add("nonfinite")
        elif isinstance(value, int) and not isinstance(value, bool) and not -(2**63) <= value < 2**64:
            found.add("huge")
        elif isinstance(value, list):
            for v in value:
                walk(v)
        elif isinstance(value, dict):
            for v in value.values():
                walk(v)

    walk(data)
    return found == {"nonfinite", "huge"}


FETCHED = st.sampled_from([("join", JOIN), ("groupby", GROUP_BY), ("groupby", ITEM_GROUP_BY)])


@settings(FUZZ, max_examples=100)
@given(target=FETCHED, body=st.data(), at=ats)
def test_fetch_bodies(served: Served, target: tuple[str, str], body: st.DataObject, at: str | None) -> None:
    kind, name = target
    fields = KEY_FIELDS[name]
    raw, data = body.draw(fetch_body(fields), label="body")
    params = {"at": at} if at is not None else {}
    response = served.http.post(
        f"/v1/features/{kind}/{name}",
        content=raw,
        params=params,
        headers={"Content-Type": "application/json"},
    )
    answer = check(kind, name, raw, response, at, strict_json=not nonfinite_and_huge(data))
    CASES["hypothesis fetch bodies"] += 1
    CASES[f"(hypothesis fetch bodies answered {response.status_code})"] += 1
    if response.status_code != 200:
        return
    results = answer["results"]
    assert len(results) == len(data)
    q = None if at is None else int(at)
    plain_keys = [index for index, key in enumerate(data) if plain(key)]
    if plain_keys and q is not None:  # the in-process fetcher gives the very same answers (at the same q)
        keys = [data[index] for index in plain_keys]
        local = (served.local.fetch_join if kind == "join" else served.local.fetch_group_by)(name, keys, at=q)
        local = orjson.loads(orjson.dumps(local, option=orjson.OPT_SERIALIZE_NUMPY))
        for index, expected in zip(plain_keys, local, strict=True):
            assert close(expected, results[index]), (data[index], expected, results[index])
    for key, result in zip(data, results, strict=True):
        assert set(result) <= {"status", "entityKeys", "features", "error"}, result
        assert isinstance(result["status"], str) and isinstance(result["features"], dict)
        assert set(result["entityKeys"]) == set(key)
        if plain(key):
            assert result["entityKeys"] == key
        if result["status"] == "Success":
            assert "error" not in result
            assert result["features"], result
        else:
            assert isinstance(result.get("error"), str) and result["error"], result
            assert result["features"] == {}
        in_window = q is not None and BATCH_END <= q < BATCH_END + 2 * DAY
        if in_window and all(isinstance(key[f], str) for f in fields):
            assert result["status"] == "Success", (key, q, result)
        if any(key[f] is None for f in fields):
            assert result["status"] != "Success", (key, result)


# ------------------------------------------------------------------ Hypothesis: event batches

FRESH: Counter[str] = Counter()


@st.composite
def bad_event(draw: st.DrawFn, user: str, ts: int) -> Any:
    """An event the worker must set aside (a dead letter), some about ``user`` itself."""
    base = {"user_id": user, "item_id": "zz", "price": 1.0, "qty": 1, "ts": ts}
    fault = draw(
        st.sampled_from(["no ts", "null ts", "ts type", "NaN ts", "price type", "qty type", "item type"])
    )
    if fault == "no ts":
        del base["ts"]
    elif fault == "null ts":
        base["ts"] = None
    elif fault == "ts type":
        base["ts"] = draw(st.one_of(text, st.lists(scalar, max_size=2), beyond_int64, st.booleans()))
    elif fault == "NaN ts":
        base["ts"] = draw(st.sampled_from([math.nan, math.inf, -math.inf]))
    elif fault == "price type":
        base["price"] = draw(
            st.one_of(text, st.lists(scalar, max_size=2), st.dictionaries(text, scalar, max_size=2))
        )
    elif fault == "qty type":
        base["qty"] = draw(st.one_of(text, st.lists(scalar, max_size=2), beyond_int64, st.booleans()))
    else:
        base["item_id"] = draw(st.one_of(st.integers(), st.booleans(), st.lists(scalar, max_size=2)))
    return base


@FUZZ
@given(data=st.data(), sync=st.sampled_from([None, "true", "false", "1", "yes"]))
def test_event_batches(served: Served, data: st.DataObject, sync: str | None) -> None:
    """A POST of events mixing good ones (for a fresh user) with junk objects and malformed events:
    200 with one id per event; with ``sync``, the good ones are servable at once, the others not."""
    FRESH["n"] += 1
    user = f"fuzz-{FRESH['n']}"
    t = BATCH_END + HOUR + FRESH["n"] * 10_000
    good = [
        {"user_id": user, "item_id": "zz", "price": price, "qty": 2, "ts": t + offset}
        for offset, price in enumerate(
            data.draw(st.lists(st.floats(-1e6, 1e6, allow_nan=False), max_size=4), label="prices")
        )
    ]
    junk = data.draw(st.lists(st.dictionaries(text, value, max_size=4), max_size=3), label="junk")
    bad = data.draw(st.lists(bad_event(user, t), max_size=3), label="bad")
    events = data.draw(st.permutations([*good, *junk, *bad]), label="events")
    raw = json.dumps(events).encode()  # NaN/Infinity literals too
    params = {"sync": sync} if sync is not None else {}
    response = served.http.post(
        f"/v1/events/{TOPIC}", content=raw, params=params, headers={"Content-Type": "application/json"}
    )
    answer = check("events", TOPIC, raw, response)
    assert len(answer["eventIds"]) == len(events) == len(set(answer["eventIds"]))
    synced = sync in ("true", "1", "yes")
    assert answer["servable"] is synced
    CASES["hypothesis event batches"] += 1
    CASES["(hypothesis events posted)"] += len(events)
    if not synced:
        return
    [result] = served.local.fetch_group_by(GROUP_BY, [{"user": user}], at=t + HOUR)
    assert result["status"] == "Success", result
    features = result["features"]
    assert (features["qty_count"] or 0) == len(good), (features, events)
    assert close(float(sum(e["price"] for e in good)) if good else None, features["price_sum_1d"])


def test_the_server_still_answers_and_the_topic_streams(served: Served) -> None:
    """After everything above: the server answers, and a worker reads the whole topic (schema-generated
    junk included) without an exception, its counters adding up."""
    assert served.http.get("/health").status_code == 200
    stats = served.project.stream(GROUP_BY, until_caught_up=True)[GROUP_BY]
    assert stats.records == stats.rows + stats.filtered + stats.dead_letters, stats
    assert sum(stats.dead_letter_reasons.values()) == stats.dead_letters
    [result] = served.local.fetch_group_by(GROUP_BY, [{"user": "u1"}], at=BATCH_END + HOUR)
    assert result["status"] == "Success"


# ------------------------------------------------------------------ bugs pinned


@pytest.mark.parametrize(
    ("kind", "name", "raw"),
    [
        ("groupby", GROUP_BY, b'[{"user": "\\ud800"}]'),
        ("join", JOIN, b'[{"user": "u1", "item": "a\\udfff"}]'),
    ],
)
def test_a_key_with_a_lone_surrogate_is_not_a_server_error(
    served: Served, kind: str, name: str, raw: bytes
) -> None:
    response = served.http.post(
        f"/v1/features/{kind}/{name}", content=raw, params={"at": str(BATCH_END + HOUR)}
    )
    assert response.status_code < 500, (response.text, SERVER_ERRORS.seen[-1:])


def test_a_fetch_answer_is_strict_json_for_any_body(served: Served) -> None:
    raw = b'[{"user": NaN, "x": 1180591620717411303424}]'
    response = served.http.post(
        f"/v1/features/groupby/{GROUP_BY}", content=raw, params={"at": str(BATCH_END + HOUR)}
    )
    assert response.status_code in (200, 400), response.text
    orjson.loads(response.content)


def test_a_huge_integer_key_is_echoed_exactly(served: Served) -> None:
    keys = [{"user": 2**64 + 1}, {"user": 2**64}]
    response = served.http.post(
        f"/v1/features/groupby/{GROUP_BY}",
        content=json.dumps(keys).encode(),
        params={"at": str(BATCH_END + HOUR)},
    )
    assert response.status_code == 200
    assert [r["entityKeys"] for r in json.loads(response.content)["results"]] == keys


@pytest.mark.parametrize(
    ("path", "name"),
    [("/v1/features/join/a%2Fb", "a/b"), ("/v1/features/groupby/", ""), ("/v1/events/a%2Fb", "a/b")],
)
def test_a_name_no_route_matches_gets_an_error_naming_it(served: Served, path: str, name: str) -> None:
    response = served.http.post(path, content=b"[]")
    assert response.status_code == 404
    error = response.json().get("error")
    assert isinstance(error, str) and (repr(name) in error or "name" in error or "topic" in error), error


def test_the_schema_documents_at_sync_and_the_error_answers(served: Served) -> None:
    paths = served.schema.raw_schema["paths"]
    for path, parameter in [
        ("/v1/features/join/{name}", "at"),
        ("/v1/features/groupby/{name}", "at"),
        ("/v1/events/{topic}", "sync"),
    ]:
        operation = paths[path]["post"]
        assert parameter in {p["name"] for p in operation.get("parameters", []) if p["in"] == "query"}, path
        assert {"400", "404"} <= set(operation["responses"]), path
