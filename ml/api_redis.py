"""A lean asyncio transport for the lookup API's hot path: one pipelined round trip per lookup.

hiredis (the Redis project's C protocol library, already what redis-py uses underneath) packs the commands and parses
the replies; this module only keeps a bounded pool of plain asyncio connections. Why not redis-py's asyncio client
for this one call: alone, a lookup pipeline (GET + ZREVRANGE + HGETALL, 32 concurrent) cost ~125 us of CPU through
redis-py's pipeline machinery and ~15 us this way on the bench machine, and it is the API's main cost per request
(bench/bench_api.py prints the in-process CPU per request with either transport). Everything else (health checks,
version meta, reason texts, TLS, Redis Cluster) stays on redis-py.

Replies come in RESP2 shapes (flat lists; bulk strings as bytes; integers as int); error replies raise
``redis.exceptions.ResponseError``, connection problems ``redis.exceptions.ConnectionError`` and timeouts
``redis.exceptions.TimeoutError``, so callers handle one exception family whichever transport served them.
"""

from __future__ import annotations

import asyncio
from typing import Any

import hiredis
from redis import exceptions as rex
from redis.connection import parse_url


class _Conn:
    """One connection: a stream pair and its hiredis reader."""

    __slots__ = ("reader", "writer", "parser")

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.parser = hiredis.Reader()

    async def roundtrip(self, commands: list[tuple[Any, ...]]) -> list[Any]:
        self.writer.write(b"".join(hiredis.pack_command(c) for c in commands))
        replies: list[Any] = []
        while len(replies) < len(commands):
            reply = self.parser.gets()
            if reply is False:  # incomplete: read more
                data = await self.reader.read(65536)
                if not data:
                    raise rex.ConnectionError("Redis closed the connection")
                self.parser.feed(data)
                continue
            replies.append(reply)
        return replies

    def close(self) -> None:
        self.writer.close()


class FastRedis:
    """A bounded pool of connections to one standalone Redis (``redis://`` or ``unix://``, with optional user,
    password and db) that sends a list of commands as one pipelined round trip."""

    def __init__(self, url: str, *, max_connections: int, timeout_s: float) -> None:
        self.params = parse_url(url)
        self.timeout_s = timeout_s
        self._slots = asyncio.Semaphore(max_connections)
        self._idle: list[_Conn] = []

    @staticmethod
    def supports(url: str, cluster: bool) -> bool:
        """True for plain standalone URLs; TLS and clusters are left to redis-py."""
        return not cluster and url.split("://", 1)[0] in ("redis", "unix")

    async def _connect(self) -> _Conn:
        p = self.params
        if "path" in p:
            reader, writer = await asyncio.open_unix_connection(p["path"])
        else:
            reader, writer = await asyncio.open_connection(p.get("host", "localhost"), p.get("port", 6379))
        conn = _Conn(reader, writer)
        setup: list[tuple[Any, ...]] = []
        if p.get("password"):
            setup.append(("AUTH", p["username"], p["password"]) if p.get("username") else ("AUTH", p["password"]))
        if p.get("db"):
            setup.append(("SELECT", p["db"]))
        if setup:
            for reply in await conn.roundtrip(setup):
                if isinstance(reply, hiredis.ReplyError):
                    conn.close()
                    raise rex.ConnectionError(f"Redis refused the connection setup: {reply}")
        return conn

    async def pipeline(self, commands: list[tuple[Any, ...]]) -> list[Any]:
        """Send ``commands`` in one round trip and return their replies, in order. Waits at most ``timeout_s`` in
        all (for a free connection, connecting, and the replies)."""
        try:
            async with asyncio.timeout(self.timeout_s):
                await self._slots.acquire()
                conn = None
                try:
                    conn = self._idle.pop() if self._idle else await self._connect()
                    replies = await conn.roundtrip(commands)
                except BaseException:
                    if conn is not None:  # state unknown (partial reply, cancellation): never reuse it
                        conn.close()
                    raise
                else:
                    self._idle.append(conn)
                finally:
                    self._slots.release()
        except TimeoutError as e:
            raise rex.TimeoutError(f"no Redis reply within {self.timeout_s}s") from e
        except (OSError, asyncio.IncompleteReadError) as e:
            raise rex.ConnectionError(f"Redis connection failed: {e}") from e
        for reply in replies:
            if isinstance(reply, hiredis.ReplyError):
                raise rex.ResponseError(str(reply))
        return replies

    async def aclose(self) -> None:
        while self._idle:
            self._idle.pop().close()

    @property
    def idle_connections(self) -> int:
        return len(self._idle)
