"""Layers only look down: a package imports its own layer or lower ones, never an upper one.

Every ``import gnomon.…`` in ``src/gnomon`` (function-local imports included) is checked against
the rank of each layer below, which is the architecture of docs/architecture.md.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "src" / "gnomon"

#: the rank of each layer (a module or a package under gnomon/); lower ranks are lower layers.
#: ``offline.warehouse`` is the storage layout, below the compiler that validates against it.
RANKS = {
    "errors": 0,
    "extras": 0,
    "offsets": 0,
    "jsonio": 0,
    "metrics": 0,
    "testing": 0,
    "definitions": 1,
    "timeline": 1,
    "scaffold": 2,
    "config": 2,
    "aggregation": 2,
    "offline.warehouse": 2,
    "compile": 3,
    "offline": 4,
    "online": 5,
    "streaming": 6,
    "project": 7,
    "monitoring": 8,
    "orchestration": 9,
    "ui": 10,
    "serving": 11,
    "cli": 12,
    "__init__": 13,
}


def layer(dotted: str) -> str:
    """The layer of a module path relative to gnomon (``offline.engines.duckdb`` -> ``offline``)."""
    return dotted if dotted in RANKS else dotted.split(".")[0]


def imports(path: Path) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("gnomon."):
            found.append(node.module.removeprefix("gnomon."))
        elif isinstance(node, ast.Import):
            found += [a.name.removeprefix("gnomon.") for a in node.names if a.name.startswith("gnomon.")]
    return found


MODULES = sorted(ROOT.rglob("*.py"))


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(ROOT)))
def test_a_module_imports_only_its_layer_and_lower_ones(path: Path) -> None:
    own = layer(".".join(path.relative_to(ROOT).with_suffix("").parts))
    assert own in RANKS, f"{path}: give its layer a rank in RANKS"
    upward = [name for name in imports(path) if RANKS[layer(name)] > RANKS[own]]
    assert not upward, f"{path.relative_to(ROOT)} ({own}) imports upper layers: {upward}"
