"""Gnomon: one Python definition of a feature, computed identically offline and online."""

from gnomon.definitions import (
    Accuracy,
    Aggregation,
    Derivation,
    EntitySource,
    EventSource,
    GroupBy,
    Join,
    JoinPart,
    JoinSource,
    Operation,
    Query,
    StagingQuery,
    TimeUnit,
    Window,
)
from gnomon.errors import (
    ConfigError,
    DefinitionError,
    ExecutionError,
    GnomonError,
    UnknownObjectError,
    UnsupportedError,
    WarehouseError,
)
from gnomon.project import Project
from gnomon.serving.client import Client

__version__ = "0.1.0"

__all__ = [
    "Accuracy",
    "Aggregation",
    "Client",
    "ConfigError",
    "DefinitionError",
    "Derivation",
    "EntitySource",
    "EventSource",
    "ExecutionError",
    "GnomonError",
    "GroupBy",
    "Join",
    "JoinPart",
    "JoinSource",
    "Operation",
    "Project",
    "Query",
    "StagingQuery",
    "TimeUnit",
    "UnknownObjectError",
    "UnsupportedError",
    "WarehouseError",
    "Window",
    "__version__",
]
