"""Owners, tags and descriptions on definitions: checked when built, carried into the plan (and its
JSON, old plan files without them still load), printed by ``gnomon compile``, and never part of a
fingerprint: editing them changes no GroupBy fingerprint or feature id, no task fingerprint of
``gnomon run``, no fetch-log ``join_fingerprint``, and leaves an upload serving."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

import gnomon
from gnomon import Aggregation, EventSource, GroupBy, Join, JoinPart, Operation, Query, StagingQuery
from gnomon.cli import main
from gnomon.compile.plan import Meta, Plan
from gnomon.errors import DefinitionError
from gnomon.monitoring.fetch_log import join_fingerprint
from gnomon.orchestration.graph import build_graph
from gnomon.scaffold import create_example_repo
from gnomon.timeline import ds_to_ms

VIEWS = EventSource(table="act.views", query=Query(selects={"user": "user_id", "price": "price"}))
JOIN = "user_item_training"


def group_by(**meta: Any) -> GroupBy:
    return GroupBy(
        sources=[VIEWS], keys=["user"], aggregations=[Aggregation("price", Operation.SUM)], name="g", **meta
    )


def join(**meta: Any) -> Join:
    return Join(left=VIEWS, right_parts=[JoinPart(group_by())], name="j", **meta)


def staging_query(**meta: Any) -> StagingQuery:
    return StagingQuery(
        name="s", query="SELECT 1 AS x, '2026-10-01' AS ds", start_partition="2026-10-01", **meta
    )


BUILDERS = {"GroupBy": group_by, "Join": join, "StagingQuery": staging_query}


@pytest.mark.parametrize("kind", BUILDERS)
@pytest.mark.parametrize(
    ("meta", "message"),
    [
        (
            {"owner": ""},
            "owner: owner must be a non-empty string, got '' Fix: write e.g. owner=\"ranking-team\"",
        ),
        ({"owner": 7}, "owner: owner must be a non-empty string, got 7"),
        ({"description": "  "}, "description: description must be a non-empty string"),
        ({"tags": "ranking"}, "tags: tags must be a list of strings Fix: write tags=['ranking']"),
        ({"tags": {"ranking"}}, "tags: tags must be a list of strings, got set"),
        ({"tags": ["ranking", ""]}, "tags: every tag must be a non-empty string, got ''"),
        ({"tags": ["ranking", 3]}, "tags: every tag must be a non-empty string, got 3"),
        ({"tags": ["user", "ranking", "user"]}, "tags: tag 'user' is listed twice Fix: list each tag once"),
    ],
)
def test_bad_metadata_is_an_error_naming_the_object_field_and_fix(
    kind: str, meta: dict[str, Any], message: str
) -> None:
    with pytest.raises(DefinitionError) as raised:
        BUILDERS[kind](**meta)
    assert raised.value.obj is not None and raised.value.obj.startswith(kind)
    assert message in str(raised.value)


@pytest.mark.parametrize("kind", BUILDERS)
def test_metadata_is_optional_and_tags_become_a_tuple(kind: str) -> None:
    plain = BUILDERS[kind]()
    assert (plain.owner, plain.tags, plain.description) == (None, (), None)
    described = BUILDERS[kind](owner="ranking-team", tags=["user", "ranking"], description="What it is.")
    assert (described.owner, described.tags, described.description) == (
        "ranking-team",
        ("user", "ranking"),
        "What it is.",
    )


def add_metadata(repo: Path) -> None:
    """Give the quickstart's three definitions an owner, tags and a description, in their files."""
    for module, meta in (
        (
            "user_activity",
            'owner="growth", tags=["user", "engagement"], description="Views per user and item."',
        ),
        ("item_ratings", 'owner="catalog", tags=["item"]'),
        ("training", 'owner="ranking", tags=["training"], description="Watches with their features."'),
    ):
        path = repo / "features" / f"{module}.py"
        text = path.read_text()
        assert text.count("    online=True,\n)") == 1
        path.write_text(text.replace("    online=True,\n)", f"    online=True,\n    {meta},\n)"))


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return create_example_repo(tmp_path_factory.mktemp("metadata") / "quickstart")


def test_the_plan_carries_metadata_and_its_json_round_trips(tmp_path: Path) -> None:
    repo = create_example_repo(tmp_path / "quickstart")
    add_metadata(repo)
    plan = gnomon.Project(repo).compile()
    assert plan.group_bys["user_item_views"].meta == Meta(
        owner="growth",
        tags=["user", "engagement"],
        description="Views per user and item.",
        defined_in="features.user_activity",
    )
    assert plan.group_bys["item_ratings"].meta == Meta("catalog", ["item"], None, "features.item_ratings")
    assert plan.joins[JOIN].meta.owner == "ranking"
    text = (repo / "compiled" / "plan.json").read_text()
    assert json.loads(text)["joins"][JOIN]["meta"] == {
        "owner": "ranking",
        "tags": ["training"],
        "description": "Watches with their features.",
        "defined_in": "features.training",
    }
    assert Plan.from_json(text).to_json() == text
    assert Plan.from_json(text).joins[JOIN] == plan.joins[JOIN]


def test_a_plan_file_written_before_metadata_still_loads(repo: Path) -> None:
    body = json.loads(gnomon.Project(repo).compile(write=False).to_json())
    for section in ("group_bys", "joins", "staging_queries"):
        for node in body[section].values():
            del node["meta"]
    old = Plan.from_json(json.dumps(body))
    assert old.group_bys["user_item_views"].meta == Meta()
    assert old.joins[JOIN].meta == Meta()


def test_gnomon_compile_prints_owner_tags_and_description(tmp_path: Path) -> None:
    repo = create_example_repo(tmp_path / "quickstart")
    plain = CliRunner().invoke(main, ["compile", "--repo", str(repo)])
    assert plain.exit_code == 0, plain.output
    assert "owner" not in plain.output and "tags" not in plain.output
    add_metadata(repo)
    result = CliRunner().invoke(main, ["compile", "--repo", str(repo)])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    views = lines.index("GroupBy user_item_views  (temporal, keys: user, item, online)")
    assert lines[views + 1 : views + 3] == [
        "  owner growth · tags user, engagement",
        "  Views per user and item.",
    ]
    ratings = lines.index("GroupBy item_ratings  (temporal, keys: item, online)")
    assert lines[ratings + 1] == "  owner catalog · tags item"
    training = lines.index(f"Join {JOIN}  (left: user_activity.watches, online)")
    assert lines[training + 1 : training + 3] == [
        "  owner ranking · tags training",
        "  Watches with their features.",
    ]


def test_metadata_changes_no_fingerprint(tmp_path: Path) -> None:
    repo = create_example_repo(tmp_path / "quickstart")
    before = gnomon.Project(repo)
    plan_before = before.compile()
    before.upload(JOIN, "2026-10-30")  # its online GroupBys' batch state, with their fingerprints
    add_metadata(repo)
    after = gnomon.Project(repo)
    plan_after = after.compile()
    assert plan_after.joins[JOIN].meta.owner == "ranking"  # the edit took
    for name, old in plan_before.group_bys.items():
        new = plan_after.group_bys[name]
        assert new.meta != old.meta
        assert (new.fingerprint, new.feature_ids(), new.semantics()) == (
            old.fingerprint,
            old.feature_ids(),
            old.semantics(),
        )
    tasks = {t.id: t.fingerprint for t in build_graph(plan_before, consistency=True)}
    assert {t.id: t.fingerprint for t in build_graph(plan_after, consistency=True)} == tasks
    assert join_fingerprint(plan_after, JOIN) == join_fingerprint(plan_before, JOIN)
    # the upload keeps serving: nothing stale, no DefinitionChanged
    assert after.stale_uploads() == {}
    results = after.fetcher().fetch_join(
        JOIN, [{"user": "u0007", "item": "i001"}], at=ds_to_ms("2026-10-31") + 3_600_000
    )
    assert [r.status for r in results] == ["Success"]
    # the same checks see a change that does change what is computed
    training = repo / "features" / "training.py"
    training.write_text(training.read_text().replace("item_ratings_rating_average_90d", "1.0"))
    changed = gnomon.Project(repo).compile()
    assert join_fingerprint(changed, JOIN) != join_fingerprint(plan_before, JOIN)
    changed_tasks = {t.id: t.fingerprint for t in build_graph(changed, consistency=True)}
    assert changed_tasks[f"join_backfill/{JOIN}"] != tasks[f"join_backfill/{JOIN}"]
    assert changed_tasks["group_by_backfill/user_item_views"] == tasks["group_by_backfill/user_item_views"]
