"""The one shim through which optional (heavy) dependencies are imported, with install advice."""

from __future__ import annotations

import importlib
from types import ModuleType

from gnomon.errors import MissingExtraError


def require(module: str, extra: str, needed_by: str) -> ModuleType:
    """Import ``module`` or raise MissingExtraError saying which extra installs it.

    >>> require("json", "core", "the tests").__name__
    'json'
    """
    try:
        return importlib.import_module(module)  # typed as a module whether or not it is installed
    except ImportError as error:
        raise MissingExtraError(
            f"{needed_by} needs the {module} package: pip install 'gnomon[{extra}]'"
        ) from error
