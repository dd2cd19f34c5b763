"""A lean asyncio transport for the lookup API's hot path: every lookup of a worker pipelined over one connection.

hiredis (the Redis project's C protocol library, already what redis-py uses underneath) packs the commands and parses
the replies; this module keeps one plain asyncio connection (an :class:`asyncio.Protocol`, no streams) and
multiplexes every concurrent lookup of the process over it. Redis answers a connection's commands in order, so each
call queues one reply slot (a future and how many replies it waits for); the commands of all calls made in one
event-loop iteration leave in one ``send`` (flushed by ``call_soon``), and one ``recv`` usually completes many calls.

Why: a lookup's round trip through a pool of stream connections (one connection per in-flight lookup) cost ~100 us
of CPU per request inside the API under 32 concurrent requests (a write and a read syscall, a stream wakeup and
a timeout timer per lookup, and Redis, on the same 2 cores, woken once per lookup and preempting the worker), where
the replies themselves take a few microseconds to parse. Multiplexed, the syscalls, wakeups and Redis' own work are
shared by every lookup in flight (bench/bench_api.py prints the in-process CPU per request). Everything else
(health checks, version meta, reason texts, TLS, Redis Cluster) stays on redis-py.

Timeouts: a call fails with ``redis.exceptions.TimeoutError`` when no reply came within ``timeout_s``; since replies
are ordered, every call queued behind it would wait as long, so the connection is then dropped (its state is
unknown), every queued call fails the same way, and the next call reconnects. One timer per connection watches the
oldest pending call (no timer per call). A cancelled caller just leaves its reply slot to be read and dropped.

The connection speaks RESP3 when the server does (``HELLO 3``; Redis >= 6), so hiredis returns scores as floats
and hashes as dicts (no parsing in Python), else RESP2 (flat lists, scores as bytes); bulk strings are bytes and
integers int either way. Callers accept both shapes. Error replies raise
``redis.exceptions.ResponseError``, connection problems ``redis.exceptions.ConnectionError`` and timeouts
``redis.exceptions.TimeoutError``, so callers handle one exception family whichever transport served them.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Any

import hiredis
from redis import exceptions as rex
from redis.connection import parse_url


class _Call:
    """One pending call: its future, how many replies it waits for, those read so far, its deadline."""

    __slots__ = ("future", "expected", "replies", "deadline")

    def __init__(self, future: asyncio.Future[list[Any]], expected: int, deadline: float) -> None:
        self.future = future
        self.expected = expected
        self.replies: list[Any] = []
        self.deadline = deadline


class _Multiplexed(asyncio.Protocol):
    """One connection shared by every call: commands are buffered and flushed once per loop iteration, replies are
    matched to calls in order."""

    def __init__(self, loop: asyncio.AbstractEventLoop, timeout_s: float) -> None:
        self.loop = loop
        self.timeout_s = timeout_s
        self.parser = hiredis.Reader()
        self.pending: deque[_Call] = deque()
        self.out: list[bytes] = []
        self.transport: asyncio.Transport | None = None
        self.lost: Exception | None = None  # set once the connection is unusable
        self._flush_scheduled = False
        self._watchdog: asyncio.TimerHandle | None = None

    # --- asyncio.Protocol ---------------------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.parser.feed(data)
        pending, gets = self.pending, self.parser.gets
        try:
            while pending:
                call = pending[0]
                while len(call.replies) < call.expected:
                    reply = gets()
                    if reply is False:  # incomplete: wait for more data
                        return
                    call.replies.append(reply)
                pending.popleft()
                if not call.future.done():  # a cancelled caller's replies are read and dropped
                    call.future.set_result(call.replies)
        except hiredis.ProtocolError as e:
            self.fail(rex.ConnectionError(f"Redis protocol error: {e}"))

    def connection_lost(self, exc: Exception | None) -> None:
        self.fail(rex.ConnectionError(f"Redis connection lost: {exc or 'closed by the server'}"))

    # --- calls --------------------------------------------------------------------------------------------------
    def call(self, commands: list[tuple[Any, ...]]) -> asyncio.Future[list[Any]]:
        """Queue ``commands``; the future resolves to their replies (or fails with a redis exception)."""
        future = self.loop.create_future()
        if self.lost is not None:
            future.set_exception(self.lost)
            return future
        self.pending.append(_Call(future, len(commands), self.loop.time() + self.timeout_s))
        self.out.extend(hiredis.pack_command(c) for c in commands)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self.loop.call_soon(self._flush)
        if self._watchdog is None:
            self._watchdog = self.loop.call_at(self.pending[0].deadline, self._check_deadline)
        return future

    def _flush(self) -> None:
        self._flush_scheduled = False
        if self.out and self.transport is not None and self.lost is None:
            self.transport.write(b"".join(self.out))
        self.out.clear()

    def _check_deadline(self) -> None:
        self._watchdog = None
        if not self.pending or self.lost is not None:
            return
        if self.pending[0].deadline <= self.loop.time():
            self.fail(rex.TimeoutError(f"no Redis reply within {self.timeout_s}s"))
        else:  # the oldest call still has time: wake up at its deadline
            self._watchdog = self.loop.call_at(self.pending[0].deadline, self._check_deadline)

    def fail(self, exc: Exception) -> None:
        """Make the connection unusable: every pending call fails with ``exc``; the transport is closed."""
        if self.lost is None:
            self.lost = exc
        while self.pending:
            future = self.pending.popleft().future
            if not future.done():
                future.set_exception(exc)
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None
        if self.transport is not None:
            self.transport.close()


class FastRedis:
    """The hot-path client of one standalone Redis (``redis://`` or ``unix://``, with optional user, password and
    db): :meth:`pipeline` sends a list of commands and returns their replies, multiplexed with every other call of
    the process over one connection (opened on first use, reopened after a failure)."""

    def __init__(self, url: str, *, timeout_s: float) -> None:
        self.params = parse_url(url)
        self.timeout_s = timeout_s
        self._conn: _Multiplexed | None = None
        self._connecting: asyncio.Future[_Multiplexed] | None = None

    @staticmethod
    def supports(url: str, cluster: bool) -> bool:
        """True for plain standalone URLs; TLS and clusters are left to redis-py."""
        return not cluster and url.split("://", 1)[0] in ("redis", "unix")

    async def _open(self) -> _Multiplexed:
        p, loop = self.params, asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self.timeout_s):
                if "path" in p:
                    _, conn = await loop.create_unix_connection(
                        lambda: _Multiplexed(loop, self.timeout_s), p["path"])
                else:
                    _, conn = await loop.create_connection(
                        lambda: _Multiplexed(loop, self.timeout_s), p.get("host", "localhost"), p.get("port", 6379))
        except TimeoutError as e:
            raise rex.TimeoutError(f"no Redis connection within {self.timeout_s}s") from e
        except OSError as e:
            raise rex.ConnectionError(f"Redis connection failed: {e}") from e
        setup: list[tuple[Any, ...]] = []
        if p.get("password"):
            setup.append(("AUTH", p["username"], p["password"]) if p.get("username") else ("AUTH", p["password"]))
        if p.get("db"):
            setup.append(("SELECT", p["db"]))
        replies = await conn.call([*setup, ("HELLO", 3)])
        for reply in replies[:-1]:
            if isinstance(reply, hiredis.ReplyError):
                conn.fail(rex.ConnectionError(f"Redis refused the connection setup: {reply}"))
                raise rex.ConnectionError(f"Redis refused the connection setup: {reply}")
        # HELLO refused (a server before Redis 6): the connection stays on RESP2; callers read both shapes
        return conn

    async def _connection(self) -> _Multiplexed:
        attempt = self._connecting
        if attempt is None:  # one caller opens it; concurrent callers wait for the same attempt
            attempt = self._connecting = asyncio.ensure_future(self._open())
        try:
            conn = await asyncio.shield(attempt)
        finally:
            if attempt.done() and self._connecting is attempt:
                self._connecting = None
        self._conn = conn
        return conn

    async def pipeline(self, commands: list[tuple[Any, ...]]) -> list[Any]:
        """Send ``commands`` in one pipelined batch and return their replies, in order. Fails after ``timeout_s``
        without a reply (and after ``timeout_s`` more at most while connecting)."""
        conn = self._conn
        if conn is None or conn.lost is not None:
            self._conn = None
            conn = await self._connection()
        replies = await conn.call(commands)
        for reply in replies:
            if isinstance(reply, hiredis.ReplyError):
                raise rex.ResponseError(str(reply))
        return replies

    async def aclose(self) -> None:
        if self._conn is not None:
            self._conn.fail(rex.ConnectionError("client closed"))
            self._conn = None

    @property
    def connections(self) -> int:
        """Open connections (0 or 1)."""
        return int(self._conn is not None and self._conn.lost is None)
