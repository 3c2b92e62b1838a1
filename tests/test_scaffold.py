"""`gnomon init`: the example repo is complete, importable, deterministic and matches its README."""

from __future__ import annotations

import datetime as dt
import importlib
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

import gnomon
from gnomon.errors import GnomonError
from gnomon.scaffold import create_example_repo

DAY_MS = 86_400_000
TABLES = {
    "user_activity.user_views": {
        "user_id": "string",
        "item_id": "string",
        "activity_type": "string",
        "ts": "int64",
    },
    "user_activity.watches": {"user_id": "string", "item_id": "string", "ts": "int64"},
}
SNAPSHOTS, MUTATIONS = "item_info.ratings_snapshots", "item_info.ratings_mutations"
RATING_COLUMNS = {
    "rating_id": "int64",
    "user_id": "string",
    "item_id": "string",
    "rating": "int64",
    "ts": "int64",
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
        modules: dict[str, object] = {
            name: importlib.import_module(f"features.{name}")
            for name in ("user_activity", "item_ratings", "training")
        }
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
    for file in (
        "gnomon.yaml",
        "README.md",
        "features/__init__.py",
        "features/user_activity.py",
        "features/item_ratings.py",
        "features/training.py",
    ):
        assert (repo / file).is_file(), file
    assert (repo / "features/__init__.py").read_text() == ""
    config = (repo / "gnomon.yaml").read_text()
    for line in (
        "project: quickstart",
        "warehouse: ./warehouse",
        "dialect: duckdb",
        "offline: {engine: duckdb}",
        "online: sqlite:///online.db",
        "stream: embedded",
        "# online: redis://",
        "# stream: kafka://",
    ):
        assert line in config, line


def test_config_is_valid_yaml(repo: Path) -> None:
    yaml = pytest.importorskip("yaml")
    config = yaml.safe_load((repo / "gnomon.yaml").read_text())
    assert config == {
        "project": "quickstart",
        "warehouse": "./warehouse",
        "dialect": "duckdb",
        "offline": {"engine": "duckdb"},
        "online": "sqlite:///online.db",
        "stream": "embedded",
    }


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


def _partition(repo: Path, table: str, day: str) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = pq.read_table(
        _table(repo, table) / f"ds={day}" / "part-0.parquet"
    ).to_pylist()
    return rows


def _replay(state: list[tuple[Any, ...]], mutations: list[dict[str, Any]], before: int | None = None) -> None:
    """The documented rule, in place: in (mutation_ts, before-rows first, source order), an insert
    appends its row, a delete removes the first equal row (or nothing)."""
    ordered = sorted(mutations, key=lambda m: (m["mutation_ts"], not m["is_before"]))
    for mutation in ordered:
        if before is not None and mutation["mutation_ts"] >= before:
            continue
        row = tuple(mutation[c] for c in RATING_COLUMNS)
        if not mutation["is_before"]:
            state.append(row)
        elif row in state:
            state.remove(row)


def test_entity_partitions_and_columns(repo: Path) -> None:
    """Snapshots: the initial table on the day before the month, then every day; mutations every day."""
    assert sorted(p.name for p in _table(repo, SNAPSHOTS).iterdir()) == ["ds=2026-09-30"] + [
        f"ds={d}" for d in DAYS
    ]
    assert sorted(p.name for p in _table(repo, MUTATIONS).iterdir()) == [f"ds={d}" for d in DAYS]
    for table, columns in (
        (SNAPSHOTS, RATING_COLUMNS),
        (MUTATIONS, {**RATING_COLUMNS, "mutation_ts": "int64", "is_before": "bool"}),
    ):
        for folder in _table(repo, table).iterdir():
            assert [f.name for f in folder.iterdir()] == ["part-0.parquet"]
            part = pq.read_table(folder / "part-0.parquet")
            assert {f.name: str(f.type) for f in part.schema} == columns
            assert part.num_rows > 0
    for day in DAYS:
        start = int(dt.datetime.fromisoformat(day).replace(tzinfo=dt.UTC).timestamp() * 1000)
        changes = _partition(repo, MUTATIONS, day)
        keys = [(m["mutation_ts"], not m["is_before"]) for m in changes]
        assert keys == sorted(keys)  # sorted by (mutation_ts, is_before desc)
        assert all(start <= m["mutation_ts"] < start + DAY_MS for m in changes)
        assert all(m["ts"] <= m["mutation_ts"] for m in changes)
        assert all(m["ts"] == m["mutation_ts"] for m in changes if not m["is_before"])  # new rows: rated then


def test_snapshot_is_the_replayed_table(repo: Path) -> None:
    """Snapshot D = snapshot D-1 + the mutations of D, replayed by the documented rule, rows in order."""
    previous = "2026-09-30"
    for day in DAYS:
        state = [tuple(r.values()) for r in _partition(repo, SNAPSHOTS, previous)]
        _replay(state, _partition(repo, MUTATIONS, day))
        assert state == [tuple(r.values()) for r in _partition(repo, SNAPSHOTS, day)], day
        previous = day


def test_sample_data_shape(repo: Path) -> None:
    views = ds.dataset(_table(repo, "user_activity.user_views"), format="parquet").to_table()
    watches = ds.dataset(_table(repo, "user_activity.watches"), format="parquet").to_table()
    ratings = _partition(repo, SNAPSHOTS, DAYS[-1])
    assert 40_000 <= views.num_rows <= 100_000
    assert 1_000 <= watches.num_rows <= 10_000
    assert 0 < views["user_id"].null_count < 100
    assert set(views["activity_type"].to_pylist()) == {"item_view", "add_to_cart", "share"}
    assert {r["rating"] for r in ratings} == {1, 2, 3, 4, 5}
    assert 2_000 <= len(_partition(repo, SNAPSHOTS, "2026-09-30")) < len(ratings) <= 10_000
    assert len({r["rating_id"] for r in ratings}) == len(ratings)
    # the change stream has inserts, updates (a before and an after row at one time) and deletes
    changes = [m for day in DAYS for m in _partition(repo, MUTATIONS, day)]
    images: dict[tuple[int, int], list[bool]] = {}
    for m in changes:
        images.setdefault((m["mutation_ts"], m["rating_id"]), []).append(m["is_before"])
    kinds = [tuple(flags) for flags in images.values()]
    assert (
        kinds.count((False,)) > 1_000 and kinds.count((True, False)) > 100 and 10 < kinds.count((True,)) < 500
    )
    assert set(kinds) == {(False,), (True, False), (True,)}
    readme = (repo / "README.md").read_text()
    counts = (
        len(_partition(repo, SNAPSHOTS, "2026-09-30")),
        len(ratings),
        kinds.count((False,)),
        kinds.count((True, False)),
        kinds.count((True,)),
    )
    assert f"{counts[0]:,} rows on\n" in readme and f"{counts[1]:,} on 2026-10-30" in readme
    assert "{:,} new ratings, {:,} changed, {:,} deleted".format(*counts[2:]) in readme
    # Bob's rating of i001, which the quickstart changes online, is in every snapshot, unchanged
    for day in ["2026-09-30", *DAYS]:
        bob = [r for r in _partition(repo, SNAPSHOTS, day) if r["user_id"] == "bob"]
        assert bob == [
            {"rating_id": 2529, "user_id": "bob", "item_id": "i001", "rating": 2, "ts": 1789948800000}
        ], day
    assert (
        '"rating_id": 2529, "user_id": "bob", "item_id": "i001", "rating": 2, "ts": 1789948800000'
        in (repo / "README.md").read_text()
    )
    bob_watches = watches.filter(pc.equal(watches["user_id"], "bob"))
    assert bob_watches.num_rows >= 10
    assert set(bob_watches["item_id"].to_pylist()) <= set(
        views.filter(pc.equal(views["user_id"], "bob"))["item_id"].to_pylist()
    )


def test_readme_example_holds(repo: Path) -> None:
    """The numbers the repo's README works out by hand for Bob's first watch, by brute force."""
    views = ds.dataset(_table(repo, "user_activity.user_views"), format="parquet").to_table().to_pylist()
    q, item = 1791141100174, "i003"
    start = (q - 5 * 3_600_000) - (q - 5 * 3_600_000) % (5 * 60_000)  # floor(q - W, hop(5h) = 5 minutes)
    count = sum(1 for v in views if v["user_id"] == "bob" and v["item_id"] == item and start <= v["ts"] < q)
    assert count == 7
    assert any(v["user_id"] == "bob" and v["item_id"] == item and v["ts"] == q for v in views)
    # the ratings table at q: snapshot 2026-10-03, then the mutations of 2026-10-04 before q
    state = [tuple(r.values()) for r in _partition(repo, SNAPSHOTS, "2026-10-03")]
    assert [sum(1 for r in state if r[2] == item), sum(r[3] for r in state if r[2] == item)] == [127, 294]
    changes = [
        m for m in _partition(repo, MUTATIONS, "2026-10-04") if m["item_id"] == item and m["mutation_ts"] < q
    ]
    assert [(m["mutation_ts"], m["is_before"], m["rating"]) for m in changes] == [(1791086492090, False, 1)]
    _replay(state, _partition(repo, MUTATIONS, "2026-10-04"), before=q)
    window_start = (q - 90 * DAY_MS) - (q - 90 * DAY_MS) % DAY_MS  # hop(90d) = 1 day
    rated = [r[3] for r in state if r[2] == item and window_start <= r[4] < q]
    assert len(rated) == 128
    assert sum(rated) / len(rated) == 295 / 128
    readme = (repo / "README.md").read_text()
    assert "1791141100174" in readme and "= 7`" in readme
    assert "295 / 128 = 2.3046875" in readme and "1791086492090" in readme


def test_same_seed_same_bytes(repo: Path, tmp_path: Path) -> None:
    again = create_example_repo(tmp_path / "again")
    other = create_example_repo(tmp_path / "other", seed=8)
    files = sorted(p.relative_to(repo) for p in repo.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(again) for p in again.rglob("*") if p.is_file())
    for file in files:
        assert (repo / file).read_bytes() == (again / file).read_bytes(), file
    for table in ("user_activity/user_views", "item_info/ratings_snapshots", "item_info/ratings_mutations"):
        part = f"warehouse/{table}/ds=2026-10-05/part-0.parquet"
        assert (repo / part).read_bytes() != (other / part).read_bytes()


def test_last_ds_shifts_whole_days(repo: Path, tmp_path: Path) -> None:
    """``--last-ds`` moves the month (and the initial snapshot) by whole days; nothing else changes."""
    shifted = create_example_repo(tmp_path / "shifted", last_ds="2026-11-30")
    shift = 31 * DAY_MS
    for table, first in (
        (SNAPSHOTS, "2026-09-30"),
        (MUTATIONS, "2026-10-01"),
        ("user_activity.watches", "2026-10-01"),
    ):
        old_days = sorted(p.name[3:] for p in _table(repo, table).iterdir())
        new_days = sorted(p.name[3:] for p in _table(shifted, table).iterdir())
        assert old_days[0] == first
        assert new_days == [(dt.date.fromisoformat(d) + dt.timedelta(days=31)).isoformat() for d in old_days]
        for old_day, new_day in zip(old_days[:3], new_days[:3], strict=True):
            moved = [
                {k: v + shift if k in ("ts", "mutation_ts") else v for k, v in r.items()}
                for r in _partition(repo, table, old_day)
            ]
            assert _partition(shifted, table, new_day) == moved


def test_definitions_import(features: dict[str, object]) -> None:
    user_item_views = features["user_activity"].user_item_views  # type: ignore[attr-defined]
    item_ratings = features["item_ratings"].item_ratings  # type: ignore[attr-defined]
    training = features["training"].user_item_training  # type: ignore[attr-defined]
    assert isinstance(features["user_activity"].views, gnomon.EventSource)  # type: ignore[attr-defined]
    assert isinstance(user_item_views, gnomon.GroupBy) and user_item_views.name == "user_item_views"
    assert user_item_views.output_columns() == ["view_count_5h"]
    assert user_item_views.effective_accuracy is gnomon.Accuracy.TEMPORAL
    assert item_ratings.output_columns() == ["rating_average_90d"]
    assert item_ratings.effective_accuracy is gnomon.Accuracy.TEMPORAL
    [ratings] = item_ratings.sources
    assert isinstance(ratings, gnomon.EntitySource)
    assert (ratings.snapshot_table, ratings.mutation_table, ratings.mutation_topic) == (
        SNAPSHOTS,
        MUTATIONS,
        "ratings_mutations",
    )
    assert isinstance(training, gnomon.Join) and training.name == "user_item_training"
    assert [p.group_by for p in training.right_parts] == [user_item_views, item_ratings]
    assert training.left.table == "user_activity.watches"  # type: ignore[union-attr]


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
    assert bob[0]["item_ratings_rating_average_90d"] == 295 / 128
    assert bob[0]["views_per_rating"] == pytest.approx(7 / (295 / 128))
    watches = ds.dataset(_table(repo, "user_activity.watches"), format="parquet").to_table()
    assert project.read_table("user_item_training").num_rows == watches.num_rows  # one row per left row
