"""The waypoint's upstream connections and mirror copies, as processes
(tests/support/waypoint_mesh.py with tests/support/echo_backends.py behind node-b: each
answer says which of the backend's TCP connections carried it, and the size and SHA-256
of the body it received).

Services `once`, `thrice`, `brief`, `aged` and `plain` have one endpoint, `one`,
HTTP/1.1 on port 80 and HTTP/2 on 81; their DestinationRules set connectionPool
maxRequestsPerConnection 1 and 3, idleTimeout 500ms and maxConnectionDuration 1s
(`plain` has none). Every
pairing of client and backend HTTP versions goes through its own pool in the waypoint
(an HTTP/1.1 client's own connections, the shared HTTP/1.1 and HTTP/2 ones); each
upstream connection is one TCP connection the backend accepts (one HBONE tunnel, which
node-b dials on). `mirrored` routes /h1mirror to plain:80 with a copy to shadow:80
(endpoint `two`) and /h2mirror to plain:81 with a copy to shadow:81."""
import asyncio
import hashlib
import json
import os
import time
from collections import Counter

import pytest

from h2http import Endpoint, Received, open_request
from meshcore.localmesh import LocalMesh
from waypoint_mesh import WaypointMesh, running

pytestmark = pytest.mark.timeout(120)

PORTS = "{{80: 8080, 81: 8081}}"
SERVICES = ("once", "thrice", "brief", "aged", "plain", "mirrored")

CONFIG = """\
---
workloads:
- {{uid: c/one, name: one, namespace: shop, serviceAccount: one, workloadIps: ["{one}"], protocol: HBONE,
   node: node-b, services: {{{one_services}}}}}
- {{uid: c/two, name: two, namespace: shop, serviceAccount: two, workloadIps: ["{two}"], protocol: HBONE,
   node: node-b, services: {{"shop/shadow.shop.svc.cluster.local": {ports}}}}}
services:
{services}
- {{name: shadow, namespace: shop, hostname: shadow.shop.svc.cluster.local, vips: ["/{shadow}"], ports: {ports},
   appProtocols: {{80: http, 81: http2}}}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: once, namespace: shop}}
spec:
  host: once
  trafficPolicy: {{connectionPool: {{http: {{maxRequestsPerConnection: 1}}}}}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: thrice, namespace: shop}}
spec:
  host: thrice
  trafficPolicy: {{connectionPool: {{http: {{maxRequestsPerConnection: 3}}}}}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: brief, namespace: shop}}
spec:
  host: brief
  trafficPolicy: {{connectionPool: {{http: {{idleTimeout: 500ms}}}}}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: aged, namespace: shop}}
spec:
  host: aged
  trafficPolicy: {{connectionPool: {{tcp: {{maxConnectionDuration: 1s}}}}}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: mirrored, namespace: shop}}
spec:
  parentRefs: [{{group: "", kind: Service, name: mirrored, port: 80}}]
  rules:
  - matches: [{{path: {{type: PathPrefix, value: /h1mirror}}}}]
    filters: [{{type: RequestMirror, requestMirror: {{backendRef: {{name: shadow, port: 80}}}}}}]
    backendRefs: [{{name: plain, port: 80}}]
  - matches: [{{path: {{type: PathPrefix, value: /h2mirror}}}}]
    filters: [{{type: RequestMirror, requestMirror: {{backendRef: {{name: shadow, port: 81}}}}}}]
    backendRefs: [{{name: plain, port: 81}}]
"""


@pytest.fixture(scope="module")
def mesh(tmp_path_factory):
    m = WaypointMesh(tmp_path_factory.mktemp("waypoint-upstreams"))
    n = m.web.split(".")[1]
    m.one, m.two = f"127.{n}.3.1", f"127.{n}.3.2"
    m.vips = {name: f"127.{n}.12.{i}" for i, name in enumerate((*SERVICES, "shadow"), start=1)}
    services = "\n".join(
        f'- {{name: {name}, namespace: shop, hostname: {name}.shop.svc.cluster.local, vips: ["/{m.vips[name]}"], '
        f'ports: {{80: 8080, 81: 8081}}, appProtocols: {{{"" if name == "mirrored" else "80: http, 81: http2"}}}, '
        f'waypoint: {{destination: "/{m.waypoint}", hboneMtlsPort: 15008}}}}' for name in SERVICES)
    one_services = ", ".join(f'"shop/{name}.shop.svc.cluster.local": {{80: 8080, 81: 8081}}' for name in SERVICES)
    m.config.write_text(m.config.read_text() + CONFIG.format(
        one=m.one, two=m.two, one_services=one_services, services=services, shadow=m.vips["shadow"],
        ports=PORTS.format()))
    with running(m, ["--http", f"one={m.one}:8080", "--http", f"two={m.two}:8080",
                     "--h2", f"one={m.one}:8081", "--h2", f"two={m.two}:8081"]):
        yield m


# -- clients -------------------------------------------------------------------------------------

class Http1Client:
    """One keep-alive HTTP/1.1 connection from the client workload, through node-a."""

    def __init__(self, mesh, host, port):
        self.mesh, self.host, self.port = mesh, host, port
        self.reader = self.writer = None

    async def request(self, path, method="GET", body=b"", headers=()):
        if self.writer is None:
            self.reader, self.writer = await self.mesh.socks5(self.host, self.port)
        length = f"content-length: {len(body)}\r\n" if body or method == "POST" else ""
        self.writer.write((f"{method} {path} HTTP/1.1\r\nhost: {self.host}\r\n{length}"
                           + "".join(f"{k}: {v}\r\n" for k, v in headers) + "\r\n").encode())
        if body:
            self.writer.write(body)
        head = (await self.reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
        status = int(head[0].split()[1])
        fields = dict((n.strip().lower(), v.strip()) for n, _, v in (line.partition(":") for line in head[1:] if line))
        if "chunked" in fields.get("transfer-encoding", ""):
            data = bytearray()
            while size := int((await self.reader.readuntil(b"\r\n")).split(b";")[0], 16):
                data += (await self.reader.readexactly(size + 2))[:-2]
            await self.reader.readuntil(b"\r\n")
        else:
            data = await self.reader.readexactly(int(fields.get("content-length", "0")))
        return status, json.loads(data) if fields.get("x-backend") else bytes(data)

    def close(self):
        if self.writer is not None:
            self.writer.close()


class Http2Client:
    """One HTTP/2 connection (h2c, prior knowledge) from the client workload, through node-a."""

    def __init__(self, mesh, host, port):
        self.mesh, self.host, self.port = mesh, host, port
        self.ep = None

    async def request(self, path, method="GET", body=b"", headers=()):
        if self.ep is None:
            reader, writer = await self.mesh.socks5(self.host, self.port)
            self.ep = Endpoint(reader, writer, client=True)
            self.ep.task = asyncio.get_running_loop().create_task(self.ep.run())
        extra = [*headers, ("content-length", str(len(body)))] if method == "POST" else list(headers)
        sid = open_request(self.ep, method, path, f"{self.host}:{self.port}", extra, end=not body)
        if body:
            self.ep.send(sid, body, end=True)
        got = await Received().collect(self.ep.queue(sid))
        status, fields = got.response
        answer = bytes(got.body)
        return status, json.loads(answer) if dict(fields).get(b"x-backend") else answer

    def close(self):
        if self.ep is not None:
            self.ep.writer.close()


CLIENTS = {"http1": Http1Client, "http2": Http2Client}
# (client, the service port): every pool of the waypoint's
PAIRINGS = [("http1", 80), ("http2", 80), ("http1", 81), ("http2", 81)]


def requests(mesh, service, client, port, paths, pause=0.0, **kw):
    """Each path in turn on one client connection (`pause` seconds between them)."""
    async def run():
        c = CLIENTS[client](mesh, mesh.vips[service], port)
        answers = []
        try:
            for i, path in enumerate(paths):
                if i and pause:
                    await asyncio.sleep(pause)
                answers.append(await asyncio.wait_for(c.request(path, **kw), 30))
        finally:
            c.close()
        return answers
    return asyncio.run(run())


def connections(answers):
    """How many requests each of the backend's TCP connections carried, in order of use."""
    assert all(status == 200 for status, _ in answers), answers
    counts = Counter(echo["connection"] for _, echo in answers)
    return [counts[c] for c in dict.fromkeys(echo["connection"] for _, echo in answers)]


# -- maxRequestsPerConnection --------------------------------------------------------------------

@pytest.mark.parametrize("client, port", PAIRINGS)
def test_max_requests_per_connection_1_gives_every_request_its_own_upstream_connection(mesh, client, port):
    answers = requests(mesh, "once", client, port, [f"/once/{client}/{port}/{i}" for i in range(9)])
    assert connections(answers) == [1] * 9, [echo["connection"] for _, echo in answers]


@pytest.mark.parametrize("client, port", PAIRINGS)
def test_max_requests_per_connection_3_retires_each_upstream_connection_after_3(mesh, client, port):
    answers = requests(mesh, "thrice", client, port, [f"/thrice/{client}/{port}/{i}" for i in range(9)])
    assert connections(answers) == [3, 3, 3], [echo["connection"] for _, echo in answers]


@pytest.mark.parametrize("client, port", PAIRINGS)
def test_without_a_limit_one_upstream_connection_carries_every_request(mesh, client, port):
    answers = requests(mesh, "plain", client, port, [f"/plain/{client}/{port}/{i}" for i in range(9)])
    assert connections(answers) == [9], [echo["connection"] for _, echo in answers]


# -- idleTimeout ---------------------------------------------------------------------------------

@pytest.mark.parametrize("client, port", PAIRINGS)
def test_an_upstream_connection_idle_past_its_idle_timeout_is_closed_and_a_busy_one_kept(mesh, client, port):
    # 500ms: requests one after the other keep their connection; after 1.2 s idle, a new one
    quick = requests(mesh, "brief", client, port, [f"/brief/quick/{client}/{port}/{i}" for i in range(3)])
    assert connections(quick) == [3], quick
    idle = requests(mesh, "brief", client, port, [f"/brief/idle/{client}/{port}/{i}" for i in range(3)], pause=1.2)
    assert connections(idle) == [1, 1, 1], [echo["connection"] for _, echo in idle]
    # the same pauses to a destination with Envoy's default (1 hour) keep the connection
    kept = requests(mesh, "plain", client, port, [f"/plain/idle/{client}/{port}/{i}" for i in range(2)], pause=1.2)
    assert connections(kept) == [2], kept


# -- maxConnectionDuration ----------------------------------------------------------------------

@pytest.mark.parametrize("client, port", PAIRINGS)
def test_an_upstream_connection_past_its_maximum_duration_takes_no_new_request(mesh, client, port):
    # a request every 0.25 s for 2 s: a connection serves those of its first second, then
    # the next one does
    started = time.monotonic()
    answers = requests(mesh, "aged", client, port, [f"/aged/{client}/{port}/{i}" for i in range(9)], pause=0.25)
    elapsed = time.monotonic() - started
    counts = connections(answers)
    assert 2 <= len(counts) <= int(elapsed) + 2 and counts[0] >= 2, (counts, elapsed)


# -- mirrors of large bodies ---------------------------------------------------------------------

def seen(address, prefix):
    status, body = LocalMesh.http_get(address, 8080, "/__seen")[:2]
    assert status == 200, body
    return [r for r in json.loads(body) if r["path"].startswith(prefix)]


def wait_for(predicate, what, timeout=15):
    deadline = time.monotonic() + timeout
    while not (got := predicate()):
        assert time.monotonic() < deadline, what()
        time.sleep(0.05)
    return got


MIRRORINGS = [("http1", "/h1mirror"), ("http1", "/h2mirror"), ("http2", "/h1mirror"), ("http2", "/h2mirror")]


@pytest.mark.parametrize("client, route", MIRRORINGS)
def test_a_mirror_receives_a_1_mib_body_whole_as_it_streams_to_the_primary(mesh, client, route):
    body = os.urandom(1 << 20)
    digest = hashlib.sha256(body).hexdigest()
    path = f"{route}/big/{client}"
    (status, echo), = requests(mesh, "mirrored", client, 80, [path], method="POST", body=body)
    assert status == 200 and echo["backend"] == "one", echo
    assert (echo["size"], echo["sha256"]) == (len(body), digest)
    copy, = wait_for(lambda: seen(mesh.two, path), lambda: f"{path} was not mirrored to shadow")
    # Envoy's shadow: the host with -shadow appended
    host = copy["authority"] if copy["protocol"] == "h2" else copy["headers"]["host"]
    assert copy["method"] == "POST" and "-shadow" in host, copy
    assert (copy["size"], copy["sha256"]) == (len(body), digest), {k: copy[k] for k in ("size", "protocol")}
    assert copy["protocol"] == ("h2" if route == "/h2mirror" else "http/1.1")


def fds(pid):
    return len(os.listdir(f"/proc/{pid}/fd"))


def abandoned_copies(mesh, reason):
    """The waypoint's count of copies to the shadow service abandoned for `reason`, from /metrics."""
    series = (f'meshcore_waypoint_mirror_abandoned_total{{destination_service="shadow.shop.svc.cluster.local",'
              f'reason="{reason}"}} ')
    metrics = LocalMesh.http_get(mesh.waypoint, 15020, "/metrics")[1]
    return next((float(line[len(series):]) for line in metrics.splitlines() if line.startswith(series)), 0.0)


@pytest.mark.parametrize("client, route", MIRRORINGS)
def test_a_mirror_that_stops_reading_never_slows_the_primary_and_its_copy_is_abandoned(mesh, client, route):
    waypoint = mesh.processes["waypoint"].pid
    # warm: the connections a request needs, so that what stays open after is the same
    requests(mesh, "mirrored", client, 80, [f"{route}/warm/{client}"], method="POST", body=b"x")
    wait_for(lambda: seen(mesh.two, f"{route}/warm/{client}"), lambda: "the warm-up was not mirrored")
    before = fds(waypoint)
    abandoned = mesh.log("waypoint").count("abandoned")
    counted = abandoned_copies(mesh, "behind")
    # far more than the windows and socket buffers between the waypoint and a backend
    # that reads nothing hold, and than the copy may fall behind
    body = os.urandom(48 << 20)
    path = f"{route}/stalled/{client}"
    started = time.monotonic()
    (status, echo), = requests(mesh, "mirrored", client, 80, [path], method="POST", body=body,
                               headers=(("x-stall-backend", "two"),))
    elapsed = time.monotonic() - started
    assert status == 200 and echo["size"] == len(body) and echo["sha256"] == hashlib.sha256(body).hexdigest()
    assert elapsed < 20, elapsed               # the backend holds the copy's connection for 30 s
    stalled, = wait_for(lambda: seen(mesh.two, path), lambda: "the copy never reached the mirror")
    assert stalled.get("stalled"), stalled
    lines = wait_for(lambda: [line for line in mesh.log("waypoint").splitlines()
                              if "mirror copy to" in line and "abandoned" in line][abandoned:],
                     lambda: mesh.log("waypoint")[-2000:])
    assert "behind" in lines[0], lines
    assert abandoned_copies(mesh, "behind") == counted + 1
    # the abandoned copy's connection is gone: the waypoint holds what it held before
    wait_for(lambda: fds(waypoint) <= before, lambda: (fds(waypoint), before))


@pytest.mark.parametrize("client, route", MIRRORINGS)
def test_a_client_that_leaves_mid_body_takes_its_mirror_copy_with_it(mesh, client, route):
    path = f"{route}/cut/{client}"
    abandoned = mesh.log("waypoint").count("did not end whole")

    async def cut():
        part = os.urandom(256 << 10)
        if client == "http1":
            reader, writer = await mesh.socks5(mesh.vips["mirrored"], 80)
            writer.write(f"POST {path} HTTP/1.1\r\nhost: mirrored\r\ncontent-length: {1 << 20}\r\n\r\n".encode()
                         + part)
            await writer.drain()
            await asyncio.sleep(0.3)
            writer.transport.abort()
        else:
            reader, writer = await mesh.socks5(mesh.vips["mirrored"], 80)
            ep = Endpoint(reader, writer, client=True)
            ep.task = asyncio.get_running_loop().create_task(ep.run())
            sid = open_request(ep, "POST", path, "mirrored:80", [("content-length", str(1 << 20))])
            ep.send(sid, part)
            await asyncio.sleep(0.3)
            ep.reset(sid)
            await asyncio.sleep(0.1)
            writer.close()
    asyncio.run(cut())
    wait_for(lambda: mesh.log("waypoint").count("did not end whole") > abandoned, lambda: mesh.log("waypoint")[-2000:])
    # the mirror never got a whole request: neither did the primary
    time.sleep(0.3)
    assert not [r for r in seen(mesh.two, path) if not r.get("stalled")], seen(mesh.two, path)
    assert not seen(mesh.one, path)
