"""The pure decisions behind the waypoint's upstream connections: the limits a
DestinationRule's connectionPool sets (as istiod's applyConnectionPool writes them into
Envoy's cluster), whether a connection may take another request or stream, when an
idle one closes, when an HTTP/2 one whose keepalive PING goes unanswered closes; and a
mirror copy's share of a streamed body (MirrorBody), which never makes its primary
wait."""
import asyncio
import time
import types
from collections import Counter

from prometheus_client import CollectorRegistry

import pytest

from meshcore.traffic.destinationrule import cluster_policy, destination_rule
from meshcore.traffic.istio_model import ClusterPolicy, ConnectionPool, Http2KeepAlive, HTTPSettings, TCPSettings
from meshcore.waypoint.mirrors import MirrorBody, Mirrors
from meshcore.waypoint.upstreams import (DEFAULT_LIMITS, UPSTREAM_IDLE, ConnectionLimits, Http2Upstreams, _Use,
                                         connection_limits, may_take_another, stream_room, waiters_per_opening)


def pool(http=None, tcp=None):
    return ClusterPolicy(connection_pool=ConnectionPool(tcp=tcp, http=http))


@pytest.mark.parametrize("policy, limits", [
    (None, ConnectionLimits(None, 3600.0, None)),
    (ClusterPolicy(), DEFAULT_LIMITS),
    (pool(HTTPSettings(max_requests_per_connection=0)), DEFAULT_LIMITS),          # 0: unlimited
    (pool(HTTPSettings(max_requests_per_connection=1)), ConnectionLimits(1, UPSTREAM_IDLE, None)),
    (pool(HTTPSettings(max_requests_per_connection=3, idle_timeout=0.3)), ConnectionLimits(3, 0.3, None)),
    (pool(HTTPSettings(http2_max_requests=10)), DEFAULT_LIMITS),                  # another setting only
    # istiod: tcp.idleTimeout when http.idleTimeout is unset, http's when both are
    (pool(tcp=TCPSettings(idle_timeout=5.0)), ConnectionLimits(None, 5.0, None)),
    (pool(HTTPSettings(idle_timeout=2.0), TCPSettings(idle_timeout=5.0)), ConnectionLimits(None, 2.0, None)),
    (pool(tcp=TCPSettings(idle_timeout=0.0)), ConnectionLimits(None, None, None)),   # 0s: never for idleness
    (pool(tcp=TCPSettings(max_connection_duration=60.0)), ConnectionLimits(None, UPSTREAM_IDLE, 60.0)),
])
def test_connection_limits_from_a_connection_pool(policy, limits):
    assert connection_limits(policy) == limits


KEEPALIVE = HTTPSettings(max_concurrent_streams=2, http2_keepalive=Http2KeepAlive(0.5, 0.25))


@pytest.mark.parametrize("policy, http2, limits", [
    # the cluster's connect_timeout, whatever the port's protocol
    (pool(tcp=TCPSettings(connect_timeout=0.3)), False, ConnectionLimits(connect_timeout=0.3)),
    (pool(tcp=TCPSettings(connect_timeout=0.3)), True, ConnectionLimits(connect_timeout=0.3)),
    # HTTP/2 settings: only on a port declared HTTP/2, as istiod writes them only into an
    # explicit HTTP/2 cluster (not one that uses the client's protocol)
    (pool(KEEPALIVE), True, ConnectionLimits(max_streams=2, keepalive=(0.5, 0.25))),
    (pool(KEEPALIVE), False, DEFAULT_LIMITS),
    (pool(HTTPSettings(max_concurrent_streams=0)), True, DEFAULT_LIMITS),     # 0: istiod writes nothing
])
def test_how_connections_are_opened_and_how_many_streams_they_carry(policy, http2, limits):
    assert connection_limits(policy, http2=http2) == limits


@pytest.mark.parametrize("limits, open_streams, peer_max, room", [
    (DEFAULT_LIMITS, 99, 100, True),
    (DEFAULT_LIMITS, 100, 100, False),                         # the peer's SETTINGS
    (ConnectionLimits(max_streams=2), 1, 100, True),
    (ConnectionLimits(max_streams=2), 2, 100, False),          # maxConcurrentStreams
    (ConnectionLimits(max_streams=200), 100, 100, False),      # the lower of the two
])
def test_whether_an_http2_connection_takes_another_stream(limits, open_streams, peer_max, room):
    assert stream_room(limits, open_streams, peer_max) is room


@pytest.mark.parametrize("limits, waiters", [
    (DEFAULT_LIMITS, None), (ConnectionLimits(max_requests=3), 3), (ConnectionLimits(max_streams=2), 2),
    (ConnectionLimits(max_requests=3, max_streams=5), 3)])
def test_how_many_requests_wait_for_one_connection_being_opened(limits, waiters):
    assert waiters_per_opening(limits) == waiters


def test_a_destination_rules_http2_keepalive_and_connect_timeout_are_kept():
    rule = destination_rule({"apiVersion": "networking.istio.io/v1", "kind": "DestinationRule",
                             "metadata": {"name": "r", "namespace": "shop"},
                             "spec": {"host": "web", "trafficPolicy": {"connectionPool": {
                                 "tcp": {"connectTimeout": "250ms"},
                                 "http": {"http2KeepAlive": {"interval": "2s", "timeout": "500ms"},
                                          "maxConcurrentStreams": 4}}}}})
    assert connection_limits(cluster_policy(rule, "", 80), http2=True) == ConnectionLimits(
        connect_timeout=0.25, max_streams=4, keepalive=(2.0, 0.5))


@pytest.mark.parametrize("limits, requests, age, allowed", [
    (DEFAULT_LIMITS, 0, 0.0, True),
    (DEFAULT_LIMITS, 10_000, 10_000.0, True),                  # unlimited, however old
    (ConnectionLimits(max_requests=1), 0, 0.0, True),          # the first request
    (ConnectionLimits(max_requests=1), 1, 0.0, False),         # keep-alive off
    (ConnectionLimits(max_requests=3), 2, 0.0, True),
    (ConnectionLimits(max_requests=3), 3, 0.0, False),
    (ConnectionLimits(max_duration=60.0), 5, 59.9, True),
    (ConnectionLimits(max_duration=60.0), 5, 60.0, False),     # retired at its maximum duration
    (ConnectionLimits(max_requests=3, max_duration=60.0), 1, 61.0, False),
])
def test_whether_a_connection_may_take_another_request(limits, requests, age, allowed):
    assert may_take_another(limits, requests, age) is allowed


@pytest.mark.parametrize("limits, override, age, delay", [
    (DEFAULT_LIMITS, None, 0.0, UPSTREAM_IDLE),
    (ConnectionLimits(idle=0.3), None, 0.0, 0.3),
    (ConnectionLimits(idle=0.3), 5.0, 0.0, 5.0),                   # the pool's own setting wins
    (ConnectionLimits(idle=None), None, 0.0, None),                # never closed for idleness
    (ConnectionLimits(idle=10.0, max_duration=4.0), None, 1.0, 3.0),   # its maximum duration comes first
    (ConnectionLimits(idle=None, max_duration=4.0), None, 5.0, 0.0),
])
def test_when_an_idle_connection_closes(monkeypatch, limits, override, age, delay):
    monkeypatch.setattr("meshcore.waypoint.upstreams.time.monotonic", lambda: 100.0)
    use = _Use(limits)
    use.opened = 100.0 - age
    assert use.idle_delay(override) == pytest.approx(delay) if delay is not None else use.idle_delay(override) is None


def test_a_destination_rules_subset_and_port_settings_reach_the_connection_limits():
    rule = destination_rule({"apiVersion": "networking.istio.io/v1", "kind": "DestinationRule",
                             "metadata": {"name": "r", "namespace": "shop"},
                             "spec": {"host": "web", "trafficPolicy": {
                                 "connectionPool": {"http": {"maxRequestsPerConnection": 3}},
                                 "portLevelSettings": [{"port": {"number": 81},
                                                        "connectionPool": {"http": {"idleTimeout": "300ms"}}}]},
                                 "subsets": [{"name": "v1", "labels": {"v": "1"}, "trafficPolicy": {
                                     "connectionPool": {"http": {"maxRequestsPerConnection": 1}}}}]}})
    assert connection_limits(cluster_policy(rule, "", 80)) == ConnectionLimits(3, UPSTREAM_IDLE, None)
    # port-level settings replace the whole policy
    assert connection_limits(cluster_policy(rule, "", 81)) == ConnectionLimits(None, 0.3, None)
    assert connection_limits(cluster_policy(rule, "v1", 80)) == ConnectionLimits(1, UPSTREAM_IDLE, None)


# -- http2KeepAlive on a real HTTP/2 connection ------------------------------------------------

H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
SETTINGS, SETTINGS_ACK = b"\x00\x00\x00\x04\x00\x00\x00\x00\x00", b"\x00\x00\x00\x04\x01\x00\x00\x00\x00"


class _Dialer:
    """What Http2Upstreams asks of the waypoint's tunnels, as plain TCP to `chosen.dial`."""

    async def open_upstream(self, chosen, me, headers=(), protocol_factory=None, connect_timeout=None):
        return await asyncio.get_running_loop().create_connection(protocol_factory, *chosen.dial)


async def _settles_then_stays_silent(reader, writer):
    """An HTTP/2 server that says SETTINGS (and acknowledges the client's), then never
    another frame: a PING gets no ACK."""
    await reader.readexactly(len(H2_PREFACE) + len(SETTINGS))
    writer.write(SETTINGS + SETTINGS_ACK)
    while await reader.read(1 << 16):
        pass
    writer.close()


def test_an_http2_connection_whose_backend_leaves_its_keepalive_ping_unanswered_is_closed():
    async def scenario():
        server = await asyncio.start_server(_settles_then_stays_silent, "127.0.0.1", 0)
        chosen = types.SimpleNamespace(dial=server.sockets[0].getsockname()[:2], authority="web:81", expected=())
        me = types.SimpleNamespace(identity="spiffe://cluster.local/ns/shop/sa/waypoint")
        upstreams = Http2Upstreams(_Dialer())
        started = time.monotonic()
        pinged = await upstreams.get(chosen, me, ConnectionLimits(keepalive=(0.2, 0.2)))
        kept = await upstreams.get(chosen, me, DEFAULT_LIMITS)       # the HBONE default: 10 s, then 20 s
        assert kept is not pinged and len(upstreams.connections) == 2
        await asyncio.wait_for(asyncio.shield(pinged.closed), 8)
        elapsed = time.monotonic() - started
        still = not kept.closed.done() and len(upstreams.connections) == 1
        kept.close()
        server.close()
        await asyncio.wait_for(kept.closed, 2)
        await server.wait_closed()
        return elapsed, still, upstreams.connections
    elapsed, still, left = asyncio.run(scenario())
    # a PING once 0.2 s passed without a frame (the keepalive's checks come in slots, so
    # up to about two intervals), no ACK within 0.2 s more: about 0.7 s; well under the
    # HBONE default's 30 s however slow the machine
    assert 0.4 <= elapsed < 8, elapsed
    assert still and left == {}


# -- a mirror copy's body ------------------------------------------------------------------

def _mirror_body(limit, registry=None):
    return MirrorBody(Mirrors(None, None, None, registry=registry), limit=limit)


def test_a_copy_gets_every_chunk_its_primary_took_and_the_trailers():
    async def scenario():
        tee = _mirror_body(100)
        copy = tee.copy()
        copy.task = asyncio.current_task()             # what would be cancelled were it abandoned
        got = []

        async def read():
            async for chunk in copy:
                got.append(chunk)

        async def body():
            for chunk in (b"ab", memoryview(b"cd"), b"", b"ef"):
                yield chunk
        reader = asyncio.get_running_loop().create_task(read())
        primary = [c async for c in tee.feeding(body(), lambda: [("x-t", "1")])]
        await asyncio.wait_for(reader, 1)
        return primary, got, tee
    primary, got, tee = asyncio.run(scenario())
    assert b"".join(bytes(c) for c in primary) == b"abcdef" and got == [b"ab", b"cd", b"ef"]
    assert all(type(c) is bytes for c in got) and tee.trailers == [("x-t", "1")]


def test_a_copy_that_falls_behind_its_bound_is_abandoned_and_the_primary_goes_on():
    registry = CollectorRegistry()

    async def scenario():
        tee = _mirror_body(10, registry)
        slow, quick = tee.copy(), tee.copy()
        slow.service = quick.service = "shadow.shop.svc.cluster.local"

        async def never_reads():
            await asyncio.sleep(10)

        async def reads():
            return b"".join([c async for c in quick])
        slow.task = asyncio.get_running_loop().create_task(never_reads())
        quick.task = asyncio.get_running_loop().create_task(reads())
        for chunk in (b"12345", b"67890", b"X"):       # the slow copy is 11 bytes behind at the third
            tee.feed(chunk)
            await asyncio.sleep(0)
        tee.finish()
        await asyncio.sleep(0)
        return tee, slow, quick, await asyncio.wait_for(quick.task, 1)
    tee, slow, quick, quick_got = asyncio.run(scenario())
    assert slow.failed and slow.task.cancelled() and tee.mirrors.abandoned == 1
    assert quick_got == b"1234567890X" and tee.copies == [quick] and not quick.failed
    assert tee.mirrors.buffered == 0                  # what the copies held is given back
    assert registry.get_sample_value("meshcore_waypoint_mirror_abandoned_total", {
        "destination_service": "shadow.shop.svc.cluster.local", "reason": "behind"}) == 1


def test_copies_together_hold_at_most_the_total_bound(monkeypatch):
    monkeypatch.setattr("meshcore.waypoint.mirrors.MIRROR_BUFFER_TOTAL", 15)

    async def scenario():
        tee = _mirror_body(10)
        first, second = tee.copy(), tee.copy()
        for c in (first, second):
            c.task = asyncio.get_running_loop().create_task(asyncio.sleep(10))
        tee.feed(b"1234567")                           # 7 each: 14 together
        tee.feed(b"89")                                # 16 > 15 for the first; the second fits once it left
        await asyncio.sleep(0)
        return tee, first, second
    tee, first, second = asyncio.run(scenario())
    assert first.failed and not second.failed and second.size == 9 and tee.mirrors.buffered == 9


def test_the_copies_of_a_body_that_never_ended_are_abandoned_when_its_request_ends():
    async def scenario():
        tee = _mirror_body(100)
        copy = tee.copy()

        async def reads():
            return [c async for c in copy]
        copy.task = asyncio.get_running_loop().create_task(reads())
        tee.feed(b"part")
        await asyncio.sleep(0)
        tee.request_ended()
        await asyncio.gather(copy.task, return_exceptions=True)
        return tee, copy
    tee, copy = asyncio.run(scenario())
    assert copy.failed and copy.task.cancelled() and tee.mirrors.abandoned == 1


def test_a_copy_that_ended_early_lets_go_of_what_it_held_and_takes_no_more():
    tee = _mirror_body(100)
    copy = tee.copy()
    tee.feed(b"12345")
    assert tee.mirrors.buffered == 5
    copy.close()                                      # its mirror answered before the body ended
    tee.feed(b"678")
    assert tee.mirrors.buffered == 0 and tee.copies == [] and tee.mirrors.abandoned == 0


# -- the HTTP/2 pool's bookkeeping, on stand-in connections -------------------------------------

class _Conn:
    """What Http2Upstreams reads of an HboneConnection."""

    def __init__(self):
        self.usable = True
        self.h2 = types.SimpleNamespace(open_local_streams=0, remote_max_concurrent_streams=100)
        self.streams = {}
        self.on_closed = self.on_stream_closed = None
        self.loop = asyncio.get_running_loop()
        self.closed = self.loop.create_future()

    def open(self, sid):
        self.streams[sid] = object()

    def end(self, sid):
        del self.streams[sid]
        self.on_stream_closed(self, sid)

    def close(self):
        if not self.closed.done():
            self.usable = False
            self.closed.set_result(None)
            self.on_closed(self)


def _pool(open_delay: float = 0.0):
    from meshcore.waypoint.upstreams import Http2Upstreams
    opened = []

    async def open_upstream(chosen, me, protocol_factory=None, connect_timeout=None):
        if open_delay:
            await asyncio.sleep(open_delay)
        opened.append(_Conn())
        return None, opened[-1]
    pool = Http2Upstreams(types.SimpleNamespace(open_upstream=open_upstream))
    chosen = types.SimpleNamespace(dial=("127.0.0.1", 1), authority="web", expected=())
    return pool, opened, chosen, types.SimpleNamespace(identity="waypoint")


def test_an_http2_connection_at_its_request_limit_takes_no_new_stream_and_closes_once_its_streams_end():
    async def scenario():
        pool, opened, chosen, me = _pool()
        limits = ConnectionLimits(max_requests=2)
        a = await pool.get(chosen, me, limits)
        a.open(1)
        assert await pool.get(chosen, me, limits) is a          # its second request
        a.open(3)
        b = await pool.get(chosen, me, limits)                  # a third: a new connection
        b.open(1)
        assert b is not a and not a.closed.done()
        a.end(1)
        assert not a.closed.done()                              # a stream still open on it
        a.end(3)
        assert a.closed.done() and pool.connections[next(iter(pool.connections))] == [b]
        # a connection taken for a stream that never opened is not left behind
        c = await pool.get(chosen, me, ConnectionLimits(max_requests=1))
        await asyncio.sleep(0)
        assert c.closed.done() and not pool._uses.get(c)
        b.end(1)
        await asyncio.sleep(0)
        assert not b.closed.done() and pool._uses[b].timer is not None    # idle, with its timer
        b.close()
        assert not pool._uses and not pool.connections
    asyncio.run(scenario())


@pytest.mark.parametrize("max_requests, connections", [(1, 20), (4, 5), (None, 1)])
def test_requests_arriving_together_open_as_many_http2_connections_as_their_limit_needs_at_once(
        max_requests, connections):
    # Envoy opens the connections a burst needs side by side: one after another, 20
    # requests under maxRequestsPerConnection 1 would wait for 20 opens in turn
    async def scenario():
        pool, opened, chosen, me = _pool(open_delay=0.1)
        limits = ConnectionLimits(max_requests=max_requests)
        started = time.monotonic()
        got = await asyncio.gather(*(pool.get(chosen, me, limits) for _ in range(20)))
        return time.monotonic() - started, len({id(c) for c in got}), len(opened)
    elapsed, distinct, opened = asyncio.run(scenario())
    assert (distinct, opened) == (connections, connections)
    assert elapsed < 0.35, elapsed                       # one open takes 0.1 s


@pytest.mark.parametrize("max_streams, carried", [(2, [2, 2, 1]), (None, [5])])
def test_requests_at_once_over_max_concurrent_streams_open_another_http2_connection(max_streams, carried):
    async def scenario():
        pool, opened, chosen, me = _pool(open_delay=0.05)
        limits = ConnectionLimits(max_streams=max_streams)

        async def use():
            conn = await pool.get(chosen, me, limits)
            conn.h2.open_local_streams += 1               # what send_request does on it at once
            return conn
        got = await asyncio.gather(*(use() for _ in range(5)))
        later = await use()                               # every stream still open: room where there is
        return sorted(Counter(id(c) for c in got).values(), reverse=True), len(opened), later
    counts, opened, later = asyncio.run(scenario())
    assert counts == carried and opened == len(carried)          # the later one found room on one of them
    assert later.h2.open_local_streams <= (max_streams or 100)


def test_an_idle_http2_connection_closes_after_its_idle_timeout_and_a_taken_one_does_not():
    async def scenario():
        pool, opened, chosen, me = _pool()
        limits = ConnectionLimits(idle=0.05)
        a = await pool.get(chosen, me, limits)
        a.open(1)
        a.end(1)
        await asyncio.sleep(0.02)
        assert await pool.get(chosen, me, limits) is a          # taken again before its time
        a.open(3)
        await asyncio.sleep(0.1)
        assert not a.closed.done()                              # busy: no idle time runs
        a.end(3)
        await asyncio.sleep(0.1)
        assert a.closed.done() and len(opened) == 1
    asyncio.run(scenario())


class _Http1:
    """What KeptUpstreams reads of an Http1ClientConnection."""
    reusable, _closed = True, False

    def close(self):
        self._closed = True


def test_an_http1_clients_kept_connection_serves_only_requests_under_the_limits_it_was_opened_with():
    # one endpoint in two subsets with other limits, or a DestinationRule changed while
    # the client stayed: the kept connection is closed, not reused under other limits
    from meshcore.waypoint.upstreams import KeptUpstreams

    async def scenario():
        kept, key = KeptUpstreams(), ("10.0.0.1", "web:80", ())
        one, unlimited = ConnectionLimits(max_requests=1), ConnectionLimits(max_requests=None, idle=30.0)
        a = _Http1()
        kept.opened(a, unlimited)
        kept.keep(key, a)
        assert kept.pop(key, unlimited) is a
        kept.keep(key, a)
        assert kept.pop(key, one) is None and a._closed
        b = _Http1()
        kept.opened(b, one)
        kept.keep(key, b)                     # its one request done: closed, not kept
        assert b._closed and kept.pop(key, one) is None
    asyncio.run(scenario())
