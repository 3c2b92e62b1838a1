"""Shared by ``bench/online.py`` and ``bench/stream.py``: the benchmark feature repo, its synthetic
warehouse, a private redis-server, and the small measurement helpers (percentiles, load average,
waiting for a concurrent ``bench/offline.py`` to finish).

The repo: one event source ``bench.events`` (topic ``events``) and two TEMPORAL, online GroupBys
joined by ``bench.user_item`` — eight windowed features:

- ``bench.user_stats`` keyed by ``user``: COUNT 5h, SUM 1d, AVERAGE 30d, MAX 12h, LAST_K(3) 1d;
- ``bench.item_stats`` keyed by ``item``: AVERAGE 90d, COUNT 1d, UNIQUE_COUNT 7d.

``bench.user_item_derived`` is the same Join plus ``Derivation("*", "*")`` and one SQL derivation,
to show what an online derivation costs.

The warehouse ends yesterday (UTC), so that the upload of yesterday has today 00:00 as its batch end
and fetches at "now" (no ``at``) are served — the realistic path. It is generated with numpy and
cached under ``bench/.data/`` per (size, seed, last day).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import subprocess
import sys
import textwrap
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
REPO_DIR = BENCH_DIR.parent
SRC_DIR = REPO_DIR / "src"
DATA_DIR = BENCH_DIR / ".data"
if str(SRC_DIR) not in sys.path:
    sys.path.insert(0, str(SRC_DIR))

from gnomon.testing import free_port, redis_server  # noqa: E402,F401 — the benches' private redis-server

DATA_VERSION = 1
DAY_MS = 86_400_000
HOUR_MS = 3_600_000
HISTORY_DAYS = 92  # the longest window is 90d (1-day hops): its tail reaches 91 days back
EVENTS_PER_KEY = 20
USER_ZIPF = 0.5
ITEM_ZIPF = 0.5

TOPIC = "events"
USER_GROUP_BY = "bench.user_stats"
ITEM_GROUP_BY = "bench.item_stats"
JOIN = "bench.user_item"
DERIVED_JOIN = "bench.user_item_derived"

FEATURES_PY = """
from gnomon import (Accuracy, Aggregation, Derivation, EventSource, GroupBy, Join, JoinPart, Operation,
                    Query)

events = EventSource(
    table="bench.events",
    topic="events",
    query=Query(selects={"user": "user_id", "item": "item_id", "price": "price", "rating": "rating"},
                time_column="ts"),
)
user_stats = GroupBy(
    name="bench.user_stats",
    sources=[events],
    keys=["user"],
    aggregations=[
        Aggregation("item", Operation.COUNT, windows=["5h"]),
        Aggregation("price", Operation.SUM, windows=["1d"]),
        Aggregation("price", Operation.AVERAGE, windows=["30d"]),
        Aggregation("price", Operation.MAX, windows=["12h"]),
        Aggregation("item", Operation.LAST_K(3), windows=["1d"]),
    ],
    accuracy=Accuracy.TEMPORAL,
    online=True,
)
item_stats = GroupBy(
    name="bench.item_stats",
    sources=[events],
    keys=["item"],
    aggregations=[
        Aggregation("rating", Operation.AVERAGE, windows=["90d"]),
        Aggregation("user", Operation.COUNT, windows=["1d"]),
        Aggregation("user", Operation.UNIQUE_COUNT, windows=["7d"]),
    ],
    accuracy=Accuracy.TEMPORAL,
    online=True,
)
_left = EventSource(table="bench.events", query=Query(selects={"user": "user_id", "item": "item_id"}))
user_item = Join(
    name="bench.user_item",
    left=_left,
    right_parts=[JoinPart(user_stats), JoinPart(item_stats)],
    online=True,
)
user_item_derived = Join(
    name="bench.user_item_derived",
    left=_left,
    right_parts=[JoinPart(user_stats), JoinPart(item_stats)],
    derivations=[Derivation("*", "*"),
                 Derivation("price_per_rating", "bench_user_stats_price_sum_1d / bench_item_stats_rating_average_90d")],
    online=True,
)
"""


# ================================================================== time, dates


def ds_of(ms: int) -> str:
    return (dt.date(1970, 1, 1) + dt.timedelta(days=ms // DAY_MS)).isoformat()


def ms_of(ds: str) -> int:
    return (dt.date.fromisoformat(ds) - dt.date(1970, 1, 1)).days * DAY_MS


def upload_day() -> str:
    """Yesterday (UTC): its upload's batch end is today 00:00, so fetches at "now" are served."""
    return ds_of(int(time.time() * 1000) - DAY_MS)


def batch_end_of(ds: str) -> int:
    return ms_of(ds) + DAY_MS


# ================================================================== the environment


def loadavg() -> str:
    one, five, fifteen = os.getloadavg()
    return f"loadavg {one:.2f} {five:.2f} {fifteen:.2f} (1/5/15 min, {os.cpu_count()} cores)"


WAIT_FOR_OFFLINE = True  # --no-wait turns it off (debugging only)
SETTLE_S = 60.0  # how long to wait for other busy processes (not ours) to calm down; --settle
_CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _process_table() -> dict[int, tuple[int, int]]:
    """pid -> (parent pid, user+system CPU ticks so far, its reaped children's included)."""
    table = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as handle:
                fields = handle.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        table[int(entry)] = (
            int(fields[1]),
            int(fields[11]) + int(fields[12]) + int(fields[13]) + int(fields[14]),
        )
    return table


def _command(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as handle:
            return handle.read().replace(b"\0", b" ").decode(errors="replace").strip()[:90]
    except OSError:
        return "?"


def other_load(interval: float = 1.0) -> tuple[float, list[str]]:
    """CPU (in cores) used over ``interval`` by processes outside this benchmark's process tree."""
    before = _process_table()
    time.sleep(interval)
    return _other_usage(before, _process_table(), interval)


def _steal_ticks() -> int:
    """CPU time the hypervisor gave to others (``steal`` in /proc/stat), all CPUs, in ticks."""
    try:
        with open("/proc/stat") as handle:
            fields = handle.readline().split()
        return int(fields[8])
    except (OSError, IndexError, ValueError):
        return 0


class OtherLoad:
    """How much CPU other processes (not this benchmark's tree) used while a measurement ran, and
    how much the hypervisor stole."""

    def __init__(self) -> None:
        self.before = _process_table()
        self.steal = _steal_ticks()
        self.started = time.monotonic()

    def stop(self) -> tuple[float, list[str]]:
        elapsed = max(1e-3, time.monotonic() - self.started)
        used, busy = _other_usage(self.before, _process_table(), elapsed)
        stolen = (_steal_ticks() - self.steal) / _CLOCK_TICKS / elapsed
        if stolen >= 0.01:
            busy = [*busy, f"hypervisor steal {stolen:.2f} cores"]
        return used, busy


def fmt_other(usage: tuple[float, list[str]]) -> str:
    used, busy = usage
    return f"other processes used {used:.2f} cores meanwhile" + (f" ({'; '.join(busy)})" if busy else "")


def _other_usage(
    before: dict[int, tuple[int, int]], after: dict[int, tuple[int, int]], interval: float
) -> tuple[float, list[str]]:
    mine = {os.getpid()}
    changed = True
    while changed:
        changed = False
        for pid, (parent, _) in after.items():
            if parent in mine and pid not in mine:
                mine.add(pid)
                changed = True
    mine.update(pid for pid in after if pid != os.getpid() and _is_ancestor(pid, after))
    busy = []
    total = 0.0
    for pid, (_, ticks) in after.items():
        if pid in mine:
            continue
        used = (ticks - before.get(pid, (0, ticks))[1]) / _CLOCK_TICKS / interval
        total += used
        if used >= 0.05:
            busy.append((used, pid))
    busy.sort(reverse=True)
    return total, [f"{used:.0%} {_command(pid)}" for used, pid in busy[:4]]


def _is_ancestor(pid: int, table: dict[int, tuple[int, int]]) -> bool:
    """True when ``pid`` is one of this process's ancestors (the shell that started us)."""
    current = os.getpid()
    for _ in range(64):
        parent = table.get(current, (0, 0))[0]
        if parent <= 1:
            return False
        if parent == pid:
            return True
        current = parent
    return False


def wait_for_quiet(label: str, poll_s: float = 20.0, limit_s: float = 1200.0) -> None:
    """Wait (up to ``limit_s``) until no ``bench/offline.py`` runs; then wait up to ``SETTLE_S`` while
    other processes use more than half a core; print the load average and what else is busy."""
    started = time.monotonic()
    warned = False
    while WAIT_FOR_OFFLINE:
        found = subprocess.run(
            ["pgrep", "-f", "bench/offline.py"], capture_output=True, text=True
        ).stdout.split()
        found = [pid for pid in found if int(pid) != os.getpid()]
        if not found:
            break
        if time.monotonic() - started > limit_s:
            print(
                f"  !! bench/offline.py still running after {limit_s:.0f} s (pids {found}); measuring anyway",
                flush=True,
            )
            break
        if not warned:
            print(
                f"  waiting for bench/offline.py (pids {' '.join(found)}) to finish before {label} ...",
                flush=True,
            )
            warned = True
        time.sleep(poll_s)
    if warned:
        print(f"  waited {time.monotonic() - started:.0f} s", flush=True)
    settle_until = time.monotonic() + (SETTLE_S if WAIT_FOR_OFFLINE else 0)
    while True:
        used, busy = other_load(1.0)
        if used < 0.5 or time.monotonic() >= settle_until:
            break
        time.sleep(4.0)
    others = f"; other processes use {used:.2f} cores" + (f" ({'; '.join(busy)})" if busy else "")
    print(f"  [{label}] {loadavg()}{others}", flush=True)


def summary_ms(values_ns: Sequence[int]) -> dict[str, float]:
    """p50 / p90 / p99 / p99.9 / max / mean in milliseconds (nearest-rank)."""
    import numpy as np

    if len(values_ns) == 0:
        return {"n": 0}
    array = np.sort(np.asarray(values_ns, dtype=np.float64)) / 1e6
    n = len(array)

    def rank(p: float) -> float:
        return float(array[min(n - 1, max(0, int(np.ceil(p * n)) - 1))])

    return {
        "n": n,
        "p50": rank(0.50),
        "p90": rank(0.90),
        "p99": rank(0.99),
        "p99.9": rank(0.999),
        "max": float(array[-1]),
        "mean": float(array.mean()),
    }


def fmt_summary(s: dict[str, float], unit: str = "ms") -> str:
    if not s.get("n"):
        return "no samples"
    return (
        f"p50 {s['p50']:.3f} · p90 {s['p90']:.3f} · p99 {s['p99']:.3f} · p99.9 {s['p99.9']:.3f} · "
        f"max {s['max']:.3f} · mean {s['mean']:.3f} {unit} (n={s['n']})"
    )


def verdict(ok: bool) -> str:
    return "MET" if ok else "MISSED"


def child_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(SRC_DIR) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env["PYTHONUNBUFFERED"] = "1"
    return env


# ================================================================== the warehouse


def user_id(index: int) -> str:
    return f"u{index:07d}"


def item_id(index: int) -> str:
    return f"i{index:07d}"


def _zipf(n: int, exponent: float, rng: Any) -> Any:
    import numpy as np

    weights = 1.0 / np.arange(1, n + 1) ** exponent
    rng.shuffle(weights)
    return weights / weights.sum()


def ensure_warehouse(
    keys: int, seed: int, last_ds: str, events_per_key: int = EVENTS_PER_KEY
) -> tuple[Path, dict[str, Any]]:
    """``bench/.data/online_v…/warehouse`` with ``keys`` users and items and ``keys * events_per_key``
    events over the ``HISTORY_DAYS`` days ending ``last_ds``; generated once, then cached."""
    root = DATA_DIR / f"online_v{DATA_VERSION}_k{keys}_e{events_per_key}_s{seed}_{last_ds}"
    marker = root / "generated.json"
    if marker.exists():
        return root / "warehouse", json.loads(marker.read_text())
    if root.exists():
        shutil.rmtree(root)
    for stale in DATA_DIR.glob(f"online_v{DATA_VERSION}_k{keys}_e{events_per_key}_s{seed}_*"):
        shutil.rmtree(stale, ignore_errors=True)  # an older day's copy of the same size
    started = time.monotonic()
    info = _generate(root / "warehouse", keys, seed, last_ds, events_per_key)
    info["generate_s"] = round(time.monotonic() - started, 1)
    marker.write_text(json.dumps(info, indent=1))
    return root / "warehouse", info


def _generate(warehouse: Path, keys: int, seed: int, last_ds: str, events_per_key: int) -> dict[str, Any]:
    import numpy as np
    import pyarrow as pa

    from gnomon.offline.warehouse import Warehouse

    rng = np.random.default_rng(seed)
    n = keys * events_per_key
    first_ms = ms_of(last_ds) - (HISTORY_DAYS - 1) * DAY_MS
    users = rng.choice(keys, size=n, p=_zipf(keys, USER_ZIPF, rng))
    items = rng.choice(keys, size=n, p=_zipf(keys, ITEM_ZIPF, rng))
    ts = first_ms + rng.integers(0, HISTORY_DAYS * DAY_MS, size=n, dtype=np.int64)
    price = np.round(np.exp(rng.normal(3.0, 0.8, size=n)), 2)
    rating = rng.integers(1, 6, size=n, dtype=np.int64)
    order = np.argsort(ts, kind="stable")
    users, items, ts, price, rating = users[order], items[order], ts[order], price[order], rating[order]
    user_ids = pa.array([user_id(i) for i in range(keys)], pa.string())
    item_ids = pa.array([item_id(i) for i in range(keys)], pa.string())
    store = Warehouse(warehouse)
    day = ts // DAY_MS
    first_day = first_ms // DAY_MS
    bounds = np.searchsorted(day, np.arange(first_day, first_day + HISTORY_DAYS + 1))
    for index in range(HISTORY_DAYS):
        lo, hi = int(bounds[index]), int(bounds[index + 1])
        table = pa.table(
            {
                "user_id": user_ids.take(pa.array(users[lo:hi])),
                "item_id": item_ids.take(pa.array(items[lo:hi])),
                "price": pa.array(price[lo:hi]),
                "rating": pa.array(rating[lo:hi]),
                "ts": pa.array(ts[lo:hi]),
            }
        )
        store.write_partition("bench.events", ds_of((first_day + index) * DAY_MS), table)
    return {
        "keys": keys,
        "events": int(n),
        "seed": seed,
        "first_ds": ds_of(first_ms),
        "last_ds": last_ds,
        "distinct_users": int(len(np.unique(users))),
        "distinct_items": int(len(np.unique(items))),
    }


def make_repo(
    path: Path, warehouse: Path, online: str, stream: str = "embedded", horizon: str = "3d"
) -> Path:
    """A feature repo folder (gnomon.yaml + features/defs.py) over ``warehouse``, with a fresh online
    store and stream log when they are SQLite files in the folder."""
    path.mkdir(parents=True, exist_ok=True)
    for stale in (
        "online.db",
        "online.db-wal",
        "online.db-shm",
        "stream.db",
        "stream.db-wal",
        "stream.db-shm",
    ):
        (path / stale).unlink(missing_ok=True)
    (path / "gnomon.yaml").write_text(
        f"project: gnomon_bench\nwarehouse: {warehouse}\n"
        f"online: {{url: '{online}', horizon: {horizon}}}\nstream: '{stream}'\n"
    )
    (path / "features").mkdir(exist_ok=True)
    (path / "features" / "__init__.py").write_text("")
    (path / "features" / "defs.py").write_text(textwrap.dedent(FEATURES_PY))
    shutil.rmtree(path / "compiled", ignore_errors=True)
    return path


# ================================================================== streamed events


def stream_payloads(
    count: int, keys: int, start_ms: int, end_ms: int, seed: int, sort: bool = True
) -> list[bytes]:
    """``count`` JSON events over ``keys`` users and items with ``ts`` in ``[start_ms, end_ms)``."""
    import numpy as np

    rng = np.random.default_rng(seed)
    users = rng.choice(keys, size=count, p=_zipf(keys, USER_ZIPF, rng))
    items = rng.choice(keys, size=count, p=_zipf(keys, ITEM_ZIPF, rng))
    ts = rng.integers(start_ms, max(start_ms + 1, end_ms), size=count, dtype=np.int64)
    if sort:
        ts.sort()
    price = np.round(np.exp(rng.normal(3.0, 0.8, size=count)), 2)
    rating = rng.integers(1, 6, size=count)
    return [
        (f'{{"user_id":"u{u:07d}","item_id":"i{i:07d}","price":{p!r},"rating":{r},"ts":{t}}}').encode()
        for u, i, p, r, t in zip(
            users.tolist(), items.tolist(), price.tolist(), rating.tolist(), ts.tolist(), strict=True
        )
    ]


def publish_all(broker: Any, payloads: Sequence[bytes], chunk: int = 1000) -> float:
    """Publish in chunks; returns the seconds it took."""
    started = time.perf_counter()
    for start in range(0, len(payloads), chunk):
        broker.publish(TOPIC, payloads[start : start + chunk])
    return time.perf_counter() - started


def top_profile(profile: Any, limit: int = 25, sort: str = "tottime") -> str:
    """The top of a cProfile.Profile as text, with the src/ path prefix cut."""
    import io
    import pstats

    out = io.StringIO()
    stats = pstats.Stats(profile, stream=out)
    stats.sort_stats(sort).print_stats(limit)
    text = out.getvalue().replace(str(SRC_DIR) + "/", "").replace(str(Path(sys.prefix)) + "/", "")
    lines = text.splitlines()
    start = next((i for i, line in enumerate(lines) if "ncalls" in line), 0)
    return "\n".join(lines[start:])


# ================================================================== the entity case (bench/stream.py)
# An EntitySource with a mutation topic: an item's ratings, changed in place (inserts, updates,
# deletes) and published as mutation rows or Debezium change events.

ENTITY_TOPIC = "ratings_mutations"
ENTITY_GROUP_BY = "bench.entity_item_ratings"
ENTITY_SNAPSHOTS = "bench.ratings_snapshots"
ENTITY_MUTATIONS = "bench.ratings_mutations"
ENTITY_RATINGS_PER_ITEM = 5

ENTITY_FEATURES_PY = """
from gnomon import Accuracy, Aggregation, EntitySource, GroupBy, Operation, Query

ratings = EntitySource(
    snapshot_table="bench.ratings_snapshots",
    mutation_table="bench.ratings_mutations",
    mutation_topic="ratings_mutations",
    query=Query(selects={"item": "item_id", "user": "user_id", "rating": "rating"}, time_column="ts"),
)
entity_item_ratings = GroupBy(
    name="bench.entity_item_ratings",
    sources=[ratings],
    keys=["item"],
    aggregations=[
        Aggregation("rating", Operation.AVERAGE, windows=["90d"]),
        Aggregation("rating", Operation.SUM, windows=["30d"]),
        Aggregation("rating", Operation.COUNT, windows=["30d"]),
        Aggregation("rating", Operation.MAX, windows=["90d"]),
        Aggregation("rating", Operation.LAST, windows=["90d"]),
    ],
    accuracy=Accuracy.TEMPORAL,
    online=True,
)
"""


def ensure_entity_warehouse(items: int, seed: int, last_ds: str) -> tuple[Path, dict[str, Any]]:
    """``bench/.data/online_entity_v…/warehouse``: snapshot ``last_ds`` of the ratings table (``items``
    items x `ENTITY_RATINGS_PER_ITEM` ratings, ``ts`` over the 60 days before) and its mutation
    partition ``last_ds`` (a few rows, so that the mutation table and its column types exist)."""
    root = DATA_DIR / f"online_entity_v{DATA_VERSION}_i{items}_s{seed}_{last_ds}"
    marker = root / "generated.json"
    if marker.exists():
        return root / "warehouse", json.loads(marker.read_text())
    if root.exists():
        shutil.rmtree(root)
    for stale in DATA_DIR.glob(f"online_entity_v{DATA_VERSION}_i{items}_s{seed}_*"):
        shutil.rmtree(stale, ignore_errors=True)
    import numpy as np
    import pyarrow as pa

    from gnomon.offline.warehouse import Warehouse

    rng = np.random.default_rng(seed)
    n = items * ENTITY_RATINGS_PER_ITEM
    end_ms = ms_of(last_ds) + DAY_MS
    item = np.repeat(np.arange(items), ENTITY_RATINGS_PER_ITEM)
    snapshot = pa.table(
        {
            "rating_id": pa.array(np.arange(n, dtype=np.int64)),
            "item_id": pa.array([item_id(i) for i in item.tolist()], pa.string()),
            "user_id": pa.array(
                [user_id(u) for u in rng.integers(0, 100 * items, size=n).tolist()], pa.string()
            ),
            "rating": pa.array(rng.integers(1, 6, size=n).astype(np.float64)),
            "ts": pa.array(end_ms - 1 - rng.integers(0, 60 * DAY_MS, size=n, dtype=np.int64)),
        }
    )
    store = Warehouse(root / "warehouse")
    store.write_partition(ENTITY_SNAPSHOTS, last_ds, snapshot)
    changed = snapshot.slice(0, 4)  # two rows of the day before's snapshot updated (the old images)
    mutation_ts = pa.array(
        [end_ms - DAY_MS + 3_600_000 * (i + 1) for i in range(2) for _ in range(2)], pa.int64()
    )
    mutations = changed.append_column("mutation_ts", mutation_ts).append_column(
        "is_before", pa.array([True, False, True, False])
    )
    store.write_partition(ENTITY_MUTATIONS, last_ds, mutations)
    info = {"items": items, "snapshot_rows": n, "seed": seed, "last_ds": last_ds}
    marker.write_text(json.dumps(info, indent=1))
    return root / "warehouse", info


def make_entity_repo(
    path: Path, warehouse: Path, online: str, stream: str = "embedded", horizon: str = "3d"
) -> Path:
    """`make_repo` with the entity GroupBy (`ENTITY_FEATURES_PY`) in place of the event ones."""
    make_repo(path, warehouse, online, stream, horizon)
    (path / "features" / "defs.py").write_text(textwrap.dedent(ENTITY_FEATURES_PY))
    return path


def entity_mutations(count: int, items: int, start_ms: int, end_ms: int, seed: int) -> list[tuple[Any, ...]]:
    """About ``count`` mutation rows as a list of changes ``(op, mutation_ts, before, after)`` (rows are
    tuples ``(rating_id, item_id, user_id, rating, ts)``; before/after None where absent), in time
    order: a third of the changes insert a rating, a third update (a new rating; ``ts`` = the
    mutation time) and a third delete one inserted earlier in the stream (updates and deletes touch
    distinct rows, so every before image is the row as it is)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    changes = max(3, round(count / (4 / 3)))  # an update is 2 rows: 4 rows per 3 changes
    times = np.sort(rng.integers(start_ms, max(start_ms + 1, end_ms), size=changes, dtype=np.int64)).tolist()
    kinds = rng.integers(0, 3, size=changes).tolist()  # 0 insert, 1 update, 2 delete
    item_p = _zipf(items, ITEM_ZIPF, rng)
    new_items = rng.choice(items, size=changes, p=item_p).tolist()
    users = rng.integers(0, 100 * items, size=changes).tolist()
    ratings = rng.integers(1, 6, size=changes).tolist()
    picks = rng.random(changes).tolist()
    alive: list[tuple[Any, ...]] = []  # inserted rows not yet updated or deleted
    out: list[tuple[Any, ...]] = []
    next_id = 10**9
    for index, t in enumerate(times):
        kind = kinds[index] if alive else 0
        if kind == 0:
            row = (next_id, item_id(new_items[index]), user_id(users[index]), float(ratings[index]), t)
            next_id += 1
            alive.append(row)
            out.append(("c", t, None, row))
            continue
        position = int(picks[index] * len(alive))
        old = alive[position]
        alive[position] = alive[-1]
        alive.pop()
        if kind == 1:
            new = (old[0], old[1], old[2], float(ratings[index]), t)
            alive.append(new)
            out.append(("u", t, old, new))
        else:
            out.append(("d", t, old, None))
    return out


_ROW_FIELDS = ("rating_id", "item_id", "user_id", "rating", "ts")


def rating_row_json(row: tuple[Any, ...]) -> str:
    return f'"rating_id":{row[0]},"item_id":"{row[1]}","user_id":"{row[2]}","rating":{row[3]!r},"ts":{row[4]}'


def mutation_row_payloads(changes: Sequence[tuple[Any, ...]]) -> list[bytes]:
    """The changes in the mutation table's row format: one JSON object per row (an update is the
    before row, then the after row, at the same mutation time)."""
    out = []
    for _, t, before, after in changes:
        if before is not None:
            out.append(f'{{{rating_row_json(before)},"mutation_ts":{t},"is_before":true}}'.encode())
        if after is not None:
            out.append(f'{{{rating_row_json(after)},"mutation_ts":{t},"is_before":false}}'.encode())
    return out


def debezium_payloads(changes: Sequence[tuple[Any, ...]]) -> list[bytes]:
    """The changes as Debezium change events (no Kafka Connect ``schema``/``payload`` wrapper), with
    a ``source`` block like the Postgres connector's."""
    out = []
    for lsn, (op, t, before, after) in enumerate(changes):
        b = "null" if before is None else f"{{{rating_row_json(before)}}}"
        a = "null" if after is None else f"{{{rating_row_json(after)}}}"
        out.append(
            (
                f'{{"before":{b},"after":{a},"source":{{"version":"2.5.0.Final","connector":"postgresql",'
                f'"name":"shop","ts_ms":{t},"db":"shop","schema":"public","table":"ratings","lsn":{lsn}}},'
                f'"op":"{op}","ts_ms":{t}}}'
            ).encode()
        )
    return out


def mutation_row_count(changes: Sequence[tuple[Any, ...]]) -> int:
    return sum((before is not None) + (after is not None) for _, _, before, after in changes)


def publish_all_to(broker: Any, topic: str, payloads: Sequence[bytes], chunk: int = 1000) -> float:
    """`publish_all` to another topic; returns the seconds it took."""
    started = time.perf_counter()
    for start in range(0, len(payloads), chunk):
        broker.publish(topic, payloads[start : start + chunk])
    return time.perf_counter() - started
