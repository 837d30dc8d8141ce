"""A DestinationRule's connectionPool as the waypoint applies it to how it reaches a
destination, as processes (tests/support/waypoint_mesh.py with
tests/support/echo_backends.py behind node-b).

    hasty, retried   tcp.connectTimeout 300ms; their endpoint `silent` is on a node that
                     accepts TCP on its HBONE port and never answers (the test's own
                     listener): every connect to it times out. `hasty`'s VirtualService
                     turns retries off, `retried` keeps Istio's default (2, on
                     connect-failure among others)
    flaky            http.maxRetries 1; its endpoint `bad` answers 503; its
                     VirtualService retries 5xx once
    narrow           http.maxConcurrentStreams 2; endpoint `one`, HTTP/2 on port 81
    upgraded         h2UpgradePolicy UPGRADE; port 80 declares http and reaches `one`'s
                     HTTP/2-only (h2c) port
    clientproto      useClientProtocol; port 80 declares http2 and reaches `one`'s
                     HTTP/1.1 port, port 81 declares http and reaches its h2c port

Each of the first four declares http on port 80 and http2 on 81, so every pool of the
waypoint's is reached (an HTTP/1.1 client's own connections, the shared HTTP/1.1 and
HTTP/2 ones)."""
import asyncio
import json
import re
import socket
import threading
import time
from collections import Counter

import pytest

from h2http import Endpoint, Received, open_request
from meshcore.localmesh import LocalMesh
from waypoint_mesh import WaypointMesh, running

pytestmark = pytest.mark.timeout(120)

SERVICES = ("hasty", "retried", "flaky", "narrow")

CONFIG = """\
---
workloads:
- {{uid: c/one, name: one, namespace: shop, serviceAccount: one, workloadIps: ["{one}"], protocol: HBONE,
   node: node-b, services: {{"shop/narrow.shop.svc.cluster.local": {{80: 8080, 81: 8081}},
                             "shop/upgraded.shop.svc.cluster.local": {{80: 8081}},
                             "shop/clientproto.shop.svc.cluster.local": {{80: 8080, 81: 8081}}}}}}
- {{uid: c/bad, name: bad, namespace: shop, serviceAccount: bad, workloadIps: ["{bad}"], protocol: HBONE,
   node: node-b, services: {{"shop/flaky.shop.svc.cluster.local": {{80: 8080, 81: 8081}}}}}}
- {{uid: c/silent, name: silent, namespace: shop, serviceAccount: silent, workloadIps: ["{silent}"], protocol: HBONE,
   node: node-c, services: {{"shop/hasty.shop.svc.cluster.local": {{80: 8080, 81: 8081}},
                             "shop/retried.shop.svc.cluster.local": {{80: 8080, 81: 8081}}}}}}
services:
{services}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: hasty, namespace: shop}}
spec:
  host: hasty
  trafficPolicy: {{connectionPool: {{tcp: {{connectTimeout: 300ms}}}}}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: retried, namespace: shop}}
spec:
  host: retried
  trafficPolicy: {{connectionPool: {{tcp: {{connectTimeout: 300ms}}}}}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: flaky, namespace: shop}}
spec:
  host: flaky
  trafficPolicy: {{connectionPool: {{http: {{maxRetries: 1}}}}}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: narrow, namespace: shop}}
spec:
  host: narrow
  trafficPolicy: {{connectionPool: {{http: {{maxConcurrentStreams: 2}}}}}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: upgraded, namespace: shop}}
spec:
  host: upgraded
  trafficPolicy: {{connectionPool: {{http: {{h2UpgradePolicy: UPGRADE}}}}}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: clientproto, namespace: shop}}
spec:
  host: clientproto
  trafficPolicy: {{connectionPool: {{http: {{useClientProtocol: true}}}}}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: hasty, namespace: shop}}
spec:
  hosts: [hasty]
  http:
  - retries: {{attempts: 0}}
    route: [{{destination: {{host: hasty}}}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: flaky, namespace: shop}}
spec:
  hosts: [flaky]
  http:
  - retries: {{attempts: 1, retryOn: 5xx}}
    route: [{{destination: {{host: flaky}}}}]
"""


class SilentNode:
    """A listener on an HBONE port that takes every connection and never says a word:
    the waypoint's TLS handshake on it never completes. `accepted` counts them."""

    def __init__(self, host):
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((host, 15008))
        self.sock.listen(64)
        self.sock.settimeout(0.1)
        self.held, self.stop = [], threading.Event()
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    @property
    def accepted(self):
        return len(self.held)

    def _accept(self):
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except (TimeoutError, OSError):
                continue
            self.held.append(conn)

    def close(self):
        self.stop.set()
        self.thread.join()
        for conn in (*self.held, self.sock):
            conn.close()


@pytest.fixture(scope="module")
def mesh(tmp_path_factory):
    m = WaypointMesh(tmp_path_factory.mktemp("waypoint-pool"))
    n = m.web.split(".")[1]
    m.one, m.bad, m.silent = f"127.{n}.3.1", f"127.{n}.3.3", f"127.{n}.3.9"
    ports = {name: ("{80: 8080, 81: 8081}", "{80: http, 81: http2}") for name in SERVICES}
    ports.update(upgraded=("{80: 8081}", "{80: http}"), clientproto=("{80: 8080, 81: 8081}", "{80: http2, 81: http}"))
    m.vips = {name: f"127.{n}.13.{i}" for i, name in enumerate(ports, start=1)}
    services = "\n".join(
        f'- {{name: {name}, namespace: shop, hostname: {name}.shop.svc.cluster.local, vips: ["/{m.vips[name]}"], '
        f'ports: {targets}, appProtocols: {declared}, '
        f'waypoint: {{destination: "/{m.waypoint}", hboneMtlsPort: 15008}}}}'
        for name, (targets, declared) in ports.items())
    m.config.write_text(m.config.read_text() + CONFIG.format(one=m.one, bad=m.bad, silent=m.silent,
                                                            services=services))
    silent = m.silent_node = SilentNode(m.silent)
    try:
        with running(m, ["--http", f"one={m.one}:8080", "--h2", f"one={m.one}:8081",
                         "--http", f"bad={m.bad}:8080:503"]):
            yield m
    finally:
        silent.close()


# -- clients: requests at once ---------------------------------------------------------------

async def _http1(mesh, host, port, path, headers):
    """One request on its own HTTP/1.1 connection: (status, body)."""
    reader, writer = await mesh.socks5(host, port)
    try:
        writer.write((f"GET {path} HTTP/1.1\r\nhost: {host}\r\n"
                      + "".join(f"{k}: {v}\r\n" for k, v in headers) + "\r\n").encode())
        head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
        fields = dict((n.strip().lower(), v.strip()) for n, _, v in (line.partition(":") for line in head[1:] if line))
        if "chunked" in fields.get("transfer-encoding", ""):
            body = bytearray()
            while size := int((await reader.readuntil(b"\r\n")).split(b";")[0], 16):
                body += (await reader.readexactly(size + 2))[:-2]
        else:
            body = await reader.readexactly(int(fields.get("content-length", "0")))
        return int(head[0].split()[1]), bytes(body)
    finally:
        writer.close()


async def _http2(mesh, host, port, paths, headers):
    """The requests as streams of one HTTP/2 connection, all at once: [(status, body)]."""
    reader, writer = await mesh.socks5(host, port)
    ep = Endpoint(reader, writer, client=True)
    ep.task = asyncio.get_running_loop().create_task(ep.run())
    try:
        sids = [open_request(ep, "GET", path, f"{host}:{port}", list(headers), end=True) for path in paths]
        got = await asyncio.gather(*(Received().collect(ep.queue(sid)) for sid in sids))
        return [(g.response[0], bytes(g.body)) for g in got]
    finally:
        writer.close()


def send(mesh, service, client, port, paths, headers=()):
    """`paths` sent to `service`:`port` at once (an HTTP/1.1 connection each, or streams
    of one HTTP/2 connection): [(status, body)] in their order."""
    host = mesh.vips[service]

    async def run():
        if client == "http2":
            return await asyncio.wait_for(_http2(mesh, host, port, paths, headers), 30)
        return await asyncio.wait_for(asyncio.gather(*(_http1(mesh, host, port, p, headers) for p in paths)), 30)
    return asyncio.run(run())


def flags(mesh, path):
    """The response flags of the waypoint's access-log line for `path` ("" for none),
    once it is written."""
    deadline = time.monotonic() + 5
    while True:
        lines = [line for line in mesh.log("waypoint").splitlines() if f'http.path="{path}"' in line]
        if lines:
            found = re.search(r'response_flags="([^"]*)"', lines[-1])
            return found.group(1) if found else ""
        assert time.monotonic() < deadline, f"no access-log line for {path}"
        time.sleep(0.05)


PAIRINGS = [("http1", 80), ("http2", 80), ("http1", 81), ("http2", 81)]


# -- tcp.connectTimeout --------------------------------------------------------------------------

@pytest.mark.parametrize("client, port", PAIRINGS)
def test_a_connect_past_the_rules_connect_timeout_is_a_connect_failure(mesh, client, port):
    # the waypoint's own --connect-timeout is 10 s: the rule's 300ms is what ends it
    before = mesh.silent_node.accepted
    path = f"/hasty/{client}/{port}"
    started = time.monotonic()
    (status, body), = send(mesh, "hasty", client, port, [path])
    elapsed = time.monotonic() - started
    assert (status, body) == (503, b"upstream connect error"), (status, body)
    assert 0.3 <= elapsed < 2.0, elapsed
    assert flags(mesh, path) == "UF"
    assert mesh.silent_node.accepted - before == 1


@pytest.mark.parametrize("client, port", [("http1", 80), ("http2", 81)])
def test_a_connect_timeout_is_retried_as_a_connect_failure(mesh, client, port):
    before = mesh.silent_node.accepted
    path = f"/retried/{client}/{port}"
    started = time.monotonic()
    (status, body), = send(mesh, "retried", client, port, [path])
    elapsed = time.monotonic() - started
    # Istio's default retry policy: two more attempts, each cut at 300ms
    assert (status, body) == (503, b"upstream connect error"), (status, body)
    assert 0.9 <= elapsed < 3.0, elapsed
    assert flags(mesh, path) == "UF,URX"                # as Envoy logs a connect failure past its retries
    assert mesh.silent_node.accepted - before == 3


# -- http.maxRetries -------------------------------------------------------------------------------

def seen(address, prefix):
    status, body = LocalMesh.http_get(address, 8080, "/__seen")[:2]
    assert status == 200, body
    return [r["path"] for r in json.loads(body) if r["path"].startswith(prefix)]


@pytest.mark.parametrize("client", ["http1", "http2"])
def test_max_retries_bounds_the_retries_under_way_to_a_destination(mesh, client):
    # four requests at once, each answered 503 after 1.5 s: one retry may be under way,
    # the other three get their 503 as it came, flagged UO
    paths = [f"/flaky/{client}/{i}" for i in range(4)]
    answers = send(mesh, "flaky", client, 80, paths, headers=[("x-delay-ms", "1500")])
    assert [status for status, _ in answers] == [503] * 4, answers
    attempts = Counter(seen(mesh.bad, f"/flaky/{client}/"))
    assert sorted(attempts.values()) == [1, 1, 1, 2], attempts
    retried, = (path for path, n in attempts.items() if n == 2)
    assert {path: flags(mesh, path) for path in paths if path != retried} == {
        path: "UO" for path in paths if path != retried}
    assert "UO" not in flags(mesh, retried)


# -- http.maxConcurrentStreams -----------------------------------------------------------------

@pytest.mark.parametrize("client", ["http1", "http2"])
def test_max_concurrent_streams_opens_another_http2_connection_for_more_requests_at_once(mesh, client):
    answers = send(mesh, "narrow", client, 81, [f"/narrow/{client}/{i}" for i in range(5)],
                   headers=[("x-delay-ms", "1500")])
    assert [status for status, _ in answers] == [200] * 5, answers
    # each upstream connection is one TCP connection of the backend's: five requests at
    # once, two streams each, take three
    carried = Counter(json.loads(body)["connection"] for _, body in answers)
    assert len(carried) == 3 and max(carried.values()) == 2, carried


# -- h2UpgradePolicy, useClientProtocol ----------------------------------------------------------

@pytest.mark.parametrize("service, client, port, backend", [
    # an HTTP/1.1 client's request upgraded to HTTP/2 for a port declared http: only h2c
    # answers there, so without the upgrade it fails
    ("upgraded", "http1", 80, "h2"),
    # the client's own version, whatever the port declares: HTTP/1.1 to a port declared
    # http2 (only HTTP/1.1 answers there), HTTP/2 to one declared http (only h2c there)
    ("clientproto", "http1", 80, "http/1.1"),
    ("clientproto", "http2", 81, "h2"),
])
def test_a_destination_rule_chooses_the_http_version_the_backend_gets(mesh, service, client, port, backend):
    answers = send(mesh, service, client, port, [f"/{service}/{client}"])
    assert [status for status, _ in answers] == [200], answers
    assert json.loads(answers[0][1])["protocol"] == backend
