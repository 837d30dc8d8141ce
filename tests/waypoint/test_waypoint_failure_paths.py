"""The waypoint's request path where it fails: endpoints that cannot be reached or do
not answer, attempts that time out, clients that leave, requests that must not be sent
twice, and what gRPC and HTTP/1.1 backends get; through a waypoint process
(tests/support/waypoint_mesh.py).

The mesh adds to WaypointMesh's:
- h2pair: a waypoint-bound service whose port 80 declares http2, with two endpoints:
  web (the h2 backend on 8081) and `ghost` (its node is gone: dialing it fails at
  once), and a DestinationRule (ROUND_ROBIN, consecutive5xxErrors: 1);
- sink: a waypoint-bound service whose only endpoint's HBONE port accepts TCP and
  never answers the TLS handshake (a black-holed endpoint), with a VirtualService
  timeout of 0.5 s;
- a VirtualService on web: /slow-drain (the h2 backend answers after 1 s) with
  retries {attempts: 2, perTryTimeout: 200ms, retryOn: 5xx} under a 5 s timeout;
- dup (port 80 declared http): DropSecond on web:8095 (the second request on a
  connection is read, then the connection closed unanswered), /delayed with a 0.5 s
  injected delay;
- grpcghost (declared grpc): its only endpoint is ghost;
- slowpair: web:8096 (reads, never answers) and a second workload web2, ROUND_ROBIN,
  consecutive5xxErrors: 1, a 0.3 s route timeout.
"""
import asyncio
import socket
import subprocess
import threading
import time

import pytest

from meshcore.localmesh import LocalMesh
from h2http import Endpoint, Received, open_request
from test_waypoint_http2 import Backends
from waypoint_mesh import WaypointMesh

pytestmark = pytest.mark.timeout(120)

EXTRA = """\
---
workloads:
- {{uid: c/ghost, name: ghost, namespace: shop, serviceAccount: web, workloadIps: ["{ghost}"], protocol: HBONE,
   node: node-c, services: {{"shop/h2pair.shop.svc.cluster.local": {{80: 8081}},
                             "shop/grpcghost.shop.svc.cluster.local": {{80: 50051}}}}}}
- {{uid: c/web2, name: web2, namespace: shop, serviceAccount: web, workloadIps: ["{web2}"], protocol: HBONE,
   node: node-b, services: {{"shop/slowpair.shop.svc.cluster.local": {{80: 8080}}}}}}
- {{uid: c/sink, name: sink, namespace: shop, serviceAccount: web, workloadIps: ["{sink}"], protocol: HBONE,
   node: node-s, services: {{"shop/sink.shop.svc.cluster.local": {{80: 8080}}}}}}
services:
- {{name: h2pair, namespace: shop, hostname: h2pair.shop.svc.cluster.local, vips: ["/{vip_pair}"], ports: {{80: 8081}},
   appProtocols: {{80: http2}}, waypoint: {{destination: "/{waypoint}", hboneMtlsPort: 15008}}}}
- {{name: grpcghost, namespace: shop, hostname: grpcghost.shop.svc.cluster.local, vips: ["/{vip_grpc}"],
   ports: {{80: 50051}}, appProtocols: {{80: grpc}}, waypoint: {{destination: "/{waypoint}", hboneMtlsPort: 15008}}}}
- {{name: slowpair, namespace: shop, hostname: slowpair.shop.svc.cluster.local, vips: ["/{vip_slow}"],
   ports: {{80: 8080}}, waypoint: {{destination: "/{waypoint}", hboneMtlsPort: 15008}}}}
- {{name: dup, namespace: shop, hostname: dup.shop.svc.cluster.local, vips: ["/{vip_dup}"], ports: {{80: 8095}},
   appProtocols: {{80: http}},
   waypoint: {{destination: "/{waypoint}", hboneMtlsPort: 15008}}}}
- {{name: sink, namespace: shop, hostname: sink.shop.svc.cluster.local, vips: ["/{vip_sink}"], ports: {{80: 8080}},
   waypoint: {{destination: "/{waypoint}", hboneMtlsPort: 15008}}}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: h2pair, namespace: shop}}
spec:
  host: h2pair.shop.svc.cluster.local
  trafficPolicy:
    loadBalancer: {{simple: ROUND_ROBIN}}
    outlierDetection: {{consecutive5xxErrors: 1, interval: 1s, baseEjectionTime: 60s, maxEjectionPercent: 100}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: slowpair, namespace: shop}}
spec:
  host: slowpair.shop.svc.cluster.local
  trafficPolicy:
    loadBalancer: {{simple: ROUND_ROBIN}}
    outlierDetection: {{consecutive5xxErrors: 1, interval: 1s, baseEjectionTime: 60s, maxEjectionPercent: 100}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: slowpair, namespace: shop}}
spec:
  hosts: [slowpair]
  http:
  - timeout: 0.3s
    route: [{{destination: {{host: slowpair}}}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: dup, namespace: shop}}
spec:
  hosts: [dup]
  http:
  - match: [{{uri: {{exact: /delayed}}}}]
    fault: {{delay: {{fixedDelay: 0.5s, percentage: {{value: 100}}}}}}
    route: [{{destination: {{host: dup}}}}]
  - route: [{{destination: {{host: dup}}}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: sink, namespace: shop}}
spec:
  hosts: [sink]
  http:
  - timeout: 0.5s
    route: [{{destination: {{host: sink}}}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: web, namespace: shop}}
spec:
  hosts: [web]
  http:
  - match: [{{uri: {{exact: /slow-drain}}}}]
    timeout: 5s
    retries: {{attempts: 2, perTryTimeout: 200ms, retryOn: 5xx}}
    route: [{{destination: {{host: web}}}}]
  - route: [{{destination: {{host: web}}}}]
"""


class DropSecond:
    """An HTTP/1.1 backend: the first request on a connection is answered 200 (kept
    alive); a later one is read, counted, and the connection closed without an answer
    (a backend that crashed while processing it)."""

    def __init__(self, host, port):
        self.seen: list[str] = []
        self.heads: dict[str, bytes] = {}
        self.server = socket.create_server((host, port))
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        while True:
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            threading.Thread(target=self._handle, args=(conn,), daemon=True).start()

    def _handle(self, conn):
        buf, n = b"", 0
        with conn:
            while True:
                while b"\r\n\r\n" not in buf:
                    data = conn.recv(65536)
                    if not data:
                        return
                    buf += data
                head, buf = buf.split(b"\r\n\r\n", 1)
                n += 1
                self.seen.append(head.split(b" ")[1].decode())
                self.heads[self.seen[-1]] = head
                if n > 1:
                    return
                conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")


class Mute:
    """An HTTP/1.1 backend that reads requests and never answers."""

    def __init__(self, host, port):
        self.server = socket.create_server((host, port))
        self.held = []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        while True:
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            self.held.append(conn)


@pytest.fixture(scope="module")
def mesh(tmp_path_factory):
    m = WaypointMesh(tmp_path_factory.mktemp("waypoint-failure-paths"))
    octet = m.web.split(".")[1]
    m.ghost, m.sink = f"127.{octet}.2.9", f"127.{octet}.2.8"
    m.vip_pair, m.vip_sink, m.vip_dup = f"127.{octet}.10.6", f"127.{octet}.10.7", f"127.{octet}.10.8"
    m.vip_grpc, m.vip_slow, m.web2 = f"127.{octet}.10.9", f"127.{octet}.10.11", f"127.{octet}.2.2"
    m.mute = Mute(m.web, 8096)
    m.dup = DropSecond(m.web, 8095)
    # the blackhole: TCP accepted on the sink's HBONE port, never a TLS byte back
    m.hole = socket.create_server((m.sink, 15008))
    m.held = []
    text = m.config.read_text().replace('services: {"shop/web.shop.svc.cluster.local": {',
                                        'services: {"shop/h2pair.shop.svc.cluster.local": {80: 8081}, '
                                        '"shop/dup.shop.svc.cluster.local": {80: 8095}, '
                                        '"shop/slowpair.shop.svc.cluster.local": {80: 8096}, "shop/web.shop.svc.cluster.local": {', 1)
    m.config.write_text(text + EXTRA.format(ghost=m.ghost, sink=m.sink, vip_pair=m.vip_pair, vip_sink=m.vip_sink, vip_dup=m.vip_dup,
                                            vip_grpc=m.vip_grpc, vip_slow=m.vip_slow, web2=m.web2,
                                            waypoint=m.waypoint))
    try:
        m._spawn("web2", ["-m", "meshcore.localworkload", "--name", "web2", "--http", f"{m.web2}:8080"])
        m.start()
        deadline = time.monotonic() + 10
        while LocalMesh.http_get(m.web2, 8080, "/")[0] != 200:
            assert time.monotonic() < deadline, m.log("web2")
            time.sleep(0.05)
    except BaseException:
        m.stop()
        m.hole.close()
        raise
    yield m
    m.stop()
    m.hole.close()
    m.dup.server.close()
    m.mute.server.close()


@pytest.fixture(scope="module")
def backends(mesh):
    b = Backends(mesh)
    try:
        yield b.start()
    finally:
        b.stop()


def curl(mesh, *args, limit="20"):
    got = subprocess.run(["curl", "-sS", "-m", limit, "-i", "--interface", mesh.client, "--socks5",
                          f"{mesh.node['node-a']}:15080", *args], capture_output=True, text=True)
    if got.returncode != 0:
        return None, {}, got.stderr
    head, _, body = got.stdout.replace("\r\n", "\n").partition("\n\n")
    lines = head.split("\n")
    return int(lines[0].split()[1]), {k.lower(): v for k, v in (line.split(": ", 1) for line in lines[1:])}, body


async def h2_get(mesh, port, path, headers=(), host=None, method="GET"):
    host = host or mesh.vip
    reader, writer = await mesh.socks5(host, port)
    ep = Endpoint(reader, writer, client=True)
    ep.task = asyncio.get_running_loop().create_task(ep.run())
    sid = open_request(ep, method, path, f"{host}:{port}", headers=headers, end=True)
    got = await asyncio.wait_for(Received().collect(ep.queue(sid)), 15)
    writer.close()
    return got


@pytest.mark.needs_tool("curl")
def test_http1_client_of_http2_backend_retries_connect_failure_and_ejects(mesh, backends):
    # round robin over web and ghost: Envoy retries ghost's connect failure on web and
    # consecutive5xxErrors: 1 ejects ghost, so every request is answered 200
    answers = [curl(mesh, "--http1.1", f"http://{mesh.vip_pair}/pair{i}") for i in range(8)]
    assert [a[0] for a in answers] == [200] * 8, [(a[0], a[2][:80]) for a in answers]


@pytest.mark.needs_tool("curl")
def test_the_route_timeout_covers_connecting_to_the_endpoint(mesh):
    started = time.monotonic()
    status, _, body = curl(mesh, f"http://{mesh.vip_sink}/x", limit="6")
    elapsed = time.monotonic() - started
    assert (status, body) == (504, "upstream request timeout") and elapsed < 2.0, (status, body, elapsed)


def test_per_try_timeout_ends_each_attempt(mesh, backends):
    # each try is cut at 200 ms and retried (5xx covers a per-try timeout), 3 tries: a
    # 504 well before the backend's 1 s answer
    started = time.monotonic()
    got = asyncio.run(h2_get(mesh, 81, "/slow-drain"))
    elapsed = time.monotonic() - started
    assert got.response[0] == 504 and elapsed < 0.95, (got.response, bytes(got.body)[:100], elapsed)


def test_first_attempt_carries_x_envoy_attempt_count(mesh, backends):
    got = asyncio.run(h2_get(mesh, 81, "/first-attempt"))
    assert got.response[0] == 200
    assert backends.seen["/first-attempt"].get("x-envoy-attempt-count") == "1", backends.seen["/first-attempt"]


def test_an_http1_client_leaving_resets_its_http2_upstream_stream(mesh, backends):
    async def run():
        reader, writer = await mesh.socks5(mesh.vip, 82)
        writer.write(f"GET /hang HTTP/1.1\r\nhost: {mesh.vip}:82\r\n\r\n".encode())
        await writer.drain()
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)     # the backend's 200 head
        writer.close()                                                       # the client leaves
        deadline = time.monotonic() + 3
        while "/hang" not in backends.resets and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        return head
    head = asyncio.run(run())
    assert head.startswith(b"HTTP/1.1 200"), head
    assert "/hang" in backends.resets, "the backend's stream was never reset after the client left"


@pytest.mark.needs_tool("curl")
def test_a_request_the_backend_took_is_not_sent_twice(mesh):
    # two POSTs on one client connection: the second reuses the upstream connection,
    # whose backend reads it and closes without answering. Envoy answers 503 UC (the
    # default retry policy has no `reset`); the backend must see /drop once
    status, _, body = curl(mesh, "-X", "POST", f"http://{mesh.vip_dup}/first", f"http://{mesh.vip_dup}/drop")
    assert mesh.dup.seen.count("/drop") == 1, (mesh.dup.seen, status, body)


def test_a_grpc_call_whose_upstream_fails_gets_a_grpc_local_reply(mesh):
    got = asyncio.run(h2_get(mesh, 80, "/meshcore.test.Echo/Unary", host=mesh.vip_grpc, method="POST",
                             headers=[("content-type", "application/grpc"), ("te", "trailers")]))
    status, fields = got.response[0], dict(got.response[1])
    assert (status, fields.get(b"grpc-status")) == (200, b"14"), (got.response, bytes(got.body))


@pytest.mark.needs_tool("curl")
def test_an_endpoint_that_times_out_is_ejected(mesh):
    # round robin over web:8096 (reads, never answers) and web2: the first timeout
    # ejects web (consecutive5xxErrors: 1), after which web2 answers every request
    first = [curl(mesh, f"http://{mesh.vip_slow}/warm{i}")[0] for i in range(2)]
    assert sorted(first) == [200, 504], first
    after = [curl(mesh, f"http://{mesh.vip_slow}/after{i}")[0] for i in range(6)]
    assert after == [200] * 6, after


def test_http2_cookie_crumbs_are_joined_for_an_http1_backend(mesh):
    got = asyncio.run(h2_get(mesh, 80, "/cookies", host=mesh.vip_dup, headers=[("cookie", "a=1"), ("cookie", "b=2")]))
    assert got.response[0] == 200, got.response
    lines = [line.lower() for line in mesh.dup.heads["/cookies"].split(b"\r\n") if line.lower().startswith(b"cookie:")]
    assert lines == [b"cookie: a=1; b=2"], lines


def test_a_request_whose_http1_client_left_during_a_delay_is_not_sent(mesh):
    async def run():
        reader, writer = await mesh.socks5(mesh.vip_dup, 80)
        writer.write(f"POST /delayed HTTP/1.1\r\nhost: {mesh.vip_dup}\r\n\r\n".encode())
        await writer.drain()
        await asyncio.sleep(0.1)
        writer.close()                       # the client gives up during the 0.5 s delay
        await asyncio.sleep(1.5)
    asyncio.run(run())
    assert "/delayed" not in mesh.dup.seen, mesh.dup.seen
