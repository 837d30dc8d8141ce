"""The waypoint's connections to endpoints, kept between requests:

    Http2Upstreams   one HTTP/2 connection per endpoint (h2c inside an HBONE tunnel with
                     the waypoint's identity), many requests at once, shared by every
                     client; another when it is going away, its streams are all taken or
                     it carried its share of requests
    Http1Upstreams   kept-alive HTTP/1.1 connections per endpoint, one request at a time
                     each, shared by HTTP/2 clients whose backend speaks HTTP/1.1
    KeptUpstreams    the kept-alive HTTP/1.1 connections of one HTTP/1.1 client, one per
                     endpoint, closed with it

How a connection is opened and how long it lives is its destination's DestinationRule's
connectionPool, as istiod writes it into Envoy's cluster (common_http_protocol_options,
connect_timeout, http2_protocol_options):

    http.maxRequestsPerConnection   requests a connection carries, then it is retired:
                                    HTTP/1.1 closed after that response, HTTP/2 takes no
                                    new stream and closes once its streams ended (0 or
                                    unset: unlimited; 1: no keep-alive)
    http.idleTimeout                closed after that long without a request in flight
                                    (tcp.idleTimeout when unset; 0s: never; neither set:
                                    Envoy's 1 hour)
    tcp.maxConnectionDuration       retired that long after it opened, closed once idle
    tcp.connectTimeout              how long opening one may take (the cluster's
                                    connect_timeout; unset: the waypoint's own)
    http.maxConcurrentStreams       HTTP/2 streams one carries at once, below the peer's
                                    own limit (only where the port declares http2 or
                                    grpc, as istiod sets it only on explicit HTTP/2
                                    clusters); more requests open another beside it
    http.http2KeepAlive             HTTP/2: a PING after `interval` without a frame from
                                    the peer, closed when no ACK comes within `timeout`
                                    (the same ports; unset: the HBONE connection's own)

Connections of destinations whose limits differ are not shared, as Envoy keeps a pool
per cluster. Every timer is the pool's and ends with its connection; drain() ends the
connections once their requests are done.
"""
from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

from meshcore.aio.connection import KEEPALIVE_INTERVAL, KEEPALIVE_TIMEOUT, HboneConnection
from meshcore.l7.http1 import Http1ClientConnection
from meshcore.node.routing import Route
from meshcore.state.model import Workload

UPSTREAM_IDLE = 3600.0        # Envoy's idle_timeout of upstream HTTP connections when none is configured
MAX_IDLE_HTTP1 = 64           # idle HTTP/1.1 connections kept per endpoint, at most


@dataclass(frozen=True, slots=True)
class ConnectionLimits:
    """How one destination's upstream connections are opened, how long they live and
    how many streams they carry."""
    max_requests: int | None = None           # requests per connection; None: unlimited
    idle: float | None = UPSTREAM_IDLE        # seconds without a request in flight; None: never closed for it
    max_duration: float | None = None         # seconds from the connection's start; None: no bound
    connect_timeout: float | None = None      # seconds opening one may take; None: the waypoint's own
    max_streams: int | None = None            # HTTP/2 streams at once; None: the peer's limit alone
    keepalive: tuple[float, float] | None = None   # HTTP/2 PING (interval, timeout); None: the HBONE defaults


DEFAULT_LIMITS = ConnectionLimits()


def connection_limits(policy, *, http2: bool = False) -> ConnectionLimits:
    """A destination's limits from its merged traffic policy (traffic.istio_model
    ClusterPolicy, or None), as istiod's applyConnectionPool maps them. `http2`: the
    port declares HTTP/2 (http2, grpc), the only clusters istiod gives the HTTP/2
    settings to (maxConcurrentStreams, http2KeepAlive): with the client's protocol
    (an undeclared port) they are not written."""
    pool = policy.connection_pool if policy is not None else None
    if pool is None:
        return DEFAULT_LIMITS
    http, tcp = pool.http, pool.tcp
    max_requests = http.max_requests_per_connection if http is not None else None
    idle = http.idle_timeout if http is not None else None
    if idle is None and tcp is not None:
        idle = tcp.idle_timeout
    streams = keepalive = None
    if http2 and http is not None:
        streams = http.max_concurrent_streams or None            # 0: istiod writes nothing
        if http.http2_keepalive is not None:
            keepalive = (http.http2_keepalive.interval, http.http2_keepalive.timeout)
    limits = ConnectionLimits(max_requests or None,
                              UPSTREAM_IDLE if idle is None else (idle or None),   # 0s: Envoy never closes it
                              tcp.max_connection_duration if tcp is not None else None,
                              tcp.connect_timeout if tcp is not None else None,
                              streams, keepalive)
    return DEFAULT_LIMITS if limits == DEFAULT_LIMITS else limits


def stream_room(limits: ConnectionLimits, open_streams: int, peer_max: int) -> bool:
    """Whether an HTTP/2 connection with `open_streams` of the waypoint's may open one
    more: below the peer's SETTINGS_MAX_CONCURRENT_STREAMS and the destination's
    maxConcurrentStreams, whichever is lower (as Envoy's pool takes the lower)."""
    cap = peer_max if limits.max_streams is None else min(peer_max, limits.max_streams)
    return open_streams < cap


def waiters_per_opening(limits: ConnectionLimits) -> int | None:
    """How many requests arriving together may wait for one connection being opened:
    as many as it may carry at once and in all (None: no bound of the destination's;
    the peer's stream limit sends those over it to the next one)."""
    bounds = [n for n in (limits.max_requests, limits.max_streams) if n is not None]
    return min(bounds) if bounds else None


def may_take_another(limits: ConnectionLimits, requests: int, age: float) -> bool:
    """Whether a connection that took `requests` requests so far (those in flight
    included) and opened `age` seconds ago may take one more."""
    if limits.max_requests is not None and requests >= limits.max_requests:
        return False
    return limits.max_duration is None or age < limits.max_duration


class _Use:
    """One upstream connection's count against its limits, and its timers."""
    __slots__ = ("limits", "key", "requests", "opened", "timer", "age_timer")

    def __init__(self, limits: ConnectionLimits, key=None):
        self.limits, self.key, self.requests = limits, key, 0
        self.opened = time.monotonic()
        self.timer: asyncio.TimerHandle | None = None        # idle
        self.age_timer: asyncio.TimerHandle | None = None    # maxConnectionDuration

    @property
    def may_take_another(self) -> bool:
        return may_take_another(self.limits, self.requests, time.monotonic() - self.opened)

    def idle_delay(self, idle: float | None) -> float | None:
        """When an idle connection is to close: its idle timeout (`idle` in its place
        when given), or sooner when its maximum duration comes first."""
        delays = [d for d in (idle if idle is not None else self.limits.idle,) if d is not None]
        if self.limits.max_duration is not None:
            delays.append(max(0.0, self.limits.max_duration - (time.monotonic() - self.opened)))
        return min(delays) if delays else None

    def cancel(self) -> None:
        for timer in (self.timer, self.age_timer):
            if timer is not None:
                timer.cancel()
        self.timer = self.age_timer = None


class Http2Upstreams:
    """One HTTP/2 connection per endpoint, each on its own HBONE tunnel, shared by every
    client of the waypoint; another when it is going away, its streams are all taken or
    its limits retired it. `idle`, when given, replaces every destination's idle timeout."""

    def __init__(self, tunnels, idle: float | None = None):
        self.tunnels = tunnels
        self.idle = idle
        self.connections: dict[tuple, list[HboneConnection]] = {}
        # per destination, the connections being opened: [task, callers waiting on it]
        self._opening: dict[tuple, list[list]] = {}
        self._uses: dict[HboneConnection, _Use] = {}
        self.closing = False

    async def get(self, chosen: Route, me: Workload, limits: ConnectionLimits = DEFAULT_LIMITS) -> HboneConnection:
        """A connection with room for one more stream, counted as taken: the caller opens
        its stream on it before it next awaits."""
        key = (me.identity, chosen.dial, chosen.authority, chosen.expected, limits)
        while True:
            for conn in self.connections.get(key, ()):
                if self._has_room(conn):
                    self._take(conn)
                    return conn
            # requests arriving together wait for one connection instead of each opening
            # one, as many as its request and stream limits let in: more open another beside it
            openings = self._opening.setdefault(key, [])
            room = waiters_per_opening(limits)
            opening = next((o for o in openings if room is None or o[1] < room), None)
            if opening is None:
                task = asyncio.get_running_loop().create_task(self._open(key, chosen, me, limits))
                opening = [task, 0]
                openings.append(opening)
                task.add_done_callback(lambda _, o=opening: self._opened(key, o))
            opening[1] += 1
            conn = await asyncio.shield(opening[0])
            # more requests may have waited on it than its stream limit lets in: those
            # over it look again, and open the next one together
            if self._has_room(conn):
                self._take(conn)
                return conn

    def _opened(self, key: tuple, opening: list) -> None:
        openings = self._opening.get(key)
        if openings is not None and opening in openings:
            openings.remove(opening)
            if not openings:
                del self._opening[key]

    def _has_room(self, conn: HboneConnection) -> bool:
        use = self._uses.get(conn)
        return conn.usable and use is not None and use.may_take_another \
            and stream_room(use.limits, conn.h2.open_local_streams, conn.h2.remote_max_concurrent_streams)

    async def _open(self, key: tuple, chosen: Route, me: Workload, limits: ConnectionLimits) -> HboneConnection:
        interval, timeout = limits.keepalive or (KEEPALIVE_INTERVAL, KEEPALIVE_TIMEOUT)
        _, conn = await self.tunnels.open_upstream(
            chosen, me, protocol_factory=lambda: HboneConnection(
                client=True, keepalive_interval=interval, keepalive_timeout=timeout),
            connect_timeout=limits.connect_timeout)
        use = self._uses[conn] = _Use(limits, key)
        self.connections.setdefault(key, []).append(conn)
        conn.on_closed = lambda c: self._forget(key, c)
        conn.on_stream_closed = lambda c, _sid: self._maybe_idle(c)
        if limits.max_duration is not None:
            use.age_timer = conn.loop.call_later(limits.max_duration, self._maybe_idle, conn)
        if conn.closed.done():                    # lost before its hooks were in place
            self._forget(key, conn)
        return conn

    def _take(self, conn: HboneConnection) -> None:
        use = self._uses[conn]
        use.requests += 1
        if use.timer is not None:
            use.timer.cancel()
            use.timer = None
        # a taker that opened no stream after all leaves no stream whose end would close
        # the connection (retired) or start its idle time: looked at once it had its turn
        conn.loop.call_soon(self._maybe_idle, conn)

    def _maybe_idle(self, conn: HboneConnection) -> None:
        use = self._uses.get(conn)
        if use is None or conn.streams or use.timer is not None:
            return
        if self.closing or not use.may_take_another:
            conn.close()                          # retired, and its last stream ended
            return
        delay = use.idle_delay(self.idle)
        if delay is not None:
            use.timer = conn.loop.call_later(delay, self._maybe_close, conn)

    def _maybe_close(self, conn: HboneConnection) -> None:
        use = self._uses.get(conn)
        if use is not None:
            use.timer = None
        if not conn.streams:
            conn.close()

    def _forget(self, key: tuple, conn: HboneConnection) -> None:
        use = self._uses.pop(conn, None)
        if use is not None:
            use.cancel()
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
    it when its exchange ended whole; whatever cannot carry another request is closed.
    `idle`, when given, replaces every destination's idle timeout."""

    def __init__(self, tunnels, *, idle: float | None = None, response_timeout: float | None = None,
                 body_timeout: float | None = None):
        self.tunnels = tunnels
        self.idle = idle
        self.response_timeout, self.body_timeout = response_timeout, body_timeout
        self.idle_connections: dict[tuple, list[Http1ClientConnection]] = {}
        self.busy: set[Http1ClientConnection] = set()
        self._uses: dict[Http1ClientConnection, _Use] = {}
        self.closing = False

    @staticmethod
    def key(chosen: Route, me: Workload, limits: ConnectionLimits = DEFAULT_LIMITS) -> tuple:
        return me.identity, chosen.dial, chosen.authority, chosen.expected, limits

    async def take(self, chosen: Route, me: Workload,
                   limits: ConnectionLimits = DEFAULT_LIMITS) -> tuple[Http1ClientConnection, bool]:
        """A connection for one request to the chosen endpoint, and whether it was kept
        from an earlier one (such a connection the upstream may have closed meanwhile)."""
        key = self.key(chosen, me, limits)
        idle = self.idle_connections.get(key)
        while idle:
            client = idle.pop()
            if not idle:
                del self.idle_connections[key]
            use = self._uses.get(client)
            if use is not None and use.timer is not None:
                use.timer.cancel()
                use.timer = None
            if use is not None and client.reusable and use.may_take_another:
                use.requests += 1
                self.busy.add(client)
                return client, True
            self._drop(client)
        reader, writer = await self.tunnels.open_upstream(chosen, me, connect_timeout=limits.connect_timeout)
        client = Http1ClientConnection(reader, writer, response_timeout=self.response_timeout,
                                       idle_timeout=self.body_timeout)
        use = self._uses[client] = _Use(limits, key)
        use.requests = 1
        self.busy.add(client)
        return client, False

    def give_back(self, chosen: Route, me: Workload, client: Http1ClientConnection) -> None:
        self.busy.discard(client)
        use = self._uses.get(client)
        if use is None:
            client.close()
            return
        idle = self.idle_connections.get(use.key, [])
        if self.closing or not client.reusable or not use.may_take_another or len(idle) >= MAX_IDLE_HTTP1:
            self._drop(client)                    # at its last allowed request, among others
            return
        delay = use.idle_delay(self.idle)
        if delay is not None:
            use.timer = asyncio.get_running_loop().call_later(delay, self._expire, use.key, client)
        self.idle_connections.setdefault(use.key, []).append(client)

    def discard(self, client: Http1ClientConnection) -> None:
        """A connection whose exchange failed: closed, never reused."""
        self.busy.discard(client)
        self._drop(client)

    def _drop(self, client: Http1ClientConnection) -> None:
        use = self._uses.pop(client, None)
        if use is not None:
            use.cancel()
        client.close()

    def _expire(self, key: tuple, client: Http1ClientConnection) -> None:
        idle = self.idle_connections.get(key, [])
        if client in idle:
            idle.remove(client)
        if not idle:
            self.idle_connections.pop(key, None)
        self._drop(client)

    async def drain(self, deadline: float) -> None:
        """Close the idle connections now and each busy one as its exchange ends."""
        self.closing = True
        idle = [client for clients in self.idle_connections.values() for client in clients]
        self.idle_connections.clear()
        for client in idle:
            use = self._uses.pop(client, None)
            if use is not None:
                use.cancel()
        await asyncio.gather(*(client.aclose() for client in idle), return_exceptions=True)


class KeptUpstreams:
    """The upstream connections one HTTP/1.1 client keeps alive, one per endpoint (its
    requests go in order, so one each is all it can use): pop() one for a request,
    keep() it after an exchange that ended whole, while its limits allow another.
    aclose() (or close(), at once) when the client leaves; idle ones close on their own."""

    def __init__(self, idle: float | None = None):
        self.idle = idle
        self._kept: dict[tuple, Http1ClientConnection] = {}
        self._uses: dict[Http1ClientConnection, _Use] = {}

    def opened(self, client: Http1ClientConnection, limits: ConnectionLimits) -> None:
        """A connection just dialed for a destination with these limits."""
        self._uses[client] = _Use(limits)

    def pop(self, key: tuple, limits: ConnectionLimits = DEFAULT_LIMITS) -> Http1ClientConnection | None:
        """The connection kept for `key`, if it may take a request under `limits`."""
        client = self._kept.pop(key, None)
        if client is None:
            return None
        use = self._uses.get(client)
        if use is not None:
            if use.timer is not None:
                use.timer.cancel()
                use.timer = None
            # past its maximum duration, or opened under other limits (another subset's,
            # or the DestinationRule changed since): destinations whose limits differ
            # never share a connection
            if not use.may_take_another or use.limits != limits:
                self._drop(client)
                return None
        return client

    def keep(self, key: tuple, client: Http1ClientConnection) -> None:
        """`client` carried one more exchange, whole: kept for the next request to the
        endpoint, or closed when it cannot take one."""
        use = self._uses.setdefault(client, _Use(DEFAULT_LIMITS))
        use.requests += 1
        if not client.reusable or not use.may_take_another:
            self._drop(client)
            return
        previous = self._kept.pop(key, None)
        if previous is not None and previous is not client:
            self._drop(previous)
        self._kept[key] = client
        delay = use.idle_delay(self.idle)
        if delay is not None:
            use.timer = asyncio.get_running_loop().call_later(delay, self._expire, key, client)
        # connections given up along the way (failed attempts) leave their count behind
        for other in [c for c in self._uses if c._closed]:
            del self._uses[other]

    def values(self) -> list[Http1ClientConnection]:
        return list(self._kept.values())

    def _drop(self, client: Http1ClientConnection) -> None:
        use = self._uses.pop(client, None)
        if use is not None:
            use.cancel()
        client.close()

    def _expire(self, key: tuple, client: Http1ClientConnection) -> None:
        if self._kept.get(key) is client:
            del self._kept[key]
        self._drop(client)

    def _release(self) -> list[Http1ClientConnection]:
        kept = list(self._kept.values())
        for use in self._uses.values():
            use.cancel()
        self._kept.clear()
        self._uses.clear()
        return kept

    def close(self) -> None:
        for client in self._release():
            client.close()

    async def aclose(self) -> None:
        """End them as a client ends connections it keeps alive (Http1ClientConnection.aclose)."""
        await asyncio.gather(*(client.aclose() for client in self._release()), return_exceptions=True)
