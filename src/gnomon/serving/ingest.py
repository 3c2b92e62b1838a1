"""Publishing events, and applying them at once for read-after-write (`?sync=true`)."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from gnomon.compile.plan import Plan
from gnomon.errors import UnknownObjectError
from gnomon.online.stores.base import OnlineStore
from gnomon.streaming.brokers.base import Broker, Record


def publish_and_apply(
    plan: Plan,
    broker: Broker,
    store: OnlineStore,
    topic: str,
    events: Sequence[Mapping[str, Any]],
    sync: bool,
    schemas: Callable[[str, str], Any] | None = None,
) -> list[str]:
    """Publish ``events`` to ``topic``; with ``sync``, also apply them now for every GroupBy reading
    the topic. The stream worker applies them again later, which changes nothing (event ids).
    ``schemas(group_by, topic)`` gives the warehouse schema events are read with."""
    import time

    from gnomon.streaming.worker import streamed_topics

    known = sorted({t for g in plan.group_bys.values() for t in streamed_topics(g)})
    if topic not in known:
        raise UnknownObjectError("topic", topic, known)
    bad = [index for index, event in enumerate(events) if not isinstance(event, Mapping)]
    if bad:
        raise TypeError(f"events[{bad[0]}] is not a JSON object")
    payloads = [json.dumps(event, separators=(",", ":")).encode() for event in events]
    ids = broker.publish(topic, payloads)
    if sync:
        from gnomon.streaming.worker import RecordApplier

        now = int(time.time() * 1000)
        records = []
        for event_id, payload in zip(ids, payloads, strict=True):
            partition, _, offset = event_id.partition(":")
            records.append(Record(topic, partition, offset, payload, now))
        readers = [g for g in plan.group_bys.values() if topic in streamed_topics(g)]
        # a chained GroupBy enriches the events with its parent's features: the parents' GroupBys first
        readers.sort(key=lambda g: streamed_topics(g)[topic].kind == "join")
        for group_by in readers:
            schema = schemas(group_by.name, topic) if schemas else None
            RecordApplier(group_by, store, schema=schema, topic=topic, plan=plan).apply(records)
    return ids
