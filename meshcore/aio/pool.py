"""The HBONE connection pool: PoolCore (compiled, sans-IO) decides; this dials.

    pool = HbonePool(connect)            # connect(key) -> HboneConnection
    transport, protocol = await pool.open_stream(key, "10.0.0.7:8080", protocol_factory)
"""
from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import NamedTuple

from meshcore._core.pool import PoolCore
from meshcore.aio.connection import HboneConnection
from meshcore.errors import TooManyStreamsError, UsageError

IDLE_TIMEOUT = 300.0          # docs/hbone.md, Connection pool: released after 5 min without a checkout


class PoolKey(NamedTuple):
    source_identity: object             # SpiffeId we present
    expected: tuple                     # SpiffeIds the server may have
    destination: tuple                  # (host, port) we dial
    source_ip: str | None = None


class HbonePool:
    def __init__(self, connect: Callable[[PoolKey], Awaitable[HboneConnection]], *,
                 max_streams: int = 100, idle_timeout: float = IDLE_TIMEOUT,
                 clock: Callable[[], float] = time.monotonic):
        self.core = PoolCore(max_streams, idle_timeout)
        self._connect = connect
        self._clock = clock
        self._conns: dict[int, HboneConnection] = {}
        self._dials: dict[PoolKey, asyncio.Future] = {}
        self._sweeper: asyncio.TimerHandle | None = None
        self.dials = 0

    @property
    def connections(self) -> list[HboneConnection]:
        return list(self._conns.values())

    async def open_stream(self, key: PoolKey, authority: str, protocol_factory, headers=()):
        """A tunnel on a pooled connection for `key` (dialing one if none has room)."""
        while True:
            conn = await self._checkout(key)
            try:
                return await conn.open_stream(authority, protocol_factory, headers)
            # refused before any stream existed: give the slot back, try another connection
            except TooManyStreamsError:          # the peer's limit, before we saw its SETTINGS
                self.core.set_limit(id(conn), conn.h2.open_local_streams)
                self._release(conn)
            except UsageError:                   # GOAWAY seen: the connection is done
                self._release(conn)
                self._retire(conn)

    async def _checkout(self, key: PoolKey) -> HboneConnection:
        while True:
            conn_id = self.core.checkout(key, self._clock())
            if conn_id is not None:
                conn = self._conns[conn_id]
                if conn.usable:
                    return conn
                self.core.release(conn_id, self._clock())
                self._retire(conn)
                continue
            if self.core.begin_dial(key):
                fut = self._dials[key] = asyncio.get_running_loop().create_future()
                try:
                    conn = await self._connect(key)
                except BaseException as exc:
                    self.core.end_dial(key)
                    self._dials.pop(key, None)
                    if not fut.done():
                        fut.set_exception(exc)
                        fut.exception()          # retrieved: waiters re-raise it themselves
                    raise
                self._register(key, conn)
                self._dials.pop(key, None)
                fut.set_result(conn)
            else:
                await asyncio.shield(self._dials[key])

    def _register(self, key: PoolKey, conn: HboneConnection) -> None:
        self.dials += 1
        cid = id(conn)
        self._conns[cid] = conn
        self.core.add(key, cid, conn.h2.remote_max_concurrent_streams, self._clock())
        conn.on_stream_closed = lambda c, sid: self._release(c)
        conn.on_goaway = self._retire
        conn.on_settings = lambda c: self.core.set_limit(id(c), c.h2.remote_max_concurrent_streams)
        conn.closed.add_done_callback(lambda _: self._forget(conn))
        if self._sweeper is None:
            self._schedule_sweep()

    def _release(self, conn: HboneConnection) -> None:
        if self.core.release(id(conn), self._clock()):
            conn.close()

    def _retire(self, conn: HboneConnection) -> None:
        if self.core.retire(id(conn)):
            conn.close()

    def _forget(self, conn: HboneConnection) -> None:
        self.core.remove(id(conn))
        self._conns.pop(id(conn), None)

    def _schedule_sweep(self) -> None:
        interval = max(0.05, min(30.0, self.core.idle_timeout / 2))
        self._sweeper = asyncio.get_running_loop().call_later(interval, self._sweep)

    def sweep(self) -> list[HboneConnection]:
        """Close connections idle for idle_timeout; returns them."""
        closed = [self._conns[cid] for cid in self.core.idle(self._clock()) if cid in self._conns]
        for conn in closed:
            conn.close()
        return closed

    def _sweep(self) -> None:
        self.sweep()
        self._sweeper = None
        if self._conns:
            self._schedule_sweep()

    async def close(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        conns = list(self._conns.values())
        for conn in conns:
            conn.close()
        await asyncio.gather(*(asyncio.shield(c.closed) for c in conns), return_exceptions=True)
