"""The fetch path's own Redis reads (`FastReads`, `AsyncReads`) against a real redis-server: the
right database, replies in order under concurrency, errors raised, and a dropped connection
replaced without the caller noticing."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Iterator
from typing import Any

import pytest

from gnomon.online.stores.redis import RedisStore, connect
from gnomon.online.stores.redis_reads import AsyncReads, FastReads, ReplyError, fast_reads


@pytest.fixture()
def db_url(redis_url: str) -> str:
    url = redis_url.rsplit("/", 1)[0] + "/5"  # not database 0: the reads must select it
    client = connect(url)
    client.flushdb()
    client.mset({f"k{i}": f"v{i}" for i in range(50)})
    client.hset("h", mapping={"a": "1", "b": "2"})
    client.close()
    return url


@pytest.fixture()
def client_and_reads(db_url: str) -> Iterator[tuple[Any, FastReads]]:
    client = connect(db_url)
    reads = fast_reads(client)
    assert reads is not None
    yield client, reads
    reads.close()
    client.close()


def test_sync_reads_select_the_database_and_keep_order(client_and_reads: tuple[Any, FastReads]) -> None:
    client, reads = client_and_reads
    replies = reads.execute([(b"MGET", b"k1", b"missing", b"k2"), (b"HVALS", b"h"), (b"GET", b"k49")])
    assert replies[0] == [b"v1", None, b"v2"]
    assert sorted(replies[1]) == [b"1", b"2"]
    assert replies[2] == b"v49"


def test_sync_reads_survive_a_killed_connection(client_and_reads: tuple[Any, FastReads]) -> None:
    client, reads = client_and_reads
    assert reads.execute([(b"GET", b"k3")]) == [b"v3"]
    client.execute_command("CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes")  # drops the reads' connection
    assert reads.execute([(b"GET", b"k4")]) == [b"v4"]


def test_error_replies_raise_and_the_connection_stays_usable(client_and_reads: tuple[Any, FastReads]) -> None:
    client, reads = client_and_reads
    with pytest.raises(ReplyError, match="WRONGTYPE"):
        reads.execute([(b"GET", b"k1"), (b"HVALS", b"k1"), (b"GET", b"k2")])
    assert reads.execute([(b"GET", b"k5")]) == [b"v5"]


def test_async_reads_pipeline_concurrent_requests(client_and_reads: tuple[Any, FastReads]) -> None:
    client, reads = client_and_reads
    async_reads = AsyncReads(reads)

    async def one(index: int) -> None:
        await asyncio.sleep(random.random() / 1000)
        replies = await async_reads.execute(
            [(b"GET", f"k{index}"), (b"MGET", f"k{(index + 1) % 50}", b"none")]
        )
        assert replies == [f"v{index}".encode(), [f"v{(index + 1) % 50}".encode(), None]]

    async def main() -> None:
        await asyncio.gather(*(one(i % 50) for i in range(500)))
        client.execute_command("CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes")
        await asyncio.gather(*(one(i % 50) for i in range(20)))  # a new connection, transparently
        with pytest.raises(ReplyError, match="WRONGTYPE"):
            await async_reads.execute([(b"HVALS", b"k1")])
        await one(7)
        await async_reads.close()

    asyncio.run(main())


def test_store_reads_agree_sync_async_and_without_hiredis(db_url: str) -> None:
    store = RedisStore(db_url, namespace="t")
    store.put([(b"a", b"1"), (b"b", b"2")])
    store.add_rows([(b"a", b"e1", b"r1"), (b"a", b"e2", b"r2"), (b"a", b"e1", b"ignored")])
    expected = ([b"1", None, b"2"], [[b"r1", b"r2"], []])
    got = store.get_with_rows([b"a", b"zz", b"b"], [b"a", b"zz"])
    assert (got[0], sorted(map(sorted, got[1]), key=len, reverse=True)) == expected
    got = asyncio.run(store.get_with_rows_async([b"a", b"zz", b"b"], [b"a", b"zz"]))
    assert (got[0], sorted(map(sorted, got[1]), key=len, reverse=True)) == expected
    store._reads = store._async_reads = None  # the redis-py path (TLS and Unix sockets use it)
    got = store.get_with_rows([b"a", b"zz", b"b"], [b"a", b"zz"])
    assert (got[0], sorted(map(sorted, got[1]), key=len, reverse=True)) == expected
    store.close()
