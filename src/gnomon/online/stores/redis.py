"""The Redis online store (``redis://host:port/db``, also ``rediss://`` for TLS).

Layout, under a namespace (default ``gnomon``) so that values, row sets and other data sharing the
database never collide — a value and a row set may use the same caller key:

- a value is a plain string key ``<ns>:v:<key>``, read with MGET and written with SET in one
  MULTI/EXEC (so ``put`` is all or nothing);
- the rows of a key form one hash ``<ns>:r:<key>`` with field = event id; rows are added with HSETNX,
  so replaying an event changes nothing;
- a consumer's offsets are the hash ``<ns>:offsets:<consumer>`` (partition -> offset), written by the
  same Lua script as the rows they cover (one script call per micro-batch).

Multi-key transactions mean a single Redis (or a proxy that keeps a transaction on one node); Redis
Cluster is not supported. ``redis`` is imported lazily through :func:`import_redis`, which the Redis
Streams broker uses too.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping, Sequence
from itertools import chain
from types import ModuleType
from typing import Any

import msgpack

from gnomon.extras import require
from gnomon.online.stores.base import OnlineStore
from gnomon.online.stores.redis_reads import AsyncReads, fast_reads

CHUNK = 500  # keys per MGET / MSET: bounded request size, few round trips


def import_redis() -> ModuleType:
    """The ``redis`` package, or a :class:`MissingExtraError` that says how to install it."""
    return require("redis", "redis", "the Redis online store and stream broker")


def connect(url: str) -> Any:
    """A ``redis.Redis`` client for ``url`` (thread-safe, connection pool re-created after a fork)."""
    return import_redis().Redis.from_url(url, decode_responses=False)


def _values_and_rows(replies: list[Any], value_commands: int) -> tuple[list[bytes | None], list[list[bytes]]]:
    values = [value for chunk in replies[:value_commands] for value in chunk]
    return values, [list(rows) for rows in replies[value_commands:]]


def _chunks(items: Sequence[Any]) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), CHUNK):
        yield items[start : start + CHUNK]


# One script adds a micro-batch's rows and advances the consumer's offsets, atomically (a script
# runs to completion with nothing interleaved). ARGV[1]: the rows-key prefix; ARGV[2]: the rows as
# one flat MessagePack array key, event id, row, key, event id, row, ... (one argument rather than 3
# per row keeps the request cheap to build; one flat array rather than one per row spares the script
# a table per row, a fifth of its time); ARGV[3]: the value-key prefix; ARGV[4]: "1" to fence (write
# nothing, and return -1, unless every offset given is beyond the one recorded); ARGV[5]: "1" to
# record the offsets (the last chunk of a batch split over several calls); ARGV[6..]: partition,
# offset pairs. HSETNX: a replayed event id changes nothing; a row the key's fold marks refuse
# (`gnomon.online.fold`: an offset up to its partition's watermark and a ts before folded_until) is a
# replay of a folded event. Offsets only move forward (a worker finishing an older batch after another
# worker of its group went further must not move them back). Offsets are "123" or "1700000000000-3":
# compare numerically.
_ADD_ROWS = """
local prefix, values = ARGV[1], ARGV[3]
local rows = cmsgpack.unpack(ARGV[2])
local function parts(s) local t = {} for p in string.gmatch(s, "%d+") do t[#t + 1] = tonumber(p) end return t end
local function greater(a, b)
  local x, y = parts(a), parts(b)
  for i = 1, math.max(#x, #y) do
    local u, v = x[i] or -1, y[i] or -1
    if u ~= v then return u > v end
  end
  return false
end
if ARGV[4] == '1' then
  for i = 6, #ARGV, 2 do
    local current = redis.call('HGET', KEYS[1], ARGV[i])
    if current and not greater(ARGV[i + 1], current) then return -1 end
  end
end
local marks = {}
local added = 0
for i = 1, #rows, 3 do
  local key = rows[i]
  local m = marks[key]
  if m == nil then
    m = false
    if string.sub(key, 1, 5) == 'rows|' then
      local raw = redis.call('GET', values .. 'foldwm' .. string.sub(key, 5))
      if raw then m = cmsgpack.unpack(raw) end
    end
    marks[key] = m
  end
  local keep = true
  if m then
    local ts = cmsgpack.unpack(string.sub(rows[i + 2], 2))[1]
    if ts < m[1] then
      local id = rows[i + 1]
      local cut = string.find(id, ":[^:]*$")
      local watermark = m[2][string.sub(id, 1, cut - 1)]
      if watermark and not greater(string.sub(id, cut + 1), watermark) then keep = false end
    end
  end
  if keep then added = added + redis.call('HSETNX', prefix .. key, rows[i + 1], rows[i + 2]) end
end
if ARGV[5] == '1' then
  for i = 6, #ARGV, 2 do
    local current = redis.call('HGET', KEYS[1], ARGV[i])
    if (not current) or greater(ARGV[i + 1], current) then redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
  end
end
return added
"""
# A fold replaces a key's fold record and marks and deletes the rows it folded, atomically, unless
# another folder changed the fold record since it was read (compare and set; "" = there was none).
# KEYS: fold record, fold marks, rows hash; ARGV[1]: the fold record read; ARGV[2], ARGV[3]: the new
# record and marks; ARGV[4..]: the event ids to delete.
_APPLY_FOLD = """
local current = redis.call('GET', KEYS[1])
if (current or '') ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[2])
redis.call('SET', KEYS[2], ARGV[3])
for i = 4, #ARGV, 4000 do
  redis.call('HDEL', KEYS[3], unpack(ARGV, i, math.min(i + 3999, #ARGV)))
end
return 1
"""
ROWS_PER_SCRIPT = 5_000  # larger batches are split into several calls inside one MULTI/EXEC


class RedisStore(OnlineStore):
    """The online store in Redis: values as string keys, row sets as hashes, offsets as hashes."""

    def __init__(self, url: str, *, namespace: str = "gnomon") -> None:
        self.url = url
        self.namespace = namespace
        self._value_prefix = f"{namespace}:v:".encode()
        self._rows_prefix = f"{namespace}:r:".encode()
        self._client = connect(url)
        self._add_rows = self._client.register_script(_ADD_ROWS)
        self._apply_fold = self._client.register_script(_APPLY_FOLD)
        self._reads = fast_reads(self._client)  # the fetch's one round trip, when plain TCP + hiredis
        self._async_reads = AsyncReads(self._reads) if self._reads is not None else None

    def __repr__(self) -> str:
        return f"RedisStore({self.url!r}, namespace={self.namespace!r})"

    def _offsets_key(self, consumer: str) -> str:
        return f"{self.namespace}:offsets:{consumer}"

    def get(self, keys: Sequence[bytes]) -> list[bytes | None]:
        if not keys:
            return []
        prefix = self._value_prefix
        if len(keys) <= CHUNK:
            values: list[bytes | None] = self._client.mget([prefix + key for key in keys])
            return values
        with self._client.pipeline(transaction=False) as pipe:
            for chunk in _chunks(keys):
                pipe.mget([prefix + key for key in chunk])
            return [value for values in pipe.execute() for value in values]

    def get_with_rows(
        self, keys: Sequence[bytes], row_keys: Sequence[bytes]
    ) -> tuple[list[bytes | None], list[list[bytes]]]:
        """Values and row sets in one pipeline: one network round trip for a whole fetch."""
        commands, value_commands = self._read_commands(keys, row_keys)
        if not commands:
            return [], []
        if self._reads is not None:
            replies = self._reads.execute(commands)
        else:
            with self._client.pipeline(transaction=False) as pipe:
                for command in commands:
                    pipe.execute_command(*command)
                replies = pipe.execute()
        return _values_and_rows(replies, value_commands)

    async def get_with_rows_async(
        self, keys: Sequence[bytes], row_keys: Sequence[bytes]
    ) -> tuple[list[bytes | None], list[list[bytes]]]:
        """`get_with_rows` on the running event loop's pipelined connection (the loop never blocks)."""
        if self._async_reads is None:
            return self.get_with_rows(keys, row_keys)
        commands, value_commands = self._read_commands(keys, row_keys)
        if not commands:
            return [], []
        return _values_and_rows(await self._async_reads.execute(commands), value_commands)

    def _read_commands(
        self, keys: Sequence[bytes], row_keys: Sequence[bytes]
    ) -> tuple[list[tuple[bytes, ...]], int]:
        value_prefix, rows_prefix = self._value_prefix, self._rows_prefix
        commands = [(b"MGET", *[value_prefix + key for key in chunk]) for chunk in _chunks(keys)]
        return commands + [(b"HVALS", rows_prefix + key) for key in row_keys], len(commands)

    def put(self, items: Sequence[tuple[bytes, bytes]]) -> None:
        if not items:
            return
        prefix = self._value_prefix
        with self._client.pipeline(transaction=True) as pipe:
            for chunk in _chunks(items):
                pipe.mset({prefix + key: value for key, value in chunk})
            pipe.execute()

    def delete(self, keys: Sequence[bytes]) -> None:
        if not keys:
            return
        with self._client.pipeline(transaction=True) as pipe:
            for chunk in _chunks(keys):
                pipe.delete(
                    *[self._value_prefix + key for key in chunk], *[self._rows_prefix + key for key in chunk]
                )
            pipe.execute()

    def add_rows(
        self,
        rows: Sequence[tuple[bytes, bytes, bytes]],
        consumer: str | None = None,
        offsets: Mapping[str, str] | None = None,
        *,
        fence: bool = False,
    ) -> bool:
        if offsets and consumer is None:
            raise ValueError("add_rows: offsets need a consumer name to be recorded under")
        if not rows and not offsets:
            return True
        arguments = [item for pair in (offsets or {}).items() for item in pair]
        offsets_key = self._offsets_key(consumer or "")
        chunks = [
            rows[start : start + ROWS_PER_SCRIPT] for start in range(0, len(rows), ROWS_PER_SCRIPT)
        ] or [[]]
        blobs = [  # Redis Lua reads no bin type
            msgpack.packb(list(chain.from_iterable(chunk)), use_bin_type=False) for chunk in chunks
        ]
        fenced = b"1" if fence else b"0"
        if len(blobs) == 1:
            added = self._add_rows(
                keys=[offsets_key],
                args=[self._rows_prefix, blobs[0], self._value_prefix, fenced, b"1", *arguments],
            )
            return bool(added != -1)
        # all chunks or none; the offsets are recorded by the last, so a fence reads the same
        # offsets in every chunk (nothing runs between the scripts of a MULTI/EXEC)
        with self._client.pipeline(transaction=True) as pipe:
            for position, blob in enumerate(blobs):
                last = position == len(blobs) - 1
                self._add_rows(
                    keys=[offsets_key],
                    args=[
                        self._rows_prefix,
                        blob,
                        self._value_prefix,
                        fenced,
                        b"1" if last else b"0",
                        *(arguments if last or fence else []),
                    ],
                    client=pipe,
                )
            return -1 not in pipe.execute()

    def get_rows(self, keys: Sequence[bytes]) -> list[list[bytes]]:
        if not keys:
            return []
        with self._client.pipeline(transaction=False) as pipe:
            for key in keys:
                pipe.hvals(self._rows_prefix + key)
            return [list(rows) for rows in pipe.execute()]

    def scan_rows(self, prefix: bytes) -> Iterator[tuple[bytes, list[tuple[bytes, bytes]]]]:
        full = self._rows_prefix + prefix
        pattern = re.sub(rb"([\\*?\[\]])", rb"\\\1", full) + b"*"
        keys = list(self._client.scan_iter(match=pattern, count=1000))
        for chunk in _chunks(keys):
            with self._client.pipeline(transaction=False) as pipe:
                for key in chunk:
                    pipe.hgetall(key)
                for key, rows in zip(chunk, pipe.execute(), strict=True):
                    yield key[len(self._rows_prefix) :], list(rows.items())

    def get_rows_with_ids(self, keys: Sequence[bytes]) -> list[list[tuple[bytes, bytes]]]:
        if not keys:
            return []
        with self._client.pipeline(transaction=False) as pipe:
            for key in keys:
                pipe.hgetall(self._rows_prefix + key)
            return [list(rows.items()) for rows in pipe.execute()]

    def apply_fold(
        self,
        row_key: bytes,
        fold_key: bytes,
        expected: bytes | None,
        fold: bytes,
        marks_key: bytes,
        marks: bytes,
        delete: Sequence[bytes],
    ) -> bool:
        keys = [self._value_prefix + fold_key, self._value_prefix + marks_key, self._rows_prefix + row_key]
        return bool(self._apply_fold(keys=keys, args=[expected or b"", fold, marks, *delete]))

    def delete_rows(self, rows: Sequence[tuple[bytes, bytes]]) -> None:
        if not rows:
            return
        with self._client.pipeline(transaction=True) as pipe:
            for key, event_id in rows:
                pipe.hdel(self._rows_prefix + key, event_id)
            pipe.execute()

    def offsets(self, consumer: str) -> dict[str, str]:
        stored = self._client.hgetall(self._offsets_key(consumer))
        return {partition.decode(): offset.decode() for partition, offset in stored.items()}

    def close(self) -> None:
        if self._reads is not None:
            self._reads.close()
        self._client.close()
