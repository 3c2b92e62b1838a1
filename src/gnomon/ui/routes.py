"""The web UI's routes on the feature server: the pages (``GET /ui``, ``GET /ui/static/{file}``, open:
they hold no data) and the JSON API they read (``GET /v1/catalog``, ``/v1/objects/{kind}/{name}``,
``/v1/lineage``, ``/v1/partitions``, ``/v1/runs``, ``/v1/freshness``, ``/v1/stats/{table}``,
``/v1/consistency`` and ``/v1/consistency/{join}``; with ``serving: {auth: ...}`` they need a token
of any scope, like every route but ``/health``).

Each JSON route is a thin wrapper over one function of `gnomon.ui.api`; its errors are
``{"error": ...}`` with 400 (the parameter named) or 404. Answers carry ``Cache-Control: no-cache``, so
a browser never shows data older than the warehouse; static files also carry an ETag, and a
revalidation that finds them unchanged gets a 304.
"""

# no `from __future__ import annotations`: FastAPI must see the real Request class in handler signatures
import mimetypes
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

from gnomon import jsonio
from gnomon.errors import UnknownObjectError
from gnomon.ui import api

if TYPE_CHECKING:
    from fastapi import FastAPI

STATIC = Path(__file__).resolve().parent / "static"
_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
    ".json": "application/json",
}
_ERROR = {"application/json": {"schema": {"type": "object", "properties": {"error": {"type": "string"}}}}}
_BAD = {"description": "A bad parameter: the error names it", "content": _ERROR}
_UNKNOWN = {"description": "No such object, table, node or Join (the error names it, with close names)"}
_TAGS: list[str | Any] = ["web UI"]


def _object(description: str) -> dict[int | str, dict[str, Any]]:
    return {200: {"description": description}, 400: _BAD, 404: {**_UNKNOWN, "content": _ERROR}}


def add_ui_routes(app: "FastAPI", project: Any, store: Any = None) -> api.UiData:  # noqa: C901 — routes are closures
    """Add the UI's pages and JSON API to ``app`` (a FastAPI app serving ``project``); ``store`` is the
    server's online store (shared). Returns the `UiData` the routes read."""
    from fastapi import Path as PathParam
    from fastapi import Query, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import Response

    data = api.UiData(project, store)

    def answer(call: Any, *args: Any, **kwargs: Any) -> Response:
        try:
            body, status = call(data, *args, **kwargs), 200
        except api.BadParameter as error:
            body, status = {"error": str(error)}, 400
        except UnknownObjectError as error:
            body, status = {"error": str(error)}, 404
        return Response(
            jsonio.dumps(body),
            status_code=status,
            media_type="application/json",
            headers={"Cache-Control": "no-cache"},
        )

    @app.exception_handler(RequestValidationError)
    async def bad_parameter(request: Request, error: RequestValidationError) -> Response:
        """A query or path parameter FastAPI could not read: 400 ``{"error"}`` naming it."""
        problems = []
        for problem in error.errors():
            where = ".".join(str(part) for part in problem.get("loc", ())[1:]) or "request"
            problems.append(f"{where}: {problem.get('msg', 'invalid')}")
        return Response(jsonio.dumps({"error": "; ".join(problems)}), 400, media_type="application/json")

    days_help = "How many days, ending at the last day shown"
    ds_pattern = r"^\d{4}-\d{2}-\d{2}$"

    @app.get(
        "/v1/catalog",
        tags=_TAGS,
        summary="Search the GroupBys, Joins and StagingQueries",
        responses=_object(
            "`{objects: [{kind, name, owner, tags, description, output_table, online, features, defined_in}]}`"
        ),
    )
    def catalog(
        q: Annotated[
            str | None, Query(description="Text to find in a name, owner, tag, description or feature name")
        ] = None,
        kind: Annotated[
            str | None, Query(description="Only this kind: group_by, join or staging_query")
        ] = None,
    ) -> Response:
        return answer(api.catalog, q, kind)

    @app.get(
        "/v1/objects/{kind}/{name}",
        tags=_TAGS,
        summary="One object: definition, compiled SQL, output columns, lineage, partitions",
        responses=_object(
            "`{kind, name, owner, tags, description, defined_in, output_table, online, definition, sql, "
            "columns, columns_from, upstream, downstream, partitions}`"
        ),
    )
    def object_detail(
        kind: Annotated[str, PathParam(description="group_by, join or staging_query")],
        name: Annotated[str, PathParam(description="The object's name")],
    ) -> Response:
        return answer(api.object_detail, kind, name)

    @app.get(
        "/v1/lineage",
        tags=_TAGS,
        summary="The lineage graph: tables and topics through GroupBys and Joins",
        responses=_object("`{nodes: [{id, kind, label}], edges: [{from, to}]}`"),
    )
    def lineage(
        focus: Annotated[
            str | None,
            Query(description="A node id (`group_by:NAME`, `table:NS.T`, ...): only what it reads and feeds"),
        ] = None,
    ) -> Response:
        return answer(api.lineage, focus)

    @app.get(
        "/v1/partitions",
        tags=_TAGS,
        summary="Which partitions of every table exist over the last N days, and the gaps",
        responses=_object("`{start, end, days, tables: [{table, role, first, present, missing}]}`"),
    )
    def partitions(
        days: Annotated[int, Query(description=days_help, ge=1, le=api.MAX_DAYS)] = 30,
        end: Annotated[
            str | None,
            Query(description="The last day (YYYY-MM-DD; default: the newest partition)", pattern=ds_pattern),
        ] = None,
        table: Annotated[str | None, Query(description="Only this table")] = None,
    ) -> Response:
        return answer(api.partitions, days, end, table)

    @app.get(
        "/v1/runs",
        tags=_TAGS,
        summary="The run history of `gnomon run` (as `gnomon status --json`)",
        responses=_object(
            "`{runs: [{id, run_id, task, ds, status, attempt, started_at, ended_at, detail, outputs, ...}]}`"
        ),
    )
    def runs(
        ds: Annotated[str | None, Query(description="Only this day (YYYY-MM-DD)", pattern=ds_pattern)] = None,
        days: Annotated[
            int, Query(description="Without ds: the most recent days run", ge=1, le=api.MAX_DAYS)
        ] = 3,
    ) -> Response:
        return answer(api.runs, ds, days)

    @app.get(
        "/v1/freshness",
        tags=_TAGS,
        summary="Each online GroupBy's upload, stream lag and freshness",
        responses=_object("`{group_bys: [{name, online, upload, stream, status, reason}]}`"),
    )
    def freshness() -> Response:
        return answer(api.freshness)

    @app.get(
        "/v1/stats/{table}",
        tags=_TAGS,
        summary="Data quality of a table's partitions: rows, nulls, distributions, drift",
        responses=_object("`{table, partitions: [{table, ds, rows, computed_at, columns}]}`"),
    )
    def stats(
        table: Annotated[
            str, PathParam(description="A warehouse table, or a GroupBy, Join or StagingQuery name")
        ],
        start_ds: Annotated[
            str | None, Query(description="First partition (YYYY-MM-DD)", pattern=ds_pattern)
        ] = None,
        end_ds: Annotated[
            str | None, Query(description="Last partition (YYYY-MM-DD)", pattern=ds_pattern)
        ] = None,
    ) -> Response:
        return answer(api.stats, table, start_ds, end_ds)

    @app.get(
        "/v1/consistency",
        tags=_TAGS,
        summary="The latest online/offline consistency figures of every online Join",
        responses=_object("`{joins: [{join, latest: {ds, rows_compared, mismatches, features} | null}]}`"),
    )
    def consistency() -> Response:
        return answer(api.consistency_overview)

    @app.get(
        "/v1/consistency/{join}",
        tags=_TAGS,
        summary="A Join's consistency figures per day, with the mismatching keys",
        responses=_object("`{join, partitions: [{ds, rows_compared, mismatches, features}]}`"),
    )
    def consistency_join(
        join: Annotated[str, PathParam(description="The Join's name")],
        days: Annotated[int, Query(description=days_help, ge=1, le=api.MAX_DAYS)] = 30,
    ) -> Response:
        return answer(api.consistency_history, join, days)

    def static(name: str, request: Request) -> Response:
        path = (STATIC / name).resolve()
        if not path.is_relative_to(STATIC) or not path.is_file():
            missing = "the UI's files are not installed" if name == "index.html" else f"no UI file {name!r}"
            return Response(jsonio.dumps({"error": missing}), 404, media_type="application/json")
        status = path.stat()
        etag = f'"{status.st_mtime_ns:x}-{status.st_size:x}"'
        headers = {"ETag": etag, "Cache-Control": "no-cache"}
        if etag in request.headers.get("if-none-match", ""):
            return Response(status_code=304, headers=headers)
        kind = _TYPES.get(path.suffix) or mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        return Response(path.read_bytes(), media_type=kind, headers=headers)

    @app.get(
        "/ui",
        tags=_TAGS,
        summary="The web UI (open: the page holds no data; it reads the JSON API)",
        responses={
            200: {"description": "The page", "content": {"text/html": {}}},
            304: {"description": "Unchanged"},
        },
    )
    def page(request: Request) -> Response:
        return static("index.html", request)

    app.add_api_route("/ui/", page, methods=["GET"], include_in_schema=False)

    @app.get(
        "/ui/static/{file:path}",
        tags=_TAGS,
        summary="The web UI's scripts, styles and images (open)",
        responses={
            200: {"description": "The file, with its content type and an ETag"},
            304: {"description": "Unchanged since the ETag sent in If-None-Match"},
            404: {"description": "No such file", "content": _ERROR},
        },
    )
    def asset(file: str, request: Request) -> Response:
        return static(file, request)

    app.state.ui = data
    return data
