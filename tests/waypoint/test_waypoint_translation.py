"""Requests translated between HTTP/1.1 and HTTP/2 by a waypoint, as processes
(tests/support/waypoint_mesh.py): the web service's port 82 declares http2 (python-hyper
h2 behind it), 83 declares http (Python's http.server behind it), 9001 declares tcp
(a TCP echo). Clients are curl, python-hyper h2 and raw sockets through node-a's SOCKS5."""
import asyncio
import hashlib
import json
import subprocess

import pytest

from h2http import Endpoint, Received, open_request
from test_waypoint_http2 import Backends, metrics
from waypoint_mesh import WaypointMesh, running

pytestmark = pytest.mark.timeout(120)

TO_H2, TO_H1, TCP = 82, 83, 9001


@pytest.fixture(scope="module")
def mesh(tmp_path_factory):
    with running(WaypointMesh(tmp_path_factory.mktemp("waypoint-translation"))) as m:
        yield m


@pytest.fixture(scope="module")
def backends(mesh):
    b = Backends(mesh)
    try:
        yield b.start()
    finally:
        b.stop()


def curl(mesh, *args):
    return subprocess.run(["curl", "-sS", "-m", "20", "--interface", mesh.client, "--socks5",
                           f"{mesh.node['node-a']}:15080", *args], capture_output=True, text=True)


async def exchange(mesh, port: int, data: bytes, *, half_close: bool = True, until_closed: bool = False) -> bytes:
    """Raw bytes to the service port through the mesh, and all that comes back: after a
    half-close, or (`until_closed`) until the other side closes, else what the first
    read brings. (An HTTP client that half-closes has left, as Envoy takes it.)"""
    reader, writer = await mesh.socks5(mesh.vip, port)
    writer.write(data)
    if half_close:
        writer.write_eof()
    try:
        return await asyncio.wait_for(reader.read(-1 if half_close or until_closed else 1 << 16), 10)
    finally:
        writer.close()


@pytest.mark.needs_tool("curl")
def test_an_http1_client_reaches_an_http2_backend(mesh, backends):
    got = curl(mesh, "--http1.1", "-H", "x-tenant: gold", "-w", "\\n%{http_version} %{response_code}",
               f"http://{mesh.vip}:{TO_H2}/hello?x=1")
    assert got.returncode == 0, got.stderr
    body, _, last = got.stdout.rpartition("\n")
    assert last == "1.1 200", got.stdout
    seen = json.loads(body)
    # the backend got it in HTTP/2: Host became :authority, the mesh's headers added
    assert seen["method"] == "GET" and seen["path"] == "/hello?x=1", seen
    assert seen["authority"] == f"{mesh.vip}:{TO_H2}", seen
    assert "host" not in seen["headers"] and seen["headers"]["x-tenant"] == "gold", seen
    assert seen["headers"]["x-forwarded-proto"] == "http" and seen["headers"]["x-request-id"], seen
    # its policies hold whatever the backend speaks
    denied = curl(mesh, "--http1.1", "-w", "\\n%{response_code}", f"http://{mesh.vip}:{TO_H2}/admin")
    assert denied.stdout == "RBAC: access denied\n403", denied.stdout
    assert 'destination_service_name="web"' in metrics(mesh)


def test_an_http1_body_and_its_trailers_reach_an_http2_backend_and_its_trailers_come_back(mesh, backends):
    payload = bytes(range(256)) * 4096                   # 1 MiB: beyond the backend's first windows
    chunks = b"".join(b"%x\r\n%s\r\n" % (len(payload[i:i + 50000]), payload[i:i + 50000])
                      for i in range(0, len(payload), 50000))
    request = (b"POST /upload HTTP/1.1\r\nHost: web.shop\r\nTransfer-Encoding: chunked\r\nTE: trailers\r\n"
               b"Connection: close\r\n\r\n" + chunks + b"0\r\nx-checksum: abc\r\n\r\n")
    raw = asyncio.run(exchange(mesh, TO_H2, request, half_close=False, until_closed=True))
    head, _, rest = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), raw[:500]
    assert b"transfer-encoding: chunked" in head.lower(), head
    digest = hashlib.sha256(payload).hexdigest().encode()
    # one chunk with the digest, then the last chunk carrying the backend's trailers
    size, _, after = rest.partition(b"\r\n")
    assert after[:int(size, 16)] == digest, rest[:300]
    tail = after[int(size, 16) + 2:]
    assert tail.startswith(b"0\r\n") and tail.endswith(b"\r\n\r\n"), tail
    trailers = dict(line.split(b": ", 1) for line in tail[3:-4].split(b"\r\n"))
    assert trailers[b"x-sha256"] == digest, tail
    assert json.loads(trailers[b"x-request-trailers"]) == [["x-checksum", "abc"]], tail


def test_an_http2_client_reaches_an_http1_backend(mesh, backends):
    payload = b"z" * 300_000

    async def run():
        reader, writer = await mesh.socks5(mesh.vip, TO_H1)
        ep = Endpoint(reader, writer, client=True)
        ep.task = asyncio.get_running_loop().create_task(ep.run())
        authority = f"web.shop:{TO_H1}"
        get = open_request(ep, "GET", "/hello", authority, headers=[("x-tenant", "gold")], end=True)
        head = open_request(ep, "HEAD", "/hello", authority, end=True)
        # a body of unannounced length goes chunked to the HTTP/1.1 backend
        post = open_request(ep, "POST", "/upload", authority)
        ep.send(post, payload, end=True)
        sized = open_request(ep, "PUT", "/sized", authority, headers=[("content-length", "5")])
        ep.send(sized, b"12345", end=True)
        got = await asyncio.wait_for(asyncio.gather(*(Received().collect(ep.queue(s))
                                                      for s in (get, head, post, sized))), 15)
        denied = open_request(ep, "GET", "/admin", authority, end=True)
        refused = await asyncio.wait_for(Received().collect(ep.queue(denied)), 10)
        writer.close()
        return got, refused
    (get, head, post, sized), refused = asyncio.run(run())
    status, fields = get.response
    fields = {n.decode(): v.decode() for n, v in fields}
    assert status == 200 and get.ended, (get.response, get.body)
    assert get.body.startswith(b"hello from web: GET /hello HTTP/1.1 from "), get.body
    assert fields["server"].startswith("meshcore-localworkload"), fields
    assert "connection" not in fields and "keep-alive" not in fields, fields
    assert fields["x-seen-x-forwarded-proto"] == "http" and fields["x-seen-x-request-id"], fields
    assert head.response[0] == 200 and head.body == b"" and head.ended, head.response
    # what the body would be is described (its size names the waypoint's client port)
    assert int(dict(head.response[1])[b"content-length"]) in range(55, 70), head.response
    assert post.response[0] == 200 and dict(post.response[1])[b"x-received-bytes"] == str(len(payload)).encode()
    assert sized.response[0] == 200 and dict(sized.response[1])[b"x-received-bytes"] == b"5"
    assert refused.response[0] == 403 and bytes(refused.body) == b"RBAC: access denied"


@pytest.mark.needs_tool("curl")
def test_curl_over_http2_reaches_an_http1_backend_on_kept_alive_connections(mesh, backends):
    sources = set()
    for _ in range(3):
        got = curl(mesh, "--http2-prior-knowledge", "-w", "%{http_version} %{response_code}",
                   f"http://{mesh.vip}:{TO_H1}/curl")
        assert got.returncode == 0 and got.stdout.endswith("\n2 200"), (got.stdout, got.stderr)
        line, _, _ = got.stdout.partition("\n")
        assert line.startswith("hello from web: GET /curl HTTP/1.1 from "), got.stdout
        sources.add(line.rpartition(" from ")[2])
    # each curl is a client connection of its own; the backend saw one connection of the
    # waypoint's (through node-b) carry all three requests
    assert len(sources) == 1, sources


def test_a_port_declared_tcp_is_never_read_as_http(mesh, backends):
    request = b"GET / HTTP/1.1\r\nHost: web\r\n\r\n"
    # declared tcp: the bytes reach the echo as they are and come back as they are
    assert asyncio.run(exchange(mesh, TCP, request)) == request
    # the same bytes to the echo on an undeclared port are read as a request, and what
    # the echo sends back is no HTTP response
    answered = asyncio.run(exchange(mesh, 9000, request, half_close=False))
    assert answered.startswith(b"HTTP/1.1 50"), answered


@pytest.mark.parametrize("declared, client, backend", [
    (None, "1.1", "1.1"), (None, "2", "2"),             # nothing declared: the client's version
    ("http", "1.1", "1.1"), ("http", "2", "1.1"),
    ("http2", "1.1", "2"), ("http2", "2", "2"),
    ("grpc", "1.1", "2"), ("grpc", "2", "2"),
])
def test_the_backend_speaks_what_its_port_declares(declared, client, backend):
    from meshcore.waypoint.tunnels import upstream_http
    assert upstream_http(declared, client) == backend


@pytest.mark.parametrize("declared, client, upgrade, client_protocol, backend", [
    ("http", "1.1", "UPGRADE", False, "2"),            # the rule vouches the port speaks HTTP/2 too
    (None, "1.1", "UPGRADE", False, "1.1"),            # nothing declared: the client's, upgraded or not
    (None, "2", "UPGRADE", False, "2"),
    ("http", "1.1", "DO_NOT_UPGRADE", False, "1.1"),
    ("http2", "1.1", "DO_NOT_UPGRADE", False, "2"),    # not upgrading keeps a declared HTTP/2
    ("http", "1.1", "DEFAULT", False, "1.1"),          # the mesh's default policy: DO_NOT_UPGRADE
    ("http", "2", "DEFAULT", True, "2"),               # useClientProtocol: the client's, whatever is declared
    ("http2", "1.1", "DEFAULT", True, "1.1"),
    ("grpc", "1.1", "DEFAULT", True, "1.1"),
])
def test_a_destination_rule_upgrades_to_http2_or_keeps_the_clients_protocol(declared, client, upgrade,
                                                                              client_protocol, backend):
    from meshcore.traffic.istio_model import HTTPSettings
    from meshcore.waypoint.tunnels import upstream_http
    pool = HTTPSettings(h2_upgrade_policy=upgrade, use_client_protocol=client_protocol)
    assert upstream_http(declared, client, pool) == backend


@pytest.mark.parametrize("declared, sniffed", [(None, True), ("http", True), ("http2", True), ("grpc", True),
                                               ("tcp", False), ("tls", False)])
def test_only_ports_that_may_carry_http_are_sniffed(declared, sniffed):
    from meshcore.waypoint.tunnels import sniffs
    assert sniffs(declared) is sniffed
