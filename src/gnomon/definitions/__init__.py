"""The user-facing definitions API (SPEC §1): immutable, validated when built."""

from gnomon.definitions.group_by import Accuracy, Aggregation, Derivation, GroupBy
from gnomon.definitions.join import Definition, Join, JoinPart, StagingQuery
from gnomon.definitions.operations import Operation, OperationSpec
from gnomon.definitions.query import Query
from gnomon.definitions.sources import EntitySource, EventSource, JoinSource
from gnomon.definitions.windows import TimeUnit, Window

__all__ = [
    "Accuracy",
    "Aggregation",
    "Definition",
    "Derivation",
    "EntitySource",
    "EventSource",
    "GroupBy",
    "Join",
    "JoinPart",
    "JoinSource",
    "Operation",
    "OperationSpec",
    "Query",
    "StagingQuery",
    "TimeUnit",
    "Window",
]
