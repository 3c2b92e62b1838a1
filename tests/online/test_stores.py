"""One test body per behaviour, run on every online store (SQLite file, real Redis server)."""

from __future__ import annotations

import multiprocessing
import sqlite3
import sys
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gnomon.errors import ConfigError, MissingExtraError
from gnomon.online.stores import open_store
from gnomon.online.stores.base import OnlineStore
from gnomon.online.stores.redis import RedisStore
from gnomon.online.stores.sqlite import CHUNK, SQLiteStore

BINARY_KEYS = [b"", b"\x00", b"\x00\x01", b"\xff\xfe\xfd", "clé".encode(), b"user:bob|item:42", b"a" * 300]


@pytest.fixture(params=["sqlite", "redis"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[OnlineStore]:
    opened: OnlineStore
    if request.param == "sqlite":
        opened = SQLiteStore(tmp_path / "online.db")
    else:
        opened = RedisStore(request.getfixturevalue("redis_url"), namespace=f"test-{uuid.uuid4().hex}")
    yield opened
    opened.close()


# -- values -------------------------------------------------------------------------------------------


def test_empty_requests_are_no_ops(store: OnlineStore) -> None:
    store.put([])
    store.delete([])
    store.add_rows([])
    assert store.get([]) == []
    assert store.get_rows([]) == []
    assert store.offsets("nobody") == {}


def test_get_put_round_trip_with_binary_keys(store: OnlineStore) -> None:
    items = [(key, b"value-\x00-" + key) for key in BINARY_KEYS]
    store.put(items)
    wanted = [*reversed(BINARY_KEYS), b"missing", BINARY_KEYS[1], b"\x00\x00"]
    assert store.get(wanted) == [dict(items).get(key) for key in wanted]
    assert store.get([b"\x00"]) == [b"value-\x00-\x00"]
    assert store.get([b"missing"]) == [None]


def test_put_replaces(store: OnlineStore) -> None:
    store.put([(b"k", b"old"), (b"other", b"x")])
    store.put([(b"k", b"new")])
    assert store.get([b"k", b"other"]) == [b"new", b"x"]


def test_get_more_keys_than_one_chunk(store: OnlineStore) -> None:
    keys = [i.to_bytes(4, "big") for i in range(2 * CHUNK + 37)]
    store.put([(key, key * 2) for key in keys[::2]])
    assert store.get(keys) == [key * 2 if i % 2 == 0 else None for i, key in enumerate(keys)]


def test_delete_removes_values_and_rows(store: OnlineStore) -> None:
    store.put([(b"a", b"1"), (b"b", b"2")])
    store.add_rows([(b"a", b"e1", b"row"), (b"b", b"e1", b"row")])
    store.delete([b"a", b"never-written"])
    assert store.get([b"a", b"b"]) == [None, b"2"]
    assert store.get_rows([b"a", b"b"]) == [[], [b"row"]]


def test_put_is_all_or_nothing(store: OnlineStore) -> None:
    with pytest.raises((TypeError, sqlite3.Error)):
        store.put([(b"a", b"1"), (object(), b"2")])
    assert store.get([b"a"]) == [None]


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.dictionaries(st.binary(max_size=24), st.binary(max_size=64), max_size=12))
def test_any_bytes_round_trip(store: OnlineStore, items: dict[bytes, bytes]) -> None:
    namespace = uuid.uuid4().bytes  # one store serves every example
    store.put([(namespace + key, value) for key, value in items.items()])
    assert store.get([namespace + key for key in items]) == list(items.values())


# -- rows and offsets ---------------------------------------------------------------------------------


def test_rows_and_values_of_one_key_are_independent(store: OnlineStore) -> None:
    store.put([(b"k", b"value")])
    store.add_rows([(b"k", b"e1", b"row")])
    assert store.get([b"k"]) == [b"value"]
    assert store.get_rows([b"k"]) == [[b"row"]]


def test_add_rows_is_idempotent(store: OnlineStore) -> None:
    store.add_rows([(b"k", b"0:1", b"r1"), (b"k", b"0:1", b"r1"), (b"k", b"0:2", b"r2")])
    store.add_rows([(b"k", b"0:1", b"r1"), (b"k", b"0:2", b"replayed differently")])
    store.add_rows([(b"\x00", b"0:1", b"other key, same id")])
    rows = store.get_rows([b"k", b"\x00", b"empty"])
    assert sorted(rows[0]) == [b"r1", b"r2"]  # the first row under an id wins
    assert rows[1:] == [[b"other key, same id"], []]


def test_get_rows_of_many_keys(store: OnlineStore) -> None:
    keys = [i.to_bytes(3, "big") for i in range(CHUNK + 10)]
    store.add_rows([(key, str(n).encode(), key + bytes([n])) for key in keys[::3] for n in range(3)])
    rows = store.get_rows(keys)
    assert [sorted(found) for found in rows] == [
        sorted(key + bytes([n]) for n in range(3)) if i % 3 == 0 else [] for i, key in enumerate(keys)
    ]


def test_offsets_are_recorded_with_rows(store: OnlineStore) -> None:
    store.add_rows([(b"k", b"0:5", b"r")], consumer="worker", offsets={"0": "5", "1": "17"})
    assert store.offsets("worker") == {"0": "5", "1": "17"}
    store.add_rows([(b"k", b"0:6", b"r")], consumer="worker", offsets={"0": "6"})
    store.add_rows([], consumer="other", offsets={"0": "1700000000000-0"})
    assert store.offsets("worker") == {"0": "6", "1": "17"}
    assert store.offsets("other") == {"0": "1700000000000-0"}
    assert store.offsets("nobody") == {}


def test_a_fenced_write_happens_only_beyond_its_offsets(store: OnlineStore) -> None:
    """A Spark batch replayed under an id already recorded writes nothing, in the same atomic step."""
    assert store.add_rows([(b"k", b"q:0-0", b"r0")], consumer="query", offsets={"spark:q": "0"}, fence=True)
    assert not store.add_rows(
        [(b"k", b"q:0-1", b"replayed")], consumer="query", offsets={"spark:q": "0"}, fence=True
    )
    assert store.get_rows([b"k"]) == [[b"r0"]]
    assert store.add_rows([(b"k", b"q:9-0", b"r9")], consumer="query", offsets={"spark:q": "9"}, fence=True)
    assert not store.add_rows([], consumer="query", offsets={"spark:q": "8", "other": "1"}, fence=True)
    assert store.offsets("query") == {"spark:q": "9"}
    assert sorted(store.get_rows([b"k"])[0]) == [b"r0", b"r9"]
    # unfenced, the rows go in and the offsets only move forward, as ever
    assert store.add_rows([(b"k", b"q:8-0", b"r8")], consumer="query", offsets={"spark:q": "8"})
    assert store.offsets("query") == {"spark:q": "9"} and len(store.get_rows([b"k"])[0]) == 3


def test_a_fenced_write_of_many_rows_is_skipped_whole(store: OnlineStore) -> None:
    rows = [(b"k%d" % (n % 7), b"q:1-%d" % n, b"r") for n in range(12_001)]  # Redis: 3 script calls
    assert store.add_rows(rows, consumer="query", offsets={"spark:q": "1"}, fence=True)
    assert sum(len(found) for found in store.get_rows([b"k%d" % n for n in range(7)])) == len(rows)
    again = [(key, event_id + b"'", row) for key, event_id, row in rows]
    assert not store.add_rows(again, consumer="query", offsets={"spark:q": "1"}, fence=True)
    assert sum(len(found) for found in store.get_rows([b"k%d" % n for n in range(7)])) == len(rows)
    assert store.add_rows(again, consumer="query", offsets={"spark:q": "2"}, fence=True)
    assert sum(len(found) for found in store.get_rows([b"k%d" % n for n in range(7)])) == 2 * len(rows)


def test_offsets_need_a_consumer(store: OnlineStore) -> None:
    with pytest.raises(ValueError, match="consumer"):
        store.add_rows([(b"k", b"e", b"r")], offsets={"0": "1"})
    assert store.get_rows([b"k"]) == [[]]


def test_failed_add_rows_writes_neither_rows_nor_offsets(store: OnlineStore) -> None:
    store.add_rows([(b"k", b"e0", b"kept")], consumer="worker", offsets={"0": "0"})
    with pytest.raises((TypeError, sqlite3.Error)):  # an unstorable key, after a good row
        store.add_rows([(b"k", b"e1", b"r"), (object(), b"e2", b"r")], consumer="worker", offsets={"0": "2"})
    assert store.get_rows([b"k"]) == [[b"kept"]]
    assert store.offsets("worker") == {"0": "0"}


def test_threads_share_a_store(store: OnlineStore) -> None:
    errors: list[BaseException] = []

    def work(thread: int) -> None:
        try:
            for batch in range(20):
                key = f"t{thread}".encode()
                store.add_rows(
                    [(key, f"{batch}".encode(), b"r")], consumer=f"c{thread}", offsets={"0": str(batch)}
                )
                store.put([(key, str(batch).encode())])
                assert store.get([key]) == [str(batch).encode()]
        except BaseException as error:  # reported by the main thread
            errors.append(error)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert [len(rows) for rows in store.get_rows([b"t0", b"t1", b"t2", b"t3"])] == [20] * 4
    assert store.offsets("c3") == {"0": "19"}


# -- SQLite across processes --------------------------------------------------------------------------

WRITES, ROWS_PER_WRITE = 40, 25


def _write_rows(target: str | SQLiteStore, writer: int, start: multiprocessing.synchronize.Barrier) -> None:
    # A path under spawn; under fork, the parent's store object itself, connections and all.
    store = SQLiteStore(target) if isinstance(target, str) else target
    start.wait()
    for batch in range(WRITES):
        rows = [
            (f"k{n % 7}".encode(), f"{writer}:{batch}:{n}".encode(), b"row") for n in range(ROWS_PER_WRITE)
        ]
        rows.append((b"shared", f"{batch}".encode(), b"same id from both writers"))
        store.add_rows(rows, consumer=f"writer{writer}", offsets={"0": str(batch)})
        store.get([b"k0", b"k1"])
    store.close()


def _run_writers(context: multiprocessing.context.BaseContext, target: str | SQLiteStore) -> None:
    start = context.Barrier(2)
    writers = [context.Process(target=_write_rows, args=(target, n, start)) for n in range(2)]  # type: ignore[attr-defined]
    for writer in writers:
        writer.start()
    for writer in writers:
        writer.join(timeout=60)
    assert [writer.exitcode for writer in writers] == [0, 0]


def _assert_nothing_lost(store: SQLiteStore) -> None:
    rows = store.get_rows([f"k{n}".encode() for n in range(7)] + [b"shared"])
    assert sum(len(found) for found in rows[:-1]) == 2 * WRITES * ROWS_PER_WRITE
    assert len(rows[-1]) == WRITES
    assert store.offsets("writer0") == store.offsets("writer1") == {"0": str(WRITES - 1)}


def test_sqlite_two_processes_writing_at_once_lose_nothing(tmp_path: Path) -> None:
    path = tmp_path / "online.db"
    _run_writers(multiprocessing.get_context("spawn"), str(path))
    store = SQLiteStore(path)
    _assert_nothing_lost(store)
    assert store._connections.get().execute("PRAGMA journal_mode").fetchone() == ("wal",)
    store.close()


@pytest.mark.skipif(sys.platform != "linux", reason="fork is the default start method on Linux only")
def test_sqlite_store_opened_before_a_fork_still_works(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "online.db")
    store.put([(b"before", b"fork")])
    _run_writers(multiprocessing.get_context("fork"), store)
    _assert_nothing_lost(store)
    assert store.get([b"before"]) == [b"fork"]
    store.close()


# -- URLs and extras ----------------------------------------------------------------------------------


def test_open_store_resolves_sqlite_paths(tmp_path: Path) -> None:
    relative = open_store("sqlite:///data/online.db", tmp_path)
    absolute = open_store(f"sqlite:///{tmp_path / 'elsewhere.db'}", Path("/nonexistent-root"))
    assert isinstance(relative, SQLiteStore) and isinstance(absolute, SQLiteStore)
    assert relative.path == tmp_path / "data" / "online.db"
    assert absolute.path == tmp_path / "elsewhere.db"
    relative.put([(b"k", b"v")])
    assert (tmp_path / "data" / "online.db").exists()
    relative.close()
    absolute.close()


def test_open_store_opens_redis(redis_url: str, tmp_path: Path) -> None:
    store = open_store(redis_url, tmp_path)
    assert isinstance(store, RedisStore) and store.url == redis_url
    store.close()


@pytest.mark.parametrize("url", ["postgres://db/x", "sqlite://online.db", "sqlite:///", "online.db", ""])
def test_open_store_rejects_other_urls(url: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="sqlite:///") as raised:
        open_store(url, tmp_path)
    assert repr(url) in str(raised.value)


def test_missing_redis_package_says_which_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "redis", None)
    with pytest.raises(MissingExtraError, match=r"pip install 'gnomon\[redis\]'"):
        RedisStore("redis://localhost:6379/0")
