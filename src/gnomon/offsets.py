"""Offsets of a stream partition, ordered the same way by the brokers (which write them) and the
stores (which record a consumer's progress): shared plumbing below both layers."""

from __future__ import annotations


def offset_order(offset: str) -> tuple[int, ...]:
    """A sort key that orders the offsets of one partition, whatever the broker.

    >>> sorted(["10", "9"], key=offset_order)
    ['9', '10']
    >>> offset_order("1700000000000-2") < offset_order("1700000000000-10")
    True
    """
    return tuple(int(part) for part in offset.split("-"))
