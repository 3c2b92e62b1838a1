"""The `gnomon` command line (SPEC §6)."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Any

import click

from gnomon.errors import GnomonError

repo_option = click.option(
    "--repo",
    default=".",
    show_default=True,
    type=click.Path(file_okay=False),
    help="The feature repo folder (holds gnomon.yaml).",
)


class _Group(click.Group):
    """Prints Gnomon's own errors as one clear line and exits 1, instead of a traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except GnomonError as error:
            click.secho(f"error: {error}", fg="red", err=True)
            sys.exit(1)
        except Exception as error:
            if not _client_error(error):
                raise
            click.secho(
                f"error: the online store or the stream broker did not answer ({type(error).__name__}: {error}); "
                "check that it runs and that gnomon.yaml names it (online:, stream:)",
                fg="red",
                err=True,
            )
            sys.exit(1)


def _client_error(error: BaseException) -> bool:
    """A connection failure of a store's or a broker's client (Redis, Kafka, the OS)."""
    module = type(error).__module__
    return isinstance(error, ConnectionError | TimeoutError) or module.startswith(
        ("redis", "confluent_kafka")
    )


@click.group(cls=_Group)
@click.option("-v", "--verbose", is_flag=True, help="Log progress lines.")
@click.version_option(package_name="gnomon")
def main(verbose: bool) -> None:
    """Gnomon: one Python definition of a feature, computed identically offline and online."""
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING, format="%(asctime)s %(name)s %(message)s"
    )


@main.command()
@click.argument("directory", type=click.Path(file_okay=False))
@click.option(
    "--last-ds",
    default=None,
    help="End the sample month on this day (default 2026-10-30), e.g. yesterday, to fetch values ending now.",
)
def init(directory: str, last_ds: str | None) -> None:
    """Create a runnable example repo (definitions and sample data) in DIRECTORY."""
    from gnomon.scaffold import create_example_repo

    path = create_example_repo(directory, last_ds=last_ds)
    click.echo(f"created the example repo in {path}")
    click.echo(f"next: gnomon compile --repo {directory}")


@main.command(name="compile")
@repo_option
def compile_command(repo: str) -> None:
    """Validate every definition, write compiled/plan.json and print what will be computed."""
    from gnomon.compile.summary import summarize
    from gnomon.project import Project

    project = Project(repo)
    plan = project.compile()
    click.echo(summarize(plan))
    if (Path(repo) / "gnomon.yaml").exists():
        click.echo(f"\nplan written to {Path(repo) / 'compiled' / 'plan.json'}")
        stale = project.stale_uploads()
        if stale:
            click.echo(
                "\nonline GroupBys whose upload no longer matches the definition (fetches answer "
                "DefinitionChanged until re-uploaded):"
            )
            for name, reason in stale.items():
                click.echo(f"  {name}: {reason}")


@main.command()
@click.argument("name")
@click.option("--start-ds", required=True, help="First partition to compute (YYYY-MM-DD).")
@click.option("--end-ds", required=True, help="Last partition to compute (YYYY-MM-DD).")
@click.option("--force", is_flag=True, help="Recompute partitions that already exist.")
@click.option("--show", default=0, show_default=True, help="Print this many output rows when done.")
@click.option(
    "--no-deps",
    "no_deps",
    is_flag=True,
    help="Do not first backfill the missing partitions of parent Joins read through a JoinSource "
    "(chaining); fail naming them instead.",
)
@repo_option
def backfill(name: str, start_ds: str, end_ds: str, force: bool, show: int, no_deps: bool, repo: str) -> None:
    """Compute partitions of a GroupBy, Join or StagingQuery into its output table.

    A GroupBy over a JoinSource (or a Join using one) first backfills the parent Join's missing
    partitions it reads, unless --no-deps."""
    from gnomon.project import Project

    project = Project(repo)
    written = project.backfill(name, start_ds, end_ds, force=force, deps=not no_deps)
    table = project.output_table(name)
    if written:
        click.echo(f"{name}: wrote {len(written)} partition(s) of {table} ({written[0]} .. {written[-1]})")
    else:
        click.echo(
            f"{name}: nothing to do, every partition of {table} in [{start_ds}, {end_ds}] exists "
            "(use --force to recompute)"
        )
    if show:
        rows = project.warehouse.read_table(table, start_ds, end_ds).slice(0, show).to_pylist()
        for row in rows:
            click.echo(json.dumps(row, default=str))


@main.command()
@click.argument("name")
@click.option(
    "--ds", required=True, help="Upload the state as of the end of this day (batch end = ds + 1 day)."
)
@repo_option
def upload(name: str, ds: str, repo: str) -> None:
    """Write a GroupBy's (or a Join's online GroupBys') state as of DS+1 00:00 to the online store."""
    from gnomon.project import Project

    for group_by, keys in Project(repo).upload(name, ds).items():
        click.echo(f"{group_by}: uploaded {keys} key(s) as of {ds} + 1 day")


@main.command(name="run")
@click.argument("names", nargs=-1)
@click.option("--ds", default=None, help="The day to run (YYYY-MM-DD; default: yesterday, UTC).")
@click.option("--start-ds", default=None, help="First day of a range, run one day after another.")
@click.option("--end-ds", default=None, help="Last day of the range (with --start-ds).")
@click.option(
    "--sensor-timeout",
    type=click.FloatRange(min=0),
    default=3600,
    show_default=True,
    metavar="SECONDS",
    help="How long a task waits for a missing input partition before the run fails naming it (0: no wait).",
)
@click.option(
    "--poll-interval",
    type=click.FloatRange(min=0.01),
    default=30,
    show_default=True,
    metavar="SECONDS",
    help="How often a missing partition is looked for again.",
)
@click.option(
    "--retries", type=click.IntRange(min=0), default=2, show_default=True, help="Retries of a failed task."
)
@click.option(
    "--retry-delay",
    type=click.FloatRange(min=0),
    default=10,
    show_default=True,
    metavar="SECONDS",
    help="Delay before the first retry; it doubles at each further one.",
)
@click.option(
    "--concurrency", type=click.IntRange(min=1), default=1, show_default=True, help="Tasks run at once."
)
@repo_option
def run(
    names: tuple[str, ...],
    ds: str | None,
    start_ds: str | None,
    end_ds: str | None,
    sensor_timeout: float,
    poll_interval: float,
    retries: int,
    retry_delay: float,
    concurrency: int,
    repo: str,
) -> None:
    """Run everything due for a day in dependency order: StagingQueries, GroupBy backfills, uploads,
    Join backfills, chained GroupBys, consistency checks (NAMES: only those and what they need).

    Each task starts once its input partitions exist; finished work is skipped, so running again
    (after a failure or a kill) does only what is left. The history is in <repo>/.gnomon/runs.db
    (`gnomon status`)."""
    import datetime as dt

    from gnomon.orchestration.runner import DailyRunner, RunOptions
    from gnomon.project import Project
    from gnomon.timeline import ds_range

    if ds is not None and (start_ds or end_ds):
        raise click.UsageError("give --ds, or --start-ds with --end-ds, not both")
    if (start_ds is None) != (end_ds is None):
        raise click.UsageError("--start-ds and --end-ds go together")
    if start_ds and end_ds:
        days = ds_range(start_ds, end_ds)
    else:
        days = [ds or (dt.datetime.now(dt.UTC).date() - dt.timedelta(days=1)).isoformat()]

    def report(day: str, task: str, status: str, detail: str) -> None:
        color = {"success": "green", "failed": "red", "waiting": "yellow", "retrying": "yellow"}.get(status)
        click.echo(f"{day}  {task}  " + click.style(status, fg=color) + (f"  {detail}" if detail else ""))

    options = RunOptions(sensor_timeout, poll_interval, retries, retry_delay, concurrency)
    runner = DailyRunner(Project(repo), names, options, report=report)
    span = f"--ds {days[0]}" if len(days) == 1 else f"--start-ds {days[0]} --end-ds {days[-1]}"
    try:
        outcomes = runner.run(days, command=" ".join(["gnomon run", *names, span]))
    finally:
        runner.history.close()
    done = sum(o.status == "success" for o in outcomes)
    click.echo(f"done: {done} task(s) ran, {len(outcomes) - done} skipped as already done or not due")


@main.command()
@click.option("--ds", default=None, help="Show this day only (default: the most recent --days days run).")
@click.option(
    "--days", type=click.IntRange(min=1), default=3, show_default=True, help="Days shown without --ds."
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON (one object per task and day) instead.")
@repo_option
def status(ds: str | None, days: int, as_json: bool, repo: str) -> None:
    """Print the run history of `gnomon run`: the latest attempt of each task per day, what waits
    for which partition, and what failed and why."""
    from gnomon.orchestration.history import History, format_status

    root = Path(repo)
    if not (root / "gnomon.yaml").exists():
        raise click.UsageError(f"{root.resolve()} has no gnomon.yaml; give the repo with --repo")
    history = History.for_repo(root)
    try:
        attempts = history.latest(ds, days)
    finally:
        history.close()
    if as_json:
        click.echo(json.dumps([a.to_json() for a in attempts], indent=2))
    else:
        click.echo(format_status(attempts))


@main.command()
@click.argument("join")
@click.option(
    "--ds", required=True, help="The day of the logged fetches to check (the day of the time asked for)."
)
@click.option(
    "--json", "as_json", is_flag=True, help="Print the report as JSON on stdout instead of a table."
)
@click.option(
    "--fail-on-mismatch",
    is_flag=True,
    help="Exit with status 2 when any value differs (default: exit 0 and print the mismatches).",
)
@repo_option
def consistency(join: str, ds: str, as_json: bool, fail_on_mismatch: bool, repo: str) -> None:
    """Recompute the fetches of JOIN logged on DS (serving: {log: {sample: ...}}) offline at their
    exact keys and times, and compare value by value: per feature rows compared, mismatches, null
    rates online and offline, SMAPE, largest difference and a sample of mismatching keys. The
    figures are also written to the table consistency.<join>, partition DS. Exit status: 0 when the
    check ran (mismatches or not), 2 with --fail-on-mismatch when a value differs, 1 on an error."""
    from gnomon.monitoring.consistency import check_consistency
    from gnomon.project import Project

    report = check_consistency(Project(repo), join, ds)
    if as_json:
        click.echo(json.dumps(report.to_json(), indent=2))
    else:
        click.echo(report.format())
    if fail_on_mismatch and report.mismatches:
        sys.exit(2)


@main.command(name="stats")
@click.argument("table")
@click.option("--ds", required=True, help="The partition (YYYY-MM-DD).")
@click.option("--json", "as_json", is_flag=True, help="Print the statistics as JSON instead of a table.")
@repo_option
def stats_command(table: str, ds: str, as_json: bool, repo: str) -> None:
    """Print the data-quality statistics of partition DS of TABLE (a warehouse table such as
    features.user_item_training, else a GroupBy, Join or StagingQuery name): the row count and per
    column nulls, NaNs, min, max, mean, approximate distinct count, histogram and drift against the
    previous partition. Backfills store them for every partition they write; missing ones (with
    offline: {stats: false}, or after a failure) are computed now and stored."""
    from gnomon.errors import UnknownObjectError
    from gnomon.offline.stats import read_stats, write_stats
    from gnomon.project import Project

    project = Project(repo)
    warehouse = project.warehouse
    if "." not in table or not warehouse.exists(table):
        plan = project.plan
        node = plan.group_bys.get(table) or plan.joins.get(table) or plan.staging_queries.get(table)
        if node is None:
            raise UnknownObjectError(
                "table, GroupBy, Join or StagingQuery", table, [*plan.names(), *warehouse.tables()]
            )
        table = node.output_table
    stored = read_stats(warehouse, table, ds, ds)
    stats = stored[0] if stored else write_stats(warehouse, table, ds)
    if not stored:
        click.echo(f"no statistics were stored for {table} ds={ds}: computed and stored them now", err=True)
    if as_json:
        click.echo(json.dumps(stats.to_json(), indent=2))
    else:
        click.echo(stats.format())


@main.command()
@click.argument("name", required=False)
@click.option(
    "--all",
    "all_",
    is_flag=True,
    help="Instead of NAME: one supervised worker process per online streamed GroupBy, restarted "
    "with backoff when it exits; --metrics-port serves /health and /metrics; SIGTERM stops all.",
)
@click.option(
    "--backoff-initial",
    type=click.FloatRange(min=0),
    metavar="SECONDS",
    default=None,
    help="--all: first delay before restarting an exited worker, doubling each time  [default: 1]",
)
@click.option(
    "--backoff-max",
    type=click.FloatRange(min=0),
    metavar="SECONDS",
    default=None,
    help="--all: longest restart delay; a worker that ran 60 s starts over at the first  [default: 60]",
)
@click.option(
    "--grace-period",
    type=click.FloatRange(min=0),
    metavar="SECONDS",
    default=None,
    help="--all: on SIGTERM, how long workers get to finish their batch before SIGKILL  [default: 10]",
)
@click.option(
    "--until-caught-up",
    "--available-now",
    "until_caught_up",
    is_flag=True,
    help="Stop once the topic's current end is processed (Spark: the availableNow trigger).",
)
@click.option(
    "--group",
    default=None,
    help="Consumer group (default gnomon.<GroupBy name>@<definition hash>); Spark: the query's name.",
)
@click.option(
    "--engine",
    type=click.Choice(["embedded", "spark"]),
    default="embedded",
    show_default=True,
    help="embedded: the worker's own threads; spark: a Spark Structured Streaming query per topic "
    "(pip install 'gnomon[spark]'), the same micro-batch step in foreachBatch.",
)
@click.option(
    "--source-dir",
    type=click.Path(file_okay=False),
    metavar="DIR",
    default=None,
    help="Spark: read the events from the JSON-lines files of DIR (one event per line; DIR/<topic> "
    "for each topic when NAME streams several) instead of Kafka (stream: kafka://… in gnomon.yaml).",
)
@click.option(
    "--checkpoint",
    type=click.Path(file_okay=False),
    metavar="DIR",
    default=None,
    help="Spark: where each query keeps its checkpoint, in DIR/<query name> (default "
    "<repo>/spark-checkpoints). Restart with the same one to resume.",
)
@click.option(
    "--trigger-interval",
    type=click.FloatRange(min=0),
    metavar="SECONDS",
    default=1.0,
    show_default=True,
    help="Spark: seconds between micro-batches (0: one after another).",
)
@click.option(
    "--max-per-trigger",
    type=click.IntRange(min=1),
    metavar="N",
    default=None,
    help="Spark: files (--source-dir; default 1000) or Kafka records (default 100000) per micro-batch.",
)
@click.option(
    "--metrics-port",
    type=int,
    default=None,
    help="Serve Prometheus metrics (event-to-servable freshness, records, dead letters) on "
    "http://HOST:PORT/metrics while streaming.",
)
@click.option("--metrics-host", default="127.0.0.1", show_default=True, help="Interface for --metrics-port.")
@repo_option
def stream(
    name: str | None,
    all_: bool,
    backoff_initial: float | None,
    backoff_max: float | None,
    grace_period: float | None,
    until_caught_up: bool,
    group: str | None,
    engine: str,
    source_dir: str | None,
    checkpoint: str | None,
    trigger_interval: float,
    max_per_trigger: int | None,
    metrics_port: int | None,
    metrics_host: str,
    repo: str,
) -> None:
    """Consume a GroupBy's topic (or every streamed GroupBy of a Join) into the online store.

    With --all instead of NAME, run one worker process per online streamed GroupBy of the repo,
    restart one that exits, and stop them all on SIGTERM or Ctrl-C (docs/online.md).

    With --engine spark, a Spark Structured Streaming query per topic runs the same micro-batch
    step in foreachBatch, exactly once: the batch id is stored atomically with the rows, so a batch
    Spark replays after a crash changes nothing."""
    from gnomon.metrics import StreamMetrics, serve_metrics
    from gnomon.project import Project

    options: dict[str, Any] = {"group": group} if group else {}
    if engine == "spark":
        options.update(
            source_dir=source_dir,
            checkpoint=checkpoint,
            trigger_interval_s=trigger_interval,
            max_per_trigger=max_per_trigger,
        )
    else:
        given = [
            flag
            for flag, value in (
                ("--source-dir", source_dir),
                ("--checkpoint", checkpoint),
                ("--max-per-trigger", max_per_trigger),
                ("--trigger-interval", None if trigger_interval == 1.0 else trigger_interval),
            )
            if value is not None
        ]
        if given:
            raise click.UsageError(f"{', '.join(given)}: only with --engine spark")
    supervision = {
        "backoff_initial_s": backoff_initial,
        "backoff_max_s": backoff_max,
        "grace_period_s": grace_period,
    }
    if all_ or name is None:
        _stream_all(name, all_, until_caught_up, group, engine, metrics_host, metrics_port, repo, supervision)
        return
    if any(value is not None for value in supervision.values()):
        raise click.UsageError("--backoff-initial, --backoff-max, --grace-period: only with --all")
    server = None
    if metrics_port is not None:
        options["metrics"] = metrics = StreamMetrics()
        try:
            server = serve_metrics(metrics.render, metrics_host, metrics_port)
        except OSError as error:
            raise click.BadParameter(
                f"cannot listen on {metrics_host}:{metrics_port} ({error.strerror}); pick a free port",
                param_hint="--metrics-port",
            ) from None
        click.echo(f"metrics on http://{metrics_host}:{server.server_address[1]}/metrics", err=True)
    try:
        stats = Project(repo).stream(name, until_caught_up=until_caught_up, engine=engine, **options)
    except KeyboardInterrupt:
        return
    finally:
        if server is not None:
            server.shutdown()
    for group_by, worker_stats in stats.items():
        click.echo(
            f"{group_by}: {worker_stats.records} record(s), {worker_stats.rows} row(s) applied, "
            f"{worker_stats.filtered} filtered by the Query, {worker_stats.dead_letters} dead letter(s)"
        )


def _stream_all(
    name: str | None,
    all_: bool,
    until_caught_up: bool,
    group: str | None,
    engine: str,
    metrics_host: str,
    metrics_port: int | None,
    repo: str,
    supervision: dict[str, float | None],
) -> None:
    """`gnomon stream --all`: the stream supervisor (gnomon.orchestration.supervisor) until SIGTERM."""
    from gnomon.orchestration.supervisor import Supervisor, serve_supervisor

    if not all_ or name is not None:
        raise click.UsageError(
            "give NAME (a GroupBy or Join) or --all, not both" if all_ else "missing NAME, or --all"
        )
    refused = [
        flag
        for flag, given in (
            ("--until-caught-up", until_caught_up),
            ("--group", group is not None),
            ("--engine spark", engine != "embedded"),
        )
        if given
    ]
    if refused:
        raise click.UsageError(f"{', '.join(refused)}: not with --all (each worker runs until stopped)")
    supervisor = Supervisor(repo, **{k: v for k, v in supervision.items() if v is not None})
    server = None
    if metrics_port is not None:
        try:
            server = serve_supervisor(supervisor, metrics_host, metrics_port)
        except OSError as error:
            raise click.BadParameter(
                f"cannot listen on {metrics_host}:{metrics_port} ({error.strerror}); pick a free port",
                param_hint="--metrics-port",
            ) from None
        url = f"http://{metrics_host}:{server.server_address[1]}"
        click.echo(f"health on {url}/health, metrics on {url}/metrics", err=True)
    click.echo(f"supervising {', '.join(w.group_by for w in supervisor.workers)}", err=True)
    try:
        supervisor.run_until_signalled()
    finally:
        if server is not None:
            server.shutdown()
    click.echo("stopped every stream worker", err=True)


@main.command()
@click.argument("topic")
@click.argument("file", type=click.File("r"))
@click.option("--sync", is_flag=True, help="Also apply the events now, so they are servable on return.")
@repo_option
def push(topic: str, file: Any, sync: bool, repo: str) -> None:
    """Publish the events in FILE (a JSON array, or one JSON object per line; - for stdin) to TOPIC."""
    from gnomon.serving.client import Client

    text = file.read().strip()
    try:
        events = (
            json.loads(text)
            if text.startswith("[")
            else [json.loads(line) for line in text.splitlines() if line.strip()]
        )
    except ValueError as error:
        raise click.BadParameter(f"not JSON: {error}", param_hint="FILE") from None
    with Client(repo) as client:
        ids = client.push(topic, events, sync=sync)
    click.echo(f"published {len(ids)} event(s) to {topic}" + (" (servable now)" if sync else ""))


@main.command()
@click.argument("name")
@click.option(
    "--keys", required=True, help='One key object or an array, e.g. \'{"user": "bob", "item": "i42"}\'.'
)
@click.option("--at", type=int, default=None, help="Epoch ms to fetch the values as of (default: now).")
@click.option("--url", default=None, help="Ask a running `gnomon serve` instead of the repo's store.")
@repo_option
def fetch(name: str, keys: str, at: int | None, url: str | None, repo: str) -> None:
    """Fetch a Join's (or GroupBy's) online values for keys; prints one JSON result per key."""
    from gnomon.project import Project
    from gnomon.serving.client import Client

    try:
        parsed = json.loads(keys)
    except ValueError as error:
        raise click.BadParameter(f"not JSON: {error}", param_hint="--keys") from None
    kind = "join"
    if url is None:
        project = Project(repo)
        if name in project.plan.group_bys:
            kind = "groupby"
        elif name not in project.plan.joins:
            from gnomon.errors import UnknownObjectError

            raise UnknownObjectError("Join or GroupBy", name, [*project.plan.joins, *project.plan.group_bys])
    if not isinstance(parsed, dict) and not (
        isinstance(parsed, list) and all(isinstance(k, dict) for k in parsed)
    ):
        raise click.BadParameter(
            'expected a key object or an array of them, e.g. \'{"user": "bob"}\'', param_hint="--keys"
        )
    with Client(url or repo) as client:
        results = (client.fetch_join if kind == "join" else client.fetch_group_by)(name, parsed, at=at)
    for result in results:
        click.echo(json.dumps(result, default=str))


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8000, show_default=True, type=int)
@click.option(
    "--tls-cert",
    type=click.Path(exists=True, dir_okay=False),
    default=None,
    help="Serve HTTPS with this certificate (PEM, the chain after the server's own); needs --tls-key.",
)
@click.option(
    "--tls-key",
    type=click.Path(exists=True, dir_okay=False),
    default=None,
    help="The private key (PEM) of --tls-cert.",
)
@repo_option
def serve(host: str, port: int, tls_cert: str | None, tls_key: str | None, repo: str) -> None:
    """Serve the repo's online Joins and GroupBys over HTTP (Chronon's fetch contract).

    With `serving: {auth: {tokens_file: tokens.yaml}}` in gnomon.yaml, requests need a bearer token
    (`gnomon token create`)."""
    from gnomon.config import Config
    from gnomon.serving.app import serve as run

    if (tls_cert is None) != (tls_key is None):
        raise click.UsageError("--tls-cert and --tls-key go together: give both (or neither, for plain HTTP)")
    scheme = "https" if tls_cert else "http"
    serving = Config.load(repo).serving
    click.echo(f"serving {Path(repo).resolve()} on {scheme}://{host}:{port} (docs at /docs)")
    if serving.tokens_file is not None:
        metrics = "open" if serving.metrics == "open" else "token of any scope"
        click.echo(f"auth on: bearer tokens of {serving.tokens_file} (/health open, /metrics: {metrics})")
        if scheme == "http" and host not in ("127.0.0.1", "localhost", "::1"):
            click.secho(
                "warning: tokens cross the network in clear text over http; "
                "use --tls-cert/--tls-key or a TLS-terminating proxy",
                fg="yellow",
                err=True,
            )
    run(repo, host, port, tls_cert=tls_cert, tls_key=tls_key)


@main.command(name="ui")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8000, show_default=True, type=int)
@click.option(
    "--open/--no-open",
    "open_browser",
    default=True,
    show_default=True,
    help="Open the UI in the default web browser once the server answers.",
)
@repo_option
@click.pass_context
def ui(ctx: click.Context, host: str, port: int, open_browser: bool, repo: str) -> None:
    """Serve the web UI at http://HOST:PORT/ui: the catalog, lineage, partitions, runs, freshness,
    data quality and consistency of the repo, read from the JSON API under /v1 (listed at /docs).

    The same server as `gnomon serve` (the fetch and push routes answer too); with
    `serving: {auth: ...}` the page asks for a token, which the JSON API needs."""
    if not (Path(repo) / "gnomon.yaml").exists():
        raise click.UsageError(f"{Path(repo).resolve()} has no gnomon.yaml; give the repo with --repo")
    shown = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host
    url = f"http://{f'[{shown}]' if ':' in shown else shown}:{port}/ui"
    click.echo(f"web UI: {url}")
    if open_browser:
        _open_when_up(url, shown, port)
    ctx.invoke(serve, host=host, port=port, tls_cert=None, tls_key=None, repo=repo)


def _open_when_up(url: str, host: str, port: int, timeout_s: float = 30.0) -> None:
    """Open ``url`` in the default browser (from a daemon thread) once ``host:port`` accepts
    connections; give up quietly after ``timeout_s`` (the URL is printed anyway)."""
    import socket
    import threading
    import time
    import webbrowser

    def wait_then_open() -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                with socket.create_connection((host, port), timeout=0.5):
                    webbrowser.open(url)
                    return
            except OSError:
                time.sleep(0.2)

    threading.Thread(target=wait_then_open, name="gnomon-ui-open", daemon=True).start()


@main.group()
def airflow() -> None:
    """Run the repo's daily work from Apache Airflow (docs/airflow.md)."""


@airflow.command(name="export")
@click.argument("directory", type=click.Path(file_okay=False))
@click.option(
    "--gnomon-bin",
    default=None,
    metavar="PATH",
    help="The `gnomon` executable the Airflow workers run, written into the files "
    "(default: this one, or the one on PATH).",
)
@click.option(
    "--start-date",
    default=None,
    metavar="YYYY-MM-DD",
    help="Every DAG's start_date (default: the earliest backfill_start_date/start_partition of its "
    "definitions, else the first partition of its input tables).",
)
@click.option(
    "--sensor-timeout",
    type=click.FloatRange(min=0, min_open=True),
    default=6 * 3600,
    show_default=True,
    metavar="SECONDS",
    help="How long a sensor waits for an input partition before the run fails.",
)
@click.option(
    "--poke-interval",
    type=click.FloatRange(min=0, min_open=True),
    default=300,
    show_default=True,
    metavar="SECONDS",
    help="How often a sensor looks for its partitions again.",
)
@click.option(
    "--retries", type=click.IntRange(min=0), default=2, show_default=True, help="Retries of a failed task."
)
@repo_option
def airflow_export(
    directory: str,
    gnomon_bin: str | None,
    start_date: str | None,
    sensor_timeout: float,
    poke_interval: float,
    retries: int,
    repo: str,
) -> None:
    """Write Airflow DAG files into DIRECTORY: one per Join, one for the StagingQueries, one for the
    consistency checks (and one for GroupBys no Join uses). Each task runs the `gnomon` CLI with
    Airflow's execution date ({{ ds }}) as the day."""
    from gnomon.orchestration.airflow import ExportOptions, default_gnomon_bin, export_dags
    from gnomon.project import Project

    binary = str(Path(gnomon_bin).absolute()) if gnomon_bin else default_gnomon_bin()
    options = ExportOptions(binary, start_date, sensor_timeout, poke_interval, retries)
    written = export_dags(Project(repo), directory, options)
    for path in written:
        click.echo(f"wrote {path}")
    click.echo(
        f"{len(written)} DAG file(s); copy them into your Airflow dags folder (or point it at {directory})"
    )


@main.group()
def token() -> None:
    """Bearer tokens of the HTTP service (needs `serving: {auth: {tokens_file: ...}}` in gnomon.yaml)."""


def _tokens_file(repo: str) -> Any:
    from gnomon.config import Config
    from gnomon.errors import ConfigError
    from gnomon.serving.auth import TokensFile

    config = Config.load(repo)
    if config.serving.tokens_file is None:
        raise ConfigError(
            f"auth is not configured in {config.root / 'gnomon.yaml'}: add "
            "`serving: {auth: {tokens_file: tokens.yaml}}` (a path relative to the repo), then create tokens"
        )
    return TokensFile(config.serving.tokens_file)


@token.command(name="create")
@click.argument("name")
@click.option(
    "--scopes",
    required=True,
    help="fetch (the fetch routes), push (POST /v1/events) or fetch,push.",
)
@repo_option
def token_create(name: str, scopes: str, repo: str) -> None:
    """Create a token NAME; prints it alone on the last line of stdout (it is stored hashed: copy it now)."""
    from gnomon.serving.auth import parse_scopes

    try:
        parsed = parse_scopes(scopes)
    except GnomonError as error:
        raise click.BadParameter(str(error).removeprefix("scopes: "), param_hint="--scopes") from None
    tokens = _tokens_file(repo)
    secret = tokens.create(name, parsed)
    click.echo(
        f"created token {name!r} with scope(s) {','.join(parsed)} in {tokens.path}; only its SHA-256 is "
        "stored, so copy it now (running servers accept it within a second):",
        err=True,
    )
    click.echo(secret)


@token.command(name="list")
@repo_option
def token_list(repo: str) -> None:
    """The tokens' names, scopes and creation times (never the tokens)."""
    tokens = _tokens_file(repo)
    entries = tokens.read()
    if not entries:
        click.echo(f"no tokens in {tokens.path}; create one with `gnomon token create NAME --scopes fetch`")
        return
    width = max(4, *(len(e.name) for e in entries))
    click.echo(f"{'NAME':<{width}}  {'SCOPES':<10}  CREATED")
    for entry in entries:
        click.echo(f"{entry.name:<{width}}  {','.join(entry.scopes):<10}  {entry.created}")


@token.command(name="revoke")
@click.argument("name")
@repo_option
def token_revoke(name: str, repo: str) -> None:
    """Delete the token NAME; running servers refuse it within a second."""
    tokens = _tokens_file(repo)
    tokens.revoke(name)
    click.echo(f"revoked token {name!r}; running servers refuse it within a second")


if __name__ == "__main__":
    main()
