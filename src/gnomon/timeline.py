"""SPEC §2's time rules as plain functions, one home for each; every engine and the online path use them.

Times are epoch milliseconds (UTC), days are ``YYYY-MM-DD`` strings. A query asks for values *at* q and
sees events with ``window_start(q, W) <= ts < q``; a query's entity state is the snapshot of the day
before q's day plus that day's mutations before q.

>>> q = query_time("events", "temporal", ts=ds_to_ms("2026-04-10") + 7_200_000, ds="2026-04-10")
>>> ms_to_ds(q), snapshot_ds(q)
('2026-04-10', '2026-04-09')
>>> read_range(90 * DAY_MS, q, q)
('2026-01-09', '2026-04-10')
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable

from gnomon.definitions.windows import DAY_MS, floor_to, hop_millis, window_start

__all__ = [
    "DAY_MS",
    "backfill_query_time",
    "ds_range",
    "ds_to_ms",
    "entity_partitions",
    "floor_to",
    "hop_millis",
    "ms_to_ds",
    "query_time",
    "read_range",
    "shift_ds",
    "snapshot_ds",
    "window_start",
]


def ds_to_ms(ds: str) -> int:
    """Midnight (UTC) starting day ``ds``, in epoch ms.

    >>> ds_to_ms("1970-01-02")
    86400000
    """
    day = dt.date.fromisoformat(ds)
    return (day - dt.date(1970, 1, 1)).days * DAY_MS


def ms_to_ds(ms: int) -> str:
    """The UTC date holding epoch-ms ``ms``.

    >>> ms_to_ds(86_400_000 - 1), ms_to_ds(-1)
    ('1970-01-01', '1969-12-31')
    """
    return (dt.date(1970, 1, 1) + dt.timedelta(days=ms // DAY_MS)).isoformat()


def ds_range(start_ds: str, end_ds: str) -> list[str]:
    """Every ds from start to end, inclusive.

    >>> ds_range("2026-02-27", "2026-03-01")
    ['2026-02-27', '2026-02-28', '2026-03-01']
    """
    start, end = dt.date.fromisoformat(start_ds), dt.date.fromisoformat(end_ds)
    return [(start + dt.timedelta(days=i)).isoformat() for i in range((end - start).days + 1)]


def shift_ds(ds: str, days: int) -> str:
    """``ds`` moved by ``days`` (negative: earlier).

    >>> shift_ds("2026-03-01", -1)
    '2026-02-28'
    """
    return (dt.date.fromisoformat(ds) + dt.timedelta(days=days)).isoformat()


def query_time(left_kind: str, accuracy: str, ts: int | None, ds: str | None) -> int | None:
    """The time q a left row asks a GroupBy for (SPEC §2's table).

    - an entities left (a snapshot row of day ``ds``): the end of that day, ``ds + 1 day 00:00``;
    - an events left and a TEMPORAL GroupBy: the row's own ``ts``;
    - an events left and a SNAPSHOT GroupBy: the midnight starting the row's day, ``floor(ts, 1 day)``.

    >>> query_time("entities", "temporal", None, "2026-04-09") == ds_to_ms("2026-04-10")
    True
    >>> query_time("events", "snapshot", ds_to_ms("2026-04-10") + 5, None) == ds_to_ms("2026-04-10")
    True
    """
    if left_kind == "entities":
        return None if ds is None else ds_to_ms(ds) + DAY_MS
    if ts is None:
        return None
    return floor_to(ts, DAY_MS) if accuracy == "snapshot" else ts


def backfill_query_time(ds: str) -> int:
    """A GroupBy backfill's partition ``ds`` holds the values at ``ds + 1 day 00:00``.

    >>> backfill_query_time("1970-01-01")
    86400000
    """
    return ds_to_ms(ds) + DAY_MS


def snapshot_ds(q: int) -> str:
    """The entity snapshot a value at q starts from: the day before q's day (its mutations follow).

    >>> snapshot_ds(ds_to_ms("2026-04-10")), snapshot_ds(ds_to_ms("2026-04-10") + 1)
    ('2026-04-09', '2026-04-09')
    """
    return ms_to_ds(q - DAY_MS)


def read_range(max_window_ms: int | None, low_q: int, high_q: int) -> tuple[str | None, str]:
    """The event partitions ``[start_ds, end_ds]`` that values at times in ``[low_q, high_q]`` read
    (``start_ds`` None: unbounded). One extra day before the earliest window start covers the
    hop-aligned tail (a window start is floored to its hop, at most one day earlier).

    >>> read_range(None, ds_to_ms("2026-04-10"), ds_to_ms("2026-04-11"))
    (None, '2026-04-10')
    >>> read_range(DAY_MS, ds_to_ms("2026-04-10") + 1, ds_to_ms("2026-04-10") + 2)
    ('2026-04-08', '2026-04-10')
    """
    start = None if max_window_ms is None else ms_to_ds(low_q - max_window_ms - DAY_MS)
    return start, ms_to_ds(high_q - 1)


def entity_partitions(query_times: Iterable[int]) -> tuple[list[str], list[str]]:
    """SPEC §4: the (snapshot, mutation) partitions that entity values at these query times read.

    The value at q reads snapshot ``ds(q) - 1`` and, unless q is a midnight, the mutations of
    ``ds(q)`` before q.

    >>> entity_partitions([ds_to_ms("2026-04-10") + 2 * 3_600_000, ds_to_ms("2026-04-12")])
    (['2026-04-09', '2026-04-11'], ['2026-04-10'])
    """
    snapshots: set[str] = set()
    mutations: set[str] = set()
    for q in query_times:
        snapshots.add(snapshot_ds(q))
        if q % DAY_MS:
            mutations.add(ms_to_ds(q))
    return sorted(snapshots), sorted(mutations)


def window_bounds(q: int, window_ms: int | None) -> tuple[int | None, int]:
    """``[start, q)``: the event times a window of ``window_ms`` (None: unbounded) aggregates at q.

    >>> window_bounds(5 * 3_600_000 + 7, 5 * 3_600_000)
    (0, 18000007)
    """
    return window_start(q, window_ms), q
