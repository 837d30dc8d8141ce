"""Http1Handler in process, between a raw client and a raw backend on loopback: what it
forwards of upgrades, who reads the request body when the backend answers early, what
it ends when the client leaves or the tunnel is reset, its timeouts, stale kept-alive
upstreams, the header map policies see, request trailers and 100-continue."""
import asyncio
import types

import pytest

import meshcore.waypoint.http as H
from meshcore.l7.http1 import WatchedReader
from meshcore.node.record import ConnectionRecord
from meshcore.node.routing import HBONE

pytestmark = pytest.mark.timeout(30)


class _Allow:
    reason = "ok"

    def __bool__(self):
        return True


class _Ident:
    uri = "spiffe://cluster.local/ns/shop/sa/web"


_EXPECTED = (_Ident(),)                          # the same key each time: upstreams are kept per key


class _Metrics:
    def __init__(self):
        self.records = []

    def report(self, record):
        self.records.append((record.status, record.flag, record.error))


class _Tunnels:
    draining = False

    def __init__(self, port):
        self.port, self.opened = port, 0

    def upstream(self, state, me, host, port):
        return types.SimpleNamespace(kind=HBONE, workload=None, expected=_EXPECTED, dial=("127.0.0.1", self.port),
                                     authority="web", reason="")

    async def open_upstream(self, chosen, me, connect_timeout=None):
        self.opened += 1
        return await asyncio.open_connection("127.0.0.1", self.port)


class Rig:
    """A backend (`serve(reader, writer)`), the handler in front of it, and a client."""

    def __init__(self, monkeypatch, backend, **timeouts):
        self.checked = []

        def evaluate(*a, **k):
            self.checked.append(k)
            return _Allow()
        monkeypatch.setattr(H, "evaluate_request", evaluate)
        for name, value in timeouts.items():
            monkeypatch.setattr(H.Http1Handler, name, value)
        self.backend, self.metrics, self.tasks, self.errors = backend, _Metrics(), [], []

    async def __aenter__(self):
        self.up = await asyncio.start_server(self.backend, "127.0.0.1", 0)
        self.tunnels = _Tunnels(self.up.sockets[0].getsockname()[1])
        ctx = types.SimpleNamespace(store=types.SimpleNamespace(
            view=types.SimpleNamespace(waypoint_policy_set=lambda *a: None)))
        handler = H.Http1Handler(ctx, self.tunnels, self.metrics, ("shop", "waypoint"))

        async def on(reader, writer):
            self.tasks.append(asyncio.current_task())
            req = types.SimpleNamespace(peer_identity=_Ident(), peer_address=("10.0.0.1", 1), host="10.96.0.10",
                                        port=80, authority="10.96.0.10:80")
            tunnel = H.Tunnel(req, ConnectionRecord("inbound"), None, types.SimpleNamespace(identity=_Ident(), ips=[]),
                              None, None)
            try:
                await handler(reader, writer, tunnel)
            except asyncio.CancelledError:
                pass
            except BaseException as exc:            # what a tunnel would die of
                self.errors.append(exc)
                raise
            finally:
                writer.close()
        # the reader a tunnel gives its handler: one that tells when the client ends
        loop = asyncio.get_running_loop()
        self.front = await loop.create_server(
            lambda: asyncio.StreamReaderProtocol(WatchedReader(loop=loop), on), "127.0.0.1", 0)
        return self

    async def client(self):
        return await asyncio.open_connection("127.0.0.1", self.front.sockets[0].getsockname()[1])

    async def __aexit__(self, *exc):
        for server in (self.front, self.up):
            server.close()
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)


async def _response(reader):
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    fields = dict(line.split(b": ", 1) for line in head.split(b"\r\n")[1:-2])
    fields = {k.lower(): v for k, v in fields.items()}
    body = await reader.readexactly(int(fields.get(b"content-length", b"0")))
    return int(head.split(b" ")[1]), fields, body


async def _wait_for(cond, timeout=5.0):
    loop = asyncio.get_running_loop()
    until = loop.time() + timeout
    while not cond() and loop.time() < until:
        await asyncio.sleep(0.02)
    return cond()


def test_an_h2c_upgrade_is_dropped_and_an_unasked_101_is_a_502(monkeypatch):
    seen = []

    async def backend(reader, writer):
        seen.append(await reader.readuntil(b"\r\n\r\n"))
        writer.write(b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n")
        await writer.drain()
        while data := await reader.read(65536):
            seen.append(data)

    async def scenario():
        async with Rig(monkeypatch, backend) as rig:
            reader, writer = await rig.client()
            writer.write(b"GET /public HTTP/1.1\r\nHost: web\r\nUpgrade: h2c\r\nConnection: Upgrade, HTTP2-Settings\r\n"
                         b"HTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n")
            status, _, _ = await _response(reader)
            writer.write(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\nsecret")
            await asyncio.sleep(0.3)
            writer.close()
            await _wait_for(lambda: rig.tasks[0].done())
            return status, rig.metrics.records
    status, records = asyncio.run(scenario())
    assert status == 502
    head = seen[0].lower()
    assert b"upgrade" not in head and b"http2-settings" not in head, head
    assert not any(b"secret" in chunk for chunk in seen[1:]), seen
    assert records[0][:2] == (502, "UPE")


def test_an_upgrade_other_than_websocket_is_refused_as_envoy_does(monkeypatch):
    async def backend(reader, writer):
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
        await writer.drain()

    async def scenario():
        async with Rig(monkeypatch, backend) as rig:
            reader, writer = await rig.client()
            writer.write(b"GET / HTTP/1.1\r\nHost: web\r\nUpgrade: foo/2\r\nConnection: Upgrade\r\n\r\n")
            status, _, _ = await _response(reader)
            writer.close()
            await _wait_for(lambda: rig.tasks[0].done())
            return status, rig.tunnels.opened
    assert asyncio.run(scenario()) == (403, 0)


def test_strip_hop_by_hop_keeps_only_a_websocket_upgrade():
    from meshcore.l7.http1 import strip_hop_by_hop
    h2c = [("connection", "Upgrade, HTTP2-Settings"), ("upgrade", "h2c"), ("http2-settings", "AAMA"), ("a", "1")]
    assert strip_hop_by_hop(h2c, upgrade=True) == [("a", "1")]
    assert strip_hop_by_hop([("connection", "upgrade"), ("upgrade", "WebSocket")], upgrade=True) == \
        [("upgrade", "WebSocket"), ("connection", "upgrade")]


def _early_backend(answered):
    async def backend(reader, writer):
        while True:
            try:
                head = await reader.readuntil(b"\r\n\r\n")
            except (asyncio.IncompleteReadError, ConnectionError):
                return
            if b"POST" in head:
                writer.write(b"HTTP/1.1 413 Payload Too Large\r\ncontent-length: 2\r\n\r\nno")
                await writer.drain()
                answered.set()
                await asyncio.sleep(5)          # never reads the upload
                return
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
            await writer.drain()
    return backend


def test_an_early_answer_leaves_the_body_one_reader_and_the_connection_serves_on(monkeypatch):
    async def scenario():
        answered = asyncio.Event()
        async with Rig(monkeypatch, _early_backend(answered)) as rig:
            reader, writer = await rig.client()
            writer.write(b"POST /up HTTP/1.1\r\nHost: web\r\nContent-Length: 100000\r\n\r\n" + b"x" * 1000)
            status, _, body = await _response(reader)
            writer.write(b"y" * 99000)          # the rest of the upload, drained by the waypoint
            writer.write(b"GET /next HTTP/1.1\r\nHost: web\r\n\r\n")
            second = await _response(reader)
            writer.close()
            await asyncio.sleep(0.2)
            return status, second[0], rig.errors, rig.metrics.records
    first, second, errors, records = asyncio.run(scenario())
    assert (first, second) == (413, 200)
    assert not errors, errors
    assert [r[0] for r in records] == [413, 200]


def test_more_than_a_mib_of_unread_upload_closes_the_connection(monkeypatch):
    async def scenario():
        answered = asyncio.Event()
        async with Rig(monkeypatch, _early_backend(answered)) as rig:
            reader, writer = await rig.client()
            writer.write(b"POST /up HTTP/1.1\r\nHost: web\r\nContent-Length: 50000000\r\n\r\n" + b"x" * 1000)
            status, _, _ = await _response(reader)
            rest = await asyncio.wait_for(reader.read(), 10)       # the waypoint ends the connection
            writer.close()
            return status, rest, rig.errors
    status, rest, errors = asyncio.run(scenario())
    assert status == 413 and rest == b"" and not errors


def test_a_reset_tunnel_closes_the_upstream_and_reports_the_request_once(monkeypatch):
    ended = []

    async def backend(reader, writer):
        await reader.readuntil(b"\r\n\r\n")
        await reader.read()                    # until the waypoint ends the connection
        ended.append(True)

    async def scenario():
        async with Rig(monkeypatch, backend) as rig:
            reader, writer = await rig.client()
            writer.write(b"GET /slow HTTP/1.1\r\nHost: web\r\n\r\n")
            await asyncio.sleep(0.3)
            rig.tasks[0].cancel()
            assert await _wait_for(lambda: ended)
            writer.close()
            return rig.metrics.records
    assert asyncio.run(scenario()) == [(0, "DC", "downstream reset before the response ended")]


def test_a_client_leaving_while_the_upstream_is_silent_ends_the_upstream(monkeypatch):
    ended = []

    async def backend(reader, writer):
        await reader.readuntil(b"\r\n\r\n")
        await reader.read()
        ended.append(True)

    async def scenario():
        async with Rig(monkeypatch, backend) as rig:
            reader, writer = await rig.client()
            writer.write(b"GET /slow HTTP/1.1\r\nHost: web\r\n\r\n")
            await asyncio.sleep(0.3)
            writer.close()
            assert await _wait_for(lambda: ended and rig.tasks[0].done())
            return rig.metrics.records
    records = asyncio.run(scenario())
    assert [r[:2] for r in records] == [(0, "DC")]


def test_no_response_head_in_time_is_a_504_ut(monkeypatch):
    async def backend(reader, writer):
        await reader.readuntil(b"\r\n\r\n")
        await asyncio.sleep(10)

    async def scenario():
        async with Rig(monkeypatch, backend, RESPONSE_TIMEOUT=0.3) as rig:
            reader, writer = await rig.client()
            writer.write(b"GET /slow HTTP/1.1\r\nHost: web\r\n\r\n")
            status, _, _ = await _response(reader)
            writer.close()
            return status, rig.metrics.records
    status, records = asyncio.run(scenario())
    assert status == 504 and records[0][:2] == (504, "UT")


def test_a_client_that_stops_reading_is_given_up_after_the_write_idle_timeout(monkeypatch):
    big = 8 * 1024 * 1024
    ended = []

    async def backend(reader, writer):
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n" % big)
        try:
            for _ in range(big // 65536):
                writer.write(b"z" * 65536)
                await writer.drain()
            await reader.read()
        except ConnectionError:
            pass
        ended.append(True)

    async def scenario():
        async with Rig(monkeypatch, backend, WRITE_IDLE_TIMEOUT=0.5) as rig:
            reader, writer = await rig.client()
            writer.transport.set_write_buffer_limits(0)
            writer.transport.pause_reading()
            writer.write(b"GET /big HTTP/1.1\r\nHost: web\r\n\r\n")
            assert await _wait_for(lambda: ended, 10)
            writer.close()
            return rig.metrics.records
    records = asyncio.run(scenario())
    assert records[0][:2] == (200, "DC")


async def _twice(rig_args, pause):
    async with Rig(*rig_args) as rig:
        reader, writer = await rig.client()
        statuses = []
        for _ in range(2):
            writer.write(b"GET /a HTTP/1.1\r\nHost: web\r\n\r\n")
            statuses.append((await _response(reader))[0])
            await asyncio.sleep(pause)
        writer.close()
        return statuses, rig.tunnels.opened, rig.metrics.records


def test_a_kept_alive_upstream_that_closed_is_not_reused(monkeypatch):
    async def closes_when_idle(reader, writer):
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
        await writer.drain()
        await asyncio.sleep(0.1)
        writer.close()
    statuses, opened, records = asyncio.run(_twice((monkeypatch, closes_when_idle), 0.5))
    assert (statuses, opened) == ([200, 200], 2), records


def test_a_kept_alive_upstream_gone_before_answering_is_retried_once_on_a_new_connection(monkeypatch):
    async def drops_second_request(reader, writer):
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
        await writer.drain()
        await reader.readuntil(b"\r\n\r\n")
        writer.transport.abort()                # raced: gone just as the request came
    statuses, opened, records = asyncio.run(_twice((monkeypatch, drops_second_request), 0))
    assert (statuses, opened) == ([200, 200], 2), records


def test_policies_see_repeated_headers_joined_and_the_upstream_gets_trailers_not_expect(monkeypatch):
    got = bytearray()

    async def backend(reader, writer):
        while b"0\r\nx-checksum: abc\r\n\r\n" not in got:
            data = await reader.read(65536)
            if not data:
                break
            got.extend(data)
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
        await writer.drain()

    async def scenario():
        async with Rig(monkeypatch, backend) as rig:
            reader, writer = await rig.client()
            writer.write(b"POST /t HTTP/1.1\r\nHost: web\r\nX-Tenant: silver\r\nX-Tenant: gold\r\n"
                         b"Expect: 100-continue\r\nTransfer-Encoding: chunked\r\nTrailer: x-checksum\r\n\r\n")
            interim = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            writer.write(b"5\r\nhello\r\n0\r\nx-checksum: abc\r\n\r\n")
            status, _, _ = await _response(reader)
            writer.close()
            return interim, status, rig.checked[0]["headers"]
    interim, status, headers = asyncio.run(scenario())
    assert interim.startswith(b"HTTP/1.1 100") and status == 200
    assert headers["x-tenant"] == "silver,gold"
    head, body = bytes(got).split(b"\r\n\r\n", 1)
    assert b"expect" not in head.lower()
    assert body.endswith(b"0\r\nx-checksum: abc\r\n\r\n")


def test_the_path_decided_on_is_the_path_forwarded_in_origin_form(monkeypatch):
    seen = []

    async def backend(reader, writer):
        seen.append(await reader.readuntil(b"\r\n\r\n"))
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
        await writer.drain()

    async def scenario():
        async with Rig(monkeypatch, backend) as rig:
            reader, writer = await rig.client()
            writer.write(b"GET http://web2/x/%2e%2e/admin?q=1 HTTP/1.1\r\nHost: web\r\n\r\n")
            ok = (await _response(reader))[0]
            writer.write(b"GET /a%00b HTTP/1.1\r\nHost: web\r\n\r\n")
            bad = (await _response(reader))[0]
            writer.close()
            return ok, bad, rig.checked, rig.tunnels.opened
    ok, bad, checked, opened = asyncio.run(scenario())
    assert (ok, bad, opened) == (200, 400, 1)
    assert len(checked) == 1 and checked[0]["path"] == "/admin?q=1" and checked[0]["host"] == "web2"
    lines = seen[0].split(b"\r\n")
    assert lines[0] == b"GET /admin?q=1 HTTP/1.1"
    assert [line for line in lines if line.lower().startswith(b"host:")] == [b"host: web2"]


def test_a_tunnel_reset_while_lingering_after_a_whole_response_reports_that_response(monkeypatch):
    async def backend(reader, writer):
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 413 Payload Too Large\r\ncontent-length: 2\r\n\r\nno")
        await writer.drain()
        await asyncio.sleep(5)

    async def scenario():
        async with Rig(monkeypatch, backend) as rig:
            reader, writer = await rig.client()
            writer.write(b"POST /up HTTP/1.1\r\nHost: web\r\nContent-Length: 100000\r\nConnection: close\r\n\r\n"
                         + b"x" * 1000)
            status, _, _ = await _response(reader)
            await asyncio.sleep(0.2)            # the waypoint lingers for the client's end
            rig.tasks[0].cancel()
            await asyncio.gather(rig.tasks[0], return_exceptions=True)
            writer.close()
            return status, rig.metrics.records, rig.errors
    status, records, errors = asyncio.run(scenario())
    assert status == 413 and not errors
    assert [r[:2] for r in records] == [(413, "-")]


def test_pipelined_requests_read_ahead_while_one_waits_are_answered_in_order(monkeypatch):
    async def backend(reader, writer):
        while True:
            try:
                head = await reader.readuntil(b"\r\n\r\n")
            except (asyncio.IncompleteReadError, ConnectionError):
                return
            await asyncio.sleep(0.2)
            path = head.split(b" ")[1]
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n%s" % (len(path), path))
            await writer.drain()

    async def scenario():
        async with Rig(monkeypatch, backend) as rig:
            reader, writer = await rig.client()
            writer.write(b"GET /one HTTP/1.1\r\nHost: web\r\n\r\nGET /two HTTP/1.1\r\nHost: web\r\n\r\n"
                         b"POST /three HTTP/1.1\r\nHost: web\r\nContent-Length: 3\r\n\r\nabc")
            answers = [(await _response(reader))[2] for _ in range(3)]
            writer.close()
            return answers, rig.tunnels.opened
    assert asyncio.run(scenario()) == ([b"/one", b"/two", b"/three"], 1)


def _retrying_destination(monkeypatch, codes=(503,)):
    """Every request decided as a route retrying the given codes once would."""
    from meshcore.traffic.retry import RetryOn, RetryPolicy
    from meshcore.waypoint.destination import Destination
    real = H.destination

    def decided(tunnels, state, tunnel, request, target, **kw):
        chosen = tunnels.upstream(state, tunnel.waypoint, "10.96.0.10", 80)
        return Destination(chosen, target, request.authority, None, "shop.r.0",
                           retry=RetryPolicy(1, frozenset({RetryOn.RETRIABLE_STATUS_CODES}), codes),
                           address=("10.96.0.10", 80))
    monkeypatch.setattr(H, "destination", decided)
    return real


@pytest.mark.parametrize("size, retried", [(10, True), (H.RETRY_BODY_LIMIT, True), (H.RETRY_BODY_LIMIT + 1, False)])
def test_a_retried_request_sends_its_body_again_only_within_the_bound_kept(monkeypatch, size, retried):
    _retrying_destination(monkeypatch)
    bodies = []

    async def backend(reader, writer):
        head = await reader.readuntil(b"\r\n\r\n")
        length = int(next(line.split(b":")[1] for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")))
        bodies.append(await reader.readexactly(length))
        status = b"503 Service Unavailable" if len(bodies) == 1 else b"200 OK"
        writer.write(b"HTTP/1.1 " + status + b"\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok")
        await writer.drain()
        writer.close()

    async def scenario():
        async with Rig(monkeypatch, backend) as rig:
            reader, writer = await rig.client()
            payload = b"x" * size
            writer.write(b"POST /up HTTP/1.1\r\nHost: web\r\ncontent-length: %d\r\n\r\n%s" % (len(payload), payload))
            status, _, _ = await _response(reader)
            writer.close()
            return status
    status = asyncio.run(scenario())
    if retried:
        assert status == 200 and bodies == [b"x" * size] * 2
    else:
        # past the bound the body was not kept: the backend's 503 is the answer
        assert status == 503 and len(bodies) == 1
