"""Repo loading, naming, the plan's JSON, whole-graph validation and `gnomon compile`."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pyarrow as pa
import pytest
from click.testing import CliRunner

from gnomon import DefinitionError, Project
from gnomon.cli import main
from gnomon.compile.plan import Plan

DEFINITIONS = """
from gnomon import Aggregation, EventSource, GroupBy, Join, JoinPart, Operation, Query, Derivation

views = EventSource(table="act.views", query=Query(selects={"user": "user_id", "price": "price"}))
user_prices = GroupBy(sources=[views], keys=["user"],
                      aggregations=[Aggregation("price", Operation.AVERAGE, windows=["5h"])])
"""

TRAINING = """
from gnomon import EventSource, Join, JoinPart, Query, Derivation
from features.prices import user_prices

training = Join(left=EventSource(table="act.watches", query=Query(selects={"user": "user_id"})),
                right_parts=[JoinPart(user_prices, prefix="p")],
                derivations=[Derivation("double", "{column} * 2")])
"""


def make_repo(root: Path, derivation_column: str = "p_features_prices_user_prices_price_average_5h") -> Path:
    (root / "features").mkdir(parents=True)
    (root / "gnomon.yaml").write_text("project: test\n")
    (root / "features" / "__init__.py").write_text("")
    (root / "features" / "prices.py").write_text(textwrap.dedent(DEFINITIONS))
    (root / "features" / "training.py").write_text(
        textwrap.dedent(TRAINING).replace("{column}", derivation_column)
    )
    return root


def test_names_come_from_module_path_and_variable(tmp_path: Path) -> None:
    plan = Project(make_repo(tmp_path)).compile()
    assert sorted(plan.group_bys) == ["features.prices.user_prices"]  # imported elsewhere, named where built
    assert sorted(plan.joins) == ["features.training.training"]
    join = plan.joins["features.training.training"]
    assert join.output_table == "features.features_training_training"
    assert join.parts[0].column_prefix == "p_features_prices_user_prices_"


def test_plan_json_is_stable_and_round_trips(tmp_path: Path) -> None:
    project = Project(make_repo(tmp_path))
    text = project.compile().to_json()
    assert (tmp_path / "compiled" / "plan.json").read_text() == text
    assert Plan.from_json(text).to_json() == text
    assert Project(tmp_path).compile().to_json() == text


def test_a_derivation_over_an_unknown_column_names_file_and_suggests(tmp_path: Path) -> None:
    make_repo(tmp_path, derivation_column="p_features_prices_user_prices_price_avg_5h")
    with pytest.raises(DefinitionError) as error:
        Project(tmp_path).compile()
    message = str(error.value)
    assert "training.py" in message and "derivation 'double'" in message
    assert "p_features_prices_user_prices_price_average_5h" in message


def test_an_unknown_column_in_a_select_lists_the_available_ones(tmp_path: Path) -> None:
    project = Project(make_repo(tmp_path))
    project.warehouse.write_partition(
        "act.views", "2026-01-01", pa.table({"user_id": ["a"], "cost": [1.0], "ts": [1767225600000]})
    )
    with pytest.raises(DefinitionError) as error:
        project.compile()
    assert "'price'" in str(error.value) and "user_id, cost, ts" in str(error.value)


def test_a_module_that_fails_to_import_is_named(tmp_path: Path) -> None:
    make_repo(tmp_path)
    (tmp_path / "features" / "broken.py").write_text("import nowhere_to_be_found\n")
    with pytest.raises(DefinitionError, match=r"broken\.py.*ModuleNotFoundError"):
        Project(tmp_path).compile()


def test_compile_command_prints_the_plan(tmp_path: Path) -> None:
    make_repo(tmp_path)
    result = CliRunner().invoke(main, ["compile", "--repo", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert "GroupBy features.prices.user_prices" in result.output
    assert "price_average_5h" in result.output and "average(price) over 5h" in result.output


def test_compile_command_reports_errors_without_a_traceback(tmp_path: Path) -> None:
    make_repo(tmp_path, derivation_column="nope")
    result = CliRunner().invoke(main, ["compile", "--repo", str(tmp_path)])
    assert result.exit_code == 1
    assert result.output.startswith("error: ") and "Traceback" not in result.output


def test_an_error_in_an_imported_module_names_that_module(tmp_path: Path) -> None:
    make_repo(tmp_path)
    prices = tmp_path / "features" / "prices.py"
    prices.write_text(prices.read_text().replace('windows=["5h"]', 'windows=["5x"]'))
    (tmp_path / "features" / "aa_first.py").write_text("from features.prices import user_prices\n")
    with pytest.raises(DefinitionError) as error:  # aa_first.py is imported first, and imports prices.py
        Project(tmp_path).compile()
    assert "prices.py" in str(error.value) and "malformed window" in str(error.value)


def test_two_repos_with_the_same_package_name_do_not_shadow_each_other(tmp_path: Path) -> None:
    first, second = make_repo(tmp_path / "a"), make_repo(tmp_path / "b")
    (second / "features" / "extra.py").write_text(
        "from gnomon import StagingQuery\nextra = StagingQuery(name='extra', query='select 1', start_partition='2026-01-01')\n"
    )
    assert "extra" not in Project(first).compile().staging_queries
    assert "extra" in Project(second).compile().staging_queries
    assert "extra" not in Project(first).compile().staging_queries
