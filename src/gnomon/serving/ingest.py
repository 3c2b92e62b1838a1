"""Publishing events, and applying them at once for read-after-write (`?sync=true`)."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from gnomon.compile.plan import Plan
from gnomon.online.stores.base import OnlineStore
from gnomon.streaming.brokers.base import Broker, Record


def publish_and_apply(plan: Plan, broker: Broker, store: OnlineStore, topic: str,
                      events: Sequence[Mapping[str, Any]], sync: bool) -> list[str]:
    """Publish ``events`` to ``topic``; with ``sync``, also apply them now for every GroupBy reading
    the topic. The stream worker applies them again later, which changes nothing (event ids)."""
    import time

    payloads = [json.dumps(event, separators=(",", ":")).encode() for event in events]
    ids = broker.publish(topic, payloads)
    if sync:
        from gnomon.streaming.worker import RecordApplier

        now = int(time.time() * 1000)
        records = []
        for event_id, payload in zip(ids, payloads, strict=True):
            partition, _, offset = event_id.partition(":")
            records.append(Record(topic, partition, offset, payload, now))
        for group_by in plan.group_bys.values():
            if any(s.topic == topic for s in group_by.sources):
                RecordApplier(group_by, store).apply(records)
    return ids
