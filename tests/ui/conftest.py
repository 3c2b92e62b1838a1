"""The UI sample repo, shared by the JSON API tests (test_api.py) and the browser tests.

Fixtures:

- ``ui_repo_template`` (session): the repo, built once (about 15 s). Treat it as read-only.
- ``ui_template_url`` (session): a server (`create_app`, served by uvicorn in a thread) over the
  template, for tests that only read.
- ``ui_repo`` (function): a private copy of the template (a `Path`) that a test may change.
- ``ui_server`` (function): the base URL (``http://127.0.0.1:PORT``) of a server over ``ui_repo``.

What the repo holds (every day is relative to ``LAST_DS``, yesterday UTC, so uploads are recent):

- the quickstart of `gnomon init` (``user_item_views`` and ``item_ratings``, both online and streamed,
  and the online Join ``user_item_training``), its sample data ``FIRST_DS`` .. ``LAST_DS`` (30 days;
  ``item_info.ratings_snapshots`` starts a day earlier), and ``serving: {log: {sample: 1.0}}``;
- ``features/ui_extras.py`` (`EXTRAS`): the StagingQuery ``item_daily_views`` (starts ``OUTPUT_DAYS[0]``),
  the offline GroupBy ``item_popularity`` over its output, the GroupBy ``user_watch_ratings`` chained
  over ``user_item_training`` (a JoinSource) and the offline Join ``user_profile`` of both — each with
  an owner, tags and a description (`METADATA`);
- every output table backfilled for ``OUTPUT_DAYS`` (``LAST_DS - 7`` .. ``LAST_DS - 1``; the training
  Join for ``JOIN_DAYS``, from ``LAST_DS - 14``, which the chained GroupBy's windows read), with the
  data-quality statistics every backfill stores: the days before ``RUN_DS`` by `Project.backfill`,
  ``RUN_DS`` (``LAST_DS - 1``) by `gnomon run` (``FAST_RUN``), whose history records every task of that
  day, the uploads of both online GroupBys as of ``RUN_DS`` (their batch end is ``LAST_DS`` 00:00) and
  a consistency check of ``RUN_DS`` with nothing logged;
- every ``user_views`` event of ``LAST_DS`` published to its topic plus `extra_event` (online only, not
  in the warehouse), and every ratings mutation of ``LAST_DS`` to ``ratings_mutations``, all streamed;
  then `FETCHED` fetches of ``user_item_training`` (the first watches of ``LAST_DS``, each at its own
  ``ts``) through a server that logs them to ``logs.user_item_training``, and the consistency check of
  ``LAST_DS``: the fetches whose 5-hour count includes the extra event mismatch;
- `PENDING_EVENTS` more ``user_views`` events published and never streamed (a stream lag of that many).
"""

from __future__ import annotations

import datetime as dt
import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

import gnomon
from gnomon.monitoring.consistency import check_consistency
from gnomon.orchestration.runner import DailyRunner, RunOptions
from gnomon.scaffold import create_example_repo
from gnomon.serving.app import create_app
from gnomon.timeline import ds_range, ds_to_ms, shift_ds
from online.helpers import running_server

LAST_DS = (dt.datetime.now(dt.UTC).date() - dt.timedelta(days=1)).isoformat()
FIRST_DS = shift_ds(LAST_DS, -29)
RUN_DS = shift_ds(LAST_DS, -1)
OUTPUT_DAYS = ds_range(shift_ds(LAST_DS, -7), RUN_DS)
#: the training Join's partitions: the chained GroupBy's 7-day windows had the days before computed too
JOIN_DAYS = ds_range(shift_ds(LAST_DS, -14), RUN_DS)
JOIN = "user_item_training"
TOPIC = "user_views"
MUTATION_TOPIC = "ratings_mutations"
FETCHED = 40
PENDING_EVENTS = 3

METADATA: dict[str, dict[str, Any]] = {
    "item_daily_views": {
        "owner": "content-team",
        "tags": ["items", "daily"],
        "description": "Views per item and day.",
    },
    "item_popularity": {
        "owner": "content-team",
        "tags": ["items", "popularity"],
        "description": "How often an item was viewed over the last 7 days, from the daily counts.",
    },
    "user_watch_ratings": {
        "owner": "growth",
        "tags": ["users", "chained"],
        "description": "The ratings of the items a user watched over 7 days, from the training rows.",
    },
    "user_profile": {
        "owner": "growth",
        "tags": ["users", "training"],
        "description": "Every watch with the user's rating habits and the item's popularity.",
    },
}


def _meta(name: str) -> str:
    """The metadata keyword arguments of ``name``, as Python source."""
    return ", ".join(f"{key}={value!r}" for key, value in METADATA[name].items())


EXTRAS = f'''"""The UI sample repo's extra definitions: a StagingQuery, a GroupBy over its output, a GroupBy
chained over the training Join, and a Join of both."""

from features.training import user_item_training

from gnomon import (Aggregation, EventSource, GroupBy, Join, JoinPart, JoinSource, Operation, Query,
                    StagingQuery)

item_daily_views = StagingQuery(
    name="item_daily_views",
    query="SELECT item_id AS item, count(*) AS views, max(ts) AS ts, ds FROM user_activity.user_views "
    "WHERE ds BETWEEN '{{{{ start_date }}}}' AND '{{{{ end_date }}}}' GROUP BY item_id, ds",
    start_partition="{OUTPUT_DAYS[0]}",
    {_meta("item_daily_views")},
)
item_popularity = GroupBy(
    name="item_popularity",
    sources=[EventSource(table="features.item_daily_views",
                         query=Query(selects={{"item": "item", "views": "views"}}))],
    keys=["item"],
    aggregations=[Aggregation("views", Operation.SUM, windows=["7d"])],
    {_meta("item_popularity")},
)
user_watch_ratings = GroupBy(
    name="user_watch_ratings",
    sources=[JoinSource(user_item_training,
                        Query(selects={{"user": "user", "rating": "item_ratings_rating_average_90d"}}))],
    keys=["user"],
    aggregations=[Aggregation("rating", Operation.AVERAGE, windows=["7d"]),
                  Aggregation("rating", Operation.COUNT, windows=["7d"])],
    {_meta("user_watch_ratings")},
)
user_profile = Join(
    name="user_profile",
    left=EventSource(table="user_activity.watches",
                     query=Query(selects={{"user": "user_id", "item": "item_id"}})),
    right_parts=[JoinPart(user_watch_ratings), JoinPart(item_popularity)],
    {_meta("user_profile")},
)
'''

#: the order the backfills run in (a StagingQuery's output before the GroupBy that reads it)
BACKFILL_ORDER = (
    "item_daily_views",
    "item_popularity",
    "user_item_views",
    "item_ratings",
    "user_item_training",
    "user_watch_ratings",
    "user_profile",
)
FAST_RUN = RunOptions(sensor_timeout_s=0, poll_interval_s=0.05, retries=0, retry_delay_s=0)


def fetched_watches(project: gnomon.Project) -> list[dict[str, Any]]:
    """The watches of ``LAST_DS`` the repo fetched (and logged), in order."""
    return project.warehouse.read_table("user_activity.watches", LAST_DS, LAST_DS).to_pylist()[:FETCHED]


def extra_event(project: gnomon.Project) -> dict[str, Any]:
    """The event only the stream has: a view of the first fetched watch's item by its user, a second
    before that watch."""
    watch = fetched_watches(project)[0]
    return {
        "user_id": watch["user_id"],
        "item_id": watch["item_id"],
        "activity_type": "item_view",
        "ts": watch["ts"] - 1000,
    }


def table_events(project: gnomon.Project, table: str, ds: str) -> list[dict[str, Any]]:
    """The rows of partition ``ds`` of ``table`` as stream events (without ``ds``)."""
    rows = project.warehouse.read_table(table, ds, ds).to_pylist()
    return [{k: v for k, v in row.items() if k != "ds"} for row in rows]


def publish(project: gnomon.Project, events: list[dict[str, Any]], topic: str = TOPIC) -> None:
    broker = project.broker()
    try:
        broker.publish(topic, [json.dumps(event).encode() for event in events])
    finally:
        broker.close()


def build_ui_repo(root: Path) -> Path:
    """Write and fill the sample repo at ``root`` (see the module docstring)."""
    create_example_repo(root, last_ds=LAST_DS)
    (root / "features" / "ui_extras.py").write_text(EXTRAS)
    with (root / "gnomon.yaml").open("a") as config:
        config.write("\nserving: {log: {sample: 1.0}}\n")
    project = gnomon.Project(root)
    for name in BACKFILL_ORDER:
        project.backfill(name, OUTPUT_DAYS[0], shift_ds(RUN_DS, -1))
    runner = DailyRunner(project, None, FAST_RUN)
    try:
        outcomes = runner.run([RUN_DS])
    finally:
        runner.history.close()
    failed = [o for o in outcomes if o.status != "success"]
    assert not failed, failed
    publish(project, [*table_events(project, "user_activity.user_views", LAST_DS), extra_event(project)])
    publish(project, table_events(project, "item_info.ratings_mutations", LAST_DS), MUTATION_TOPIC)
    project.stream(JOIN, until_caught_up=True)
    app = create_app(root)
    with running_server(app) as url:
        keys = [{"user": w["user_id"], "item": w["item_id"]} for w in fetched_watches(project)]
        for key, watch in zip(keys, fetched_watches(project), strict=True):
            response = httpx.post(f"{url}/v1/features/join/{JOIN}", json=[key], params={"at": watch["ts"]})
            assert response.status_code == 200, response.text
    app.state.fetch_log.close()
    check_consistency(gnomon.Project(root), JOIN, LAST_DS)
    views = table_events(project, "user_activity.user_views", LAST_DS)
    publish(
        project,
        [{**event, "ts": ds_to_ms(LAST_DS) + 1000 * n} for n, event in enumerate(views[:PENDING_EVENTS])],
    )
    return root


@pytest.fixture(scope="session")
def ui_repo_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The sample repo, built once per session; copy it (``ui_repo``) before changing anything."""
    return build_ui_repo(tmp_path_factory.mktemp("ui") / "repo")


@pytest.fixture()
def ui_repo(ui_repo_template: Path, tmp_path: Path) -> Path:
    """A private copy of the sample repo."""
    return Path(shutil.copytree(ui_repo_template, tmp_path / "repo"))


@pytest.fixture()
def ui_server(ui_repo: Path) -> Iterator[str]:
    """The base URL of a server (`create_app`) over ``ui_repo``."""
    with running_server(create_app(ui_repo)) as url:
        yield url


@pytest.fixture(scope="session")
def ui_template_url(ui_repo_template: Path) -> Iterator[str]:
    """The base URL of a server over the template itself: for tests that only read."""
    with running_server(create_app(ui_repo_template)) as url:
        yield url
