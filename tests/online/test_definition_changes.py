"""An upload and its stream rows serve only the definition they were made by (SPEC §5): a change that
alters a value gives `DefinitionChanged` until re-upload; a change that does not keeps serving."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from gnomon import Project
from gnomon.cli import main

from .helpers import BATCH_END, FEATURES_PY, GROUP_BY, HOUR, JOIN, UPLOAD_DS, build_repo, make_events

KEYS = [{"user": "u1", "item": "a"}]

# (change to the definitions file, does it need a re-upload?)
CHANGES = [
    pytest.param(
        'Aggregation("qty", Operation.SUM, windows=["5h"])',
        'Aggregation("qty", Operation.SUM, windows=["6h"])',
        True,
        id="a window",
    ),
    pytest.param("Operation.MAX", "Operation.MIN", True, id="an operation"),
    pytest.param('"price": "price"', '"price": "price * 2"', True, id="a select expression"),
    pytest.param('time_column="ts"', 'time_column="ts + 1"', True, id="the time column"),
    pytest.param('topic="events"', 'topic="events2"', True, id="the topic"),
    pytest.param('keys=["item"]', 'keys=["item", "user"]', True, id="the keys"),
    pytest.param(
        '        Aggregation("qty", Operation.COUNT),\n',
        '        Aggregation("qty", Operation.COUNT),\n        Aggregation("price", Operation.MIN, windows=["1d"]),\n',
        True,
        id="a new aggregation",
    ),
    pytest.param(
        'Derivation("*", "*"),',
        'Derivation("*", "*"), Derivation("double_qty", "i_feat_item_stats_qty_sum_1d * 2"),',
        False,
        id="a derivation",
    ),
    pytest.param('        Aggregation("qty", Operation.COUNT),\n', "", False, id="a removed aggregation"),
    pytest.param(
        '        Aggregation("item", Operation.LAST),\n        Aggregation("item", Operation.LAST_K(2), windows=["1d"]),\n',
        '        Aggregation("item", Operation.LAST_K(2), windows=["1d"]),\n        Aggregation("item", Operation.LAST),\n',
        False,
        id="reordered aggregations",
    ),
    pytest.param('Derivation("avg_price_1d"', 'Derivation("mean_price_1d"', False, id="a renamed output"),
]


@pytest.mark.parametrize(("old", "new", "needs_upload"), CHANGES)
def test_a_definition_change_serves_or_says_so(
    tmp_path: Path, old: str, new: str, needs_upload: bool
) -> None:
    assert old in FEATURES_PY
    repo = tmp_path / "repo"
    project = build_repo(repo, make_events(300, end=BATCH_END))  # nothing to stream: online = upload
    project.compile()
    project.upload(JOIN, UPLOAD_DS)
    at = BATCH_END + HOUR
    before = project.fetcher().fetch_join(JOIN, KEYS, at=at)[0]
    assert before.status == "Success"

    (repo / "features" / "defs.py").write_text(FEATURES_PY.replace(old, new))
    changed = Project(repo)
    changed.compile()
    [result] = changed.fetcher().fetch_join(JOIN, KEYS, at=at)
    if needs_upload:
        assert result.status == "DefinitionChanged", result
        assert "gnomon upload" in result.error  # names the command to run
        compiled = CliRunner().invoke(main, ["compile", "--repo", str(repo)])
        assert compiled.exit_code == 0 and "upload no longer matches" in compiled.output, compiled.output
        changed.upload(JOIN, UPLOAD_DS)
        [result] = changed.fetcher().fetch_join(JOIN, KEYS, at=at)
    assert result.status == "Success", result
    expected = changed.training_data(
        JOIN, __import__("pyarrow").table({"user": ["u1"], "item": ["a"], "ts": [at]})
    )
    row = expected.to_pylist()[0]
    for column, value in result.features.items():
        assert row[column] == pytest.approx(value) if isinstance(value, float) else row[column] == value, (
            column
        )


def test_what_changed_is_named(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    project = build_repo(repo, make_events(100))
    project.compile()
    project.upload(GROUP_BY, UPLOAD_DS)
    (repo / "features" / "defs.py").write_text(
        FEATURES_PY.replace('"price": "price"', '"price": "price * 2"')
    )
    [result] = Project(repo).fetcher().fetch_group_by(GROUP_BY, [{"user": "u1"}], at=BATCH_END)
    assert result.status == "DefinitionChanged"
    assert 'sources[0].selects.price: "price" -> "price * 2"' in result.error, result.error
