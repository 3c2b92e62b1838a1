"""`gnomon init`: the example repo is complete, importable, deterministic and matches its README."""

from __future__ import annotations

import datetime as dt
import importlib
import sys
from collections.abc import Iterator
from pathlib import Path

import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

import gnomon
from gnomon.errors import GnomonError
from gnomon.scaffold import create_example_repo

DAY_MS = 86_400_000
TABLES = {
    "user_activity.user_views": {"user_id": "string", "item_id": "string", "activity_type": "string",
                                 "ts": "int64"},
    "item_info.ratings": {"item_id": "string", "rating": "int64", "ts": "int64"},
    "user_activity.watches": {"user_id": "string", "item_id": "string", "ts": "int64"},
}
DAYS = [(dt.date(2026, 10, 1) + dt.timedelta(days=i)).isoformat() for i in range(30)]


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return create_example_repo(tmp_path_factory.mktemp("init") / "quickstart")


@pytest.fixture
def features(repo: Path) -> Iterator[dict[str, object]]:
    """Import the repo's definition modules as a user's `features` package, then forget them."""
    _forget_features_package()  # another test's repo may have left its own `features` imported
    sys.path.insert(0, str(repo))
    importlib.invalidate_caches()
    try:
        modules = {name: importlib.import_module(f"features.{name}")
                   for name in ("user_activity", "item_ratings", "training")}
        yield modules
    finally:
        sys.path.remove(str(repo))
        _forget_features_package()


def _forget_features_package() -> None:
    for name in [m for m in sys.modules if m == "features" or m.startswith("features.")]:
        del sys.modules[name]


def _table(repo: Path, table: str) -> Path:
    return repo / "warehouse" / Path(*table.split("."))


def test_layout(repo: Path) -> None:
    for file in ("gnomon.yaml", "README.md", "features/__init__.py", "features/user_activity.py",
                 "features/item_ratings.py", "features/training.py"):
        assert (repo / file).is_file(), file
    assert (repo / "features/__init__.py").read_text() == ""
    config = (repo / "gnomon.yaml").read_text()
    for line in ("project: quickstart", "warehouse: ./warehouse", "dialect: duckdb", "offline: {engine: duckdb}",
                 "online: sqlite:///online.db", "stream: embedded", "# online: redis://", "# stream: kafka://"):
        assert line in config, line


def test_config_is_valid_yaml(repo: Path) -> None:
    yaml = pytest.importorskip("yaml")
    config = yaml.safe_load((repo / "gnomon.yaml").read_text())
    assert config == {"project": "quickstart", "warehouse": "./warehouse", "dialect": "duckdb",
                      "offline": {"engine": "duckdb"}, "online": "sqlite:///online.db", "stream": "embedded"}


@pytest.mark.parametrize("table", TABLES)
def test_partitions_and_columns(repo: Path, table: str) -> None:
    folder = _table(repo, table)
    assert sorted(p.name for p in folder.iterdir()) == [f"ds={day}" for day in DAYS]
    for day in DAYS:
        files = list((folder / f"ds={day}").iterdir())
        assert [f.name for f in files] == ["part-0.parquet"]
        part = pq.read_table(files[0])
        assert {f.name: str(f.type) for f in part.schema} == TABLES[table]
        assert part.num_rows > 0
        # a partition holds exactly the rows whose UTC date of ts is its ds
        start = int(dt.datetime.fromisoformat(day).replace(tzinfo=dt.UTC).timestamp() * 1000)
        assert pc.min(part["ts"]).as_py() >= start
        assert pc.max(part["ts"]).as_py() < start + DAY_MS


def test_sample_data_shape(repo: Path) -> None:
    views = ds.dataset(_table(repo, "user_activity.user_views"), format="parquet").to_table()
    watches = ds.dataset(_table(repo, "user_activity.watches"), format="parquet").to_table()
    ratings = ds.dataset(_table(repo, "item_info.ratings"), format="parquet").to_table()
    assert 40_000 <= views.num_rows <= 100_000
    assert 1_000 <= watches.num_rows <= 10_000
    assert 0 < views["user_id"].null_count < 100
    assert set(views["activity_type"].to_pylist()) == {"item_view", "add_to_cart", "share"}
    assert set(pc.unique(ratings["rating"]).to_pylist()) == {1, 2, 3, 4, 5}
    bob_watches = watches.filter(pc.equal(watches["user_id"], "bob"))
    assert bob_watches.num_rows >= 10
    assert set(bob_watches["item_id"].to_pylist()) <= set(
        views.filter(pc.equal(views["user_id"], "bob"))["item_id"].to_pylist())


def test_readme_example_holds(repo: Path) -> None:
    """The numbers the repo's README works out by hand for Bob's first watch, by brute force."""
    views = ds.dataset(_table(repo, "user_activity.user_views"), format="parquet").to_table().to_pylist()
    ratings = ds.dataset(_table(repo, "item_info.ratings"), format="parquet").to_table().to_pylist()
    q, item = 1791141100174, "i003"
    start = (q - 5 * 3_600_000) - (q - 5 * 3_600_000) % (5 * 60_000)  # floor(q - W, hop(5h) = 5 minutes)
    count = sum(1 for v in views if v["user_id"] == "bob" and v["item_id"] == item and start <= v["ts"] < q)
    assert count == 7
    assert any(v["user_id"] == "bob" and v["item_id"] == item and v["ts"] == q for v in views)
    rated = [r["rating"] for r in ratings if r["item_id"] == item and r["ts"] < q]
    assert len(rated) == 36
    assert sum(rated) / len(rated) == pytest.approx(7 / 3)
    readme = (repo / "README.md").read_text()
    assert "1791141100174" in readme and "= 7`" in readme


def test_same_seed_same_bytes(repo: Path, tmp_path: Path) -> None:
    again = create_example_repo(tmp_path / "again")
    other = create_example_repo(tmp_path / "other", seed=8)
    files = sorted(p.relative_to(repo) for p in repo.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(again) for p in again.rglob("*") if p.is_file())
    for file in files:
        assert (repo / file).read_bytes() == (again / file).read_bytes(), file
    views = "warehouse/user_activity/user_views/ds=2026-10-05/part-0.parquet"
    assert (repo / views).read_bytes() != (other / views).read_bytes()


def test_definitions_import(features: dict[str, object]) -> None:
    user_item_views = features["user_activity"].user_item_views  # type: ignore[attr-defined]
    item_ratings = features["item_ratings"].item_ratings  # type: ignore[attr-defined]
    training = features["training"].user_item_training  # type: ignore[attr-defined]
    assert isinstance(features["user_activity"].views, gnomon.EventSource)  # type: ignore[attr-defined]
    assert isinstance(user_item_views, gnomon.GroupBy) and user_item_views.name == "user_item_views"
    assert user_item_views.output_columns() == ["view_count_5h"]
    assert user_item_views.effective_accuracy is gnomon.Accuracy.TEMPORAL
    assert item_ratings.output_columns() == ["rating_average_90d"]
    assert isinstance(training, gnomon.Join) and training.name == "user_item_training"
    assert [p.group_by for p in training.right_parts] == [user_item_views, item_ratings]
    assert training.left.table == "user_activity.watches"


def test_refuses_non_empty_folder(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(GnomonError) as raised:
        create_example_repo(tmp_path)
    message = str(raised.value)
    assert str(tmp_path) in message and str(tmp_path / "quickstart") in message
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]  # nothing written


def test_accepts_empty_existing_folder(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    assert create_example_repo(tmp_path / "empty") == (tmp_path / "empty").absolute()
    assert (tmp_path / "empty" / "gnomon.yaml").is_file()


def test_quickstart_runs_as_the_readme_says(tmp_path: Path) -> None:
    """The README's commands, through the Python API: compile, backfill, and Bob's hand-checked row."""
    repo = create_example_repo(tmp_path / "quickstart")
    project = gnomon.Project(repo)
    plan = project.compile()
    assert (repo / "compiled" / "plan.json").is_file()
    assert set(plan.joins) == {"user_item_training"}
    written = project.backfill("user_item_training", "2026-10-01", "2026-10-30")
    assert written == DAYS
    table = project.read_table("user_item_training", "2026-10-04", "2026-10-04")
    bob = [r for r in table.to_pylist() if r["user"] == "bob" and r["ts"] == 1791141100174]
    assert len(bob) == 1
    assert bob[0]["user_item_views_view_count_5h"] == 7
    assert bob[0]["item_ratings_rating_average_90d"] == pytest.approx(7 / 3)
    assert bob[0]["views_per_rating"] == pytest.approx(3.0)
    watches = ds.dataset(_table(repo, "user_activity.watches"), format="parquet").to_table()
    assert project.read_table("user_item_training").num_rows == watches.num_rows  # one row per left row
