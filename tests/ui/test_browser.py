"""The web UI's pages in a real browser: Debian's Chromium driven by Playwright, against a real
``gnomon ui`` (and ``gnomon serve``) process over the UI sample repo of ``conftest.py``.

What each page shows is compared with the repo itself, never with the JSON API the page reads: the
catalog with the definitions' metadata (`METADATA`), the lineage graph with the edges written out in
`READ_EDGES` and `SINK_EDGES`, the partition calendar with a partition folder this file deletes, the consistency
chart and drill-down with the ``consistency.<join>`` table, the runs with the run history, the quality
charts with the stored statistics. Every page is also checked for console errors.

The servers (`Servers`, started together: each takes seconds to start) run over four repos: the
browser repo (`browser_repo`: the sample repo plus one failed day of ``gnomon run``, the day after
``LAST_DS``, whose inputs do not exist, so its partition sensors fail naming table and ds), the sample
repo without one partition (`GAP_TABLE`, `GAP_DS`), the sample repo with ``serving: {auth: ...}``
(served by ``gnomon serve``) and an empty repo.

Screenshots: every view is saved as ``<view>.png`` (1280×800 viewport, full page) into the folder that
``$GNOMON_SCREENSHOTS`` names, by default ``tests/ui/.screenshots/`` (the docs' come from
``GNOMON_SCREENSHOTS=docs/screenshots python -m pytest tests/ui/test_browser.py``).

Chromium comes from Debian (``apt-get install chromium``, done by scripts/test.sh); Playwright never
downloads a browser here. Without ``/usr/bin/chromium`` the tests skip locally and fail in CI.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pyarrow.parquet as pq
import pytest

import gnomon
from gnomon.errors import PartitionTimeoutError
from gnomon.offline.stats import read_stats
from gnomon.orchestration.history import History
from gnomon.orchestration.runner import DailyRunner
from gnomon.serving.auth import TokensFile
from gnomon.timeline import shift_ds
from online.helpers import free_port, gnomon_command, subprocess_env
from ui.conftest import FAST_RUN, JOIN, LAST_DS, METADATA, OUTPUT_DAYS, PENDING_EVENTS, RUN_DS, TOPIC

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
VIEWPORT = {"width": 1280, "height": 800}
FAILED_DS = shift_ds(LAST_DS, 1)  # the browser repo's failed run: no input partition exists for it
WAIT_DS = shift_ds(LAST_DS, 2)  # a `gnomon run` of user_item_views waits for this day's views meanwhile
GAP_TABLE = "features.user_item_views"
GAP_DS = OUTPUT_DAYS[3]

OBJECTS = {
    "group_by/user_item_views",
    "group_by/item_ratings",
    "join/user_item_training",
    "staging_query/item_daily_views",
    "group_by/item_popularity",
    "group_by/user_watch_ratings",
    "join/user_profile",
}
KIND = {"item_daily_views": "staging_query", "user_profile": "join"}  # the others of METADATA are GroupBys

# the repo's lineage: tables and topics feed GroupBys (and the StagingQuery, through its SQL), GroupBys
# and a Join's left table feed Joins, a Join feeds the GroupBy chained over it, and every object writes
# its output table (which the GroupBy over the StagingQuery's output reads)
READ_EDGES = {
    ("table:user_activity.user_views", "group_by:user_item_views"),
    ("topic:user_views", "group_by:user_item_views"),
    ("table:item_info.ratings_snapshots", "group_by:item_ratings"),
    ("table:item_info.ratings_mutations", "group_by:item_ratings"),
    ("topic:ratings_mutations", "group_by:item_ratings"),
    ("table:user_activity.watches", "join:user_item_training"),
    ("group_by:user_item_views", "join:user_item_training"),
    ("group_by:item_ratings", "join:user_item_training"),
    ("table:user_activity.user_views", "staging_query:item_daily_views"),
    ("staging_query:item_daily_views", "table:features.item_daily_views"),
    ("table:features.item_daily_views", "group_by:item_popularity"),
    ("join:user_item_training", "group_by:user_watch_ratings"),
    ("table:user_activity.watches", "join:user_profile"),
    ("group_by:user_watch_ratings", "join:user_profile"),
    ("group_by:item_popularity", "join:user_profile"),
}
# the output tables nothing reads: drawn only with "output tables nothing reads" ticked
SINK_EDGES = {
    (f"{kind}:{name}", f"table:features.{name}")
    for kind, name in [
        ("group_by", "user_item_views"),
        ("group_by", "item_ratings"),
        ("join", "user_item_training"),
        ("group_by", "item_popularity"),
        ("group_by", "user_watch_ratings"),
        ("join", "user_profile"),
    ]
}


# ------------------------------------------------------------------ the browser and the servers


def _chromium() -> Path:
    """Debian's Chromium; the tests skip (locally) only when it is missing, and fail in CI."""
    if CHROMIUM.exists():
        return CHROMIUM
    reason = "Chromium is not installed: scripts/test.sh installs Debian's chromium package"
    if os.environ.get("CI"):
        pytest.fail(reason)
    pytest.skip(reason)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    executable = _chromium()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(
            executable_path=str(executable), headless=True, args=CHROMIUM_ARGS
        )
        try:
            yield chromium
        finally:
            chromium.close()


class Page:
    """A browser tab on one server that records console errors and uncaught exceptions."""

    def __init__(self, browser: Any, base_url: str) -> None:
        self.base_url = base_url
        self.context = browser.new_context(viewport=VIEWPORT)
        self.page = self.context.new_page()
        self.errors: list[str] = []
        self.page.on(
            "console", lambda message: self.errors.append(message.text) if message.type == "error" else None
        )
        self.page.on("pageerror", lambda error: self.errors.append(f"uncaught: {error}"))

    def open(self, route: str) -> Any:
        """Load ``/ui#<route>`` and wait until the view has rendered; returns the Playwright page."""
        self.page.goto(f"{self.base_url}/ui#{route}")
        self.settle()
        return self.page

    def settle(self) -> None:
        """Wait until the view of the current route, and every part of it that loads on its own, has
        rendered (the app marks the route it shows on ``main``)."""
        self.page.wait_for_function(
            "document.querySelector('main#view').dataset.route === location.hash"
            " && !document.querySelector('[aria-busy]')"
        )

    def shot(self, view: str) -> None:
        folder = Path(os.environ.get("GNOMON_SCREENSHOTS") or ROOT / "tests" / "ui" / ".screenshots")
        if not folder.is_absolute():
            folder = ROOT / folder
        folder.mkdir(parents=True, exist_ok=True)
        self.page.evaluate("window.scrollTo(0, 0)")  # else the sticky nav bar lands mid-page
        self.page.screenshot(path=str(folder / f"{view}.png"), full_page=True)

    def close(self) -> None:
        self.context.close()


def gnomon_process(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        gnomon_command(*args),
        env=subprocess_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


def launch(command: str, repo: Path) -> tuple[subprocess.Popen[str], str]:
    """Start ``gnomon ui`` or ``gnomon serve`` over ``repo`` on a free port; returns it and its URL."""
    port = free_port()
    options = ["--no-open"] if command == "ui" else []
    process = gnomon_process(command, *options, "--port", str(port), "--repo", str(repo))
    return process, f"http://127.0.0.1:{port}"


def wait_until_waiting(process: subprocess.Popen[str], repo: Path) -> None:
    """Wait until the `gnomon run` ``process`` has recorded its tasks of `WAIT_DS` as waiting."""
    deadline = time.monotonic() + 60
    while True:
        history = History.for_repo(repo)
        try:
            if any(a.status == "waiting" for a in history.latest(WAIT_DS)):
                return
        finally:
            history.close()
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            raise AssertionError(f"{process.args} is not waiting: {process.communicate(timeout=5)[1]}")
        time.sleep(0.05)


def wait_until_up(process: subprocess.Popen[str], url: str) -> None:
    deadline = time.monotonic() + 60
    while True:
        try:
            if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            raise AssertionError(f"{process.args} did not start: {process.communicate(timeout=5)[1]}")
        time.sleep(0.05)


def stop(process: subprocess.Popen[str]) -> None:
    process.terminate()
    try:
        process.communicate(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.communicate()


@pytest.fixture(scope="module")
def browser_repo(tmp_path_factory: pytest.TempPathFactory, ui_repo_template: Path) -> Path:
    """The sample repo plus a failed day of ``gnomon run`` (sensors of ``FAILED_DS`` fail at once)."""
    repo = Path(shutil.copytree(ui_repo_template, tmp_path_factory.mktemp("browser") / "repo"))
    runner = DailyRunner(gnomon.Project(repo), None, FAST_RUN)
    try:
        with pytest.raises(PartitionTimeoutError, match=FAILED_DS):
            runner.run([FAILED_DS])
    finally:
        runner.history.close()
    return repo


@dataclass(frozen=True)
class Servers:
    """The module's servers (started together: each takes seconds to import and load its repo)."""

    main: str  # gnomon ui over the browser repo, where a `gnomon run` waits for WAIT_DS
    gap: str  # gnomon ui over the sample repo without partition GAP_DS of GAP_TABLE
    auth: str  # gnomon serve over the sample repo with serving.auth; `token` is its one token
    empty: str  # gnomon ui over a repo with no definitions and no data
    token: str


@pytest.fixture(scope="module")
def servers(
    tmp_path_factory: pytest.TempPathFactory, ui_repo_template: Path, browser_repo: Path
) -> Iterator[Servers]:
    root = tmp_path_factory.mktemp("servers")
    gap = Path(shutil.copytree(ui_repo_template, root / "gap"))
    shutil.rmtree(gap / "warehouse" / Path(*GAP_TABLE.split(".")) / f"ds={GAP_DS}")
    secured = Path(shutil.copytree(ui_repo_template, root / "auth"))
    with (secured / "gnomon.yaml").open("a") as config:
        config.write("serving: {log: {sample: 1.0}, auth: {tokens_file: tokens.yaml}}\n")
    token = TokensFile(secured / "tokens.yaml").create("ui", ["fetch"])
    empty = root / "empty"
    (empty / "features").mkdir(parents=True)
    (empty / "gnomon.yaml").write_text("project: empty\n")
    runner = gnomon_process("run", "user_item_views", "--ds", WAIT_DS, "--repo", str(browser_repo))
    started = [launch("ui", browser_repo), launch("ui", gap), launch("serve", secured), launch("ui", empty)]
    try:
        for process, url in started:
            wait_until_up(process, url)
        wait_until_waiting(runner, browser_repo)
        yield Servers(*(url for _, url in started), token=token)
    finally:
        for process in [runner, *(process for process, _ in started)]:
            stop(process)


@pytest.fixture()
def tab(browser: Any, servers: Servers) -> Iterator[Page]:
    """A tab on the browser repo's server; the test fails on any console error."""
    page = Page(browser, servers.main)
    try:
        yield page
        assert not page.errors, page.errors
    finally:
        page.close()


@pytest.fixture()
def other_tab(browser: Any) -> Iterator[Callable[[str], Page]]:
    """``other_tab(url)``: a tab on another server (the test checks its console errors itself)."""
    pages: list[Page] = []

    def open_tab(url: str) -> Page:
        pages.append(Page(browser, url))
        return pages[-1]

    try:
        yield open_tab
    finally:
        for page in pages:
            page.close()


def texts(page: Any, selector: str) -> list[str]:
    return [element.inner_text().strip() for element in page.query_selector_all(selector)]


def attributes(page: Any, selector: str, name: str) -> set[str]:
    return {element.get_attribute(name) for element in page.query_selector_all(selector)}


def wait_rows(page: Any, expected: set[str]) -> set[str]:
    """The catalog's rows once they equal ``expected`` (or after 5 s, whatever they are then)."""
    deadline = time.monotonic() + 5
    while True:
        rows = attributes(page, "table.catalog tbody tr", "data-object")
        if rows == expected or time.monotonic() > deadline:
            return rows
        page.wait_for_timeout(50)


# ------------------------------------------------------------------ the views


def test_catalog_search_filters_by_owner_and_tag(tab: Page) -> None:
    page = tab.open("/")
    assert attributes(page, "table.catalog tbody tr", "data-object") == OBJECTS
    tab.shot("catalog")

    def named(names: set[str]) -> set[str]:
        return {f"{KIND.get(name, 'group_by')}/{name}" for name in names}

    page.fill("#search", "content-team")
    owned = named({n for n, m in METADATA.items() if m["owner"] == "content-team"})
    assert wait_rows(page, owned) == owned
    assert "q=content-team" in page.url
    page.fill("#search", "chained")
    chained = named({n for n, m in METADATA.items() if "chained" in m["tags"]})
    assert wait_rows(page, chained) == chained
    page.fill("#search", "")
    assert wait_rows(page, OBJECTS) == OBJECTS
    # a tag chip searches its tag
    page.click('table.catalog tr[data-object="join/user_profile"] button.chip[data-tag="users"]')
    users = named({n for n, m in METADATA.items() if "users" in m["tags"]})
    assert wait_rows(page, users) == users
    assert page.input_value("#search") == "users"


def test_object_page_shows_definition_sql_and_typed_columns(tab: Page, browser_repo: Path) -> None:
    page = tab.open("/object/join/user_profile")
    assert page.inner_text("h1").endswith("user_profile")
    facts = page.inner_text("dl.facts")
    meta = METADATA["user_profile"]
    assert meta["owner"] in facts and meta["description"] in facts
    assert set(texts(page, "dl.facts .chip")) == set(meta["tags"])
    assert "features.ui_extras" in facts
    # the compiled SQL blocks, open and not empty
    blocks = page.query_selector_all("details.sql")
    assert blocks and all(block.is_visible() and block.inner_text().strip() for block in blocks)
    sql = "\n".join(block.inner_text() for block in blocks)
    # the left table and both parts of the Join (user_watch_ratings, item_popularity) have their SQL
    assert "FROM user_activity.watches" in sql
    assert "user_watch_ratings" in sql and "item_popularity" in sql
    # every column of the table as written, each with a type
    written = pq.read_schema(next((browser_repo / "warehouse/features/user_profile").glob("ds=*/*.parquet")))
    shown = {
        row.query_selector("td:nth-child(1)").inner_text(): row.query_selector("td:nth-child(2)").inner_text()
        for row in page.query_selector_all("table.columns tbody tr")
    }
    assert shown == {field.name: str(field.type) for field in written if field.name != "ds"}
    tab.shot("object")
    # the plan, collapsed until opened
    plan = page.query_selector("details.plan")
    assert plan and not plan.get_attribute("open")
    plan.click()
    assert json.loads(page.inner_text("details.plan pre"))


def drawn(page: Any) -> tuple[set[str], set[tuple[str, ...]]]:
    """The lineage SVG's node ids and edges."""
    nodes = attributes(page, "svg.lineage [data-node-id]", "data-node-id")
    edges = {tuple(edge.split("->")) for edge in attributes(page, "svg.lineage [data-edge]", "data-edge")}
    return nodes, edges


def test_lineage_graph_has_the_repos_nodes_and_edges(tab: Page) -> None:
    page = tab.open("/lineage")
    nodes, edges = drawn(page)
    assert edges == READ_EDGES
    assert nodes == {node for edge in READ_EDGES for node in edge}
    tab.shot("lineage")
    page.check("#show-outputs")
    page.wait_for_function("location.hash.includes('outputs=1')")
    tab.settle()
    nodes, edges = drawn(page)
    assert edges == READ_EDGES | SINK_EDGES
    assert nodes == {node for edge in READ_EDGES | SINK_EDGES for node in edge}
    # clicking a node focuses the graph on it: what it reads and what reads it, transitively
    page.click('svg.lineage [data-node-id="group_by:item_popularity"]')
    page.wait_for_selector('svg.lineage .node.focused[data-node-id="group_by:item_popularity"]')
    tab.settle()
    nodes, edges = drawn(page)
    assert edges == {
        ("table:user_activity.user_views", "staging_query:item_daily_views"),
        ("staging_query:item_daily_views", "table:features.item_daily_views"),
        ("table:features.item_daily_views", "group_by:item_popularity"),
        ("group_by:item_popularity", "join:user_profile"),
        ("group_by:item_popularity", "table:features.item_popularity"),
        ("join:user_profile", "table:features.user_profile"),
    }
    assert nodes == {node for edge in edges for node in edge}


def test_partition_calendar_marks_exactly_the_deleted_partition(
    other_tab: Callable[[str], Page], servers: Servers
) -> None:
    before = httpx.get(f"{servers.main}/v1/partitions", params={"days": 30}).json()
    missing_before = {(t["table"], ds) for t in before["tables"] for ds in t["missing"]}
    assert (GAP_TABLE, GAP_DS) not in missing_before
    tab = other_tab(servers.gap)
    page = tab.open("/partitions?days=30")
    assert len(page.query_selector_all(f'tr[data-table="{GAP_TABLE}"] td[data-ds]')) == 30
    missing = {
        (cell.evaluate("c => c.closest('tr').dataset.table"), cell.get_attribute("data-ds"))
        for cell in page.query_selector_all('td[data-state="missing"]')
    }
    assert missing - missing_before == {(GAP_TABLE, GAP_DS)}
    gap = page.query_selector(f'tr[data-table="{GAP_TABLE}"] td[data-ds="{GAP_DS}"]')
    assert "missing" in gap.get_attribute("title")
    before_gap = page.query_selector(f'tr[data-table="{GAP_TABLE}"] td[data-ds="{OUTPUT_DAYS[2]}"]')
    assert before_gap.get_attribute("data-state") == "present"
    tab.shot("partitions")
    page.click('.selector a[data-value="90"]')
    page.wait_for_function("location.hash.includes('days=90')")
    tab.settle()
    assert len(page.query_selector_all(f'tr[data-table="{GAP_TABLE}"] td[data-ds]')) == 90
    assert not tab.errors, tab.errors


def consistency_rows(repo: Path) -> list[dict[str, Any]]:
    project = gnomon.Project(repo)
    table = f"consistency.{JOIN}"
    days = project.warehouse.partitions(table)
    return project.warehouse.read_table(table, min(days), max(days)).to_pylist()


def test_consistency_chart_has_one_mark_per_day_and_feature(tab: Page, browser_repo: Path) -> None:
    rows = consistency_rows(browser_repo)
    page = tab.open(f"/consistency/{JOIN}")
    marks = page.query_selector_all("svg.consistency-chart rect[data-ds][data-feature]")
    shown = {
        (m.get_attribute("data-ds"), m.get_attribute("data-feature")): int(m.get_attribute("data-mismatches"))
        for m in marks
    }
    # a day with nothing compared has no rate, so no mark
    assert shown == {(r["ds"], r["feature"]): r["mismatches"] for r in rows if r["rows_compared"]}
    assert len(marks) == len(shown)
    failing = {r["feature"] for r in rows if r["ds"] == LAST_DS and r["mismatches"]}
    assert failing and set(texts(page, "a.failing-feature")) == failing
    tab.shot("consistency")
    page = tab.open("/consistency")
    assert attributes(page, "table.joins tbody tr", "data-join") == {JOIN}  # the online Joins
    assert "mismatches" in page.inner_text(f'tr[data-join="{JOIN}"]')
    tab.shot("consistency_index")


def test_mismatch_drill_down_lists_the_mismatching_keys(tab: Page, browser_repo: Path) -> None:
    rows = [r for r in consistency_rows(browser_repo) if r["ds"] == LAST_DS and r["mismatches"]]
    row = min(rows, key=lambda r: r["feature"])
    page = tab.open(f"/consistency/{JOIN}")
    page.click(f'a.failing-feature:text-is("{row["feature"]}")')
    page.wait_for_selector("table.mismatching-keys")
    tab.settle()
    assert page.url.endswith(f"#/consistency/{JOIN}/{LAST_DS}/{row['feature']}")
    expected = json.loads(row["mismatching_keys"])
    shown = page.query_selector_all("table.mismatching-keys tbody tr")
    assert [json.loads(r.get_attribute("data-keys")) for r in shown] == [k["keys"] for k in expected]
    for element, key in zip(shown, expected, strict=True):
        assert element.query_selector("code.online-value").inner_text() == json.dumps(key["online"])
        assert element.query_selector("code.offline-value").inner_text() == json.dumps(key["offline"])
    tab.shot("mismatch")


def test_runs_show_statuses_errors_and_waits(tab: Page, browser_repo: Path) -> None:
    history = History.for_repo(browser_repo)
    try:
        attempts = history.latest(days=3)
    finally:
        history.close()
    assert {a.ds for a in attempts} == {RUN_DS, FAILED_DS, WAIT_DS}
    page = tab.open("/runs?days=3")
    rows = page.query_selector_all("table.runs tbody tr")
    shown = {
        (r.get_attribute("data-task"), r.get_attribute("data-ds"), r.get_attribute("data-status"))
        for r in rows
    }
    assert shown == {(a.task, a.ds, a.shown_status) for a in attempts}
    colours = {"failed": "rgb(185, 28, 28)", "waiting": "rgb(161, 98, 7)", "success": "rgb(21, 128, 61)"}
    for attempt in attempts:
        row = page.query_selector(f'table.runs tr[data-task="{attempt.task}"][data-ds="{attempt.ds}"]')
        badge = row.query_selector(f".badge.status-{attempt.status}")
        assert badge.evaluate("b => getComputedStyle(b).color") == colours[attempt.status]
        # errors and waits are shown whole: what failed, and which partition a task waits for
        assert attempt.detail.strip() in row.inner_text()
    waiting = [a for a in attempts if a.status == "waiting"]
    assert waiting and all(f"user_activity.user_views ds={WAIT_DS}" in a.detail for a in waiting)
    assert any(
        a.status == "failed" and re.search(r"user_activity\.\w+.*" + FAILED_DS, a.detail) for a in attempts
    )
    tab.shot("runs")


def test_freshness_shows_uploads_and_stream_lag(tab: Page) -> None:
    page = tab.open("/freshness")
    for name in ("user_item_views", "item_ratings"):
        row = page.query_selector(f'table.freshness tr[data-group-by="{name}"]')
        assert RUN_DS in row.inner_text()
    lag = page.query_selector(f'tr[data-group-by="user_item_views"] .lag[data-topic="{TOPIC}"]').inner_text()
    assert f"{PENDING_EVENTS} events" in lag
    assert page.query_selector_all("table.freshness .badge")
    tab.shot("freshness")


def test_quality_charts_follow_the_stored_statistics(tab: Page, browser_repo: Path) -> None:
    table = "features.user_item_training"
    project = gnomon.Project(browser_repo)
    stats = read_stats(project.warehouse, table)
    assert len(stats) >= 2
    page = tab.open(f"/quality/{table}")
    assert len(page.query_selector_all("svg.rows-chart circle")) == len(stats)
    columns = attributes(page, ".column-card", "data-column")
    assert columns == {c.name for c in stats[-1].columns}
    numeric = next(c for c in stats[-1].columns if c.histogram and c.histogram["kind"] == "numeric")
    card = page.query_selector(f'.column-card[data-column="{numeric.name}"]')
    assert len(card.query_selector_all("svg.histogram rect.bar")) == len(numeric.histogram["counts"])
    assert len(card.query_selector_all("svg.drift-chart line.guide")) == 2
    assert len(card.query_selector_all("svg.null-chart circle")) == len(stats)
    tab.shot("quality")
    page = tab.open("/quality")
    assert table in texts(page, "table.tables tbody a")


def test_token_prompt_when_auth_is_configured(other_tab: Callable[[str], Page], servers: Servers) -> None:
    tab = other_tab(servers.auth)
    page = tab.page
    page.goto(f"{servers.auth}/ui#/")
    page.wait_for_selector("dialog#token-dialog[open]")
    tab.shot("token")
    page.fill("#token-input", "not-the-token")
    page.click("#token-submit")
    page.wait_for_selector("dialog#token-dialog[open] >> text=refused")
    page.fill("#token-input", servers.token)
    page.click("#token-submit")
    page.wait_for_selector("table.catalog tbody tr")
    assert attributes(page, "table.catalog tbody tr", "data-object") == OBJECTS
    assert page.evaluate("sessionStorage.getItem('gnomon.token')") == servers.token
    page.reload()
    page.wait_for_selector("table.catalog tbody tr")
    assert not page.query_selector("dialog#token-dialog")
    # the only console errors are the browser's notes of the 401 answers
    assert tab.errors and all("401" in error for error in tab.errors), tab.errors


def test_every_view_works_on_an_empty_repo(other_tab: Callable[[str], Page], servers: Servers) -> None:
    tab = other_tab(servers.empty)
    for route in ("/", "/lineage", "/partitions", "/runs", "/freshness", "/quality", "/consistency"):
        page = tab.open(route)
        assert not page.query_selector(".error"), (route, page.inner_text("main"))
        assert page.query_selector(".empty"), (route, page.inner_text("main"))
    assert not tab.errors, tab.errors
    # an unknown object: the API's error, shown
    page = tab.open("/object/join/nope")
    assert "nope" in page.inner_text(".error")
    assert all("404" in error for error in tab.errors), tab.errors
