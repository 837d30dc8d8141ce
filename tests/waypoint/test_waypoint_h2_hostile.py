"""Hostile HTTP/2 and HTTP/1.1 peers against the waypoint, as processes
(tests/support/waypoint_mesh.py): a python-hyper h2 client through node-a's SOCKS5, an h2
backend on web:8081 and a kept-alive HTTP/1.1 one on web:8080 behind node-b, all run here.

- a message whose content-length disagrees with its DATA is malformed (RFC 9113 8.1.1):
  the waypoint resets that stream with PROTOCOL_ERROR, whichever side sent it, no other
  stream or tunnel notices, and a kept-alive HTTP/1.1 upstream is never left out of step
  (the rest of a body cut short, or bytes past its end, taken as a request);
- CONNECT, plain or extended (RFC 8441), is not something a waypoint is configured to
  proxy: answered as Envoy answers it when its HCM has no CONNECT upgrade (403), and a
  `:protocol` the waypoint never offered (SETTINGS_ENABLE_CONNECT_PROTOCOL) is malformed;
- after all of it the waypoint holds no more file descriptors than before.

h2's own content-length check is turned into a record here, on both peers, so that the
tests see exactly what the waypoint passed on instead of h2 tearing a connection down."""
import asyncio
import json
import re
import threading
import time

import h2.exceptions
import h2.settings
import h2.stream
import pytest

from h2http import Endpoint, Received, open_request
from meshcore.localmesh import LocalMesh
from waypoint_load import open_fds, requests_total, rss_kib
from waypoint_mesh import WaypointMesh, running

pytestmark = pytest.mark.timeout(60)

H2_PORT = 81
PROTOCOL_ERROR = 0x1
ENABLE_CONNECT_PROTOCOL = 0x8
# pooled HBONE connections (node-a's to the waypoint, the waypoint's to node-b) are kept
# while idle; a reset or a failed stream may make either pool open one more
POOLED_FDS = 2
RSS_GROWTH_KIB = 8 * 1024


@pytest.fixture(scope="module", autouse=True)
def body_lengths_recorded():
    """h2 raises on a body whose length disagrees with its content-length, ending the
    whole connection: record it on the stream instead, for the assertions."""
    original = h2.stream.H2Stream._track_content_length

    def track(self, length, end_stream):
        try:
            original(self, length, end_stream)
        except h2.exceptions.InvalidBodyLengthError as exc:
            self.body_length_error = exc
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(h2.stream.H2Stream, "_track_content_length", track)
        yield


class Mesh(WaypointMesh):
    """WaypointMesh whose web:8080 is this module's HTTP/1.1 server (kept-alive, unlike
    meshcore.localworkload's, which closes after one answer: a waypoint that reused an
    upstream connection after a request it could not finish must show here)."""

    def _spawn(self, name, args):
        if name == "web":
            i = args.index("--http")
            args = args[:i] + args[i + 2:]
        return super()._spawn(name, args)


class Backend:
    """An h2 server on web:8081 and an HTTP/1.1 one on web:8080, on their own loop in a
    thread; what each request path brought (headers, body, how it ended) is kept in
    `seen`, and every HTTP/1.1 request head as it came in `http1`."""

    def __init__(self, mesh: WaypointMesh):
        self.mesh = mesh
        self.seen: dict[str, dict] = {}
        self.http1: list[tuple[int, bytes]] = []      # (connection number, request head)
        self.http1_connections = 0
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    def start(self):
        self.thread.start()
        self.server = self.call(asyncio.start_server(self._connection, self.mesh.web, 8081))
        self.http1_server = self.call(asyncio.start_server(self._http1_connection, self.mesh.web, 8080))
        return self

    def stop(self):
        self.call(self._close())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)

    async def _close(self):
        self.server.close()
        self.http1_server.close()
        tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def call(self, coro, timeout=30):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    async def _http1_connection(self, reader, writer):
        """Requests one after another, each body read to its content-length and no
        further: what follows on the connection is the next request."""
        self.http1_connections += 1
        number = self.http1_connections
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                self.http1.append((number, head))
                path = head.split(b" ", 2)[1].decode("latin-1")
                length = re.search(rb"(?im)^content-length: *(\d+)\r$", head)
                record = self.seen[path] = {"headers": head, "body": 0, "ended": False, "reset": None}
                body = await reader.readexactly(int(length.group(1))) if length else b""
                record.update(body=len(body), ended=True, content=body)
                answer = json.dumps({"path": path, "body": len(body)}).encode()
                writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%s"
                             % (len(answer), answer))
                await writer.drain()
        except asyncio.IncompleteReadError as exc:
            if exc.partial and self.http1 and self.http1[-1][0] == number:
                # the connection ended inside a body: that request was cut
                path = self.http1[-1][1].split(b" ", 2)[1].decode("latin-1")
                self.seen[path].update(body=len(exc.partial), reset="closed")
            elif self.http1 and self.http1[-1][0] == number:
                path = self.http1[-1][1].split(b" ", 2)[1].decode("latin-1")
                if not self.seen[path]["ended"]:
                    self.seen[path]["reset"] = "closed"
        except (ConnectionError, asyncio.LimitOverrunError):
            pass
        finally:
            writer.close()

    async def _connection(self, reader, writer):
        ep = Endpoint(reader, writer, client=False)
        tasks = set()

        def new_stream(sid, event):
            task = asyncio.get_running_loop().create_task(self._request(ep, sid, event, ep.queue(sid)))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        ep.on_new_stream = new_stream
        await ep.run()
        for task in list(tasks):
            task.cancel()
        writer.close()

    async def _request(self, ep, sid, event, queue):
        fields = [(n.decode(), v.decode()) for n, v in event.headers]
        pseudo = {n: v for n, v in fields if n.startswith(":")}
        key = pseudo.get(":path") or f"{pseudo[':method']} {pseudo.get(':authority')}"
        record = self.seen[key] = {"pseudo": pseudo, "headers": dict(f for f in fields if not f[0].startswith(":")),
                                   "body": 0, "ended": False, "reset": None}
        received = Received()
        if event.stream_ended is None:
            while not (received.ended or received.reset is not None):
                e = await queue.get()
                if e is None:
                    break
                received.take(e)
            record.update(body=len(received.body), ended=received.ended, reset=received.reset)
            if not received.ended:
                return
        else:
            record["ended"] = True
        path = pseudo.get(":path", "")
        if path == "/slow":
            await asyncio.sleep(0.5)
        if path == "/short-response":       # declares 100 bytes, sends 10 and ends
            ep.headers(sid, [(":status", "200"), ("content-length", "100")])
            ep.send(sid, b"x" * 10, end=True)
        elif path == "/head":               # the length a GET would have had, and no content
            ep.headers(sid, [(":status", "200"), ("content-length", "1234")], end=True)
        elif path == "/no-content":
            ep.headers(sid, [(":status", "204")], end=True)
        elif path == "/long-response":      # declares 5 bytes, sends 20
            ep.headers(sid, [(":status", "200"), ("content-length", "5")])
            ep.send(sid, b"y" * 20, end=True)
        else:
            body = json.dumps({"path": path, "body": len(received.body)}).encode()
            ep.headers(sid, [(":status", "200"), ("content-length", str(len(body)))])
            ep.send(sid, body, end=True)


@pytest.fixture(scope="module")
def mesh(tmp_path_factory):
    with running(Mesh(tmp_path_factory.mktemp("waypoint-h2-hostile"))) as m:
        yield m


@pytest.fixture(scope="module")
def backend(mesh):
    b = Backend(mesh)
    try:
        yield b.start()
    finally:
        b.stop()


@pytest.fixture(scope="module")
def baseline(mesh, backend):
    """The waypoint's fds and RSS once it has answered one plain request (certificates,
    pooled connections both ways): the hostile cases must leave it there."""
    got = asyncio.run(_plain_requests(mesh, ["/warm"]))
    assert [r.response[0] for r in got] == [200], got
    pid = mesh.processes["waypoint"].pid
    return _settled(lambda: open_fds(pid)), rss_kib(pid)


def wait_for(predicate, what, timeout=10):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, what()
        time.sleep(0.02)


def _settled(read, timeout=5.0):
    deadline = time.monotonic() + timeout
    value = read()
    while time.monotonic() < deadline:
        time.sleep(0.2)
        if (again := read()) == value:
            return value
        value = again
    return value


async def h2_client(mesh, port=H2_PORT):
    reader, writer = await mesh.socks5(mesh.vip, port)
    ep = Endpoint(reader, writer, client=True)
    # the content-length and :protocol sent here are this test's to choose
    ep.conn.config.validate_outbound_headers = False
    ep.task = asyncio.get_running_loop().create_task(ep.run())
    return ep


async def _plain_requests(mesh, paths):
    ep = await h2_client(mesh)
    sids = [open_request(ep, "GET", p, f"{mesh.vip}:{H2_PORT}", end=True) for p in paths]
    got = await asyncio.wait_for(asyncio.gather(*(Received().collect(ep.queue(s)) for s in sids)), 10)
    ep.writer.close()
    return got


def _collect(ep, sid, timeout=10):
    return asyncio.wait_for(Received().collect(ep.queue(sid)), timeout)


def _stream_length_error(ep, sid):
    stream = ep.conn.streams.get(sid)
    return getattr(stream, "body_length_error", None) if stream is not None else None


def _post(ep, mesh, path, declared, extra=()):
    return open_request(ep, "POST", path, f"{mesh.vip}:{H2_PORT}",
                        headers=[("content-length", str(declared)), *extra])


@pytest.mark.parametrize("declared, sent, streamed", [(100, 10, False), (10, 100, False), (100, 10, True),
                                                     (10, 100, True)],
                         ids=["short", "long", "short-after-forwarding", "long-after-forwarding"])
def test_request_body_disagreeing_with_content_length_is_reset_as_malformed(mesh, backend, baseline, declared, sent,
                                                                            streamed):
    """At once (HEADERS and all of DATA in one go) or streamed: a first part of the body,
    and the rest only once the backend has the request, so that the waypoint has
    already passed it on when the disagreement shows."""
    name = f"/mismatch-{declared}-{sent}-{'streamed' if streamed else 'whole'}"

    async def run():
        ep = await h2_client(mesh)
        # a slow request open on the same connection the whole time
        slow = open_request(ep, "GET", "/slow", f"{mesh.vip}:{H2_PORT}", end=True)
        bad = _post(ep, mesh, name, declared)
        if streamed:
            ep.send(bad, b"z" * 5)
            deadline = time.monotonic() + 10
            while name not in backend.seen:
                assert time.monotonic() < deadline, "the waypoint held the request back"
                await asyncio.sleep(0.02)
            ep.send(bad, b"z" * (sent - 5), end=True)
        else:
            ep.send(bad, b"z" * sent, end=True)
        got = await _collect(ep, bad)
        after = open_request(ep, "GET", "/after-mismatch", f"{mesh.vip}:{H2_PORT}", end=True)
        others = await asyncio.gather(_collect(ep, slow), _collect(ep, after))
        # and another tunnel, opened after
        fresh = await _plain_requests(mesh, ["/fresh"])
        ep.writer.close()
        return got, others, fresh
    got, (slow, after), fresh = asyncio.run(run())
    assert got.reset == PROTOCOL_ERROR and got.response is None, (got.reset, got.response, bytes(got.body))
    if streamed:
        # the backend's stream is reset: it never takes the request for a whole one
        wait_for(lambda: backend.seen[name]["reset"] is not None or backend.seen[name]["ended"],
                 lambda: backend.seen[name])
        seen = backend.seen[name]
        assert seen["reset"] is not None and not seen["ended"], seen
        assert seen["body"] <= min(declared, sent), seen
    else:
        seen = backend.seen.get(name)
        assert seen is None or not seen["ended"], seen
    for other in (slow, after, *fresh):
        assert other.response[0] == 200 and other.ended and other.reset is None, (other.response, other.reset)


@pytest.mark.parametrize("fields, body", [
    ([("content-length", "10"), ("content-length", "20")], b"z" * 10),
    ([("content-length", "10, 20")], b"z" * 10),
    ([("content-length", "1O")], b"z" * 10),
    ([("content-length", "-1")], b""),
    ([("content-length", "10")], None),          # END_STREAM with the headers: no DATA at all
], ids=["conflicting", "list", "not-a-number", "negative", "declared-without-data"])
def test_request_with_an_invalid_content_length_is_reset_as_malformed(mesh, backend, baseline, fields, body):
    name = f"/invalid-length-{len(backend.seen)}"

    async def run():
        ep = await h2_client(mesh)
        sid = open_request(ep, "POST", name, f"{mesh.vip}:{H2_PORT}", headers=fields, end=body is None)
        if body is not None:
            ep.send(sid, body, end=True)
        got = await _collect(ep, sid)
        after = open_request(ep, "GET", "/after-invalid-length", f"{mesh.vip}:{H2_PORT}", end=True)
        other = await _collect(ep, after)
        ep.writer.close()
        return got, other
    got, other = asyncio.run(run())
    assert got.reset == PROTOCOL_ERROR and got.response is None, (got.reset, got.response, bytes(got.body))
    seen = backend.seen.get(name)
    assert seen is None or not seen["ended"], seen
    assert other.response[0] == 200 and other.ended, (other.response, other.reset)


def test_head_and_204_responses_declare_a_length_they_do_not_carry(mesh, backend, baseline):
    """Not malformed: a response to HEAD, or a 204, has no content whatever its
    content-length says (RFC 9110 8.6): passed on whole."""
    async def run():
        ep = await h2_client(mesh)
        head = open_request(ep, "HEAD", "/head", f"{mesh.vip}:{H2_PORT}", end=True)
        empty = open_request(ep, "GET", "/no-content", f"{mesh.vip}:{H2_PORT}", end=True)
        got = await asyncio.gather(_collect(ep, head), _collect(ep, empty))
        ep.writer.close()
        return got
    head, empty = asyncio.run(run())
    assert head.response[0] == 200 and head.ended and head.reset is None, (head.response, head.reset)
    assert (b"content-length", b"1234") in head.response[1], head.response
    assert empty.response[0] == 204 and empty.ended and empty.reset is None, (empty.response, empty.reset)


HTTP1_PORT = 83             # the service's port declared appProtocol http: to web:8080 in HTTP/1.1


@pytest.mark.parametrize("declared, sent", [(100, 10), (10, 60)], ids=["short", "long"])
def test_malformed_request_body_never_desynchronizes_a_kept_alive_http1_upstream(mesh, backend, baseline,
                                                                                 declared, sent):
    """The backend speaks HTTP/1.1 and the waypoint keeps its connections: a body cut
    short must not leave the connection to carry the next request as the rest of it,
    and bytes past the content-length must never reach it, where they would be a
    request of their own (here one that would be seen as /smuggled)."""
    name = f"/h1-mismatch-{declared}-{sent}"
    authority = f"{mesh.vip}:{HTTP1_PORT}"
    smuggled = b"GET /smuggled HTTP/1.1\r\nhost: web\r\ncontent-length: 0\r\n\r\n"
    rest = (smuggled + b"z" * sent)[:sent - 5]

    async def run():
        ep = await h2_client(mesh, HTTP1_PORT)
        warm = open_request(ep, "GET", "/h1-warm", authority, end=True)   # an upstream connection kept
        assert (await _collect(ep, warm)).ended
        bad = open_request(ep, "POST", name, authority, headers=[("content-length", str(declared))])
        ep.send(bad, b"z" * 5)
        deadline = time.monotonic() + 10
        while name not in backend.seen:
            assert time.monotonic() < deadline, "the waypoint held the request back"
            await asyncio.sleep(0.02)
        ep.send(bad, rest, end=True)
        got = await _collect(ep, bad)
        after = [open_request(ep, "GET", f"{name}-after-{i}", authority, end=True) for i in range(3)]
        others = await asyncio.gather(*(_collect(ep, s) for s in after))
        ep.writer.close()
        return got, others
    got, others = asyncio.run(run())
    assert got.reset == PROTOCOL_ERROR and got.response is None, (got.reset, got.response, bytes(got.body))
    for i, other in enumerate(others):
        assert other.response[0] == 200 and other.ended, (other.response, other.reset)
        assert json.loads(bytes(other.body)) == {"path": f"{name}-after-{i}", "body": 0}
    heads = [head.split(b"\r\n", 1)[0] for _, head in backend.http1]
    assert b"GET /smuggled HTTP/1.1" not in heads, heads
    seen = backend.seen[name]
    # never taken as a whole request: the connection it was on ended inside its body
    assert seen["reset"] == "closed" and seen["body"] < declared, seen
    cut_on = next(n for n, head in backend.http1 if head.startswith(f"POST {name} ".encode()))
    assert all(n != cut_on for n, head in backend.http1 if f"{name}-after-".encode() in head), \
        [(n, head.split(b"\r\n")[0]) for n, head in backend.http1]


@pytest.mark.parametrize("path", ["/short-response", "/long-response"])
def test_response_body_disagreeing_with_content_length_resets_the_clients_stream(mesh, backend, baseline, path):
    async def run():
        ep = await h2_client(mesh)
        slow = open_request(ep, "GET", "/slow", f"{mesh.vip}:{H2_PORT}", end=True)
        bad = open_request(ep, "GET", path, f"{mesh.vip}:{H2_PORT}", end=True)
        got = await _collect(ep, bad)
        length_error = _stream_length_error(ep, bad)
        other = await _collect(ep, slow)
        ep.writer.close()
        return got, length_error, other
    got, length_error, other = asyncio.run(run())
    assert backend.seen[path]["ended"]
    # a truncated or overlong body passed on as if whole would be worse than none
    assert got.reset is not None and not got.ended, (got.response, bytes(got.body), got.ended, length_error)
    assert length_error is None, length_error
    assert other.response[0] == 200 and other.ended, (other.response, other.reset)




# Envoy counts a stream its HTTP/2 codec found malformed with the side it came from:
# DPE (downstream protocol error, response code 0: no response was sent) for a
# client's, UPE (upstream protocol error) for a backend's; UR and DR are for resets the
# peer sent, which these are not.
def _requests(mesh, **labels):
    status, text = LocalMesh.http_get(mesh.waypoint, 15020, "/metrics")
    assert status == 200, text
    return requests_total(text, **labels)


def test_a_malformed_request_the_waypoint_handles_is_counted_as_a_downstream_protocol_error(mesh, backend,
                                                                                             baseline):
    # the request reaches the waypoint's handler (the backend has it) before its body
    # turns out longer than declared
    before = _requests(mesh, response_code="0", response_flags="DPE")

    async def run():
        ep = await h2_client(mesh)
        streamed = _post(ep, mesh, "/counted-streamed", 100)
        ep.send(streamed, b"z" * 5)
        while "/counted-streamed" not in backend.seen:
            await asyncio.sleep(0.02)
        ep.send(streamed, b"z" * 5, end=True)
        got = await _collect(ep, streamed)
        ep.writer.close()
        return got
    assert asyncio.run(run()).reset == PROTOCOL_ERROR
    wait_for(lambda: _requests(mesh, response_code="0", response_flags="DPE") - before == 1,
             lambda: _requests(mesh, response_code="0", response_flags="DPE") - before, timeout=3)


@pytest.mark.parametrize("declared, sent", [(100, 10), (10, 100)], ids=["short", "long"])
def test_a_request_malformed_in_its_first_read_is_counted_once_as_a_downstream_protocol_error(
        mesh, backend, baseline, declared, sent):
    # HEADERS and all of DATA in one write: the HTTP/2 core may reset the stream before
    # the waypoint's handler has taken its first step, or after; counted once either way
    before = _requests(mesh, response_code="0", response_flags="DPE")

    async def run():
        ep = await h2_client(mesh)
        results = []
        for i in range(5):
            bad = _post(ep, mesh, f"/first-read-{declared}-{sent}-{i}", declared)
            ep.send(bad, b"z" * sent, end=True)
            results.append(await _collect(ep, bad))
        ep.writer.close()
        return results
    got = asyncio.run(run())
    assert [r.reset for r in got] == [PROTOCOL_ERROR] * 5, [(r.reset, r.response) for r in got]
    wait_for(lambda: _requests(mesh, response_code="0", response_flags="DPE") - before == 5,
             lambda: _requests(mesh, response_code="0", response_flags="DPE") - before, timeout=3)
    time.sleep(0.2)
    assert _requests(mesh, response_code="0", response_flags="DPE") - before == 5


def test_malformed_responses_are_counted_as_upstream_protocol_errors(mesh, backend, baseline):
    before = _requests(mesh, response_flags="UPE")
    got = asyncio.run(_plain_requests(mesh, ["/short-response", "/long-response"]))
    assert all(r.reset is not None for r in got), [(r.response, r.reset) for r in got]
    wait_for(lambda: _requests(mesh, response_flags="UPE") - before == 2,
             lambda: _requests(mesh, response_flags="UPE") - before, timeout=3)


# Envoy's HCM proxies CONNECT only when its upgrade_configs name CONNECT, which a
# waypoint's do not (Istio configures websocket upgrades there, nothing else); without
# it a CONNECT is answered with Envoy's own 403 (upgrade_failed). The same holds for a
# CONNECT stream of HTTP/2. HTTP/1.1 CONNECT and HTTP/2 CONNECT alike reach no backend.
ENVOY_CONNECT_REFUSED = 403


def _connect(ep, authority, extra=()):
    sid = ep.conn.get_next_available_stream_id()
    ep.queue(sid)
    ep.headers(sid, [(":method", "CONNECT"), (":authority", authority), *extra])
    return sid


def test_http2_connect_reaches_no_backend_and_the_connection_carries_on(mesh, backend, baseline):
    async def run():
        ep = await h2_client(mesh)
        slow = open_request(ep, "GET", "/slow", f"{mesh.vip}:{H2_PORT}", end=True)
        sid = _connect(ep, f"{mesh.vip}:{H2_PORT}")
        ep.send(sid, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")     # what a tunnel would carry
        got = await _collect(ep, sid)
        after = open_request(ep, "GET", "/after-connect", f"{mesh.vip}:{H2_PORT}", end=True)
        others = await asyncio.gather(_collect(ep, slow), _collect(ep, after))
        ep.writer.close()
        return got, others
    got, others = asyncio.run(run())
    # refused, whether with a status or a reset, and nothing tunnelled
    assert got.reset is not None or (got.response is not None and got.response[0] >= 400), \
        (got.response, got.reset)
    assert not [k for k in backend.seen if k.startswith("CONNECT")], list(backend.seen)
    assert all(o.response[0] == 200 and o.ended for o in others), [(o.response, o.reset) for o in others]


def test_http2_connect_is_refused_with_403_as_envoy_refuses_it(mesh, backend, baseline):
    async def run():
        ep = await h2_client(mesh)
        got = await _collect(ep, _connect(ep, f"{mesh.vip}:{H2_PORT}"))
        ep.writer.close()
        return got
    before = _requests(mesh, response_code=str(ENVOY_CONNECT_REFUSED))
    got = asyncio.run(run())
    assert got.response is not None and got.response[0] == ENVOY_CONNECT_REFUSED, (got.response, got.reset)
    # and counted, as every response of Envoy's own is
    wait_for(lambda: _requests(mesh, response_code=str(ENVOY_CONNECT_REFUSED)) - before == 1,
             lambda: _requests(mesh, response_code=str(ENVOY_CONNECT_REFUSED)) - before, timeout=3)


def test_extended_connect_never_offered_is_reset_as_malformed(mesh, backend, baseline):
    """RFC 8441 3: `:protocol` from a client the server never sent
    SETTINGS_ENABLE_CONNECT_PROTOCOL=1 is a malformed request (RFC 9113 8.1.1): the
    stream is reset with PROTOCOL_ERROR, the connection carries on."""
    async def run():
        ep = await h2_client(mesh)
        await asyncio.wait_for(_remote_settings(ep), 10)
        offered = ep.conn.remote_settings.get(ENABLE_CONNECT_PROTOCOL, 0)
        slow = open_request(ep, "GET", "/slow", f"{mesh.vip}:{H2_PORT}", end=True)
        sid = _connect(ep, f"{mesh.vip}:{H2_PORT}", [(":protocol", "websocket"), (":scheme", "http"),
                                                     (":path", "/chat"), ("sec-websocket-version", "13")])
        got = await _collect(ep, sid)
        after = open_request(ep, "GET", "/after-extended-connect", f"{mesh.vip}:{H2_PORT}", end=True)
        others = await asyncio.gather(_collect(ep, slow), _collect(ep, after))
        ep.writer.close()
        return offered, got, others
    offered, got, others = asyncio.run(run())
    # a waypoint that offered extended CONNECT would owe the websocket a tunnel instead
    assert offered == 0
    assert got.reset == PROTOCOL_ERROR and got.response is None, (got.response, got.reset)
    assert "/chat" not in backend.seen
    assert all(o.response[0] == 200 and o.ended for o in others), [(o.response, o.reset) for o in others]


async def _remote_settings(ep):
    """Until the waypoint's SETTINGS have arrived (h2 acknowledges them as it reads)."""
    while h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS not in ep.conn.remote_settings:
        await asyncio.sleep(0.01)


async def _http1_connect(mesh):
    reader, writer = await mesh.socks5(mesh.vip, 80)
    writer.write(f"CONNECT {mesh.vip}:80 HTTP/1.1\r\nHost: {mesh.vip}:80\r\n\r\n".encode())
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    # what a tunnel would carry: answered by no one, the connection is not a tunnel
    writer.write(b"GET / HTTP/1.1\r\nHost: web\r\n\r\n")
    rest = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    return head.decode("latin-1"), rest


def test_http1_connect_is_answered_by_the_waypoint_and_the_connection_closed(mesh, backend, baseline):
    head, rest = asyncio.run(_http1_connect(mesh))
    status = int(head.split(" ", 2)[1])
    assert 400 <= status < 600, head
    assert "connection: close" in head.lower(), head
    # only the waypoint's own answer's body, never the web workload's response to what
    # followed the CONNECT
    length = int(re.search(r"(?im)^content-length: *(\d+)\r$", head).group(1))
    assert len(rest) == length, rest


def test_http1_connect_is_refused_with_403_as_envoy_refuses_it(mesh, backend, baseline):
    head, _ = asyncio.run(_http1_connect(mesh))
    assert head.startswith(f"HTTP/1.1 {ENVOY_CONNECT_REFUSED} "), head


def test_the_waypoint_gives_back_what_the_hostile_peers_took(mesh, backend, baseline):
    """Last: every connection above is closed; the waypoint's fds return to where they
    were once it had answered one request, and its RSS stays near."""
    fds0, rss0 = baseline
    pid = mesh.processes["waypoint"].pid
    # and once more, a burst of malformed streams on one connection
    async def burst():
        ep = await h2_client(mesh)
        sids = []
        for i in range(50):
            sid = _post(ep, mesh, f"/burst-{i}", 100)
            ep.send(sid, b"z" * 10, end=True)
            sids.append(sid)
        got = await asyncio.wait_for(asyncio.gather(*(Received().collect(ep.queue(s)) for s in sids)), 20)
        ep.writer.close()
        return got
    assert all(r.reset == PROTOCOL_ERROR for r in asyncio.run(burst()))
    deadline = time.monotonic() + 10
    while (fds := open_fds(pid)) > fds0 + POOLED_FDS and time.monotonic() < deadline:
        time.sleep(0.1)
    assert fds <= fds0 + POOLED_FDS, (fds0, fds)
    rss = rss_kib(pid)
    assert rss - rss0 <= RSS_GROWTH_KIB, f"waypoint RSS {rss0} KiB before, {rss} KiB after"
    log = mesh.log("waypoint")
    assert "Traceback" not in log, log[-3000:]
