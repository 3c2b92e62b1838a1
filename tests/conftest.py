"""Generic fixtures shared by the offline tests."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pytest

import gnomon


def engine_available() -> bool:
    """True once `gnomon.Project` is the real thing (it was a placeholder while the engine was written)."""
    return all(hasattr(gnomon.Project, name) for name in ("backfill", "training_data", "output_table"))


@pytest.fixture(scope="session")
def new_project() -> Callable[..., Any]:
    """``new_project(repo_dir, objects)`` -> a `gnomon.Project`; skips the test while there is no engine."""

    def make(repo_dir: str | Path, objects: Mapping[str, Any] | None = None) -> Any:
        if not engine_available():
            pytest.skip("gnomon.Project has no offline engine yet")
        return gnomon.Project(str(repo_dir), objects=dict(objects or {}))

    return make
