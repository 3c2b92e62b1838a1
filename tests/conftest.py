"""Generic fixtures shared by the offline tests: one test body over every offline engine.

A test that asks for ``engine`` (directly, or through ``new_project``) runs once per engine of
``ENGINES``; the engine is chosen the way a user chooses it, by ``offline:`` in the repo's gnomon.yaml
(`use_engine`). ``engine`` is module-scoped, so a module's shared warehouse (its ``world``) is built
per engine and pytest runs a module's tests engine by engine; the Spark session is process-wide. A
test may narrow the engines of some parameters by parametrizing ``engine`` itself (``indirect``).

A known gap of one engine is a strict xfail, never a skip: mark the test (or a ``pytest.param``) with
``@pytest.mark.engine_gap("spark", reason="...")`` and only that engine's run is expected to fail.

scripts/test.sh runs the suite in parallel (pytest-xdist, ``--dist loadfile``): each worker runs whole
modules, so a module-scoped fixture (a ``world``) is still built once, and each worker is a process of
its own with its own session fixtures (Redis server, Kafka mock cluster, Spark session, UI sample repo).
Nothing here may use a fixed port or a fixed path outside ``tmp_path``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml

import gnomon

ENGINES = ("duckdb", "spark")
#: ``offline:`` of gnomon.yaml per engine (two local Spark threads, two shuffle partitions: small data)
OFFLINE: dict[str, dict[str, Any]] = {
    "duckdb": {"engine": "duckdb"},
    "spark": {"engine": "spark", "master": "local[2]", "conf": {"spark.sql.shuffle.partitions": 2}},
}


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "engine_gap(engine, reason): a known gap of one offline engine; that engine's run is a strict xfail",
    )


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        callspec = getattr(item, "callspec", None)
        engine = callspec.params.get("engine") if callspec is not None else None
        for marker in item.iter_markers("engine_gap"):
            if engine is None:
                raise pytest.UsageError(f"{item.nodeid}: engine_gap on a test that does not run per engine")
            if marker.args[0] == engine:
                item.add_marker(pytest.mark.xfail(strict=True, reason=f"{engine}: {marker.kwargs['reason']}"))


def use_engine(repo_dir: str | Path, engine: str) -> Path:
    """Write ``offline:`` for ``engine`` into ``repo_dir/gnomon.yaml``, keeping its other settings."""
    if engine not in OFFLINE:
        raise ValueError(f"unknown engine {engine!r}; the tests know {', '.join(ENGINES)}")
    root = Path(repo_dir)
    root.mkdir(parents=True, exist_ok=True)
    path = root / "gnomon.yaml"
    config = (yaml.safe_load(path.read_text()) or {}) if path.exists() else {}
    config["offline"] = OFFLINE[engine]
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return root


@pytest.fixture(scope="module", params=ENGINES)
def engine(request: pytest.FixtureRequest) -> str:
    """The offline engine a test runs on (``duckdb``, ``spark``)."""
    return str(request.param)


@pytest.fixture(scope="module")
def new_project(engine: str) -> Callable[..., Any]:
    """``new_project(repo_dir, objects)`` -> a `gnomon.Project` of that repo on this module's ``engine``."""

    def make(repo_dir: str | Path, objects: Mapping[str, Any] | None = None) -> Any:
        return gnomon.Project(str(use_engine(repo_dir, engine)), objects=dict(objects or {}))

    return make
