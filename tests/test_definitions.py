"""The definitions API: immutable, validated when built, errors that name object, field and fix."""

from __future__ import annotations

import dataclasses

import pytest

from gnomon import (
    Accuracy,
    Aggregation,
    DefinitionError,
    Derivation,
    EntitySource,
    EventSource,
    GroupBy,
    Join,
    JoinPart,
    Operation,
    Query,
    StagingQuery,
    TimeUnit,
    Window,
)


def views(**selects: str) -> EventSource:
    return EventSource(
        table="act.views",
        topic="views",
        query=Query(selects=selects or {"user": "user_id", "item": "item_id", "view": "1"}),
    )


def test_window_strings_and_objects_agree() -> None:
    assert Window.parse("5h") == Window(5, TimeUnit.HOURS)
    assert Window.parse("90d").millis == 90 * 86_400_000
    assert Window.parse("30m").name == "30m"


@pytest.mark.parametrize("text", ["5x", "h5", "", "0d", "-3h", "1.5h"])
def test_malformed_window_string_is_a_definition_error(text: str) -> None:
    with pytest.raises(DefinitionError, match="malformed window"):
        Aggregation("view", Operation.COUNT, windows=[text])


def test_parametric_operations_bare_or_called() -> None:
    assert Operation.HISTOGRAM() == Operation.HISTOGRAM
    assert Operation.APPROX_UNIQUE_COUNT.param_dict == {"lg_k": 8}
    assert Operation.LAST_K(3).output_name == "last3"
    assert Operation.TOP_K(5).output_name == "top5"
    assert Operation.APPROX_PERCENTILE([0.5, 0.99]).param_dict["percentiles"] == (0.5, 0.99)
    with pytest.raises(DefinitionError, match=r"Operation.LAST_K\(3\)"):
        Aggregation("price", Operation.LAST_K)
    with pytest.raises(DefinitionError, match="percentiles"):
        Operation.APPROX_PERCENTILE([1.5])
    with pytest.raises(DefinitionError, match="unknown parameter"):
        Operation.TOP_K(kk=3)


def test_output_names_follow_the_spec() -> None:
    aggregation = Aggregation(
        "price", Operation.SUM, windows=["1d", Window(2, TimeUnit.HOURS)], buckets=["category"]
    )
    assert [name for _, _, name in aggregation.output_columns()] == [
        "price_sum_1d_by_category",
        "price_sum_2h_by_category",
    ]
    assert [n for _, _, n in Aggregation("price", Operation.LAST_K(3)).output_columns()] == ["price_last3"]


def test_definitions_are_immutable() -> None:
    group_by = GroupBy(sources=[views()], keys=["user"], aggregations=[Aggregation("view", Operation.COUNT)])
    with pytest.raises(dataclasses.FrozenInstanceError):
        group_by.keys = ["item"]  # type: ignore[misc]
    with pytest.raises(TypeError):
        group_by.sources[0].query.selects["x"] = "1"  # type: ignore[index]


def test_a_key_the_source_does_not_select_is_named_with_a_suggestion() -> None:
    with pytest.raises(DefinitionError) as error:
        GroupBy(sources=[views()], keys=["usr"], aggregations=[Aggregation("view", Operation.COUNT)])
    assert "usr" in str(error.value) and "did you mean 'user'" in str(error.value).lower()


def test_default_accuracy_follows_the_topics() -> None:
    streamed = GroupBy(sources=[views()], keys=["user"], aggregations=[Aggregation("view", Operation.COUNT)])
    batch = GroupBy(
        sources=[EventSource(table="a.b", query=Query(selects={"user": "u", "view": "1"}))],
        keys=["user"],
        aggregations=[Aggregation("view", Operation.COUNT)],
    )
    assert streamed.effective_accuracy is Accuracy.TEMPORAL
    assert batch.effective_accuracy is Accuracy.SNAPSHOT


def test_a_group_by_without_aggregations_is_a_lookup_of_the_selected_columns() -> None:
    assert GroupBy(sources=[views()], keys=["user"]).output_columns() == ["item", "view"]
    with pytest.raises(DefinitionError, match="nothing to look up"):
        GroupBy(sources=[EventSource(table="a.b", query=Query(selects={"user": "u"}))], keys=["user"])
    entity = EntitySource(
        snapshot_table="users.profiles", query=Query(selects={"user": "id", "city": "city"})
    )
    assert GroupBy(sources=[entity], keys=["user"]).output_columns() == ["city"]


def test_join_whose_left_cannot_supply_a_key_fails_at_construction() -> None:
    group_by = GroupBy(
        sources=[views()], keys=["user", "item"], aggregations=[Aggregation("view", Operation.COUNT)]
    )
    left = EventSource(table="act.watches", query=Query(selects={"user": "user_id"}))
    with pytest.raises(DefinitionError) as error:
        Join(left=left, right_parts=[JoinPart(group_by)])
    assert "'item'" in str(error.value) and "key_mapping" in str(error.value)
    mapped = EventSource(table="act.watches", query=Query(selects={"user": "user_id", "item_id": "item_id"}))
    Join(left=mapped, right_parts=[JoinPart(group_by, key_mapping={"item_id": "item"})])


def test_key_mapping_must_target_a_group_by_key() -> None:
    group_by = GroupBy(sources=[views()], keys=["user"], aggregations=[Aggregation("view", Operation.COUNT)])
    with pytest.raises(DefinitionError, match="not a key"):
        JoinPart(group_by, key_mapping={"uid": "usr"})


def test_misc_validation() -> None:
    with pytest.raises(DefinitionError, match="reserved"):
        Query(selects={"ds": "x"})
    with pytest.raises(DefinitionError, match="wheres must be a list"):
        Query(selects={"a": "a"}, wheres="a > 1")  # type: ignore[arg-type]
    with pytest.raises(DefinitionError, match="namespace.table"):
        EventSource(table="views", query=Query())
    with pytest.raises(DefinitionError, match="YYYY-MM-DD"):
        StagingQuery(name="s", query="select 1", start_partition="2026/01/01")
    with pytest.raises(DefinitionError, match=r"Derivation\("):
        Derivation("*", "a + b")
