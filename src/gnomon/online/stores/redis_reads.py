"""The fetch hot path's Redis reads: a few commands, one round trip, without a client library's
per-command machinery.

A fetch sends three or four read commands (MGET of the batch records, HVALS of each row set). Through
redis-py's pipeline that costs more CPU than the round trip itself; here the commands are packed by
hiredis, written with one ``sendall`` and the replies parsed by ``hiredis.Reader``. Each thread (and
process, after a fork) has its own connection; a connection that fails is dropped and the reads are
sent once more on a new one (they change nothing, so repeating them is safe).

:class:`AsyncReads` is the same for an asyncio server: one connection per event loop, on which the
reads of concurrent requests are pipelined (Redis answers in order, so each request takes its replies
off the front of the stream), and the event loop never waits on a socket.

Only for plain TCP URLs (``redis://``) with hiredis installed; :func:`fast_reads` returns None
otherwise and the store keeps using redis-py (TLS, Unix sockets).
"""

from __future__ import annotations

import asyncio
import os
import socket
import threading
from collections import deque
from collections.abc import Sequence
from typing import Any

DEFAULT_TIMEOUT_S = 10.0  # a fetch never waits longer than this for Redis


class ReadConnectionError(ConnectionError):
    """The server closed the connection."""


class ReplyError(RuntimeError):
    """The server answered a command with an error."""


class FastReads:
    """Read commands to one Redis database, one round trip per call."""

    def __init__(
        self,
        hiredis: Any,
        host: str,
        port: int,
        db: int,
        username: str | None,
        password: str | None,
        timeout_s: float | None,
    ) -> None:
        self._hiredis = hiredis
        self.address = (host, port)
        self.db, self.username, self.password = db, username, password
        self.timeout_s = timeout_s
        self._local = threading.local()

    def pack(self, commands: Sequence[Sequence[bytes | str | None]]) -> bytes:
        return b"".join(self._hiredis.pack_command(tuple(command)) for command in commands)

    def setup_commands(self) -> list[tuple[str | None, ...]]:
        """What a new connection sends first: AUTH, SELECT."""
        setup: list[tuple[str | None, ...]] = []
        if self.password is not None:
            setup.append(("AUTH", self.username, self.password) if self.username else ("AUTH", self.password))
        if self.db:
            setup.append(("SELECT", str(self.db)))
        return setup

    def execute(self, commands: Sequence[Sequence[bytes | str]]) -> list[Any]:
        """The replies of ``commands``, in order (a server error reply raises)."""
        packed = self.pack(commands)
        try:
            return self._round_trip(self._connection(), packed, len(commands))
        except TimeoutError:
            self._drop()  # a Redis that does not answer: once is the most a fetch waits
            raise
        except (OSError, ReadConnectionError):
            self._drop()  # a dropped connection: once more, on a new one
            return self._round_trip(self._connection(), packed, len(commands))

    def close(self) -> None:
        self._drop()

    def _connection(self) -> tuple[socket.socket, Any]:
        current = getattr(self._local, "connection", None)
        if current is not None and self._local.pid == os.getpid():
            return current  # type: ignore[no-any-return]
        sock = socket.create_connection(self.address, timeout=self.timeout_s)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        connection = (sock, self._hiredis.Reader())
        setup = self.setup_commands()
        try:
            if setup:
                self._round_trip(connection, self.pack(setup), len(setup))
        except BaseException:
            sock.close()
            raise
        self._local.connection, self._local.pid = connection, os.getpid()
        return connection

    def _round_trip(self, connection: tuple[socket.socket, Any], packed: bytes, count: int) -> list[Any]:
        sock, reader = connection
        sock.sendall(packed)
        replies: list[Any] = []
        while len(replies) < count:
            reply = reader.gets()
            if reply is False:
                data = sock.recv(1 << 16)
                if not data:
                    raise ReadConnectionError(
                        f"Redis at {self.address[0]}:{self.address[1]} closed the connection"
                    )
                reader.feed(data)
            else:
                replies.append(reply)
        return self.checked(replies)

    def checked(self, replies: list[Any]) -> list[Any]:
        """``replies``, or ReplyError for the first error among them (read only once all are in, so
        the connection stays in step)."""
        for reply in replies:
            if isinstance(reply, self._hiredis.ReplyError):
                raise ReplyError(f"Redis answered {reply}")
        return replies

    def _drop(self) -> None:
        current = getattr(self._local, "connection", None)
        self._local.connection = None
        if current is not None and self._local.pid == os.getpid():
            current[0].close()


class AsyncReads:
    """`FastReads` for asyncio: a pipelined connection per event loop."""

    def __init__(self, reads: FastReads) -> None:
        self.reads = reads
        self._connections: dict[int, _PipelinedConnection] = {}

    async def execute(self, commands: Sequence[Sequence[bytes | str]]) -> list[Any]:
        packed = self.reads.pack(commands)
        try:
            return await self._request(packed, len(commands))
        except TimeoutError:
            raise  # a Redis that does not answer: once is the most a fetch waits
        except (OSError, ReadConnectionError):
            return await self._request(packed, len(commands))  # once more, on a new connection

    async def _request(self, packed: bytes, count: int) -> list[Any]:
        loop = asyncio.get_running_loop()
        connection = self._connections.get(id(loop))
        if connection is None or connection.closed:
            connection = await _PipelinedConnection.open(self.reads)
            self._connections[id(loop)] = connection
        return await connection.request(packed, count, self.reads.timeout_s)

    async def close(self) -> None:
        connection = self._connections.pop(id(asyncio.get_running_loop()), None)
        if connection is not None:
            connection.close(ReadConnectionError("closed"))


class _PipelinedConnection:
    """One asyncio connection; requests write their commands at once and get their replies in order."""

    def __init__(self, reads: FastReads, stream: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reads, self.stream, self.writer = reads, stream, writer
        self.parser = reads._hiredis.Reader()
        self.waiting: deque[tuple[int, list[Any], asyncio.Future[list[Any]]]] = deque()
        self.closed = False
        self.task = asyncio.get_running_loop().create_task(self._read_replies())

    @classmethod
    async def open(cls, reads: FastReads) -> _PipelinedConnection:
        stream, writer = await asyncio.wait_for(asyncio.open_connection(*reads.address), reads.timeout_s)
        writer.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        connection = cls(reads, stream, writer)
        setup = reads.setup_commands()
        if setup:
            await connection.request(reads.pack(setup), len(setup), reads.timeout_s)
        return connection

    async def request(self, packed: bytes, count: int, timeout_s: float | None) -> list[Any]:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[list[Any]] = loop.create_future()
        self.waiting.append((count, [], future))
        self.writer.write(packed)
        # a timer rather than asyncio.wait_for, which would wrap every read in a task of its own
        timer = None if timeout_s is None else loop.call_later(timeout_s, self._time_out, future, timeout_s)
        try:
            return await future
        finally:
            if timer is not None:
                timer.cancel()

    def _time_out(self, future: asyncio.Future[list[Any]], timeout_s: float) -> None:
        if not future.done():  # the replies are out of step from here on: drop the connection
            self.close(TimeoutError(f"Redis at {self.reads.address} did not answer in {timeout_s} s"))

    async def _read_replies(self) -> None:
        try:
            while True:
                data = await self.stream.read(1 << 16)
                if not data:
                    raise ReadConnectionError(f"Redis at {self.reads.address} closed the connection")
                self.parser.feed(data)
                while self.waiting:
                    reply = self.parser.gets()
                    if reply is False:
                        break
                    count, replies, future = self.waiting[0]
                    replies.append(reply)
                    if len(replies) == count:
                        self.waiting.popleft()
                        if not future.done():
                            try:
                                future.set_result(self.reads.checked(replies))
                            except ReplyError as error:
                                future.set_exception(error)
        except (OSError, ReadConnectionError) as error:
            self.close(error)
        except asyncio.CancelledError:
            self.close(ReadConnectionError("closed"))
            raise

    def close(self, error: BaseException) -> None:
        if self.closed:
            return
        self.closed = True
        while self.waiting:
            _count, _replies, future = self.waiting.popleft()
            if not future.done():
                future.set_exception(
                    error
                    if isinstance(error, (OSError, ReadConnectionError))
                    else ReadConnectionError(str(error))
                )
        self.writer.close()
        if self.task is not asyncio.current_task():
            self.task.cancel()


def fast_reads(client: Any) -> FastReads | None:
    """Fast reads to the database of a ``redis.Redis`` client, when it is plain TCP and hiredis is
    installed; None otherwise."""
    try:
        import hiredis
    except ImportError:
        return None
    from redis.connection import Connection

    pool = client.connection_pool
    if pool.connection_class is not Connection:  # TLS or a Unix socket
        return None
    options = pool.connection_kwargs
    return FastReads(
        hiredis,
        options.get("host", "localhost"),
        int(options.get("port", 6379)),
        int(options.get("db", 0) or 0),
        options.get("username"),
        options.get("password"),
        options.get("socket_timeout") or DEFAULT_TIMEOUT_S,
    )
