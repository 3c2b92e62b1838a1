"""The HTTP service (SPEC §5): Chronon's fetch contract, event ingestion, health and metrics.

Routes:

- ``POST /v1/features/join/{name}`` and ``POST /v1/features/groupby/{name}`` (``?at=MS`` optional):
  body a JSON array of key objects; answer ``{"results": [{"status", "entityKeys", "features"}]}``
  in request order. A key the store cannot answer gets a non-"Success" status and an ``error``.
- ``POST /v1/events/{topic}`` (``?sync=true``: return once the events are servable).
- ``GET /health``, ``GET /metrics`` (Prometheus), ``GET /docs`` and ``/openapi.json``.
- ``GET /ui`` (the web UI) and the JSON API it reads, ``GET /v1/catalog``, ``/v1/lineage``, ...
  (`gnomon.ui.routes`).

``/metrics`` also counts, per Join or GroupBy and feature, the values served and the nulls among
them (null rates at fetch time), and shows the latest figures of the consistency job. With
``serving: {log: {sample: ...}}`` a key-hash sample of Join fetches is logged to ``logs.<join>``
(`gnomon.monitoring.fetch_log`); the log is flushed when the server shuts down.

Bad requests get a 4xx JSON ``{"error": ...}`` naming the field; a request over one of the limits of
``serving: {limits: ...}`` (body size, keys per fetch, events per push, JSON nesting depth) gets a 413
or 400 naming the limit and its setting (``"limit": "serving.limits.keys"``). With ``serving: {auth:
...}`` every route but ``/health`` and the docs needs a bearer token (`gnomon.serving.auth`).

Handlers are ``async`` and call the fetcher's async entry points directly (cheaper than a hop to a
thread pool): the decoding runs on the event loop, and the one store read per fetch is awaited — with
Redis, on a connection per event loop that pipelines the reads of concurrent requests — so the loop
never blocks on the network.
"""

# no `from __future__ import annotations`: FastAPI must see the real Request class in handler signatures
import gc
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

from gnomon import jsonio
from gnomon.config import CONFIG_FILE, ServingLimits
from gnomon.errors import MissingExtraError, UnknownObjectError
from gnomon.metrics import ConsistencyGauges, Metrics
from gnomon.monitoring.fetch_log import FetchLog, LogSettings, report_lost_records

_KEYS_BODY = {
    "required": True,
    "content": {
        "application/json": {
            "schema": {"type": "array", "items": {"type": "object"}},
            "example": [{"user": "bob", "item": "i42"}],
        }
    },
}
_ERROR = {"application/json": {"schema": {"type": "object", "properties": {"error": {"type": "string"}}}}}
_ERRORS: dict[int | str, dict[str, Any]] = {
    "400": {
        "description": "A bad request: the error names the field (`body[i].field`, `at`)",
        "content": _ERROR,
    },
    "404": {
        "description": "No such Join, GroupBy or topic (the error names it, with close names)",
        "content": _ERROR,
    },
    "413": {
        "description": "Over a limit (`serving.limits.*`): the error names it and the fix",
        "content": _ERROR,
    },
}
_AT = {
    "name": "at",
    "in": "query",
    "required": False,
    "description": "The time to fetch values as of, epoch milliseconds (default: now)",
    "schema": {"type": "integer"},
}
_SYNC = {
    "name": "sync",
    "in": "query",
    "required": False,
    "description": "true: answer once the events are servable (applied to the online store)",
    "schema": {"type": "boolean"},
}
_EVENTS_BODY = {
    "required": True,
    "content": {
        "application/json": {
            "schema": {"type": "array", "items": {"type": "object"}},
            "example": [{"user_id": "bob", "item_id": "i42", "ts": 1790812800000}],
        }
    },
}


class BadRequest(Exception):
    def __init__(self, message: str, status: int = 400, setting: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.setting = setting  # the serving.limits setting a request went over

    def payload(self) -> bytes:
        body = {"error": str(self)}
        if self.setting:
            body["limit"] = self.setting
        return _json_bytes(body)


def _json_bytes(body: Any) -> bytes:
    return jsonio.dumps(body)


_WHAT = {  # what a body holds: its plural (the limit's name), who is limited, the fix
    "key": ("keys", "a fetch may ask for", "split the keys over several requests"),
    "event": ("events", "a push may carry", "push them in batches"),
}


_DEFAULT_LIMITS = ServingLimits()


def _parse_array(body: bytes, what: str, limits: ServingLimits = _DEFAULT_LIMITS) -> list[dict[str, Any]]:
    """A JSON array of objects within the limits on count (keys or events) and nesting depth."""
    try:
        data = jsonio.loads(body)  # exact integers; NaN read as the standard library does
    except (ValueError, UnicodeDecodeError) as error:
        raise BadRequest(f"body: not valid JSON ({error})") from None
    except RecursionError:  # nested beyond what either parser reads: far beyond any depth limit
        raise _too_deep("body", limits.depth) from None
    if not isinstance(data, list):
        raise BadRequest(f"body: expected a JSON array of {what} objects, got {type(data).__name__}")
    plural, verb, fix = _WHAT[what]
    count_limit = limits.keys if what == "key" else limits.events
    if len(data) > count_limit:
        raise BadRequest(
            f"body: {len(data)} {plural}, more than the {count_limit} {verb} (serving.limits.{plural}); {fix}",
            413,
            f"serving.limits.{plural}",
        )
    room = limits.depth - 2  # levels left below the array (1) and its objects (2)
    for index, item in enumerate(data):
        if not isinstance(item, dict):
            raise BadRequest(f"body[{index}]: expected a JSON object, got {type(item).__name__}")
        if room < 0:
            raise _too_deep(f"body[{index}]", limits.depth)
        for field, value in item.items():
            if isinstance(value, (dict, list)):
                deeper = _overflow(value, room)
                if deeper is not None:
                    raise _too_deep(f"body[{index}].{field}{deeper}", limits.depth)
    return data


def _overflow(value: dict[str, Any] | list[Any], room: int) -> str | None:
    """The path (relative to ``value``) of a container more than ``room`` levels down, counting
    ``value`` itself as one; None when everything fits."""
    if room < 1:
        return ""
    children = value.items() if isinstance(value, dict) else enumerate(value)
    for key, child in children:
        if isinstance(child, (dict, list)):
            found = _overflow(child, room - 1)
            if found is not None:
                return (f".{key}" if isinstance(value, dict) else f"[{key}]") + found
    return None


def _too_deep(path: str, depth: int) -> BadRequest:
    return BadRequest(
        f"{path}: JSON nested deeper than {depth} levels of arrays and objects (serving.limits.depth; "
        "the body's array is level 1)",
        400,
        "serving.limits.depth",
    )


def _too_large(limit: int, fix: str) -> BadRequest:
    return BadRequest(
        f"body: larger than {limit} bytes (serving.limits.body_bytes); {fix}",
        413,
        "serving.limits.body_bytes",
    )


async def _read_body(request: Any, limit: int, fix: str) -> bytes:
    """A FastAPI request's body, refused (413) as soon as it is known to be over ``limit`` bytes."""
    length = request.headers.get("content-length", "")
    if length.isdigit() and int(length) > limit:
        raise _too_large(limit, fix)
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise _too_large(limit, fix)
        chunks.append(chunk)
    return b"".join(chunks)


def _parse_at(value: str | None) -> int | None:
    if value is None:
        return None
    try:
        return int(value)
    except ValueError:
        raise BadRequest(f"at: expected epoch milliseconds as an integer, got {value!r}") from None


MAX_FETCH_BODY = ServingLimits.body_bytes  # default; a fetch body of thousands of keys is a few hundred KB
_FETCH_FIX = "fetch fewer keys per request"
_PUSH_FIX = "push fewer events per request"


class FetchFastPath:
    """ASGI middleware answering ``POST /v1/features/{join|groupby}/{name}`` itself.

    The fetch routes are the hot path; FastAPI's routing, dependency solving and response classes
    cost more CPU than the fetch. This middleware sits right inside the error handler and calls the
    very function the FastAPI routes call (which remain, for the OpenAPI docs and as the fallback),
    so both give the same answers."""

    PREFIX = "/v1/features/"

    def __init__(self, app: Any, respond: Any, max_body: int = MAX_FETCH_BODY) -> None:
        self.app, self.respond, self.max_body = app, respond, max_body

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["method"] == "POST" and scope["path"].startswith(self.PREFIX):
            kind, _, name = scope["path"][len(self.PREFIX) :].partition("/")
            if kind in ("join", "groupby") and name and "/" not in name:
                chunks, size, limit = [], 0, self.max_body
                while True:
                    message = await receive()
                    if message["type"] == "http.disconnect":
                        return
                    chunks.append(message.get("body", b""))
                    size += len(chunks[-1])
                    if size > limit or not message.get("more_body"):
                        break
                body = b"".join(chunks)
                if size > limit:
                    status, payload = 413, _too_large(limit, _FETCH_FIX).payload()
                else:
                    at = parse_qs(
                        scope.get("query_string", b"").decode("latin-1"), keep_blank_values=True
                    ).get("at")
                    status, payload = await self.respond(kind, name, body, at[-1] if at else None)
                await send(
                    {
                        "type": "http.response.start",
                        "status": status,
                        "headers": [
                            (b"content-type", b"application/json"),
                            (b"content-length", str(len(payload)).encode()),
                        ],
                    }
                )
                await send({"type": "http.response.body", "body": payload})
                return
        await self.app(scope, receive, send)


def create_app(repo: str | Path = ".") -> Any:  # noqa: C901 — the routes are closures over the app's state
    """The ASGI app serving one feature repo."""
    try:
        from fastapi import FastAPI, Request
        from fastapi.responses import JSONResponse, PlainTextResponse, Response
    except ImportError:
        raise MissingExtraError(
            "the HTTP server needs FastAPI and uvicorn: pip install 'gnomon[serve]'"
        ) from None
    from gnomon.project import Project
    from gnomon.serving.ingest import publish_and_apply

    project = Project(repo)
    serving = project.config.serving
    limits = serving.limits
    plan = project.plan
    store = project.store()
    fetcher = project.fetcher(store)
    metrics = Metrics()
    fetch_log = _fetch_log(project, metrics)
    metrics.consistency = _consistency_gauges(project)
    state: dict[str, Any] = {"broker": None}
    schemas: dict[tuple[str, str], Any] = {}

    def schema_of(group_by: str, topic: str) -> Any:
        if (group_by, topic) not in schemas:
            schemas[group_by, topic] = project.source_schema(group_by, topic)
        return schemas[group_by, topic]

    @asynccontextmanager
    async def lifespan(_: Any) -> AsyncIterator[None]:
        yield
        if fetch_log is not None:  # a clean shutdown writes every logged fetch
            fetch_log.close()

    app = FastAPI(
        title="Gnomon feature server",
        version="1",
        description="Chronon's fetch contract over a Gnomon feature repo.",
        lifespan=lifespan,
    )

    def dumps(body: Any, status: int = 200) -> Response:
        return Response(_json_bytes(body), status_code=status, media_type="application/json")

    # the key fields each route needs, per name (computed once: this is the hot path)
    key_fields = {
        ("join", name): sorted({c for part in join.parts for c in part.key_columns.values()})
        for name, join in plan.joins.items()
    }
    key_fields.update({("groupby", name): list(group_by.keys) for name, group_by in plan.group_bys.items()})

    def required_keys(kind: str, name: str) -> list[str]:
        fields = key_fields.get((kind, name))
        if fields is not None:
            return fields
        if kind == "join":
            raise UnknownObjectError("Join", name, plan.joins)
        raise UnknownObjectError("GroupBy", name, plan.group_bys)

    async def fetch_response(kind: str, name: str, body: bytes, at_param: str | None) -> tuple[int, bytes]:
        """Status and JSON body of a fetch: the whole of both fetch routes."""
        started = time.perf_counter()
        status = 200
        try:
            keys_needed = required_keys(kind, name)
            keys = _parse_array(body, "key", limits)
            for index, key in enumerate(keys):
                for field in keys_needed:
                    if field not in key:
                        raise BadRequest(
                            f"body[{index}].{field}: missing key field (this {kind} needs "
                            f"{', '.join(keys_needed)})"
                        )
            at = _parse_at(at_param)
            if fetch_log is not None and kind == "join" and at is None:
                at = int(time.time() * 1000)  # the fetcher's q, fixed here so that the log records it
            results = await (fetcher.fetch_join_async if kind == "join" else fetcher.fetch_group_by_async)(
                name, keys, at
            )
            for result in results:
                metrics.results.inc(result.status)
            metrics.features.observe(kind, name, [result.features for result in results])
            if fetch_log is not None and kind == "join" and at is not None:
                fetch_log.record(name, at, results)
            payload = _json_bytes({"results": [result.to_json() for result in results]})
        except UnknownObjectError as error:
            status, payload = 404, _json_bytes({"error": str(error)})
        except BadRequest as error:
            status, payload = error.status, error.payload()
        metrics.latency.observe(f"/v1/features/{kind}", time.perf_counter() - started)
        return status, payload

    async def fetch(kind: str, name: str, request: Request) -> Response:
        try:
            body = await _read_body(request, limits.body_bytes, _FETCH_FIX)
        except BadRequest as error:
            return Response(error.payload(), status_code=error.status, media_type="application/json")
        status, payload = await fetch_response(kind, name, body, request.query_params.get("at"))
        return Response(payload, status_code=status, media_type="application/json")

    @app.post(
        "/v1/features/join/{name}",
        openapi_extra={"requestBody": _KEYS_BODY, "parameters": [_AT]},
        responses=_ERRORS,
        summary="Fetch a Join's feature vectors for a list of keys",
    )
    async def fetch_join(name: str, request: Request) -> Response:
        return await fetch("join", name, request)

    @app.post(
        "/v1/features/groupby/{name}",
        openapi_extra={"requestBody": _KEYS_BODY, "parameters": [_AT]},
        responses=_ERRORS,
        summary="Fetch one GroupBy's values for a list of keys",
    )
    async def fetch_group_by(name: str, request: Request) -> Response:
        return await fetch("groupby", name, request)

    app.add_middleware(FetchFastPath, respond=fetch_response, max_body=limits.body_bytes)

    @app.post(
        "/v1/events/{topic}",
        openapi_extra={"requestBody": _EVENTS_BODY, "parameters": [_SYNC]},
        responses=_ERRORS,
        summary="Ingest events into a topic (sync=true: return once servable)",
    )
    async def ingest(topic: str, request: Request) -> Response:
        started = time.perf_counter()
        try:
            events = _parse_array(await _read_body(request, limits.body_bytes, _PUSH_FIX), "event", limits)
            sync = request.query_params.get("sync", "false").lower() in ("1", "true", "yes")
            if state["broker"] is None:  # an unknown topic is rejected by publish_and_apply (404)
                state["broker"] = project.broker()
            ids = publish_and_apply(plan, state["broker"], store, topic, events, sync, schema_of)
            metrics.events.inc(topic, len(events))
            if sync:
                metrics.freshness.observe(topic, time.perf_counter() - started)
            response = dumps({"eventIds": ids, "servable": sync})
        except UnknownObjectError as error:
            response = dumps({"error": str(error)}, 404)
        except BadRequest as error:
            response = Response(error.payload(), status_code=error.status, media_type="application/json")
        metrics.latency.observe("/v1/events", time.perf_counter() - started)
        return response

    from starlette.exceptions import HTTPException as StarletteHTTPException

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, error: StarletteHTTPException) -> Response:
        """Every error answer is ``{"error": ...}``; a path that is no route names the routes."""
        message = str(error.detail)
        if error.status_code == 404:
            message = (
                f"no route {request.method} {request.url.path}: the routes are POST /v1/features/join/NAME, "
                "POST /v1/features/groupby/NAME, POST /v1/events/TOPIC, GET /health, GET /metrics, the web UI "
                "at GET /ui and its JSON API (GET /v1/catalog, ...; every route is listed at /docs) "
                "(a name is one path segment)"
            )
        return dumps({"error": message}, error.status_code)

    @app.get("/health", summary="Liveness and what is served")
    async def health() -> JSONResponse:
        return JSONResponse(
            {
                "status": "ok",
                "joins": sorted(j for j, p in plan.joins.items() if p.online),
                "groupBys": sorted(g for g, p in plan.group_bys.items() if p.online),
            }
        )

    @app.get("/metrics", summary="Prometheus metrics")
    async def prometheus() -> PlainTextResponse:
        return PlainTextResponse(metrics.render(), media_type="text/plain; version=0.0.4")

    from gnomon.ui.routes import add_ui_routes

    add_ui_routes(app, project, store)  # the web UI (/ui) and the JSON API it reads (GET /v1/...)

    if serving.tokens_file is not None:  # outermost: in front of the fetch fast path too
        from gnomon.serving.auth import Authenticator, AuthMiddleware

        authenticator = Authenticator(serving.tokens_file, metrics_open=serving.metrics == "open")
        app.add_middleware(AuthMiddleware, auth=authenticator)
        _document_auth(app, authenticator)
        app.state.auth = authenticator
    app.state.metrics = metrics
    app.state.fetch_log = fetch_log
    return app


def _fetch_log(project: Any, metrics: Metrics) -> FetchLog | None:
    """The fetch log of ``serving.log`` (None when it samples nothing), after reporting what servers
    that crashed queued but never wrote."""
    settings = LogSettings.parse(project.config.serving.log, project.config.root / CONFIG_FILE)
    report_lost_records(project.config.warehouse, metrics)
    if settings.sample <= 0:
        return None
    return FetchLog(project.config.warehouse, project.plan, settings, metrics)


def _consistency_gauges(project: Any) -> ConsistencyGauges:
    """Gauges of the latest ``consistency.<join>`` partition of every online Join."""
    from gnomon.compile.plan import output_table

    return ConsistencyGauges(
        {
            name: project.warehouse.table_path(output_table(name, "consistency"))
            for name, join in sorted(project.plan.joins.items())
            if join.online
        }
    )


def _document_auth(app: Any, authenticator: Any) -> None:
    """Declare the bearer scheme and each route's scope in the OpenAPI schema (the docs' Authorize)."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema  # type: ignore[no-any-return]
        schema: dict[str, Any] = build()
        schema.setdefault("components", {}).setdefault("securitySchemes", {})["bearer"] = {
            "type": "http",
            "scheme": "bearer",
            "description": "A token from `gnomon token create NAME --scopes fetch|push|fetch,push`.",
        }
        for path, operations in schema.get("paths", {}).items():
            scope = authenticator.required_scope(path)
            if scope is None:
                continue
            for operation in operations.values():
                operation["security"] = [{"bearer": []}]
                needs = "a token of any scope" if scope not in ("fetch", "push") else f"scope `{scope}`"
                operation["description"] = (operation.get("description") or "") + f"\n\nNeeds {needs}."
        return schema

    app.openapi = openapi


def serve(
    repo: str | Path = ".",
    host: str = "127.0.0.1",
    port: int = 8000,
    tls_cert: str | Path | None = None,
    tls_key: str | Path | None = None,
) -> None:
    """Run the service with uvicorn until interrupted; HTTPS with ``tls_cert`` and ``tls_key`` (PEM)."""
    from gnomon.extras import require

    uvicorn = require("uvicorn", "serve", "the HTTP server")
    app = create_app(repo)
    tls: dict[str, Any] = {}
    if tls_cert is not None or tls_key is not None:
        tls = {"ssl_certfile": str(tls_cert), "ssl_keyfile": str(tls_key)}
    gc.collect()
    gc.freeze()  # the plan, the app and the imports never become garbage: keep collections of them short
    # no access log: it would not show headers (so no token) anyway, and it costs time per request
    uvicorn.run(app, host=host, port=port, log_level="warning", access_log=False, **tls)
