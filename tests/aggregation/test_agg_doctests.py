"""The docstring examples of the aggregation modules run as tests."""

from __future__ import annotations

import doctest
import importlib
import pkgutil

import pytest

import gnomon.aggregation

MODULES = ["gnomon.aggregation"] + [
    f"gnomon.aggregation.{m.name}" for m in pkgutil.iter_modules(gnomon.aggregation.__path__)
]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name: str) -> None:
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
    assert result.failed == 0
