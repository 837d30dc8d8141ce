"""HTTP/2 and gRPC through a waypoint, as processes (tests/support/waypoint_mesh.py):
clients speak h2c with prior knowledge through node-a's SOCKS5; the backends are
python-hyper's h2 (web:8081) and grpcio (web:50051), run by this module behind node-b.
Requests go one by one under the waypoint's policies, multiplexed on one upstream
connection, with trailers, resets both ways, flow control end to end and a drain."""
import asyncio
import hashlib
import json
import os
import re
import signal
import subprocess
import threading
import time
from concurrent import futures

import grpc
import h2.events
import pytest

from h2http import Endpoint, Received, open_request
from meshcore.aio.connection import HboneConnection
from meshcore.aio.request import send_request
from meshcore.localmesh import LocalMesh
from waypoint_mesh import WaypointMesh, running

pytestmark = pytest.mark.timeout(120)

H2_PORT, GRPC_PORT = 81, 50051
BIG = 32 << 20


class Backends:
    """The h2 server, the grpcio server and the TCP-to-SOCKS5 forwarder the grpcio client
    dials, on one event loop in a thread (the grpcio calls block the test's)."""

    def __init__(self, mesh: WaypointMesh):
        self.mesh = mesh
        self.connections = 0                # TCP connections the h2 backend accepted
        self.active = 0
        self.max_active = 0                 # most streams open at once on one connection
        self.seen: dict[str, dict] = {}     # path -> the request headers it came with
        self.resets: dict[str, int] = {}    # path -> the error code of the reset it saw
        self.bodies: dict[str, list] = {}   # /fail-once paths -> the bodies each try brought
        self.release = None                 # /stall: set to let the body in
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.grpc = None

    def start(self):
        self.thread.start()
        self.h2_server = self.call(asyncio.start_server(self._h2_connection, self.mesh.web, 8081))
        self.forwarder = self.call(asyncio.start_server(self._forward, "127.0.0.1", 0))
        self.forward_port = self.forwarder.sockets[0].getsockname()[1]
        self.release = self.call(self._event())
        self.grpc = grpc.server(futures.ThreadPoolExecutor(4))
        self.grpc.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("meshcore.test.Echo", {
            "Unary": grpc.unary_unary_rpc_method_handler(self._unary),
            "Stream": grpc.unary_stream_rpc_method_handler(self._stream),
            "Forbidden": grpc.unary_unary_rpc_method_handler(lambda request, context: b"reached"),
            "Missing": grpc.unary_unary_rpc_method_handler(self._missing),
        }),))
        assert self.grpc.add_insecure_port(f"{self.mesh.web}:{GRPC_PORT}") == GRPC_PORT
        self.grpc.start()
        return self

    def stop(self):
        if self.grpc is not None:
            self.grpc.stop(0)
        self.call(self._close())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)

    async def _close(self):
        for server in (self.h2_server, self.forwarder):
            server.close()
        tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def call(self, coro, timeout=30):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    @staticmethod
    async def _event():
        return asyncio.Event()

    # -- gRPC ------------------------------------------------------------------------
    @staticmethod
    def _unary(request, context):
        context.set_trailing_metadata((("x-trailer", "kept"),))
        return b"echo:" + request

    @staticmethod
    def _stream(request, context):
        context.set_trailing_metadata((("x-count", request.decode()),))
        for i in range(int(request)):
            time.sleep(0.02)
            yield str(i).encode()

    @staticmethod
    def _missing(request, context):
        context.abort(grpc.StatusCode.NOT_FOUND, "no such thing")

    async def _forward(self, reader, writer):
        """A grpcio client's connection, through node-a as the client workload."""
        try:
            up_reader, up_writer = await self.mesh.socks5(self.mesh.vip, GRPC_PORT)
        except ConnectionError:
            writer.close()
            return

        async def copy(r, w):
            try:
                while data := await r.read(1 << 16):
                    w.write(data)
                    await w.drain()
                w.write_eof()
            except (ConnectionError, OSError):
                w.transport.abort()
        await asyncio.gather(copy(reader, up_writer), copy(up_reader, writer))
        writer.close()
        up_writer.close()

    # -- HTTP/2 ----------------------------------------------------------------------
    async def _h2_connection(self, reader, writer):
        self.connections += 1
        ep = Endpoint(reader, writer, client=False, auto_ack=False)
        tasks = set()
        open_here = [0]

        def new_stream(sid, event):
            open_here[0] += 1
            self.max_active = max(self.max_active, open_here[0])
            task = asyncio.get_running_loop().create_task(self._h2_request(ep, sid, event, ep.queue(sid)))
            tasks.add(task)
            task.add_done_callback(lambda t: (tasks.discard(t), open_here.__setitem__(0, open_here[0] - 1)))
        ep.on_new_stream = new_stream
        await ep.run()
        for task in list(tasks):
            task.cancel()
        writer.close()

    async def _h2_request(self, ep, sid, event, queue):
        fields = [(n.decode(), v.decode()) for n, v in event.headers]
        pseudo = {n: v for n, v in fields if n.startswith(":")}
        path = pseudo[":path"]
        self.seen[path] = {n: v for n, v in fields if not n.startswith(":")}
        if path == "/stall":
            await self.release.wait()
        received = Received()
        if event.stream_ended is None:
            while True:                             # the body, its window given back as it is taken
                e = await queue.get()
                if e is None:
                    return
                received.take(e)
                if isinstance(e, h2.events.DataReceived):
                    ep.ack(sid, e.flow_controlled_length)
                if received.ended or received.reset is not None:
                    break
            if received.reset is not None:
                self.resets[path] = received.reset
                return
        if path.startswith("/slow"):
            await asyncio.sleep(0.3 if path != "/slow-drain" else 1.0)
        if path == "/hang":
            ep.headers(sid, [(":status", "200")])
            while (e := await queue.get()) is not None and not isinstance(e, h2.events.StreamReset):
                pass
            self.resets[path] = e.error_code if e is not None else -1
            return
        if path == "/reset-me":
            ep.headers(sid, [(":status", "200")])
            ep.send(sid, b"partial")
            await asyncio.sleep(0.2)
            ep.reset(sid, 0x2)
            return
        if path.startswith("/fail-once"):
            # 503 to a path's first request, its answer to the next (what a retry turns into 200)
            self.bodies.setdefault(path, []).append(bytes(received.body))
            if len(self.bodies[path]) == 1:
                ep.headers(sid, [(":status", "503"), ("content-length", "0")], end=True)
                return
        if pseudo[":method"] == "POST":
            digest = hashlib.sha256(received.body).hexdigest()
            ep.headers(sid, [(":status", "200"), ("content-type", "application/octet-stream")])
            ep.send(sid, digest.encode(), trailers=[("x-sha256", digest), ("x-request-trailers", json.dumps(
                [[n.decode(), v.decode()] for n, v in received.trailers or []]))])
            return
        body = json.dumps({"method": pseudo[":method"], "path": path, "authority": pseudo.get(":authority"),
                           "headers": self.seen[path]}).encode() + b"\n"
        ep.headers(sid, [(":status", "200"), ("content-type", "application/json"),
                         ("content-length", str(len(body)))])
        ep.send(sid, body, end=True)


@pytest.fixture(scope="module")
def mesh(tmp_path_factory):
    with running(WaypointMesh(tmp_path_factory.mktemp("waypoint-h2"))) as m:
        yield m


@pytest.fixture(scope="module")
def backends(mesh):
    b = Backends(mesh)
    try:
        yield b.start()
    finally:
        b.stop()


def curl(mesh, *args, timeout=20):
    return subprocess.run(["curl", "-sS", "-m", str(timeout), "--interface", mesh.client, "--socks5",
                           f"{mesh.node['node-a']}:15080", "--http2-prior-knowledge", *args],
                          capture_output=True, text=True)


def metrics(mesh) -> str:
    return LocalMesh.http_get(mesh.waypoint, 15020, "/metrics")[1]


def wait_for(predicate, what, timeout=10):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, what()
        time.sleep(0.02)


async def h2_client(mesh):
    reader, writer = await mesh.socks5(mesh.vip, H2_PORT)
    ep = Endpoint(reader, writer, client=True)
    ep.task = asyncio.get_running_loop().create_task(ep.run())
    return ep


@pytest.mark.needs_tool("curl")
def test_http2_requests_multiplex_on_one_upstream_under_the_waypoints_policies(mesh, backends):
    trace = "00-" + "ab" * 16 + "-" + "cd" * 8 + "-01"
    # curl 7.88 fails its second transfer on a prior-knowledge connection even against a
    # plain h2 server: curl one request each, several on one connection from h2 below
    for i in range(3):
        ok = curl(mesh, "-H", f"traceparent: {trace}", "-w", "%{http_version} %{response_code}\\n",
                  f"http://{mesh.vip}:{H2_PORT}/slow{i}")
        assert ok.returncode == 0, ok.stderr
        assert ok.stdout.endswith("2 200\n") and f'"path": "/slow{i}"' in ok.stdout, ok.stdout

    async def side_by_side():
        ep = await h2_client(mesh)
        sids = [open_request(ep, "GET", f"/slow{i}", f"{mesh.vip}:{H2_PORT}", end=True) for i in range(3, 9)]
        got = await asyncio.wait_for(asyncio.gather(*(Received().collect(ep.queue(s)) for s in sids)), 10)
        ep.writer.close()
        return got
    assert [(r.response[0], r.ended) for r in asyncio.run(side_by_side())] == [(200, True)] * 6
    # one connection from the waypoint to the endpoint, its requests side by side on it
    assert backends.connections == 1 and backends.max_active >= 2, (backends.connections, backends.max_active)
    seen = backends.seen["/slow0"]
    assert seen["x-forwarded-proto"] == "http" and re.fullmatch(r"[0-9a-f-]{36}", seen["x-request-id"]), seen
    version, trace_id, span, flags = seen["traceparent"].split("-")
    assert (trace_id, flags) == ("ab" * 16, "01") and span != "cd" * 8, seen
    assert not {"connection", "keep-alive", "transfer-encoding", "upgrade", "host"} & set(seen), seen

    denied = curl(mesh, "-i", f"http://{mesh.vip}:{H2_PORT}/admin/users")
    assert denied.returncode == 0, denied.stderr
    assert denied.stdout.startswith("HTTP/2 403") and denied.stdout.endswith("RBAC: access denied"), denied.stdout
    assert "/admin/users" not in backends.seen
    info = curl(mesh, "-i", f"http://{mesh.vip}:{H2_PORT}/info")
    assert info.stdout.startswith("HTTP/2 200") and '"path": "/info"' in info.stdout, info.stdout
    assert backends.connections == 1                     # a later client, the same upstream

    text = metrics(mesh)
    assert re.search(r'istio_requests_total\{[^}]*request_protocol="http"[^}]*response_code="403"[^}]*\} 1\.0',
                     text), text
    assert re.search(r'istio_requests_total\{[^}]*destination_workload="web"[^}]*request_protocol="http"'
                     r'[^}]*response_code="200"[^}]*\} 10\.0', text), text
    log = mesh.log("waypoint")
    assert len(re.findall(r'request complete.*http.method="GET" http.path="/slow\d"', log)) == 9, log[-3000:]
    assert re.search(r'http.path="/admin/users".*http.status=403.*error="denied:', log), log[-3000:]


def test_grpc_calls_through_the_waypoint_keep_their_trailers_and_policies(mesh, backends):
    with grpc.insecure_channel(f"127.0.0.1:{backends.forward_port}",
                               options=[("grpc.enable_http_proxy", 0)]) as channel:
        reply, call = channel.unary_unary("/meshcore.test.Echo/Unary").with_call(b"ping", timeout=10)
        assert reply == b"echo:ping"
        assert ("x-trailer", "kept") in call.trailing_metadata()
        assert call.code() == grpc.StatusCode.OK

        stream = channel.unary_stream("/meshcore.test.Echo/Stream")(b"5", timeout=10)
        assert list(stream) == [b"0", b"1", b"2", b"3", b"4"]
        assert ("x-count", "5") in stream.trailing_metadata()

        with pytest.raises(grpc.RpcError) as denied:
            channel.unary_unary("/meshcore.test.Echo/Forbidden")(b"x", timeout=10)
        assert denied.value.code() == grpc.StatusCode.PERMISSION_DENIED, denied.value
        assert denied.value.details() == "RBAC: access denied"

        with pytest.raises(grpc.RpcError) as missing:
            channel.unary_unary("/meshcore.test.Echo/Missing")(b"x", timeout=10)
        assert missing.value.code() == grpc.StatusCode.NOT_FOUND and missing.value.details() == "no such thing"
    text = metrics(mesh)
    for status, count in (("0", 2), ("7", 1), ("5", 1)):
        assert re.search(r'istio_requests_total\{[^}]*grpc_response_status="%s"[^}]*request_protocol="grpc"'
                         r'[^}]*response_code="200"[^}]*\} %d\.0' % (status, count), text), (status, text)
    log = mesh.log("waypoint")
    assert re.search(r'http.path="/meshcore.test.Echo/Stream".*grpc.status="0"', log), log[-3000:]
    assert re.search(r'http.path="/meshcore.test.Echo/Forbidden".*grpc.status="7".*error="denied:', log), log[-3000:]


def test_resets_cross_the_waypoint_both_ways(mesh, backends):
    async def run():
        ep = await h2_client(mesh)
        authority = f"{mesh.vip}:{H2_PORT}"
        # the client gives up: the backend's stream is reset too
        sid = open_request(ep, "GET", "/hang", authority, end=True)
        hang = await asyncio.wait_for(Received().collect(ep.queue(sid), until=lambda r: r.response is not None), 10)
        assert hang.response[0] == 200
        ep.reset(sid, 0x8)
        # the backend gives up: so does the client's stream, after what it had sent
        sid = open_request(ep, "GET", "/reset-me", authority, end=True)
        cut = await asyncio.wait_for(Received().collect(ep.queue(sid)), 10)
        # the connection carries on
        sid = open_request(ep, "GET", "/after", authority, end=True)
        after = await asyncio.wait_for(Received().collect(ep.queue(sid)), 10)
        ep.writer.close()
        return cut, after
    cut, after = asyncio.run(run())
    assert cut.response[0] == 200 and bytes(cut.body) == b"partial" and cut.reset == 0x2 and not cut.ended
    assert after.response[0] == 200 and after.ended
    wait_for(lambda: "/hang" in backends.resets, lambda: (backends.resets, mesh.log("waypoint")[-2000:]))
    assert backends.resets["/hang"] == 0x8


def test_flow_control_holds_end_to_end(mesh, backends):
    """The backend takes nothing of a large body until released: the client can send
    no more than the windows between it and the backend, then all of it, trailers too."""
    payload = os.urandom(BIG)

    async def run():
        ep = await h2_client(mesh)
        sid = open_request(ep, "POST", "/stall", f"{mesh.vip}:{H2_PORT}")
        ep.send(sid, payload, trailers=[("x-client-trailer", "yes")])
        queue = ep.queue(sid)
        await asyncio.sleep(2.0)
        stalled = ep.sent.get(sid, 0)
        backends.loop.call_soon_threadsafe(backends.release.set)
        got = await asyncio.wait_for(Received().collect(queue), 30)
        ep.writer.close()
        return stalled, got
    stalled, got = asyncio.run(run())
    # two 4 MiB stream windows (waypoint's, backend's) and a chunk in hand: far from 32 MiB
    assert 0 < stalled < 12 << 20, stalled
    assert got.response[0] == 200 and got.ended, (got.response, got.reset)
    trailers = {n.decode(): v.decode() for n, v in got.trailers or []}
    assert trailers.get("x-sha256") == hashlib.sha256(payload).hexdigest(), trailers
    assert json.loads(trailers["x-request-trailers"]) == [["x-client-trailer", "yes"]]


@pytest.mark.needs_tool("curl")
def test_drain_sends_goaway_and_lets_requests_finish(mesh, backends):
    """Last: the waypoint exits. python-hyper's h2 drops the streams a GOAWAY lets
    finish, so the clients are curl and meshcore's own HTTP/2 client."""
    async def run():
        reader, writer = await mesh.socks5(mesh.vip, H2_PORT)
        conn = HboneConnection(client=True)
        writer.transport.set_protocol(conn)
        conn.connection_made(writer.transport)
        exchange = send_request(conn, "GET", "/slow-drain", authority=f"{mesh.vip}:{H2_PORT}", scheme="http",
                                end_stream=True)
        other = subprocess.Popen(["curl", "-sS", "-m", "10", "--interface", mesh.client, "--socks5",
                                  f"{mesh.node['node-a']}:15080", "--http2-prior-knowledge", "-w", " %{http_code}",
                                  f"http://{mesh.vip}:{H2_PORT}/slow-drain"], stdout=subprocess.PIPE, text=True)
        await asyncio.sleep(0.4)
        mesh.processes["waypoint"].send_signal(signal.SIGTERM)
        response = await asyncio.wait_for(exchange.response(), 10)
        body = await asyncio.wait_for(exchange.read_all(), 10)
        await asyncio.wait_for(conn.closed, 10)
        return response.status, body, conn.goaway, await asyncio.to_thread(other.communicate, timeout=10)
    status, body, goaway, (curl_out, _) = asyncio.run(run())
    assert status == 200 and b'"/slow-drain"' in body
    assert goaway                                      # told before its request finished
    assert curl_out.endswith(" 200") and '"/slow-drain"' in curl_out, curl_out
    assert mesh.processes["waypoint"].wait(10) == 0
