"""Hostile HTTP/2 and HTTP/1.1 peers against the waypoint, as processes
(tests/support/waypoint_mesh.py): a python-hyper h2 client through node-a's SOCKS5 and an
h2 backend on web:8081 behind node-b, both run here.

- a message whose content-length disagrees with its DATA is malformed (RFC 9113 8.1.1):
  the waypoint resets that stream with PROTOCOL_ERROR, whichever side sent it, and no
  other stream or tunnel notices;
- CONNECT, plain or extended (RFC 8441), is not something a waypoint is configured to
  proxy: answered as Envoy answers it when its HCM has no CONNECT upgrade (403), and a
  `:protocol` the waypoint never offered (SETTINGS_ENABLE_CONNECT_PROTOCOL) is malformed;
- after all of it the waypoint holds no more file descriptors than before.

h2's own content-length check is turned into a record here, on both peers, so that the
tests see exactly what the waypoint passed on instead of h2 tearing a connection down."""
import asyncio
import json
import threading
import time

import h2.events
import h2.settings
import h2.stream
import pytest

from h2http import Endpoint, Received, open_request
from meshcore.localmesh import LocalMesh
from waypoint_load import open_fds, rss_kib
from waypoint_mesh import WaypointMesh

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


class Backend:
    """An h2 server on web:8081 on its own loop in a thread; what each request path
    brought (headers, body, how it ended) is kept in `seen`."""

    def __init__(self, mesh: WaypointMesh):
        self.mesh = mesh
        self.seen: dict[str, dict] = {}
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    def start(self):
        self.thread.start()
        self.server = self.call(asyncio.start_server(self._connection, self.mesh.web, 8081))
        return self

    def stop(self):
        self.call(self._close())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)

    async def _close(self):
        self.server.close()
        tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def call(self, coro, timeout=30):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

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
        elif path == "/long-response":      # declares 5 bytes, sends 20
            ep.headers(sid, [(":status", "200"), ("content-length", "5")])
            ep.send(sid, b"y" * 20, end=True)
        else:
            body = json.dumps({"path": path, "body": len(received.body)}).encode()
            ep.headers(sid, [(":status", "200"), ("content-length", str(len(body)))])
            ep.send(sid, body, end=True)


@pytest.fixture(scope="module")
def mesh(tmp_path_factory):
    m = WaypointMesh(tmp_path_factory.mktemp("waypoint-h2-hostile"))
    try:
        m.start()
    except BaseException:
        m.stop()
        raise
    yield m
    codes = m.stop()
    assert codes == {"web": 0, "node-a": 0, "node-b": 0, "waypoint": 0}, m.log("waypoint")[-3000:]


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

