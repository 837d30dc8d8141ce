"""The waypoint's connections to endpoints, kept between requests and shared by every
client of the waypoint:

    Http2Upstreams   one HTTP/2 connection per endpoint (h2c inside an HBONE tunnel with
                     the waypoint's identity), many requests at once; another when it is
                     going away or its streams are all taken
    Http1Upstreams   kept-alive HTTP/1.1 connections per endpoint, one request at a time
                     each, for HTTP/2 clients whose backend speaks HTTP/1.1

An upstream connection without a request for `idle` seconds is closed; drain() ends
them all once their requests are done.
"""
from __future__ import annotations

import asyncio

from meshcore.aio.connection import HboneConnection
from meshcore.l7.http1 import Http1ClientConnection
from meshcore.node.routing import Route
from meshcore.state.model import Workload

UPSTREAM_IDLE = 60.0          # seconds an upstream connection with no request stays open
MAX_IDLE_HTTP1 = 64           # idle HTTP/1.1 connections kept per endpoint, at most


class Http2Upstreams:
    """One HTTP/2 connection per endpoint, each on its own HBONE tunnel, shared by every
    client of the waypoint; another when it is going away or its streams are all taken."""

    def __init__(self, tunnels, idle: float = UPSTREAM_IDLE):
        self.tunnels = tunnels
        self.idle = idle
        self.connections: dict[tuple, list[HboneConnection]] = {}
        self._opening: dict[tuple, asyncio.Task] = {}
        self._idle_timers: dict[HboneConnection, asyncio.TimerHandle] = {}
        self.closing = False

    async def get(self, chosen: Route, me: Workload) -> HboneConnection:
        key = (me.identity, chosen.dial, chosen.authority, chosen.expected)
        while True:
            for conn in self.connections.get(key, ()):
                if self._has_room(conn):
                    self._busy(conn)
                    return conn
            opening = self._opening.get(key)
            if opening is None:
                # requests arriving together wait for one connection instead of each opening one
                opening = self._opening[key] = asyncio.get_running_loop().create_task(self._open(key, chosen, me))
                opening.add_done_callback(lambda t: self._opening.pop(key) if self._opening.get(key) is t else None)
            conn = await asyncio.shield(opening)
            # more requests may have waited on it than its stream limit lets in: those
            # over it look again, and open the next connection together
            if self._has_room(conn):
                self._busy(conn)
                return conn

    @staticmethod
    def _has_room(conn: HboneConnection) -> bool:
        return conn.usable and conn.h2.open_local_streams < conn.h2.remote_max_concurrent_streams

    async def _open(self, key: tuple, chosen: Route, me: Workload) -> HboneConnection:
        _, conn = await self.tunnels.open_upstream(chosen, me, protocol_factory=lambda: HboneConnection(client=True))
        self.connections.setdefault(key, []).append(conn)
        conn.on_closed = lambda c: self._forget(key, c)
        conn.on_stream_closed = lambda c, _sid: self._maybe_idle(c)
        return conn

    def _busy(self, conn: HboneConnection) -> None:
        timer = self._idle_timers.pop(conn, None)
        if timer is not None:
            timer.cancel()

    def _maybe_idle(self, conn: HboneConnection) -> None:
        if conn.streams or conn in self._idle_timers:
            return
        if self.closing:
            conn.close()
            return
        self._idle_timers[conn] = conn.loop.call_later(self.idle, conn.close)

    def _forget(self, key: tuple, conn: HboneConnection) -> None:
        self._busy(conn)
        conns = self.connections.get(key)
        if conns is not None and conn in conns:
            conns.remove(conn)
            if not conns:
                del self.connections[key]

    async def drain(self, deadline: float) -> None:
        """GOAWAY to every backend once the requests on it finish (or the deadline)."""
        self.closing = True
        conns = [c for conns in self.connections.values() for c in conns]
        await asyncio.gather(*(c.drain(deadline) for c in conns), return_exceptions=True)


class Http1Upstreams:
    """Idle HTTP/1.1 connections per endpoint: take() one (or a new one), give_back()
    it when its exchange ended whole; whatever cannot carry another request is closed."""

    def __init__(self, tunnels, *, idle: float = UPSTREAM_IDLE, response_timeout: float | None = None,
                 body_timeout: float | None = None):
        self.tunnels = tunnels
        self.idle = idle
        self.response_timeout, self.body_timeout = response_timeout, body_timeout
        self.idle_connections: dict[tuple, list[tuple[Http1ClientConnection, asyncio.TimerHandle]]] = {}
        self.busy: set[Http1ClientConnection] = set()
        self.closing = False

    @staticmethod
    def key(chosen: Route, me: Workload) -> tuple:
        return me.identity, chosen.dial, chosen.authority, chosen.expected

    async def take(self, chosen: Route, me: Workload) -> tuple[Http1ClientConnection, bool]:
        """A connection for one request to the chosen endpoint, and whether it was kept
        from an earlier one (such a connection the upstream may have closed meanwhile)."""
        idle = self.idle_connections.get(self.key(chosen, me))
        while idle:
            client, timer = idle.pop()
            timer.cancel()
            if client.reusable:
                self.busy.add(client)
                return client, True
            client.close()
        reader, writer = await self.tunnels.open_upstream(chosen, me)
        client = Http1ClientConnection(reader, writer, response_timeout=self.response_timeout,
                                       idle_timeout=self.body_timeout)
        self.busy.add(client)
        return client, False

    def give_back(self, chosen: Route, me: Workload, client: Http1ClientConnection) -> None:
        self.busy.discard(client)
        key = self.key(chosen, me)
        idle = self.idle_connections.setdefault(key, [])
        if self.closing or not client.reusable or len(idle) >= MAX_IDLE_HTTP1:
            client.close()
            if not idle:
                del self.idle_connections[key]
            return
        timer = asyncio.get_running_loop().call_later(self.idle, self._expire, key, client)
        idle.append((client, timer))

    def discard(self, client: Http1ClientConnection) -> None:
        """A connection whose exchange failed: closed, never reused."""
        self.busy.discard(client)
        client.close()

    def _expire(self, key: tuple, client: Http1ClientConnection) -> None:
        idle = self.idle_connections.get(key, [])
        for i, (c, _) in enumerate(idle):
            if c is client:
                del idle[i]
                break
        if not idle:
            self.idle_connections.pop(key, None)
        client.close()

    async def drain(self, deadline: float) -> None:
        """Close the idle connections now and each busy one as its exchange ends."""
        self.closing = True
        idle = [pair for pairs in self.idle_connections.values() for pair in pairs]
        self.idle_connections.clear()
        for client, timer in idle:
            timer.cancel()
        await asyncio.gather(*(client.aclose() for client, _ in idle), return_exceptions=True)
